"""Saving and loading: `load_model`, `load_weights`, `load_saved_model`, big
tables by blocks, and `from_keras` / `to_keras`."""
