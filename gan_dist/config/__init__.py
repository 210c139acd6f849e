"""What a run is described by: the typed recipe (`recipe.py`) and the families of nets and
losses it names (`family.py`, `catalogue.py`, `families.py`). Nothing here imports torch."""
