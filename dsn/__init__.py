"""dsn — DeepSleepNet experiment platform (PyTorch Lightning + MLflow + Optuna + MNE)."""

from importlib.metadata import PackageNotFoundError, version

try:  # one version source: pyproject.toml's, as installed (what runs and model specs record)
    __version__ = version("dsn")
except PackageNotFoundError:  # a checkout used without any install (PYTHONPATH=.)
    __version__ = "0+unknown"
