"""Workflows: the training core and one module per command, all built on :func:`dsn.workflows.run.run_fit`.

- :mod:`dsn.workflows.run` — one training fit (both stages); used by every other command
- :mod:`dsn.workflows.stage`, :mod:`~dsn.workflows.build`, :mod:`~dsn.workflows.recorder`,
  :mod:`~dsn.workflows.callbacks`, :mod:`~dsn.workflows.results`, :mod:`~dsn.workflows.distributed` — its parts
- :mod:`dsn.workflows.fit` — ``dsn fit`` (and the core's names, re-exported for callers outside :mod:`dsn`)
- :mod:`dsn.workflows.sweep` — Optuna studies, one fit per trial
- :mod:`dsn.workflows.cv` — subject-wise k-fold cross-validation, one fit per fold, pooled figures
- :mod:`dsn.workflows.registry` — model references (registry, runs, checkpoints) and the registry commands
- :mod:`dsn.workflows.predict` — scoring new recordings with a registered model
- :mod:`dsn.workflows.synth`, :mod:`~dsn.workflows.data`, :mod:`~dsn.workflows.evaluate`,
  :mod:`~dsn.workflows.export`, :mod:`~dsn.workflows.ui`, :mod:`~dsn.workflows.configs` — the other commands

Every command module exposes ``build_parser``, ``parse``, ``run`` and ``render`` (see
:mod:`dsn.workflows.cli_args`, which they share); :mod:`dsn.cli` dispatches to them.
"""
