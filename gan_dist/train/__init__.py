"""Training: the loop (trainer.py) and its one-job helpers."""
