"""Running a study: the checks before any trial, the Optuna study (heartbeats, retries), the local worker
processes, one tracked fit per trial and the pruning callback.

Progress goes to the ``dsn.workflows.sweep.runner`` logger; the CLI prints
:func:`dsn.workflows.sweep.command.render` of the result.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L

from dsn.errors import ConfigError, DsnError, Pruned
from dsn.tags import (
    BASELINE_TAG,
    ERROR_TAG,
    KIND_TAG,
    PROBE_TAG,
    PRUNED_REASON_TAG,
    RETRY_OF_TAG,
    STUDY_TAG,
    TRIAL_STATE_TAG,
    TRIAL_TAG,
)
from dsn.workflows.sweep import report
from dsn.workflows.sweep.spec import (
    CONFIG_KEY,
    SweepSpec,
    baseline_params,
    check_metric,
    check_space,
    derive,
    make_sampler,
    probe_params,
    sample,
)
from dsn.workflows.sweep.study import (
    GRACE_PERIOD,
    HEARTBEAT_INTERVAL,
    SweepResult,
    default_storage,
    open_study,
)

log = logging.getLogger(__name__)

STEP_OFFSET = 10_000  # pruning steps of the fine-tuning stage start here (pretraining: 0..)
WORKER_STOP_TIMEOUT = 30.0  # seconds a worker has to close its trial after SIGTERM before it is killed


class TrialFailed(DsnError):
    """A trial finished but gave no usable objective (e.g. a NaN metric)."""


# ----------------------------------------------------------------------------- pruning
class OptunaPruning(L.Callback):
    """Report ``monitor`` after every validation to the Optuna trial (step ``offset + epoch``) and stop the
    fit with :class:`~dsn.errors.Pruned` when the pruner says so (optuna-integration's pattern: warn once
    when the metric is missing; under DDP rank 0 reports and decides, the other ranks follow)."""

    def __init__(self, trial, monitor: str, offset: int = 0) -> None:
        self.trial, self.monitor, self.offset = trial, monitor, offset
        self._warned = False

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            if not self._warned:
                self._warned = True
                logged = ", ".join(sorted(k for k in trainer.callback_metrics if k.startswith("val/"))) or "none"
                log.warning("pruning: %s is not among the logged validation metrics (%s): this trial is not pruned",
                            self.monitor, logged)
            return
        step = self.offset + trainer.current_epoch
        prune = False
        if getattr(trainer, "is_global_zero", True):
            self.trial.report(float(value), step)
            prune = self.trial.should_prune()
        if getattr(trainer, "world_size", 1) > 1:
            prune = trainer.strategy.broadcast(prune, src=0)
        if prune:
            raise Pruned(f"pruned at {self.monitor}={float(value):.4f} (step {step})")


def pruning_callback(trial, monitor: str, offset: int) -> OptunaPruning:
    """An :class:`OptunaPruning` callback (kept for callers of the old function)."""
    return OptunaPruning(trial, monitor, offset)


# ----------------------------------------------------------------------------- before any trial
def pinned_values(spec: SweepSpec, overrides: dict[str, Any] | None, tracking_uri: str | None = None,
                  tracking_home: str | None = None, experiment: str | None = None) -> dict[str, Any]:
    """The keys every trial keeps whatever it samples: the spec's ``set``, the command's overrides and options."""
    extra = {"stages": list(spec.stages)} if spec.stages else {}
    for key, value in (("tracking.uri", tracking_uri), ("tracking.home", tracking_home),
                       ("tracking.experiment", experiment)):
        if value:
            extra[key] = value
    return {**spec.set, **(overrides or {}), **extra}


def trial_values(spec: SweepSpec, params: dict[str, Any], pinned: dict[str, Any]) -> dict[str, Any]:
    """The keys a trial sets on the base: its sampled and derived values; with a sampled ``config`` overlay, the
    pinned keys again after it (a ``--key`` of the command or the spec's ``set`` wins over the overlay's)."""
    values = derive(spec, params)
    if values.get(CONFIG_KEY) is not None:
        values = {**values, **{k: v for k, v in pinned.items() if k not in values}}
    return values


def _n_devices(devices: Any, accelerator: str) -> int:
    """How many devices Lightning gives one trainer for ``devices`` (``auto``/-1: every visible GPU)."""
    if isinstance(devices, (list, tuple)):
        return len(devices)
    if isinstance(devices, str) and devices.strip() not in ("auto", "-1"):
        text = devices.strip()
        return len([d for d in text.split(",") if d.strip()]) if "," in text else int(text)
    if isinstance(devices, int) and devices >= 0:
        return devices
    if str(accelerator) == "cpu":
        return 1
    import torch

    return max(torch.cuda.device_count(), 1) if torch.cuda.is_available() else 1


def check_devices(spec: SweepSpec, base) -> None:
    """Refuse trials that would run on several devices: Lightning's launcher would start this sweep again
    for the other ranks, which would sample trials of their own.

    Raises
    ------
    ConfigError
        Naming the stage, its ``devices`` and ``num_nodes`` and the fix.
    """
    for stage in base.stages:
        t = base[stage].trainer
        n = _n_devices(t.devices, t.accelerator) * int(t.num_nodes or 1)
        if n > 1:
            raise ConfigError(
                f"{spec.path}: {stage}.trainer.devices={t.devices!r} x num_nodes={t.num_nodes} gives {n} devices: "
                f"a sweep trial runs on one device. Set --{stage}.trainer.devices 1 (and num_nodes 1); run trials "
                "side by side with --workers K instead.")


def check_data(base) -> None:
    """Read the base config's data as ``dsn fit`` does before its first run, so that a missing folder,
    an empty one or a bad channel stops the sweep with ``dsn fit``'s message, before any trial."""
    from dsn import config
    from dsn.data.datamodule import SleepEDFDataModule

    d = config.to_dict(base)
    dm = SleepEDFDataModule(**d["data"], mode="pretrain", batch_size=base.pretrain.batch_size,
                            seq_len=base.finetune.seq_len)
    dm.prepare_data()
    dm.setup()


def check_before_trials(spec: SweepSpec, base, data: bool = True) -> tuple[dict | None, list[dict]]:
    """Every check that can fail before a trial runs; returns the baseline params (or None) and the probes."""
    check_metric(spec)
    check_devices(spec, base)
    check_space(spec, base)
    baseline = baseline_params(spec, base) if spec.baseline else None
    if spec.probes and baseline is None:
        raise ConfigError(f"{spec.path}: probes change the baseline trial: they need `baseline: true`.")
    probes = probe_params(spec, baseline) if baseline is not None else []
    if data:
        check_data(base)
    return baseline, probes


# ----------------------------------------------------------------------------- the study
def _study_run(uri: str, exp_id: str, study_name: str, storage: str, spec: SweepSpec) -> str:
    """The study's MLflow parent run: found by its tags (a continued study), else created."""
    from dsn import tracking

    runs = tracking.find_runs(uri, exp_id, {KIND_TAG: "sweep", STUDY_TAG: study_name})
    if runs:
        return runs[0].info.run_id
    params = {"sweep.spec": spec.path, "sweep.metric": spec.metric, "sweep.direction": spec.direction,
              "sweep.base": ",".join(spec.base), "sweep.space": {k: str(v) for k, v in spec.space.items()}}
    rid = tracking.start_top_run(uri, exp_id, "sweep", f"sweep-{study_name}",
                                 tags={STUDY_TAG: study_name, "optuna.storage": storage}, params=params)
    if spec.path:
        tracking.log_file(uri, rid, spec.path)
    tracking.set_terminated(uri, rid)
    return rid


def close_stale_trials(study, uri: str, exp_id: str, parent: str) -> list[int]:
    """Fail the trials whose process died (no heartbeat for the grace period; Optuna then queues their
    parameters again) and close their MLflow runs, and those of trials already failed so, as KILLED.
    Returns the numbers of the trials closed here."""
    import warnings

    import optuna

    from dsn import tracking

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # a no-op without heartbeats
    failed = {t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))}
    closed = []
    for run in tracking.find_runs(uri, exp_id, {STUDY_TAG: study.study_name, KIND_TAG: "trial"}, parent=parent):
        number = int(run.data.tags.get(TRIAL_TAG, -1))
        if run.info.status != "RUNNING" or number not in failed:
            continue
        msg = "its process died (no heartbeat): failed, its parameters queued again"
        for child in tracking.find_runs(uri, exp_id, {}, parent=run.info.run_id):
            if child.info.status == "RUNNING":
                tracking.set_terminated(uri, child.info.run_id, "KILLED")
        tracking.set_tags(uri, run.info.run_id, {TRIAL_STATE_TAG: "FAILED", ERROR_TAG: msg})
        tracking.set_terminated(uri, run.info.run_id, "KILLED")
        log.warning("[trial %d] %s", number, msg)
        closed.append(number)
    return closed


# ----------------------------------------------------------------------------- one trial
class Objective:
    """The Optuna objective: one tracked :func:`~dsn.workflows.run.run_fit` per trial, nested under the
    study's run, whose MLflow tags always agree with the state Optuna records."""

    def __init__(self, spec: SweepSpec, base, study_name: str, parent: str, uri: str, exp_id: str, verbose: bool,
                 pinned: dict[str, Any] | None = None):
        self.spec, self.base, self.study_name, self.parent = spec, base, study_name, parent
        self.pinned = pinned or {}
        self.uri, self.exp_id = uri, exp_id
        self.level = logging.INFO if verbose else logging.DEBUG

    def __call__(self, trial) -> float:
        from dsn import config

        params = sample(trial, self.spec)
        tags = self._tags(trial)
        try:
            cfg = config.set_keys(self.base, trial_values(self.spec, params, self.pinned))
        except ConfigError as e:
            self._invalid(trial, params, tags, e)
        log.log(self.level, "[trial %d] %s", trial.number, ", ".join(f"{k}={v}" for k, v in params.items()))
        res = self._fit(trial, cfg, tags)
        return self._finish(trial, res)

    def _tags(self, trial) -> dict[str, str]:
        tags = {STUDY_TAG: self.study_name, TRIAL_TAG: str(trial.number)}
        if trial.user_attrs.get("baseline"):
            tags[BASELINE_TAG] = "true"
        if trial.user_attrs.get("probe"):
            tags[PROBE_TAG] = trial.user_attrs["probe"]
        frozen = next((t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number), None)
        retried = frozen.system_attrs.get("failed_trial") if frozen is not None else None  # set by the retry callback
        if retried is not None:
            tags[RETRY_OF_TAG] = str(retried)
        return tags

    def _invalid(self, trial, params: dict, tags: dict, e: ConfigError):
        """A point no config accepts: a KILLED run records it, Optuna prunes it."""
        import optuna

        from dsn import tracking

        trial.set_user_attr("pruned_reason", str(e))
        rid = tracking.start_run(self.uri, self.exp_id, f"trial-{trial.number}", parent=self.parent, tags={
            **tags, KIND_TAG: "trial", TRIAL_STATE_TAG: "PRUNED", PRUNED_REASON_TAG: str(e)[:5000]})
        tracking.log_params(self.uri, rid, params)
        tracking.set_terminated(self.uri, rid, "KILLED")
        log.log(self.level, "[trial %d] pruned before training: invalid point (%s)", trial.number, e)
        raise optuna.TrialPruned(str(e)) from None

    def _trial_run(self, number: int) -> str | None:
        from dsn import tracking

        runs = tracking.find_runs(self.uri, self.exp_id, {STUDY_TAG: self.study_name, TRIAL_TAG: str(number)},
                                  parent=self.parent)
        return runs[0].info.run_id if runs else None

    def _tag_run(self, number: int, tags: dict[str, str]) -> None:
        from dsn import tracking

        rid = self._trial_run(number)
        if rid:
            tracking.set_tags(self.uri, rid, tags)

    def _fit(self, trial, cfg, tags: dict):
        import optuna

        from dsn import tracking
        from dsn.workflows.run import run_fit

        offsets = {"pretrain": 0, "finetune": STEP_OFFSET}
        try:
            return run_fit(cfg, parent_run_id=self.parent, tags=tags, run_name=f"trial-{trial.number}", kind="trial",
                           callbacks=lambda stage: [OptunaPruning(trial, self.spec.metric, offsets[stage])], verbose=False)
        except Pruned as e:
            trial.set_user_attr("pruned_reason", str(e))
            self._tag_run(trial.number, {TRIAL_STATE_TAG: "PRUNED", PRUNED_REASON_TAG: str(e)})
            log.log(self.level, "[trial %d] %s", trial.number, e)
            raise optuna.TrialPruned(str(e)) from None
        except tracking.Terminated:  # Optuna records Ctrl-C itself, not a BaseException: close the trial here
            trial.set_user_attr("error", "terminated (SIGTERM)")
            self._tag_run(trial.number, {TRIAL_STATE_TAG: "FAILED", ERROR_TAG: "terminated (SIGTERM)"})
            trial.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        except KeyboardInterrupt:
            raise
        except BaseException as e:
            msg = f"{type(e).__name__}: {str(e).splitlines()[0][:500] if str(e) else ''}"
            trial.set_user_attr("error", msg)
            self._tag_run(trial.number, {TRIAL_STATE_TAG: "FAILED", ERROR_TAG: msg})
            log.warning("[trial %d] failed: %s", trial.number, msg)
            raise

    def _finish(self, trial, res) -> float:
        """The objective of a finished fit; a NaN fails the trial (tags and run say FAILED, as Optuna does)."""
        from dsn import tracking

        value = res.final.metrics.get(self.spec.metric, float("nan"))
        trial.set_user_attr("run_id", res.run_id)
        trial.set_user_attr("metrics", {k: v for k, v in res.final.metrics.items() if not math.isnan(v)})
        if res.final.model_uri:
            trial.set_user_attr("model_uri", res.final.model_uri)
        if math.isnan(value):
            msg = f"{self.spec.metric} is NaN (the validation subjects lack the classes it needs?)"
            trial.set_user_attr("error", msg)
            tracking.set_tags(self.uri, res.run_id, {TRIAL_STATE_TAG: "FAILED", ERROR_TAG: msg})
            tracking.set_terminated(self.uri, res.run_id, "FAILED")
            log.warning("[trial %d] failed: %s", trial.number, msg)
            raise TrialFailed(f"trial {trial.number}: {msg}.")
        tracking.log_metrics(self.uri, res.run_id, {"objective": value})
        tracking.set_tags(self.uri, res.run_id, {TRIAL_STATE_TAG: "COMPLETE"})
        log.log(self.level, "[trial %d] %s = %.4f", trial.number, self.spec.metric, value)
        return value


# ----------------------------------------------------------------------------- workers
def _shares(n_trials: int, workers: int) -> list[int]:
    workers = max(workers, 1)
    return [n_trials // workers + (1 if i < n_trials % workers else 0) for i in range(workers)]


def start_workers(shares: list[int], worker_argv: list[str], study_name: str, storage: str,
                  heartbeat: tuple[int | None, int | None]) -> list[subprocess.Popen]:
    """Start ``dsn sweep`` worker processes for ``shares[1:]`` (the calling process runs ``shares[0]``)."""
    procs = []
    beat = [] if not heartbeat[0] else ["--heartbeat_interval", str(heartbeat[0]), "--grace_period", str(heartbeat[1])]
    for i, share in enumerate(shares[1:], start=1):
        if share:
            argv = [*worker_argv, "--n_trials", str(share), "--workers", "1", "--study", study_name, "--storage", storage, *beat]
            procs.append(subprocess.Popen([sys.executable, "-m", "dsn", "sweep", *argv],
                                          env={**os.environ, "DSN_SWEEP_WORKER": str(i)}))
    return procs


def stop_workers(procs: list[subprocess.Popen], timeout: float = WORKER_STOP_TIMEOUT) -> None:
    """SIGTERM to the workers still running (each closes its trial as failed and exits), then wait; a worker
    that has not exited after ``timeout`` seconds is killed (its trial is failed by the heartbeat later)."""
    import time

    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _optimize_with_workers(study, objective: Objective, shares: list[int], worker_argv: list[str] | None,
                           storage: str, heartbeat: tuple[int | None, int | None]) -> None:
    """Run this process's share under the study run's guard; workers start only once it is in place, and
    on SIGTERM, Ctrl-C or an error they are told to stop (SIGTERM) before the study run is closed."""
    from dsn import tracking

    if len(shares) > 1 and worker_argv is None:
        raise ConfigError("workers > 1 needs the dsn sweep command line to start the other workers.")
    tracking.reopen_run(objective.uri, objective.parent)
    procs: list[subprocess.Popen] = []
    with tracking.run_guard(objective.uri, [objective.parent]):
        done = False
        try:
            procs = start_workers(shares, worker_argv or [], study.study_name, storage, heartbeat)
            study.optimize(objective, n_trials=shares[0], catch=(Exception,), gc_after_trial=True)
            for p in procs:
                p.wait()
            done = True
        finally:
            if not done:
                stop_workers(procs)
    failed = [p.returncode for p in procs if p.returncode != 0]
    if failed:
        log.warning("%d worker process(es) exited with an error; their trials are recorded as they ended", len(failed))


# ----------------------------------------------------------------------------- a study
def run_sweep(
    spec: SweepSpec,
    *,
    n_trials: int | None = None,
    study_name: str | None = None,
    storage: str | None = None,
    workers: int = 1,
    overrides: dict[str, Any] | None = None,
    tracking_uri: str | None = None,
    tracking_home: str | None = None,
    experiment: str | None = None,
    worker_argv: list[str] | None = None,
    register: str | None = None,
    verbose: bool = True,
    is_worker: bool = False,
    heartbeat_interval: int | None = HEARTBEAT_INTERVAL,
    grace_period: int | None = GRACE_PERIOD,
) -> SweepResult:
    """Run (or continue) a study: ``n_trials`` more trials, shared by ``workers`` processes.

    ``worker_argv`` is the ``dsn sweep`` command line that extra local workers run (with their share of
    the trials); it is given by the CLI. Every check that can fail does so before the study or any run
    opens. Returns the study's state after this run.
    """
    from dsn import config, tracking

    pinned = pinned_values(spec, overrides, tracking_uri, tracking_home, experiment)
    base = config.load_config(spec.base, pinned)
    home = Path(base.tracking.home)
    uri = tracking.tracking_uri(base.tracking.uri, home)
    tracking.check_tracking(uri)
    baseline, probes = check_before_trials(spec, base, data=not is_worker)
    study_name = study_name or spec.name
    storage = storage or default_storage(home)
    study = open_study(spec, study_name, storage, heartbeat_interval, grace_period)
    study.set_user_attr("spec", spec.path)
    if baseline is not None and not is_worker and not study.trials:
        study.enqueue_trial(baseline, user_attrs={"baseline": True})
        for params, probe in zip(probes, spec.probes):
            study.enqueue_trial(params, user_attrs={"probe": ", ".join(f"{k}={v}" for k, v in probe.items())})
    worker_index = int(os.environ.get("DSN_SWEEP_WORKER") or 0)
    study.sampler = make_sampler(spec, seed_offset=len(study.trials) + 100_003 * worker_index)
    exp_id = tracking.experiment_id(uri, base.tracking.experiment, home)
    parent = _study_run(uri, exp_id, study_name, storage, spec)
    close_stale_trials(study, uri, exp_id, parent)
    objective = Objective(spec, base, study_name, parent, uri, exp_id, verbose, pinned)
    shares = _shares(spec.n_trials if n_trials is None else n_trials, workers)
    if is_worker:  # a helper process started by another `dsn sweep --workers K`: trials only
        with tracking.sigterm_raises():
            study.optimize(objective, n_trials=shares[0], catch=(Exception,), gc_after_trial=True)
        return report.result(study, spec, parent, storage)
    _optimize_with_workers(study, objective, shares, worker_argv, storage, (heartbeat_interval, grace_period))
    result = report.summarise(study, spec, parent, uri, exp_id, storage)
    if register and result.best_value is not None:
        result.registered = report.register_best(study, uri, register)
    return result
