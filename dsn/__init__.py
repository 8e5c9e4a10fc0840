"""dsn — DeepSleepNet experiment platform (PyTorch Lightning + MLflow + Optuna + MNE)."""

__version__ = "0.1.0"
