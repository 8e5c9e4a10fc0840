"""``dsn cv`` as a command: its parser (the training config plus the cv flags), the fold config and the cv
options it parses into (:func:`parse`), :func:`run`, :func:`render` and :func:`main`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

CV_KEYS = ("folds", "out", "resume_cv", "register_fold", "fold", "collect", "parallel", "threads_per_fold",
           "fold_devices", "cv_run_id")


@dataclass
class CvArgs:
    """``dsn cv``'s parsed command line: the training config of every fold, the cv options, and the arguments
    themselves (what ``--parallel`` passes its fold processes)."""

    fit_cfg: Any
    options: dict[str, Any]
    argv: list[str]


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


def parse(argv: Sequence[str]) -> CvArgs:
    fit_cfg, extra = fit_config(argv)
    return CvArgs(fit_cfg, extra, list(argv))


def run(a: CvArgs) -> dict[str, Any]:
    """The cv run (:func:`~dsn.workflows.cv.runner.run_cv`): its summary (empty on a DDP rank other than 0)."""
    from dsn.workflows.cv.runner import run_cv

    o = a.options
    return run_cv(a.fit_cfg, folds=o["folds"], out=o["out"], resume=o["resume_cv"], register_fold=o["register_fold"],
                  fold=o["fold"], collect=o["collect"], parallel=o["parallel"], fold_argv=a.argv,
                  threads_per_fold=o["threads_per_fold"], fold_devices=o["fold_devices"], cv_run_id=o["cv_run_id"])


def main(argv: Sequence[str]) -> dict[str, Any]:
    """``dsn cv`` from the command line."""
    return run(parse(argv))


def render(summary: dict[str, Any]):
    """One fold's figures (``--fold K``), or the pooled tables; the folds still missing (``--collect``) on stderr
    with exit status 1."""
    from dsn.workflows.cli_args import Output
    from dsn.workflows.cv.report import format_fold, format_missing, format_summary

    if not summary:  # (a DDP rank other than 0 has nothing to show)
        return ""
    if "stages" not in summary:  # --fold K: one fold trained, nothing pooled
        return "\n" + format_fold(summary)
    out = Output().out("\n" + format_summary(summary))
    if summary.get("written"):
        out.out(f"\nwrote {summary['written']}")
    if summary.get("missing_folds"):  # --collect before every fold finished
        out.err(format_missing(summary))
        out.code = 1
    return out
