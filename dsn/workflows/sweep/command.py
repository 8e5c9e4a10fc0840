"""``dsn sweep`` as a command: its parser (the base-config overrides split off first), :func:`run` and
:func:`render`."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass

from dsn.errors import ConfigError
from dsn.workflows.cli_args import command_parser, parse_command, tracking_options
from dsn.workflows.sweep.study import SweepResult

EPILOG = ("Any key of the base config can be overridden for every trial as a dotted flag, as in `dsn fit` "
          "(e.g. --data.data_dir data/demo --data.n_folds 4); `dsn fit --help` lists them.")


@dataclass
class SweepRun:
    """A sweep's result, the name its best model was registered under, and whether this process is a worker
    started by another ``dsn sweep --workers K`` (which shows nothing)."""

    result: SweepResult
    register: str | None = None
    worker: bool = False


def build_parser():
    """``dsn sweep``'s own options (base-config overrides are split off first, see :func:`split_overrides`)."""
    p = command_parser("sweep", epilog=EPILOG)
    p.add_argument("spec", type=str, help="Sweep file (sweeps/<name>.yaml).")
    p.add_argument("--n_trials", type=int | None, default=None, help="Trials to add in this run (null: the spec's n_trials).")
    p.add_argument("--study", type=str | None, default=None,
                   help="Study name (null: the spec's file name); the same name continues the study.")
    p.add_argument("--storage", type=str | None, default=None,
                   help="Optuna storage URL (null: sqlite:///<tracking home>/optuna.db); e.g. "
                        "postgresql+psycopg://user@host/db for several machines.")
    p.add_argument("--workers", type=int, default=1, help="Worker processes on this machine sharing the study.")
    p.add_argument("--export", type=str | None, default=None, help="Write the best trial as a config overlay (e.g. conf/best.yaml).")
    p.add_argument("--register", type=str | None, default=None, help="Register the best trial's model under this name.")
    p.add_argument("--heartbeat_interval", type=int, default=30,
                   help="Seconds between a running trial's heartbeats in the study storage (0: none).")
    p.add_argument("--grace_period", type=int, default=60,
                   help="A trial without a heartbeat for this many seconds (its process died) is failed when a sweep "
                        "of the study starts, and its parameters are tried again.")
    tracking_options(p, experiment_help="the base config's tracking.experiment")
    return p


def split_overrides(argv: Sequence[str], own: set[str]) -> tuple[list[str], dict[str, str]]:
    """``argv`` without the base-config overrides, and those as ``{dotted key: text}`` (read as YAML later).

    An override is a dotted flag that is not one of the command's ``own`` (``--data.data_dir X`` or
    ``--data.data_dir=X``) or the old ``--set KEY=VALUE``.

    Raises
    ------
    ConfigError
        For ``--set`` without ``KEY=VALUE`` or a dotted flag without a value.
    """
    rest, overrides, i = [], {}, 0
    while i < len(argv):
        a = argv[i]
        flag, eq, value = a.partition("=")
        if flag == "--set" or (flag.startswith("--") and "." in flag and flag not in own):
            if not eq:
                if i + 1 == len(argv):
                    raise ConfigError(f"{flag}: give a value (e.g. --data.data_dir data/demo).")
                value, i = argv[i + 1], i + 1
            if flag == "--set":
                key, eq, value = value.partition("=")
                if not eq:
                    raise ConfigError(f"--set {key}: use KEY=VALUE (better: --{key} VALUE).")
                flag = "--" + key
            overrides[flag[2:]] = value
        else:
            rest.append(a)
        i += 1
    return rest, overrides


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """The sweep's options, with ``overrides``: ``{dotted key: YAML text}`` of the base config."""
    p = build_parser()
    own = {s for action in p._actions for s in action.option_strings}
    rest, overrides = split_overrides(argv, own)
    a = parse_command(p, rest, aliases={"--n-trials": "--n_trials"})
    a.overrides = overrides
    return a


def run(a) -> SweepRun:
    """Run the study (:func:`~dsn.workflows.sweep.runner.run_sweep`), then export the best trial if asked."""
    import optuna
    import yaml

    from dsn.workflows.sweep import report
    from dsn.workflows.sweep.runner import run_sweep
    from dsn.workflows.sweep.spec import load_spec
    from dsn.workflows.sweep.study import load_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = load_spec(a.spec)
    overrides = {k: yaml.safe_load(v) for k, v in a.overrides.items()}
    worker_argv = [a.spec, *sum(([f"--{k}", v] for k, v in a.overrides.items()), [])]
    for flag, value in (("--tracking.uri", a.tracking_uri), ("--tracking.home", a.tracking_home),
                        ("--tracking.experiment", a.tracking_experiment)):
        if value:
            worker_argv += [flag, value]
    worker = bool(os.environ.get("DSN_SWEEP_WORKER"))
    res = run_sweep(spec, n_trials=a.n_trials, study_name=a.study, storage=a.storage, workers=a.workers,
                    overrides=overrides, tracking_uri=a.tracking_uri, tracking_home=a.tracking_home,
                    experiment=a.tracking_experiment, worker_argv=worker_argv, register=a.register,
                    is_worker=worker, heartbeat_interval=a.heartbeat_interval, grace_period=a.grace_period)
    if a.export:
        if res.best_value is None:
            raise ConfigError(f"--export {a.export}: the study has no complete trial yet.")
        res.exported = str(report.export_best(load_study(res), spec, a.export))
    return SweepRun(res, a.register, worker)


def render(r: SweepRun) -> str:
    """The trials table and the best trial (nothing in a worker process)."""
    if r.worker:
        return ""
    from dsn.workflows.sweep.report import format_summary

    res = r.result
    lines = ["\n" + format_summary(res)]
    if res.registered:
        lines.append(f"Registered the best trial's model as '{r.register}' version {res.registered}")
    if res.exported:
        lines.append(f"wrote {res.exported}")
    return "\n".join(lines)
