"""MLflow: the rank-0 tracker (`tracker.py`), where stores live and how they are opened
(`stores.py`), and experiments with their UI view (`experiments.py`)."""
