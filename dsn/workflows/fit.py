"""``dsn fit`` as a command (its parser, :func:`run`, :func:`render`); the workflow core's public names, re-exported.

The work is done in the modules below (the CLI prints :func:`render` of what :func:`run_fit` returns):

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

__all__ = ["FitResult", "Prediction", "StageResult", "build_parser", "confusion_of", "is_global_zero",
           "load_predictions", "main", "parse", "render", "run", "run_fit", "save_predictions"]


def build_parser():
    """``dsn fit``'s parser: the training config plus ``--resume`` and ``--allow_config_change``."""
    from dsn import config

    return config.build_parser()


def parse(argv: Sequence[str]):
    """The training config of the command line (config files, dotted overrides, ``--resume [RUN_ID]``)."""
    from dsn import config

    return config.parse(config.fix_resume_flag(argv), build_parser())


def run(cfg) -> FitResult:
    """One fit of the parsed config."""
    return run_fit(cfg, resume=cfg.resume, allow_config_change=cfg.allow_config_change)


def main(argv: Sequence[str]) -> FitResult:
    """``dsn fit``: parse the command line (config files, dotted overrides) and run one fit."""
    return run(parse(argv))


def render(res: FitResult) -> str:
    """What ``dsn fit`` shows at the end: each stage's selected-model report, the registered model, the links
    (nothing on a DDP rank other than 0, which has no run)."""
    if not res.run_id:
        return ""
    from dsn import tracking
    from dsn.evaluation import format_report
    from dsn.workflows.calibration import format_figures

    lines: list[str] = []
    for st in res.stages:
        for split in st.confusion:
            subjects = sorted({p.subject for p in st.predictions.get(split, [])})
            figures = {k[len(split) + 1:]: v for k, v in st.metrics.items() if k.startswith(f"{split}/")}
            lines += ["", f"[{st.name}] {split} subjects {', '.join(subjects)}", format_report(figures, split)]
            if "ece" in figures:
                lines.append(format_figures(figures))
        if "calibration/temperature" in st.metrics:
            lines.append(f"[{st.name}] calibrated on the validation subjects: temperature "
                         f"{st.metrics['calibration/temperature']:.2f}, low confidence below "
                         f"{st.metrics['calibration/threshold']:.2f} (stored in the model)")
    if res.registered:
        name, version = res.registered
        lines += ["", f"Registered model '{name}' version {version} (models:/{name}/{version})"]
    lines += ["", f"MLflow: experiment id {res.experiment_id}, run {res.run_id}", f"  tracking URI {res.tracking_uri}",
              f"  run `dsn ui` and open {tracking.ui_url(5000, res.experiment_id)}"]
    return "\n".join(lines)
