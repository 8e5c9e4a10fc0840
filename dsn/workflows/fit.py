"""``dsn fit``: parse the command line and run one fit; the workflow core's public names, re-exported.

The work is done in the modules below (the CLI renders what :func:`run_fit` returns):

- :mod:`dsn.workflows.run` -- :func:`run_fit`: checks, data, the fit's run, the stage loop, registration;
- :mod:`dsn.workflows.stage` -- one stage: train -> select -> evaluate -> record;
- :mod:`dsn.workflows.build` -- the data module, the systems and the scorer of each stage;
- :mod:`dsn.workflows.recorder` -- MLflow on global rank 0, a no-op recorder on the other ranks;
- :mod:`dsn.workflows.callbacks` -- the stage Trainer's callbacks;
- :mod:`dsn.workflows.results` -- :class:`FitResult`, :class:`StageResult`, :class:`Prediction`;
- :mod:`dsn.workflows.distributed` -- :func:`is_global_zero`.

Modules of :mod:`dsn` import from those, never from this file (only :mod:`dsn.cli` does).
"""

from __future__ import annotations

from collections.abc import Sequence

from dsn.workflows.distributed import is_global_zero
from dsn.workflows.results import FitResult, Prediction, StageResult, confusion_of, load_predictions, save_predictions
from dsn.workflows.run import run_fit

__all__ = ["FitResult", "Prediction", "StageResult", "confusion_of", "is_global_zero", "load_predictions", "main",
           "run_fit", "save_predictions"]


def build_parser():
    """``dsn fit``'s parser: the training config plus ``--resume`` and ``--allow_config_change``."""
    from dsn import config

    return config.build_parser()


def main(argv: Sequence[str]) -> FitResult:
    """``dsn fit``: parse the command line (config files, dotted overrides) and run one fit."""
    from dsn import config

    cfg = config.parse(config.fix_resume_flag(argv), build_parser())
    return run_fit(cfg, resume=cfg.resume, allow_config_change=cfg.allow_config_change)
