"""The Optuna side of a sweep, as Optuna splits it: the storage (an RDB URL, heartbeats), the study created
or loaded in it, and :class:`SweepResult`, the state of a study that the runner returns and the report fills.

:mod:`~dsn.workflows.sweep.runner` and :mod:`~dsn.workflows.sweep.report` both import from here; neither
imports the other's internals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsn.errors import ConfigError
from dsn.workflows.sweep.spec import SweepSpec, make_pruner, make_sampler

HEARTBEAT_INTERVAL = 30  # seconds between a running trial's heartbeats
GRACE_PERIOD = 60  # a trial without a heartbeat for this long belongs to a dead process: failed and retried


@dataclass
class SweepResult:
    study_name: str
    storage: str
    parent_run_id: str
    n_trials: int
    best_value: float | None
    best_params: dict[str, Any]
    trials: list[dict[str, Any]]
    metric: str = "val/f1_macro"
    counts: dict[str, int] = field(default_factory=dict)
    best_trial: int | None = None
    compare_url: str | None = None
    registered: str | None = None
    exported: str | None = None


def default_storage(home: str | Path) -> str:
    home = Path(home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'optuna.db'}"


def storage(url: str, heartbeat_interval: int | None = None, grace_period: int | None = None):
    """An Optuna RDB storage with heartbeats (a trial whose process died is failed after ``grace_period``
    and its parameters retried once); SQLite gets a long lock timeout so that local workers can share it."""
    import warnings

    import optuna

    kwargs: dict[str, Any] = {"engine_kwargs": {"connect_args": {"timeout": 60}}} if url.startswith("sqlite:") else {}
    with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 5
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if heartbeat_interval:
            kwargs.update(heartbeat_interval=int(heartbeat_interval), grace_period=int(grace_period or 2 * heartbeat_interval),
                          heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1))
        return optuna.storages.RDBStorage(url, **kwargs)


def open_study(spec: SweepSpec, name: str, storage_url: str, heartbeat_interval: int | None = HEARTBEAT_INTERVAL,
               grace_period: int | None = GRACE_PERIOD):
    """Create or load the study ``name`` in ``storage_url``.

    Raises
    ------
    ConfigError
        When the storage cannot be opened (naming the URL).
    """
    import optuna

    try:
        return optuna.create_study(study_name=name, storage=storage(storage_url, heartbeat_interval, grace_period),
                                   load_if_exists=True, direction=spec.direction, sampler=make_sampler(spec),
                                   pruner=make_pruner(spec))
    except Exception as e:
        raise ConfigError(f"Optuna storage {storage_url}: cannot open study '{name}' ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200]}). Check the URL (and that the database server runs).") from None


def load_study(res: SweepResult):
    """The Optuna study a :class:`SweepResult` describes."""
    import optuna

    return optuna.load_study(study_name=res.study_name, storage=storage(res.storage))
