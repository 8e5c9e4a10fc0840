"""``dsn cv`` as a command: its parser (the training config plus the cv flags), the fold config and the cv
options it parses into, and :func:`main`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

CV_KEYS = ("folds", "out", "resume_cv", "register_fold", "fold", "collect", "parallel", "threads_per_fold",
           "fold_devices", "cv_run_id")


def build_parser():
    """``dsn cv``: the training config plus the cv flags."""
    from typing import Literal

    from dsn import config

    p = config.build_parser(prog="dsn cv", description="Subject-wise k-fold cross-validation with pooled test figures.",
                            fit_flags=False)
    p.add_argument("--folds", type=int | None, default=None, help="Number of folds (default: data.n_folds).")
    p.add_argument("--out", type=str | None, default=None, help="Also write cv_summary.json (and the pooled figures) here.")
    p.add_argument("--resume_cv", type=bool, default=True,
                   help="Continue the cv run of the same config if there is one (finished folds are skipped); false: start anew.")
    p.add_argument("--register_fold", type=int | None, default=None,
                   help="Register this fold's final model under tracking.register (default name deepsleepnet).")
    p.add_argument("--fold", type=int | None, default=None,
                   help="Train only this fold (0..folds-1) into the cv run of this config (created if there is none): "
                        "spread the folds over a SLURM array, machines sharing a tracking server or a shell loop; "
                        "then --collect pools them.")
    p.add_argument("--collect", type=bool, default=False,
                   help="Train nothing: pool the finished folds of the cv run of this config and name the missing "
                        "ones (exit status 1 while some are missing).")
    p.add_argument("--parallel", type=int, default=1,
                   help="Folds trained at once, each a separate `dsn cv --fold K` process with its own log file, then pooled.")
    p.add_argument("--threads_per_fold", type=int | None, default=None,
                   help="Torch threads of each fold process with --parallel (default: usable cores // parallel).")
    p.add_argument("--fold_devices", type=Literal["round_robin", "shared"], default="round_robin",
                   help="GPUs of the fold processes with --parallel: round_robin: each sees one visible GPU (the least "
                        "busy); shared: each sees every visible GPU, so all folds share the first (see CUDA MPS in README).")
    p.add_argument("--cv_run_id", type=str | None, default=None,
                   help="With --fold: train into this cv run (what --parallel passes its fold processes) instead of "
                        "finding it by config.")
    return p


def fit_config(argv: Sequence[str]) -> tuple[Any, dict[str, Any]]:
    """``dsn cv`` arguments -> (the training config of every fold, the cv options ``{name: value}``)."""
    from dsn import config

    cfg = config.parse(argv, build_parser())
    extra = {k: cfg.get(k) for k in CV_KEYS}
    d = config.to_dict(cfg)
    for k in CV_KEYS:
        d.pop(k, None)
    d["net"].pop("sfreq", None)  # linked to data.sfreq
    fit_cfg = config.default_parser().parse_object(d)
    fit_cfg.config = cfg.get("config")  # the config file names name the cv run
    return fit_cfg, extra


def main(argv: Sequence[str]) -> dict[str, Any]:
    """``dsn cv`` from the command line."""
    from dsn.workflows.cv.runner import run_cv

    fit_cfg, extra = fit_config(argv)
    return run_cv(fit_cfg, folds=extra["folds"], out=extra["out"], resume=extra["resume_cv"], register_fold=extra["register_fold"],
                  fold=extra["fold"], collect=extra["collect"], parallel=extra["parallel"], fold_argv=list(argv),
                  threads_per_fold=extra["threads_per_fold"], fold_devices=extra["fold_devices"], cv_run_id=extra["cv_run_id"])
