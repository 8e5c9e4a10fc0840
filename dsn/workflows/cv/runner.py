"""Running a cv: its folds one after the other, one fold (``--fold K``), in parallel processes
(``--parallel N``) or none (``--collect``), then pooled, logged on the cv run and a fold registered.

Each fold is :func:`dsn.workflows.run.run_fit` (both stages; validation subjects drawn from the training
side of the fold) nested under the cv run (:mod:`~dsn.workflows.cv.store`); a finished fold is read back
instead of trained again, an interrupted one resumed. Progress goes to this module's logger.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dsn.errors import ConfigError
from dsn.tags import FOLD_TAG
from dsn.workflows.cv.pooling import summarise
from dsn.workflows.cv.report import fold_list, write_out
from dsn.workflows.cv.store import (
    Store,
    fold_cv_run,
    fold_finished,
    fold_runs,
    fold_states,
    given_cv_run,
    lock_path,
    log_summary,
    open_cv_run,
    read_fold,
)

log = logging.getLogger(__name__)

FOLD_DEVICES = ("round_robin", "shared")


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
    """Run (or continue) a k-fold cross-validation; returns the cv summary (see :func:`dsn.workflows.cv.pooling.summarise`).

    ``fold``: train only that fold into the cv run of this config (found or created, safe from several
    processes at once); returns ``{"fold", "run_id", "cv_run_id", "missing_folds", ...}``, no pooled figures.
    ``collect``: train nothing, pool the finished folds; the summary's ``missing_folds`` names the others
    (the figures are logged on the cv run only once none is missing). ``parallel`` > 1: the unfinished folds
    run as ``dsn cv --fold K`` processes (``fold_argv``: the cv's own command-line arguments), at most
    ``parallel`` at once with ``threads_per_fold`` torch threads each (default usable cores // parallel) and
    GPUs as ``fold_devices`` says (:func:`dsn.workflows.cv.procs.run_fold_processes`), then pooled.
    ``cv_run_id`` (with ``fold``): train into that cv run.

    Progress is logged on this module's logger (INFO; DEBUG when ``verbose`` is false); the CLI renders
    the returned summary (:func:`dsn.workflows.cv.report.format_summary`). Under DDP the ranks other than 0 train their share of
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
    store = Store.open(base, folds, zero)
    if collect:
        return _collect(cfg, base, store, folds, out, register_fold, say)
    if fold is not None:
        return _train_one_fold(cfg, base, store, folds, fold, cv_run_id, zero, verbose, say)
    parent = open_cv_run(cfg, base, store, folds, resume, zero, say)
    if parallel > 1:
        return _run_parallel(base, store, folds, parent, out, register_fold, parallel, fold_argv,
                             threads_per_fold, fold_devices, say, cfg)
    return _run_sequential(cfg, base, store, folds, parent, out, register_fold, zero, verbose, say)


def _run_sequential(cfg, base, store: Store, folds: int, parent: str, out: str | None, register_fold: int | None,
                    zero: bool, verbose: bool, say) -> dict[str, Any]:
    """The folds one after the other in this process (finished ones read back), then pooled."""
    from dsn import config, tracking
    from dsn.data.labels import STAGES

    uri = store.uri
    results: list[dict[str, Any]] = []
    with tracking.run_guard(uri, [parent]) if zero else contextlib.nullcontext():
        for k in range(folds):
            fold_res = _run_fold(config.set_key(base, "data.fold", k), k, folds, parent, store, zero, verbose, say)
            fold_res.pop("skipped", None)
            results.append(fold_res)
            if register_fold == k and zero:
                _register_fold(cfg, base, uri, fold_res, parent, say)
        if not zero:
            return {}
        summary = summarise(results, list(base.stages), STAGES)
        summary["cv_run_id"] = parent
        log_summary(uri, parent, summary, folds)
        if out:
            write_out(Path(out), summary)
            summary["written"] = str(Path(out) / "cv_summary.json")
    return summary


def _train_one_fold(cfg, base, store: Store, folds: int, k: int, cv_run_id: str | None, zero: bool, verbose: bool,
                    say) -> dict[str, Any]:
    """``--fold K``: fold K into the cv run of this config (nothing when it finished earlier)."""
    from dsn import config, tracking

    if cv_run_id:
        parent, created = given_cv_run(store, cv_run_id), False
    elif not zero:
        parent, created = open_cv_run(cfg, base, store, folds, True, zero, say), False
    else:
        parent, created = fold_cv_run(cfg, base, store, folds, say)
    # the process that created the cv run closes it (the others leave its status alone); --collect reopens it
    with tracking.run_guard(store.uri, [parent]) if created else contextlib.nullcontext():
        res = _run_fold(config.set_key(base, "data.fold", k), k, folds, parent, store, zero, verbose, say)
    if not zero:
        return {}
    states = fold_states(store, parent, folds, base.stages)
    return {"fold": k, "n_folds": folds, "run_id": res["run_id"], "cv_run_id": parent, "trained": not res.get("skipped"),
            "missing_folds": [f for f, r in states.items() if r is None]}


def _pool_finished(base, store: Store, parent: str, folds: int, states: dict[int, Any]) -> dict[str, Any]:
    from dsn.data.labels import STAGES

    results = [read_fold(r, k, base.stages, store.home / "checkpoints" / r.info.run_id)
               for k, r in states.items() if r is not None]
    summary = summarise(results, list(base.stages), STAGES)
    summary["cv_run_id"] = parent
    summary["missing_folds"] = [k for k, r in states.items() if r is None]
    return summary


def _finish_summary(cfg, base, store: Store, parent: str, folds: int, summary: dict[str, Any], out: str | None,
                    register_fold: int | None, say) -> dict[str, Any]:
    """Log a complete summary on the cv run (and register a fold), write ``--out``."""
    if not summary["missing_folds"]:
        log_summary(store.uri, parent, summary, folds)
        if register_fold is not None:
            _register_fold(cfg, base, store.uri, summary["folds"][register_fold], parent, say)
    if out:
        write_out(Path(out), summary)
        summary["written"] = str(Path(out) / "cv_summary.json")
    return summary


def _collect(cfg, base, store: Store, folds: int, out: str | None, register_fold: int | None, say) -> dict[str, Any]:
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
        raise CvError(f"cv run {parent}: no fold has finished yet (missing: {fold_list(missing)}); train them with "
                      "dsn cv --fold K or dsn cv --parallel N and the same options.")
    if register_fold is not None and register_fold in missing:
        raise CvError(f"--register_fold {register_fold}: fold {register_fold} of cv run {parent} has not finished.")
    say("Pooling the finished folds of cv run %s%s", parent, f" (missing: {fold_list(missing)})" if missing else "")
    summary = _pool_finished(base, store, parent, folds, states)
    if missing:
        return _finish_summary(cfg, base, store, parent, folds, summary, out, None, say)
    tracking.reopen_run(store.uri, parent)
    with tracking.run_guard(store.uri, [parent]):
        return _finish_summary(cfg, base, store, parent, folds, summary, out, register_fold, say)


def _run_parallel(base, store: Store, folds: int, parent: str, out: str | None, register_fold: int | None,
                  parallel: int, fold_argv: Sequence[str], threads: int | None, devices: str, say, cfg) -> dict[str, Any]:
    """``--parallel K``: the unfinished folds as ``dsn cv --fold K`` processes, then pooled."""
    from dsn import tracking
    from dsn.errors import CvError
    from dsn.workflows.cv.procs import fold_command, run_fold_processes, usable_cores

    with tracking.run_guard(store.uri, [parent]):
        states = fold_states(store, parent, folds, base.stages)
        todo = [k for k, r in states.items() if r is None]
        for k, r in states.items():
            if r is not None:
                say("=== fold %d/%d: finished earlier (run %s), skipped", k + 1, folds, r.info.run_id)
        threads = threads or max(1, usable_cores() // min(parallel, max(len(todo), 1)))
        log_dir = store.home / "cv-logs" / parent
        if todo:
            say("Training folds %s, %d at once (%d torch thread%s each), logs in %s", fold_list(todo),
                min(parallel, len(todo)), threads, "s" if threads > 1 else "", log_dir)
        procs = run_fold_processes({k: fold_command(fold_argv, k, parent) for k in todo}, parallel,
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
            raise CvError(f"cv run {parent}: folds {fold_list(summary['missing_folds'])} did not finish (their "
                          f"processes exited without error); see their logs in {log_dir}.")
        return _finish_summary(cfg, base, store, parent, folds, summary, out, register_fold, say)


def _run_fold(fcfg, k: int, folds: int, parent: str, store: Store, zero: bool, verbose: bool, say) -> dict[str, Any]:
    """One fold: read back when it finished earlier (its predictions on disk), else fitted (or resumed).

    On rank 0 the fold's lock in the tracking home is held meanwhile: a second process on the same fold
    (a plain ``dsn cv`` beside ``--fold`` processes) waits for it and then reads the fold back."""
    from dsn.workflows.cv.procs import file_lock

    home = Path(fcfg.tracking.home)
    if not zero:
        return _fit_or_read_fold(fcfg, k, folds, parent, store, verbose, say)

    def waiting():
        say("fold %d/%d: being trained by another process, waiting for it", k + 1, folds)

    with file_lock(lock_path(home, f"fold-{parent}-{k}"), on_wait=waiting):
        return _fit_or_read_fold(fcfg, k, folds, parent, store, verbose, say)


def _fit_or_read_fold(fcfg, k: int, folds: int, parent: str, store: Store, verbose: bool, say) -> dict[str, Any]:
    from dsn.workflows.run import run_fit

    done = fold_runs(store, parent, k)
    ckpt_root = Path(fcfg.tracking.home) / "checkpoints"
    finished = [r for r in done if fold_finished(r, ckpt_root, fcfg.stages, store.uri)]
    if finished:
        say("\n=== fold %d/%d: finished earlier (run %s), skipped", k + 1, folds, finished[0].info.run_id)
        return read_fold(finished[0], k, fcfg.stages, ckpt_root / finished[0].info.run_id) | {"skipped": True}
    say("\n=== fold %d/%d%s", k + 1, folds, " (resuming)" if done else "")
    res = run_fit(fcfg, parent_run_id=parent, tags={FOLD_TAG: str(k)}, run_name=f"fold-{k}", kind="fold",
                  resume=done[0].info.run_id if done else None, allow_config_change=False, verbose=verbose)
    preds = {s.name: s.predictions.get("test", []) for s in res.stages}
    return {"fold": k, "run_id": res.run_id, "test_subjects": sorted({p.subject for p in preds[fcfg.stages[-1]]}),
            "metrics": {s.name: s.metrics for s in res.stages}, "model_uri": res.final.model_uri, "predictions": preds,
            "val_predictions": {s.name: s.predictions.get("val", []) for s in res.stages}}


def _register_fold(cfg, base, uri: str, fold: dict[str, Any], parent: str, say) -> None:
    """Register the fold's final model under ``tracking.register`` (default deepsleepnet), with the tags of
    :func:`dsn.workflows.recorder.registry_tags` (the fold's config, its final stage, the cv run)."""
    from dsn import config, tracking
    from dsn.workflows.recorder import registry_tags

    k = fold["fold"]
    if not fold["model_uri"]:
        raise ConfigError(f"--register_fold {k}: fold {k} (run {fold['run_id']}) has no logged model (it was trained "
                          "with tracking.log_model: false); rerun with --resume_cv false to train the folds anew.")
    name = cfg.tracking.register or "deepsleepnet"
    stage = base.stages[-1]
    tags = registry_tags(config.set_key(base, "data.fold", k), fold["run_id"], stage, fold["metrics"][stage],
                         {"cv_run_id": parent})
    version = tracking.register_model(uri, fold["model_uri"], name, tags)
    say("Registered fold %d's model as '%s' version %s", k, name, version)
