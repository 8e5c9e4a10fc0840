"""The training workflow: one fit (pretraining, then fine-tuning) from a resolved config.

:func:`run_fit` serves every command: ``dsn fit`` calls it once, each ``dsn sweep`` trial and each
``dsn cv`` fold calls it with a parent run to nest under, extra callbacks (a pruner) and extra tags.
It validates the config, the tracking store and the data before it opens any MLflow run, so a bad
input never leaves a failed run behind; it raises :class:`~dsn.errors.DsnError` subclasses for user
errors, logs its progress on the ``dsn`` loggers and returns a :class:`~dsn.workflows.results.FitResult`
(the CLI renders it); it never prints, exits, or changes logging or warning settings.

A reader's path: :func:`run_fit` (check, data) -> :func:`dsn.workflows.recorder.open_recorder` (the
fit's run) -> :func:`dsn.workflows.stage.run_stages` (train -> select -> evaluate -> record per stage,
systems from :mod:`dsn.workflows.build`, started from
``init``'s weights when it is set) -> :meth:`~dsn.workflows.recorder.Recorder.finish_fit`.

Distributed training (``trainer.strategy: ddp``, ``devices: N``, ``num_nodes``): Lightning's launcher runs
the same command again in every other process. Every rank loads the same data, builds the same systems,
calls ``trainer.fit`` with the same settings (the samplers shard the data themselves) and evaluates the
selected model; only global rank 0's recorder writes (MLflow runs, ``selected.ckpt``, predictions, the
model, the registry). The other ranks learn the run's checkpoint folder from rank 0 once the process group
exists (:class:`~dsn.workflows.callbacks.SharedCheckpointDir`); their :class:`FitResult` has an empty run id.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from dsn.workflows.results import FitResult
from dsn.workflows.stage import StageCallbacks

log = logging.getLogger(__name__)


def run_fit(
    cfg,
    *,
    parent_run_id: str | None = None,
    callbacks: StageCallbacks | None = None,
    tags: dict[str, str] | None = None,
    run_name: str | None = None,
    kind: str = "fit",
    resume: str | None = None,
    allow_config_change: bool = False,
    verbose: bool = True,
) -> FitResult:
    """Run one fit (the stages in ``cfg.stages``) from a resolved config.

    Parameters
    ----------
    cfg : jsonargparse Namespace
        A resolved training config (:func:`dsn.config.parse` / :func:`dsn.config.load_config`).
    parent_run_id : str, optional
        Nest this fit's run under that MLflow run (a sweep study, a cv run).
    callbacks : callable, optional
        ``callbacks(stage_name) -> list of lightning Callbacks`` added to that stage's Trainer (e.g.
        an Optuna pruning callback).
    tags : dict, optional
        Extra tags of the fit's run (e.g. ``dsn.trial``, ``dsn.fold``).
    run_name : str, optional
        Name of the fit's run (default ``cfg.tracking.run_name``, else ``fit-<config names>``).
    kind : str, default "fit"
        The ``dsn.kind`` tag of the fit's run (``fit``, ``trial``, ``fold``).
    resume : str, optional
        ``"last"`` (the most recent top-level run of this ``kind``) or a run id: continue that fit,
        skipping finished stages and restarting an interrupted one from its last checkpoint.
    allow_config_change : bool, default False
        With ``resume``: continue even if ``cfg`` differs from the interrupted run's config in a key
        that can change the trained weights (:func:`dsn.config.identity_items`).
    verbose : bool, default True
        Log progress (data summary, each stage's steps and figures) at INFO; False: at DEBUG.

    Returns
    -------
    FitResult

    Raises
    ------
    dsn.errors.DsnError
        ``ConfigError`` (bad value or resume mismatch), ``DataError`` (missing or bad data),
        ``TrackingError`` (unreachable store) -- all before any run is opened.
    """
    from dsn import tracking

    with tracking.preserve_global_uri():  # Lightning's MLflow logger changes the process-wide URI
        return _run_fit(cfg, parent_run_id=parent_run_id, callbacks=callbacks, tags=tags, run_name=run_name, kind=kind,
                        resume=resume, allow_config_change=allow_config_change, verbose=verbose)


def _run_fit(cfg, *, parent_run_id, callbacks, tags, run_name, kind, resume, allow_config_change, verbose) -> FitResult:
    import lightning as L
    import torch

    from dsn import config, tracking
    from dsn.tags import INIT_TAG
    from dsn.workflows import build, recorder, stage

    t_start = time.perf_counter()
    config.check(cfg)
    L.seed_everything(cfg.seed_everything, workers=True, verbose=False)
    torch.set_float32_matmul_precision("high")
    uri = tracking.tracking_uri(cfg.tracking.uri, Path(cfg.tracking.home))
    tracking.check_tracking(uri)  # before anything slow
    start = build.start_weights(cfg, uri)  # a bad init / pretrained model fails before the data is read
    dm = build.data_module(cfg)
    summary = dm.summary()
    if cfg.init is not None:
        tags = {**(tags or {}), INIT_TAG: str(cfg.init)}
    rec = recorder.open_recorder(cfg, uri, resume=resume, kind=kind, parent_run_id=parent_run_id,
                                 allow_config_change=allow_config_change, tags=tags, run_name=run_name)
    ctx = stage.FitContext(cfg, rec, Path(cfg.tracking.home) / "checkpoints" / (rec.run_id or "pending-rank0"),
                           bool(resume), callbacks, verbose and rec.reports)
    ctx.info("%s", format_data_summary(summary))
    with rec.guard():
        rec.start_fit(cfg, summary, bool(resume))
        results = stage.run_stages(ctx, dm, start)
        registered = rec.finish_fit(cfg, results, tags)
    return FitResult(rec.fit_run_id, rec.exp_id, uri, results, registered, time.perf_counter() - t_start, summary)


def format_data_summary(summary: dict) -> str:
    """The data summary as a table: subjects, recordings and epochs per stage of each split."""
    from dsn.data.labels import STAGES

    lines = ["Data: subjects and epochs per split",
             f"  {'split':<6} {'subjects':>8} {'recs':>5} " + " ".join(f"{s:>6}" for s in STAGES)]
    for split, counts in summary["class_counts"].items():
        n_sub = len((summary.get("split") or {}).get(split, []))
        n_rec = len(summary["recordings"][split])
        lines.append(f"  {split:<6} {n_sub:>8} {n_rec:>5} " + " ".join(f"{counts[s]:>6}" for s in STAGES))
    for source, recs in (summary.get("sources") or {}).items():  # data.sources: each source's recordings per split
        lines.append(f"  source {source}: " + ", ".join(f"{n} {split}" for split, n in recs.items()) + " recordings")
    return "\n".join(lines)
