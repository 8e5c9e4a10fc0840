"""``dsn sweep``: Optuna studies over training-config keys, one tracked fit per trial.

A sweep file (``sweeps/<name>.yaml``)::

    base: [conf/demo.yaml]                 # config files, stacked as repeated --config
    set: {data.n_folds: 4}                 # fixed overrides for every trial (optional)
    metric: val/f1_macro                   # the selected model's validation figure (default)
    direction: maximize                    # or minimize
    stages: [pretrain, finetune]           # stages each trial runs (default: the base config's)
    n_trials: 20
    sampler: {name: tpe, seed: 0}          # tpe | random (seeded)
    pruner: {name: median, n_warmup_steps: 2}   # median | hyperband | none
    space:                                 # dotted config keys, as `dsn fit` accepts them
      net.drop_prob: {type: float, low: 0.2, high: 0.6}
      pretrain.system.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
      net.small_kernel: {type: categorical, choices: [25, 50, 100]}
      finetune.net.hidden_size: {type: int, low: 64, high: 512, step: 64}
    derived:                               # keys computed from sampled ones (optional)
      finetune.net.shortcut_size: {from: finetune.net.hidden_size, scale: 2}
    baseline: true                         # trial 0 of a new study = the base config itself (optional)
    probes:                                # then the baseline with one change each (optional, needs baseline)
      - {net.drop_prob: 0.3}

Every trial is :func:`dsn.workflows.fit.run_fit` nested under one MLflow parent run per study, with a
pruning callback reporting the per-epoch validation metric to Optuna. A point of the space that no
combination can make valid is rejected before any trial runs; a combination that is invalid is pruned
with its reason recorded; a trial that fails (NaN loss, out of memory, ...) is recorded as failed with
its error, and the study goes on. With ``baseline: true`` a new study's first trial is the base config's
own values of the space keys (each must be one of the space's values), so every trial is compared with
the starting point under the same fold, seed and budget; ``probes`` then queue the baseline with a few
keys changed (one-factor-at-a-time checks of a switch before the sampler takes over).

Five modules: :mod:`~dsn.workflows.sweep.spec` (loading and checking the file, sampling its space),
:mod:`~dsn.workflows.sweep.study` (Optuna's storage and study, :class:`SweepResult`),
:mod:`~dsn.workflows.sweep.runner` (the checks before any trial, workers, trials, pruning),
:mod:`~dsn.workflows.sweep.report` (trials table, plots, compare link, export, registration) and
:mod:`~dsn.workflows.sweep.command` (``dsn sweep``'s parser, ``run`` and ``render``); runner and report
both import study, neither imports the other's internals. This package re-exports their public names; the
runner's (which import Lightning) load on first use.
"""

from __future__ import annotations

from typing import Any

from dsn.workflows.sweep import spec as _spec
from dsn.workflows.sweep.spec import *  # noqa: F403  (the spec's public names)

_RUNNER = {"STEP_OFFSET", "OptunaPruning", "TrialFailed", "pruning_callback", "run_sweep", "check_devices",
           "check_data", "close_stale_trials"}
_STUDY = {"SweepResult", "default_storage", "open_study", "load_study"}
_REPORT = {"trials_table", "export_best", "format_summary", "study_compare_url", "register_best"}

__all__ = [*_spec.__all__, *sorted(_RUNNER), *sorted(_STUDY), *sorted(_REPORT)]


def __getattr__(name: str) -> Any:
    if name in _RUNNER:
        from dsn.workflows.sweep import runner

        return getattr(runner, name)
    if name in _STUDY:
        from dsn.workflows.sweep import study

        return getattr(study, name)
    if name in _REPORT:
        from dsn.workflows.sweep import report

        return getattr(report, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
