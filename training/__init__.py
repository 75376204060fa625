"""Scripts that reproduce the source documents' training and evaluation.

Each is a module run as `python -m training.<name> --help`. They write standard Hugging Face
model directories plus `evaluation.json`, `model_card.md` and `plots/*.png`, which the app's
model-card accordions show (medlab/core/cards.py)."""
