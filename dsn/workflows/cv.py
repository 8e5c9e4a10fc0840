"""``dsn cv``: subject-wise k-fold cross-validation, the paper's evaluation, with pooled figures.

Each fold is :func:`dsn.workflows.run.run_fit` (both stages; validation subjects drawn from the
training side of the fold) nested under one cv parent run. The test predictions of all folds are
pooled into one confusion matrix, from which accuracy, macro-F1, Cohen's kappa and per-class
precision / recall / F1 are computed, for the CNN-only stage and for the full model, beside the
per-fold spread (mean ± sd of the fold figures) and the paper's published row.

Resumable fold by fold: running the same command again finds the cv run by its config, skips the
finished folds (their predictions are read back from disk) and resumes an interrupted one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dsn.data.channels import pick_channels
from dsn.errors import ConfigError

log = logging.getLogger(__name__)

#: DeepSleepNet, Sleep-EDF-20 Fpz-Cz, 20-fold CV (Supratak et al. 2017, Table III/IV).
PAPER_ROW = {"acc": 0.820, "f1_macro": 0.769, "kappa": 0.76, "f1_W": 0.847, "f1_N1": 0.466, "f1_N2": 0.859,
             "f1_N3": 0.848, "f1_REM": 0.824}
CV_KEYS = ("folds", "out", "resume_cv", "register_fold", "fold", "collect", "parallel", "threads_per_fold",
           "fold_devices", "cv_run_id")
FOLD_DEVICES = ("round_robin", "shared")


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


def stage_figures(preds_by_fold: Sequence[Sequence[Any]], class_names: Sequence[str]) -> dict[str, Any]:
    """Pooled and per-fold figures of one stage from its per-fold test predictions.

    Returns a dict with ``pooled`` (acc, f1_macro, kappa, f1_/precision_/recall_<class>), ``confusion``
    (pooled counts, rows true), ``n_epochs``, ``per_fold`` (the same figures per fold), ``mean`` and ``sd``.
    """
    from dsn.evaluation import confusion_of, metrics_from_confusion

    cms = [confusion_of(p, len(class_names)) for p in preds_by_fold]
    pooled_cm = np.sum(cms, axis=0) if cms else np.zeros((len(class_names),) * 2, dtype=np.int64)
    per_fold = [metrics_from_confusion(cm, class_names, precision_recall=True) for cm in cms]
    keys = list(per_fold[0]) if per_fold else []
    mean = {k: float(np.nanmean([f[k] for f in per_fold])) for k in keys}
    sd = {k: float(np.nanstd([f[k] for f in per_fold], ddof=1)) if len(per_fold) > 1 else 0.0 for k in keys}
    return {"pooled": metrics_from_confusion(pooled_cm, class_names, precision_recall=True), "confusion": pooled_cm.tolist(), "n_epochs": int(pooled_cm.sum()),
            "per_fold": per_fold, "mean": mean, "sd": sd}


def summarise(folds: list[dict[str, Any]], stages: Sequence[str], class_names: Sequence[str]) -> dict[str, Any]:
    """``cv_summary.json``: per stage figures; the final stage's also at the top level (``pooled.f1_macro``).

    Each stage's (and each validation block's) ``calibration``: ECE / Brier of the raw and the calibrated
    probabilities (each fold's test epochs calibrated with that fold's own temperature) and the accuracy of
    confident vs flagged epochs (each fold's own threshold) over the pooled epochs
    (:func:`dsn.workflows.calibration.pooled_calibration`).
    """
    from dsn.workflows.calibration import pooled_calibration

    out: dict[str, Any] = {"n_folds": len(folds), "class_names": list(class_names), "paper_sleep_edf20_fpzcz": PAPER_ROW,
                           "folds": [{k: v for k, v in f.items() if k not in ("predictions", "val_predictions")} for f in folds],
                           "stages": {}}
    for stage in stages:
        out["stages"][stage] = stage_figures([f["predictions"][stage] for f in folds], class_names)
        out["stages"][stage]["calibration"] = pooled_calibration(folds, stage)
    # the validation subjects of every fold, pooled the same way: what recipes should be compared on
    out["validation"] = {stage: {k: v for k, v in stage_figures([f.get("val_predictions", {}).get(stage, []) for f in folds],
                                                               class_names).items() if k != "per_fold"}
                         for stage in stages}
    for stage in stages:
        out["validation"][stage]["calibration"] = pooled_calibration(folds, stage, "val_predictions")
    final = out["stages"][stages[-1]]
    out.update({k: final[k] for k in ("pooled", "confusion", "n_epochs", "mean", "sd", "calibration")})
    out["final_stage"] = stages[-1]
    return out


def format_summary(summary: dict[str, Any]) -> str:
    """The paper-style table: pooled figures of each stage, the fold spread, and the paper's row."""
    names = summary["class_names"]
    cols = ["acc", "f1_macro", "kappa", *[f"f1_{c}" for c in names]]
    head = f"{'':<34}" + "".join(f"{c.replace('f1_macro', 'MF1').replace('f1_', 'F1 '):>11}" for c in cols)
    lines = [f"Cross-validation, {summary['n_folds']} folds, {summary['n_epochs']} test epochs pooled", head, "-" * len(head)]

    def row(label: str, values: dict[str, float]) -> str:
        cells = []
        for c in cols:
            v = values.get(c, float("nan"))
            cells.append(f"{'n/a':>11}" if v is None or math.isnan(v) else (f"{v:>11.3f}" if c == "kappa" else f"{100 * v:>11.1f}"))
        return f"{label:<34}" + "".join(cells)

    for stage, fig in summary["stages"].items():
        label = "CNN only (pretrain)" if stage == "pretrain" else "full model (finetune)"
        lines.append(row(f"dsn {label}, pooled", fig["pooled"]))
        val = summary.get("validation", {}).get(stage)
        if val and val.get("n_epochs"):
            lines.append(row("  validation subjects, pooled", val["pooled"]))
        spread = "".join(
            f"{'':>11}" if math.isnan(fig['mean'].get(c, float('nan'))) else
            (f"{fig['mean'][c]:.2f}±{fig['sd'][c]:.2f}".rjust(11) if c == "kappa" else
             f"{100 * fig['mean'][c]:.1f}±{100 * fig['sd'][c]:.1f}".rjust(11))
            for c in cols
        )  # fmt: skip
        lines.append(f"{'  per fold, mean±sd':<34}" + spread)
    lines.append(row("paper: Sleep-EDF-20 Fpz-Cz (2017)", summary["paper_sleep_edf20_fpzcz"]))
    lines.append("(acc, MF1, F1 in %; kappa as a fraction; compare recipes on the validation rows, "
                 "report the test rows)")
    cal = [format_calibration(stage, fig["calibration"]) for stage, fig in summary["stages"].items() if fig.get("calibration")]
    if cal:
        lines += ["Calibration, pooled test epochs (each fold's own temperature and low-confidence threshold):", *cal]
    return "\n".join(lines)


def format_calibration(stage: str, c: dict[str, float]) -> str:
    """One line: pooled ECE and Brier before -> after calibration, accuracy of confident vs flagged epochs."""
    from dsn.workflows.calibration import format_figures

    return f"  {stage}: {format_figures(c)}"


def _cv_key(cfg, folds: int) -> str:
    """What identifies a cv run: the keys that can change the trained weights (:func:`dsn.config.identity_items`)
    without the fold, and the number of folds; so a rerun with another loader, progress or tracking overlay
    continues the same cv."""
    from dsn import config

    items = {k: v for k, v in config.identity_items(cfg).items() if k not in ("data.fold", "data.n_folds")}
    items["folds"] = folds
    return hashlib.sha1(json.dumps(items, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _check_args(cfg, folds: int, register_fold: int | None, fold: int | None = None, collect: bool = False,
                parallel: int = 1, resume: bool = True, threads: int | None = None, fold_devices: str = "round_robin") -> None:
    if folds < 2:
        raise ConfigError(f"--folds {folds}: cross-validation needs at least 2 folds.")
    if register_fold is not None and not 0 <= register_fold < folds:
        raise ConfigError(f"--register_fold {register_fold}: must be in 0..{folds - 1}.")
    if register_fold is not None and not cfg.tracking.log_model:
        raise ConfigError("--register_fold needs tracking.log_model: true (the registry stores the logged model).")
    if fold is not None and not 0 <= fold < folds:
        raise ConfigError(f"--fold {fold}: must be in 0..{folds - 1} (--folds {folds}).")
    if parallel < 1:
        raise ConfigError(f"--parallel {parallel}: must be at least 1.")
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads_per_fold {threads}: must be at least 1 (or null: usable cores // parallel).")
    if fold_devices not in FOLD_DEVICES:
        raise ConfigError(f"--fold_devices {fold_devices}: must be one of {', '.join(FOLD_DEVICES)}.")
    modes = [m for m, on in (("--fold", fold is not None), ("--collect", collect), ("--parallel", parallel > 1)) if on]
    if len(modes) > 1:
        raise ConfigError(f"{' and '.join(modes)} cannot be combined: train one fold, pool the finished ones, or train them in parallel.")
    if (fold is not None or collect) and not resume:
        raise ConfigError(f"{modes[0]} works on the cv run of this config: drop --resume_cv false (start a new cv "
                          "with plain dsn cv --resume_cv false, or in another tracking.experiment).")
    if fold is not None and register_fold is not None:
        raise ConfigError("--register_fold with --fold: register once the folds are finished, with --collect --register_fold K.")


def run_cv(cfg, folds: int | None = None, out: str | None = None, resume: bool = True,
           register_fold: int | None = None, verbose: bool = True, *, fold: int | None = None, collect: bool = False,
           parallel: int = 1, fold_argv: Sequence[str] | None = None, threads_per_fold: int | None = None,
           fold_devices: str = "round_robin", cv_run_id: str | None = None) -> dict[str, Any]:
    """Run (or continue) a k-fold cross-validation; returns the cv summary (see :func:`summarise`).

    ``fold``: train only that fold into the cv run of this config (found or created, safe from several
    processes at once); returns ``{"fold", "run_id", "cv_run_id", "missing_folds", ...}``, no pooled figures.
    ``collect``: train nothing, pool the finished folds; the summary's ``missing_folds`` names the others
    (the figures are logged on the cv run only once none is missing). ``parallel`` > 1: the unfinished folds
    run as ``dsn cv --fold K`` processes (``fold_argv``: the cv's own command-line arguments), at most
    ``parallel`` at once with ``threads_per_fold`` torch threads each (default usable cores // parallel) and
    GPUs as ``fold_devices`` says (:func:`dsn.workflows.cv_procs.run_fold_processes`), then pooled.
    ``cv_run_id`` (with ``fold``): train into that cv run.

    Progress is logged on this module's logger (INFO; DEBUG when ``verbose`` is false); the CLI renders
    the returned summary (:func:`format_summary`). Under DDP the ranks other than 0 train their share of
    every fold, write nothing and return an empty dict.
    """
    from dsn import config
    from dsn.workflows.distributed import is_global_zero

    folds = folds or cfg.data.n_folds
    _check_args(cfg, folds, register_fold, fold, collect, parallel, resume, threads_per_fold, fold_devices)
    if parallel > 1 and fold_argv is None:
        raise ConfigError("--parallel needs the dsn cv command line to start the fold processes (fold_argv).")
    base = config.set_keys(cfg, {"data.n_folds": folds, "tracking.register": None})
    zero = is_global_zero()  # under DDP, the other ranks re-run this command: they train, and write nothing
    if parallel > 1 and not zero:
        raise ConfigError("--parallel under a distributed launcher: run the fold processes with --fold K instead.")
    say = log.info if verbose and zero else log.debug
    store = _Store.open(base, folds, zero)
    if collect:
        return _collect(cfg, base, store, folds, out, register_fold, say)
    if fold is not None:
        return _train_one_fold(cfg, base, store, folds, fold, cv_run_id, zero, verbose, say)
    parent = _open_cv_run(cfg, base, store, folds, resume, zero, say)
    if parallel > 1:
        return _run_parallel(base, store, folds, parent, out, register_fold, parallel, fold_argv,
                             threads_per_fold, fold_devices, say, cfg)
    return _run_sequential(cfg, base, store, folds, parent, out, register_fold, zero, verbose, say)


def _run_sequential(cfg, base, store: _Store, folds: int, parent: str, out: str | None, register_fold: int | None,
                    zero: bool, verbose: bool, say) -> dict[str, Any]:
    """The folds one after the other in this process (finished ones read back), then pooled."""
    from dsn import config, tracking
    from dsn.data.labels import STAGES

    uri, exp_id = store.uri, store.exp_id
    results: list[dict[str, Any]] = []
    with tracking.run_guard(uri, [parent]) if zero else contextlib.nullcontext():
        for k in range(folds):
            fold_res = _run_fold(config.set_key(base, "data.fold", k), k, folds, parent, uri, exp_id, zero, verbose, say)
            fold_res.pop("skipped", None)
            results.append(fold_res)
            if register_fold == k and zero:
                _register_fold(cfg, uri, fold_res, folds, parent, say)
        if not zero:
            return {}
        summary = summarise(results, list(base.stages), STAGES)
        summary["cv_run_id"] = parent
        _log_summary(uri, parent, summary, folds)
        if out:
            _write_out(Path(out), summary)
            summary["written"] = str(Path(out) / "cv_summary.json")
    return summary


class _Store:
    """The tracking store of a cv: its URI, experiment, the home's lock files, the cv key."""

    def __init__(self, uri: str, exp_id: str, home: Path, key: str):
        self.uri, self.exp_id, self.home, self.key = uri, exp_id, home, key

    @classmethod
    def open(cls, base, folds: int, zero: bool) -> _Store:
        """Check the store and get (or create) the experiment, under the home's lock, so that processes
        starting at once do not race to create a new SQLite store or the experiment."""
        from dsn import tracking
        from dsn.workflows.cv_procs import file_lock

        home = Path(base.tracking.home)
        with file_lock(_lock_path(home, "store")) if zero else contextlib.nullcontext():
            uri = tracking.tracking_uri(base.tracking.uri, home)
            tracking.check_tracking(uri)
            exp_id = tracking.experiment_id(uri, base.tracking.experiment, home)
        return cls(uri, exp_id, home, _cv_key(base, folds))

    @property
    def local(self) -> bool:
        """A store whose processes all share this home (SQLite): the home's lock alone keeps them apart."""
        return self.uri.startswith("sqlite:")

    def cv_runs(self) -> list:
        from dsn import tracking

        return tracking.find_runs(self.uri, self.exp_id, {"dsn.kind": "cv", "dsn.cv_key": self.key})


def _lock_path(home: Path, name: str) -> Path:
    return Path(home) / "locks" / f"{name}.lock"


def _open_cv_run(cfg, base, store: _Store, folds: int, resume: bool, zero: bool, say) -> str:
    """The cv parent run: the one of the same identity when resuming (rank > 0: always), else a new one."""
    from dsn import tracking
    from dsn.workflows.cv_procs import file_lock

    if not zero:
        existing = store.cv_runs()
        if not existing:
            raise ConfigError("dsn cv (rank > 0): the cv run of rank 0 was not found in the tracking store.")
        return existing[0].info.run_id
    with file_lock(_lock_path(store.home, f"cv-{store.key}")):
        existing = store.cv_runs() if resume else []
        if existing:
            parent = existing[0].info.run_id
            tracking.reopen_run(store.uri, parent)
            say("Continuing cv run %s (same config; finished folds are skipped)", parent)
            return parent
        return _create_cv_run(cfg, base, store, folds)


def _create_cv_run(cfg, base, store: _Store, folds: int) -> str:
    from dsn import config, tracking

    name = cfg.tracking.run_name or "-".join(["cv", *(Path(str(c)).stem for c in (cfg.get("config") or []))])
    parent = tracking.start_run(store.uri, store.exp_id, name, tags={
        "dsn.kind": "cv", "dsn.cv_key": store.key, "dsn.folds": str(folds), **tracking.environment_tags()})
    tracking.log_text(store.uri, parent, config.dump(base), "config.yaml")
    tracking.log_params(store.uri, parent, {**config.training_items(base), "cv.folds": folds})
    return parent


#: Seconds a fold process that created the cv run on a remote store waits before looking for twins.
DEDUPE_WAIT_S = 2.0


def _fold_cv_run(cfg, base, store: _Store, folds: int, say) -> tuple[str, bool]:
    """The cv run a ``--fold`` process trains into: the newest of this config, else a new one; returns
    ``(run id, created here)``. Processes starting at once get the same run: on a local store the home's
    lock makes find-or-create atomic; on a remote store (no shared lock) a process that created one waits
    :data:`DEDUPE_WAIT_S`, looks again and, when several were created meanwhile, every process keeps the
    oldest and the others are retired (:func:`_dedupe_cv_runs`)."""
    from dsn.workflows.cv_procs import file_lock

    with file_lock(_lock_path(store.home, f"cv-{store.key}")):
        existing = store.cv_runs()
        if existing:
            return existing[0].info.run_id, False
        mine = _create_cv_run(cfg, base, store, folds)
    say("Created cv run %s (the folds of this config train into it)", mine)
    if store.local:
        return mine, True
    import time

    time.sleep(DEDUPE_WAIT_S)
    winner = _dedupe_cv_runs(store, mine)
    return winner, winner == mine


def _dedupe_cv_runs(store: _Store, mine: str) -> str:
    """Of the cv runs of this config created at once (by several processes), the oldest (start time, then
    run id: the same choice in every process); ``mine``, when it is not that one, is retagged
    ``dsn.cv_key = duplicate-of-<winner>`` (so no search finds it again) and closed as KILLED."""
    from dsn import tracking

    runs = store.cv_runs()
    winner = min(runs, key=lambda r: (r.info.start_time, r.info.run_id)).info.run_id if runs else mine
    if winner != mine:
        tracking.set_tags(store.uri, mine, {"dsn.cv_key": f"duplicate-of-{winner}"})
        tracking.set_terminated(store.uri, mine, "KILLED")
        log.debug("cv run %s was created at the same time as %s: using %s", mine, winner, winner)
    return winner


def _given_cv_run(store: _Store, run_id: str) -> str:
    """``--cv_run_id``: that run, when it is a cv run of this config."""
    from dsn import tracking

    try:
        run = tracking.get_run(store.uri, run_id)
    except Exception:  # noqa: BLE001 - MLflow raises its own exception kinds for an unknown id
        raise ConfigError(f"--cv_run_id {run_id}: no such run in {store.uri}.") from None
    if run.data.tags.get("dsn.kind") != "cv" or run.data.tags.get("dsn.cv_key") != store.key:
        raise ConfigError(f"--cv_run_id {run_id}: not a cv run of this config (another config, --folds or store); "
                          "drop --cv_run_id to find the cv run of this config.")
    return run_id


def fold_states(store: _Store, parent: str, folds: int, stages: Sequence[str]) -> dict[int, Any]:
    """Fold -> its finished run (with its test predictions on disk), or None when not finished."""
    from dsn import tracking

    ckpt_root = store.home / "checkpoints"
    runs = tracking.find_runs(store.uri, store.exp_id, {"dsn.kind": "fold"}, parent=parent)
    out: dict[int, Any] = dict.fromkeys(range(folds))
    for r in runs:  # newest first: the newest finished run of a fold wins
        k = r.data.tags.get("dsn.fold", "")
        if k.isdigit() and int(k) in out and out[int(k)] is None and _finished(r, ckpt_root, stages, store.uri):
            out[int(k)] = r
    return out


def _finished(run, ckpt_root: Path, stages: Sequence[str], uri: str | None = None) -> bool:
    """A FINISHED fold run whose test predictions are in this home (fetched from its stage runs' artifacts
    when ``uri`` is given and the fold was trained on another machine sharing the tracking server)."""
    if run.info.status != "FINISHED":
        return False
    missing = [s for s in stages if not (ckpt_root / run.info.run_id / s / "predictions_test.npz").is_file()]
    return not missing or (uri is not None and _fetch_predictions(uri, run.info.run_id, missing, ckpt_root / run.info.run_id))


def _fetch_predictions(uri: str, run_id: str, stages: Sequence[str], ckpt_dir: Path) -> bool:
    """Copy a fold's ``predictions_{test,val}.npz`` of ``stages`` from its stage runs' ``predictions/`` artifacts
    into ``ckpt_dir/<stage>/``; False when a stage run or its test predictions are not in the store."""
    import shutil
    import tempfile

    from dsn import tracking

    for s in stages:
        child = tracking.find_child(uri, run_id, s)
        if child is None:
            return False
        for split in ("test", "val"):
            with tempfile.TemporaryDirectory(prefix="dsn-cv-") as tmp:
                try:
                    got = Path(tracking.download_artifacts(uri, child.info.run_id, f"predictions/predictions_{split}.npz", tmp))
                except Exception:  # noqa: BLE001 - MLflow raises several kinds for a missing artifact
                    if split == "test":
                        return False
                    continue
                dst = ckpt_dir / s / f"predictions_{split}.npz"
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(got, dst.with_suffix(".tmp"))
                dst.with_suffix(".tmp").replace(dst)
    return True


def _train_one_fold(cfg, base, store: _Store, folds: int, k: int, cv_run_id: str | None, zero: bool, verbose: bool,
                    say) -> dict[str, Any]:
    """``--fold K``: fold K into the cv run of this config (nothing when it finished earlier)."""
    from dsn import config, tracking

    if cv_run_id:
        parent, created = _given_cv_run(store, cv_run_id), False
    elif not zero:
        parent, created = _open_cv_run(cfg, base, store, folds, True, zero, say), False
    else:
        parent, created = _fold_cv_run(cfg, base, store, folds, say)
    # the process that created the cv run closes it (the others leave its status alone); --collect reopens it
    with tracking.run_guard(store.uri, [parent]) if created else contextlib.nullcontext():
        res = _run_fold(config.set_key(base, "data.fold", k), k, folds, parent, store.uri, store.exp_id, zero, verbose, say)
    if not zero:
        return {}
    states = fold_states(store, parent, folds, base.stages)
    return {"fold": k, "n_folds": folds, "run_id": res["run_id"], "cv_run_id": parent, "trained": not res.get("skipped"),
            "missing_folds": [f for f, r in states.items() if r is None]}


def _pool_finished(base, store: _Store, parent: str, folds: int, states: dict[int, Any]) -> dict[str, Any]:
    from dsn.data.labels import STAGES

    results = [_read_fold(r, k, base.stages, store.home / "checkpoints" / r.info.run_id)
               for k, r in states.items() if r is not None]
    summary = summarise(results, list(base.stages), STAGES)
    summary["cv_run_id"] = parent
    summary["missing_folds"] = [k for k, r in states.items() if r is None]
    return summary


def _finish_summary(cfg, store: _Store, parent: str, folds: int, summary: dict[str, Any], out: str | None,
                    register_fold: int | None, say) -> dict[str, Any]:
    """Log a complete summary on the cv run (and register a fold), write ``--out``."""
    if not summary["missing_folds"]:
        _log_summary(store.uri, parent, summary, folds)
        if register_fold is not None:
            _register_fold(cfg, store.uri, summary["folds"][register_fold], folds, parent, say)
    if out:
        _write_out(Path(out), summary)
        summary["written"] = str(Path(out) / "cv_summary.json")
    return summary


def _collect(cfg, base, store: _Store, folds: int, out: str | None, register_fold: int | None, say) -> dict[str, Any]:
    """``--collect``: pool the finished folds of the cv run of this config, train nothing."""
    from dsn import tracking
    from dsn.errors import CvError

    runs = store.cv_runs()
    if not runs:
        raise CvError(f"no cv run of this config (--folds {folds}) in {store.uri}, experiment "
                      f"{base.tracking.experiment}: train its folds first (dsn cv, --parallel N or --fold K).")
    parent = runs[0].info.run_id
    states = fold_states(store, parent, folds, base.stages)
    missing = [k for k, r in states.items() if r is None]
    if len(missing) == folds:
        raise CvError(f"cv run {parent}: no fold has finished yet (missing: {_fold_list(missing)}); train them with "
                      "dsn cv --fold K or dsn cv --parallel N and the same options.")
    if register_fold is not None and register_fold in missing:
        raise CvError(f"--register_fold {register_fold}: fold {register_fold} of cv run {parent} has not finished.")
    say("Pooling the finished folds of cv run %s%s", parent, f" (missing: {_fold_list(missing)})" if missing else "")
    summary = _pool_finished(base, store, parent, folds, states)
    if missing:
        return _finish_summary(cfg, store, parent, folds, summary, out, None, say)
    tracking.reopen_run(store.uri, parent)
    with tracking.run_guard(store.uri, [parent]):
        return _finish_summary(cfg, store, parent, folds, summary, out, register_fold, say)


def _run_parallel(base, store: _Store, folds: int, parent: str, out: str | None, register_fold: int | None,
                  parallel: int, fold_argv: Sequence[str], threads: int | None, devices: str, say, cfg) -> dict[str, Any]:
    """``--parallel K``: the unfinished folds as ``dsn cv --fold K`` processes, then pooled."""
    from dsn import tracking
    from dsn.errors import CvError
    from dsn.workflows import cv_procs

    with tracking.run_guard(store.uri, [parent]):
        states = fold_states(store, parent, folds, base.stages)
        todo = [k for k, r in states.items() if r is None]
        for k, r in states.items():
            if r is not None:
                say("=== fold %d/%d: finished earlier (run %s), skipped", k + 1, folds, r.info.run_id)
        threads = threads or max(1, cv_procs.usable_cores() // min(parallel, max(len(todo), 1)))
        log_dir = store.home / "cv-logs" / parent
        if todo:
            say("Training folds %s, %d at once (%d torch thread%s each), logs in %s", _fold_list(todo),
                min(parallel, len(todo)), threads, "s" if threads > 1 else "", log_dir)
        procs = cv_procs.run_fold_processes({k: cv_procs.fold_command(fold_argv, k, parent) for k in todo}, parallel,
                                            log_dir, threads, devices, n_folds=folds)
        for p in procs:
            tracking.log_file(store.uri, parent, p.log_path, "fold-logs")
        failed = sorted((p for p in procs if not p.ok), key=lambda p: p.fold)
        if failed:
            raise CvError("; ".join(f"fold {p.fold} failed (exit {p.returncode}), log {p.log_path}" for p in failed)
                          + ": the other folds are kept; rerun the same command to retry the failed ones.")
        states = fold_states(store, parent, folds, base.stages)
        summary = _pool_finished(base, store, parent, folds, states)
        if summary["missing_folds"]:
            raise CvError(f"cv run {parent}: folds {_fold_list(summary['missing_folds'])} did not finish (their "
                          f"processes exited without error); see their logs in {log_dir}.")
        return _finish_summary(cfg, store, parent, folds, summary, out, register_fold, say)


def _fold_list(folds: Sequence[int]) -> str:
    return ", ".join(str(k) for k in folds)


def format_fold(res: dict[str, Any]) -> str:
    """One line after ``dsn cv --fold K``: the fold's run, and which folds are still missing."""
    k, n = res["fold"], res["n_folds"]
    head = f"fold {k} ({k + 1}/{n}) {'trained' if res['trained'] else 'had finished earlier'}: run {res['run_id']} of cv run {res['cv_run_id']}"
    missing = res["missing_folds"]
    if missing:
        return f"{head}; folds not finished yet: {_fold_list(missing)} (dsn cv --collect with the same options pools the finished ones)"
    return f"{head}; every fold has finished: dsn cv --collect with the same options pools them"


def format_missing(summary: dict[str, Any]) -> str:
    """One line naming the folds a pooled summary lacks ('' when none is missing)."""
    missing = summary.get("missing_folds") or []
    if not missing:
        return ""
    return (f"folds missing (not finished): {_fold_list(missing)} of {summary['n_folds'] + len(missing)}; these figures pool "
            "the others; train the missing ones with dsn cv --fold K (or --parallel N) and the same options")


def _run_fold(fcfg, k: int, folds: int, parent: str, uri: str, exp_id: str, zero: bool, verbose: bool, say) -> dict[str, Any]:
    """One fold: read back when it finished earlier (its predictions on disk), else fitted (or resumed).

    On rank 0 the fold's lock in the tracking home is held meanwhile: a second process on the same fold
    (a plain ``dsn cv`` beside ``--fold`` processes) waits for it and then reads the fold back."""
    from dsn.workflows.cv_procs import file_lock

    home = Path(fcfg.tracking.home)
    if not zero:
        return _fit_or_read_fold(fcfg, k, folds, parent, uri, exp_id, verbose, say)

    def waiting():
        say("fold %d/%d: being trained by another process, waiting for it", k + 1, folds)

    with file_lock(_lock_path(home, f"fold-{parent}-{k}"), on_wait=waiting):
        return _fit_or_read_fold(fcfg, k, folds, parent, uri, exp_id, verbose, say)


def _fit_or_read_fold(fcfg, k: int, folds: int, parent: str, uri: str, exp_id: str, verbose: bool, say) -> dict[str, Any]:
    from dsn import tracking
    from dsn.workflows.run import run_fit

    done = tracking.find_runs(uri, exp_id, {"dsn.kind": "fold", "dsn.fold": str(k)}, parent=parent)
    ckpt_root = Path(fcfg.tracking.home) / "checkpoints"
    finished = [r for r in done if _finished(r, ckpt_root, fcfg.stages, uri)]
    if finished:
        say("\n=== fold %d/%d: finished earlier (run %s), skipped", k + 1, folds, finished[0].info.run_id)
        return _read_fold(finished[0], k, fcfg.stages, ckpt_root / finished[0].info.run_id) | {"skipped": True}
    say("\n=== fold %d/%d%s", k + 1, folds, " (resuming)" if done else "")
    res = run_fit(fcfg, parent_run_id=parent, tags={"dsn.fold": str(k)}, run_name=f"fold-{k}", kind="fold",
                  resume=done[0].info.run_id if done else None, allow_config_change=False, verbose=verbose)
    preds = {s.name: s.predictions.get("test", []) for s in res.stages}
    return {"fold": k, "run_id": res.run_id, "test_subjects": sorted({p.subject for p in preds[fcfg.stages[-1]]}),
            "metrics": {s.name: s.metrics for s in res.stages}, "model_uri": res.final.model_uri, "predictions": preds,
            "val_predictions": {s.name: s.predictions.get("val", []) for s in res.stages}}


def _read_fold(run, k: int, stages, ckpt_dir: Path) -> dict[str, Any]:
    """A finished fold from its run (figures, model URI) and its checkpoint folder (predictions)."""
    from dsn.workflows.recorder import MODEL_URI_TAG
    from dsn.workflows.results import load_predictions

    preds = {s: load_predictions(ckpt_dir / s / "predictions_test.npz") for s in stages}
    val_preds = {s: load_predictions(f) for s in stages if (f := ckpt_dir / s / "predictions_val.npz").is_file()}
    metrics = {s: {m[len(s) + 1:]: v for m, v in run.data.metrics.items() if m.startswith(f"{s}/")} for s in stages}
    return {"fold": k, "run_id": run.info.run_id, "test_subjects": sorted({p.subject for p in preds[stages[-1]]}),
            "metrics": metrics, "model_uri": run.data.tags.get(MODEL_URI_TAG), "predictions": preds,
            "val_predictions": val_preds}


def _register_fold(cfg, uri: str, fold: dict[str, Any], folds: int, parent: str, say) -> None:
    """Register the fold's final model under ``tracking.register`` (default deepsleepnet)."""
    from dsn import tracking

    k = fold["fold"]
    if not fold["model_uri"]:
        raise ConfigError(f"--register_fold {k}: fold {k} (run {fold['run_id']}) has no logged model (it was trained "
                          "with tracking.log_model: false); rerun with --resume_cv false to train the folds anew.")
    name = cfg.tracking.register or "deepsleepnet"
    final = fold["metrics"][cfg.stages[-1]]
    version = tracking.register_model(uri, fold["model_uri"], name, {
        "dataset": Path(str(cfg.data.data_dir)).name, "channel": ", ".join(pick_channels(cfg.data.channels, cfg.data.channel)),
        "sfreq": str(cfg.data.sfreq),
        "fold": f"{k}/{folds}", "cv_run_id": parent, "run_id": fold["run_id"],
        **{f"test/{m}": f"{v:.4f}" for m, v in final.items() if m.startswith("test/") and m[5:] in ("f1_macro", "kappa", "acc")}})  # fmt: skip
    say("Registered fold %d's model as '%s' version %s", k, name, version)


def _log_summary(uri: str, parent: str, summary: dict[str, Any], folds: int) -> None:
    """``cv_summary.json``, the pooled figures as metrics and the pooled confusion figures, on the cv run."""
    from dsn import plots, tracking

    tracking.log_dict(uri, parent, summary, "cv_summary.json")
    flat = {f"pooled/{m}": v for m, v in {**summary["pooled"], **summary.get("calibration", {})}.items() if m != "n_epochs"}
    for stage, fig in summary["stages"].items():
        flat.update({f"{stage}/pooled/{m}": v for m, v in fig["pooled"].items()})
        flat.update({f"{stage}/pooled/{m}": v for m, v in fig.get("calibration", {}).items() if m != "n_epochs"})
        val = summary.get("validation", {}).get(stage, {})
        flat.update({f"{stage}/validation/{m}": v for m, v in val.get("calibration", {}).items() if m != "n_epochs"})
        flat.update({f"{stage}/mean/{m}": v for m, v in fig["mean"].items() if m in ("acc", "f1_macro", "kappa")})
        flat.update({f"{stage}/sd/{m}": v for m, v in fig["sd"].items() if m in ("acc", "f1_macro", "kappa")})
        cm = np.array(fig["confusion"])
        for norm in (False, True):
            title = f"{stage}: pooled test confusion ({folds} folds)" + (", row-normalised" if norm else "")
            tracking.log_figure(uri, parent, plots.confusion_matrix_figure(cm, normalize=norm, title=title),
                                f"pooled/{stage}_confusion{'_normalized' if norm else ''}.png")
    tracking.log_metrics(uri, parent, {k: v for k, v in flat.items() if not (isinstance(v, float) and math.isnan(v))})


def _write_out(folder: Path, summary: dict[str, Any]) -> None:
    from dsn import plots
    from dsn.hypnogram import atomic_write

    folder.mkdir(parents=True, exist_ok=True)
    with atomic_write(folder / "cv_summary.json") as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=2, default=float))
    for stage, fig in summary["stages"].items():
        f = plots.confusion_matrix_figure(np.array(fig["confusion"]), normalize=True, title=f"{stage}: pooled test confusion")
        f.savefig(folder / f"confusion_{stage}.png", dpi=120)


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
    fit_cfg, extra = fit_config(argv)
    return run_cv(fit_cfg, folds=extra["folds"], out=extra["out"], resume=extra["resume_cv"], register_fold=extra["register_fold"],
                  fold=extra["fold"], collect=extra["collect"], parallel=extra["parallel"], fold_argv=list(argv),
                  threads_per_fold=extra["threads_per_fold"], fold_devices=extra["fold_devices"], cv_run_id=extra["cv_run_id"])
