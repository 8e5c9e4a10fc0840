"""Where a cv lives in the tracking store: its experiment and lock files, the cv run of a config (found,
created once, deduplicated), the state of its folds, their results read back (fetched from the store when
a fold was trained on another machine) and the pooled figures logged on the cv run.

The file locks in the tracking home (:func:`dsn.workflows.cv.procs.file_lock`) keep processes sharing the
home from creating the store, the experiment or the cv run twice; on a remote store (no shared home) twin cv
runs created at once are retired afterwards (:func:`dedupe_cv_runs`).
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

from dsn.errors import ConfigError
from dsn.tags import CV_KEY_TAG, FOLD_TAG, FOLDS_TAG, KIND_TAG, MODEL_URI_TAG
from dsn.workflows.cv.procs import file_lock

log = logging.getLogger(__name__)

#: Seconds a fold process that created the cv run on a remote store waits before looking for twins.
DEDUPE_WAIT_S = 2.0


def cv_key(cfg, folds: int) -> str:
    """What identifies a cv run: the keys that can change the trained weights (:func:`dsn.config.identity_items`)
    without the fold, and the number of folds; so a rerun with another loader, progress or tracking overlay
    continues the same cv."""
    from dsn import config

    items = {k: v for k, v in config.identity_items(cfg).items() if k not in ("data.fold", "data.n_folds")}
    items["folds"] = folds
    return hashlib.sha1(json.dumps(items, sort_keys=True, default=str).encode()).hexdigest()[:16]


def lock_path(home: Path, name: str) -> Path:
    return Path(home) / "locks" / f"{name}.lock"


class Store:
    """The tracking store of a cv: its URI, experiment, the home's lock files, the cv key."""

    def __init__(self, uri: str, exp_id: str, home: Path, key: str):
        self.uri, self.exp_id, self.home, self.key = uri, exp_id, home, key

    @classmethod
    def open(cls, base, folds: int, zero: bool) -> Store:
        """Check the store and get (or create) the experiment, under the home's lock, so that processes
        starting at once do not race to create a new SQLite store or the experiment."""
        from dsn import tracking

        home = Path(base.tracking.home)
        with file_lock(lock_path(home, "store")) if zero else contextlib.nullcontext():
            uri = tracking.tracking_uri(base.tracking.uri, home)
            tracking.check_tracking(uri)
            exp_id = tracking.experiment_id(uri, base.tracking.experiment, home)
        return cls(uri, exp_id, home, cv_key(base, folds))

    @property
    def local(self) -> bool:
        """A store whose processes all share this home (SQLite): the home's lock alone keeps them apart."""
        return self.uri.startswith("sqlite:")

    def cv_runs(self) -> list:
        from dsn import tracking

        return tracking.find_runs(self.uri, self.exp_id, {KIND_TAG: "cv", CV_KEY_TAG: self.key})


def open_cv_run(cfg, base, store: Store, folds: int, resume: bool, zero: bool, say) -> str:
    """The cv parent run: the one of the same identity when resuming (rank > 0: always), else a new one."""
    from dsn import tracking

    if not zero:
        existing = store.cv_runs()
        if not existing:
            raise ConfigError("dsn cv (rank > 0): the cv run of rank 0 was not found in the tracking store.")
        return existing[0].info.run_id
    with file_lock(lock_path(store.home, f"cv-{store.key}")):
        existing = store.cv_runs() if resume else []
        if existing:
            parent = existing[0].info.run_id
            tracking.reopen_run(store.uri, parent)
            say("Continuing cv run %s (same config; finished folds are skipped)", parent)
            return parent
        return create_cv_run(cfg, base, store, folds)


def create_cv_run(cfg, base, store: Store, folds: int) -> str:
    """A new cv run: tagged with the cv key and the number of folds, the folds' config logged on it."""
    from dsn import tracking
    from dsn.workflows.recorder import default_run_name

    name = cfg.tracking.run_name or default_run_name("cv", cfg)
    return tracking.start_top_run(store.uri, store.exp_id, "cv", name, cfg=base,
                                  tags={CV_KEY_TAG: store.key, FOLDS_TAG: str(folds)}, params={"cv.folds": folds})


def fold_cv_run(cfg, base, store: Store, folds: int, say) -> tuple[str, bool]:
    """The cv run a ``--fold`` process trains into: the newest of this config, else a new one; returns
    ``(run id, created here)``. Processes starting at once get the same run: on a local store the home's
    lock makes find-or-create atomic; on a remote store (no shared lock) a process that created one waits
    :data:`DEDUPE_WAIT_S`, looks again and, when several were created meanwhile, every process keeps the
    oldest and the others are retired (:func:`dedupe_cv_runs`)."""
    with file_lock(lock_path(store.home, f"cv-{store.key}")):
        existing = store.cv_runs()
        if existing:
            return existing[0].info.run_id, False
        mine = create_cv_run(cfg, base, store, folds)
    say("Created cv run %s (the folds of this config train into it)", mine)
    if store.local:
        return mine, True
    import time

    time.sleep(DEDUPE_WAIT_S)
    winner = dedupe_cv_runs(store, mine)
    return winner, winner == mine


def dedupe_cv_runs(store: Store, mine: str) -> str:
    """Of the cv runs of this config created at once (by several processes), the oldest (start time, then
    run id: the same choice in every process); ``mine``, when it is not that one, is retagged
    ``dsn.cv_key = duplicate-of-<winner>`` (so no search finds it again) and closed as KILLED."""
    from dsn import tracking

    runs = store.cv_runs()
    winner = min(runs, key=lambda r: (r.info.start_time, r.info.run_id)).info.run_id if runs else mine
    if winner != mine:
        tracking.set_tags(store.uri, mine, {CV_KEY_TAG: f"duplicate-of-{winner}"})
        tracking.set_terminated(store.uri, mine, "KILLED")
        log.debug("cv run %s was created at the same time as %s: using %s", mine, winner, winner)
    return winner


def given_cv_run(store: Store, run_id: str) -> str:
    """``--cv_run_id``: that run, when it is a cv run of this config."""
    from dsn import tracking

    try:
        run = tracking.get_run(store.uri, run_id)
    except Exception:  # noqa: BLE001 - MLflow raises its own exception kinds for an unknown id
        raise ConfigError(f"--cv_run_id {run_id}: no such run in {store.uri}.") from None
    if run.data.tags.get(KIND_TAG) != "cv" or run.data.tags.get(CV_KEY_TAG) != store.key:
        raise ConfigError(f"--cv_run_id {run_id}: not a cv run of this config (another config, --folds or store); "
                          "drop --cv_run_id to find the cv run of this config.")
    return run_id


def fold_runs(store: Store, parent: str, fold: int | None = None) -> list:
    """The fold runs of cv run ``parent`` (of fold ``fold`` only, when given), newest first."""
    from dsn import tracking

    tags = {KIND_TAG: "fold"} if fold is None else {KIND_TAG: "fold", FOLD_TAG: str(fold)}
    return tracking.find_runs(store.uri, store.exp_id, tags, parent=parent)


def fold_states(store: Store, parent: str, folds: int, stages: Sequence[str]) -> dict[int, Any]:
    """Fold -> its finished run (with its test predictions on disk), or None when not finished."""
    ckpt_root = store.home / "checkpoints"
    out: dict[int, Any] = dict.fromkeys(range(folds))
    for r in fold_runs(store, parent):  # newest first: the newest finished run of a fold wins
        k = r.data.tags.get(FOLD_TAG, "")
        if k.isdigit() and int(k) in out and out[int(k)] is None and fold_finished(r, ckpt_root, stages, store.uri):
            out[int(k)] = r
    return out


def fold_finished(run, ckpt_root: Path, stages: Sequence[str], uri: str | None = None) -> bool:
    """A FINISHED fold run whose test predictions are in this home (fetched from its stage runs' artifacts
    when ``uri`` is given and the fold was trained on another machine sharing the tracking server)."""
    if run.info.status != "FINISHED":
        return False
    missing = [s for s in stages if not (ckpt_root / run.info.run_id / s / "predictions_test.npz").is_file()]
    return not missing or (uri is not None and fetch_predictions(uri, run.info.run_id, missing, ckpt_root / run.info.run_id))


def fetch_predictions(uri: str, run_id: str, stages: Sequence[str], ckpt_dir: Path) -> bool:
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


def read_fold(run, k: int, stages, ckpt_dir: Path) -> dict[str, Any]:
    """A finished fold from its run (figures, model URI) and its checkpoint folder (predictions)."""
    from dsn.workflows.results import load_predictions

    preds = {s: load_predictions(ckpt_dir / s / "predictions_test.npz") for s in stages}
    val_preds = {s: load_predictions(f) for s in stages if (f := ckpt_dir / s / "predictions_val.npz").is_file()}
    metrics = {s: {m[len(s) + 1:]: v for m, v in run.data.metrics.items() if m.startswith(f"{s}/")} for s in stages}
    return {"fold": k, "run_id": run.info.run_id, "test_subjects": sorted({p.subject for p in preds[stages[-1]]}),
            "metrics": metrics, "model_uri": run.data.tags.get(MODEL_URI_TAG), "predictions": preds,
            "val_predictions": val_preds}


def log_summary(uri: str, parent: str, summary: dict[str, Any], folds: int) -> None:
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
