"""Training and search: Lightning training, Optuna search, and the data they read."""
