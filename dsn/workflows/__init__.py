"""Workflows: one module per command, all built on :func:`dsn.workflows.fit.run_fit`.

- :mod:`dsn.workflows.fit` — one training fit (both stages); used by every other command
- :mod:`dsn.workflows.sweep` — Optuna studies, one fit per trial
- :mod:`dsn.workflows.cv` — subject-wise k-fold cross-validation, one fit per fold, pooled figures
- :mod:`dsn.workflows.registry` — model references (registry, runs, checkpoints) and the registry commands
- :mod:`dsn.workflows.predict` — scoring new recordings with a registered model
"""
