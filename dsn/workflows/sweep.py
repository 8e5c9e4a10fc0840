"""``dsn sweep``: Optuna studies over training-config keys, one tracked fit per trial.

A sweep file (``sweeps/<name>.yaml``)::

    base: [conf/demo.yaml]                 # config files, stacked as repeated --config
    set: {data.n_folds: 4}                 # fixed overrides for every trial (optional)
    metric: val/f1_macro                   # the selected model's validation figure (default)
    direction: maximize                    # or minimize
    stages: [pretrain, finetune]           # stages each trial runs (default: the base config's)
    n_trials: 20
    sampler: {name: tpe, seed: 0}          # tpe | random (seeded)
    pruner: {name: median, n_warmup_steps: 2}   # median | hyperband | none
    space:                                 # dotted config keys, as `dsn fit` accepts them
      net.drop_prob: {type: float, low: 0.2, high: 0.6}
      pretrain.system.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
      net.small_kernel: {type: categorical, choices: [25, 50, 100]}
      finetune.net.hidden_size: {type: int, low: 64, high: 512, step: 64}
    derived:                               # keys computed from sampled ones (optional)
      finetune.net.shortcut_size: {from: finetune.net.hidden_size, scale: 2}
    baseline: true                         # trial 0 of a new study = the base config itself (optional)
    probes:                                # then the baseline with one change each (optional, needs baseline)
      - {net.drop_prob: 0.3}

Every trial is :func:`dsn.workflows.fit.run_fit` nested under one MLflow parent run per study, with a
pruning callback reporting the per-epoch validation metric to Optuna. A point of the space that no
combination can make valid is rejected before any trial runs; a combination that is invalid is pruned
with its reason recorded; a trial that fails (NaN loss, out of memory, ...) is recorded as failed with
its error, and the study goes on. With ``baseline: true`` a new study's first trial is the base config's
own values of the space keys (each must be one of the space's values), so every trial is compared with
the starting point under the same fold, seed and budget; ``probes`` then queue the baseline with a few
keys changed (one-factor-at-a-time checks of a switch before the sampler takes over).
"""

from __future__ import annotations

import itertools
import math
import os
import random
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsn.errors import ConfigError, DsnError, Pruned

STEP_OFFSET = 10_000  # pruning steps of the fine-tuning stage start here (pretraining: 0..)


# ----------------------------------------------------------------------------- the spec
@dataclass
class SweepSpec:
    """A parsed sweep file (see the module docstring)."""

    name: str
    base: list[str]
    space: dict[str, dict[str, Any]]
    set: dict[str, Any] = field(default_factory=dict)
    derived: dict[str, dict[str, Any]] = field(default_factory=dict)
    metric: str = "val/f1_macro"
    direction: str = "maximize"
    stages: list[str] | None = None
    n_trials: int = 10
    sampler: dict[str, Any] = field(default_factory=lambda: {"name": "tpe", "seed": 0})
    pruner: dict[str, Any] = field(default_factory=lambda: {"name": "median"})
    baseline: bool = False
    probes: list[dict[str, Any]] = field(default_factory=list)
    path: str | None = None


PARAM_TYPES = {"float": ("low", "high"), "int": ("low", "high"), "categorical": ("choices",)}


def load_spec(path: str | Path) -> SweepSpec:
    """Read and check a sweep file.

    Raises
    ------
    ConfigError
        Naming the file and the entry that is wrong.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: sweep file not found (the shipped ones are in sweeps/).")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e}).") from None
    allowed = set(SweepSpec.__dataclass_fields__) - {"name", "path"}
    unknown = set(raw) - allowed
    if unknown:
        raise ConfigError(f"{path}: unknown entries {sorted(unknown)}; allowed: {sorted(allowed)}.")
    if not raw.get("space"):
        raise ConfigError(f"{path}: `space` is empty: give at least one dotted config key to search.")
    base = raw.get("base") or []
    base = [base] if isinstance(base, str) else list(base)
    if not base:
        raise ConfigError(f"{path}: `base` must name the config file(s) trials start from (e.g. [conf/demo.yaml]).")
    spec = SweepSpec(name=path.stem, path=str(path), base=base, **{k: v for k, v in raw.items() if k != "base"})
    if spec.direction not in ("maximize", "minimize"):
        raise ConfigError(f"{path}: direction={spec.direction!r}: use maximize or minimize.")
    for key, p in spec.space.items():
        kind = (p or {}).get("type")
        if kind not in PARAM_TYPES:
            raise ConfigError(f"{path}: space.{key}: type={kind!r}; use one of {sorted(PARAM_TYPES)}.")
        missing = [a for a in PARAM_TYPES[kind] if a not in p]
        if missing:
            raise ConfigError(f"{path}: space.{key}: a {kind} parameter needs {missing}.")
        if kind != "categorical" and not p["low"] <= p["high"]:
            raise ConfigError(f"{path}: space.{key}: low={p['low']} is above high={p['high']}.")
        if kind == "float" and p.get("log") and p["low"] <= 0:
            raise ConfigError(f"{path}: space.{key}: a log-scale range needs low > 0 (got {p['low']}).")
    for key, dv in spec.derived.items():
        if dv.get("from") not in spec.space:
            raise ConfigError(f"{path}: derived.{key}: `from` must name a key of `space` (got {dv.get('from')!r}).")
    if spec.sampler.get("name", "tpe") not in ("tpe", "random"):
        raise ConfigError(f"{path}: sampler {spec.sampler.get('name')!r}: use tpe or random.")
    if spec.pruner.get("name", "median") not in ("median", "hyperband", "none"):
        raise ConfigError(f"{path}: pruner {spec.pruner.get('name')!r}: use median, hyperband or none.")
    return spec


def derive(spec: SweepSpec, params: dict[str, Any]) -> dict[str, Any]:
    """The sampled params plus the derived keys."""
    out = dict(params)
    for key, dv in spec.derived.items():
        v = params[dv["from"]] * dv.get("scale", 1) + dv.get("offset", 0)
        out[key] = type(params[dv["from"]])(v)
    return out


def _corner_values(p: dict[str, Any]) -> list[Any]:
    return list(p["choices"]) if p["type"] == "categorical" else [p["low"], p["high"]]


def check_space(spec: SweepSpec, base_cfg, parser=None, max_combinations: int = 64) -> None:
    """Reject, before any trial runs, values of the space that no combination makes valid.

    Each categorical choice and each range end is tried with the corner values of the other keys
    (all combinations when there are at most ``max_combinations``, else a seeded sample).

    Raises
    ------
    ConfigError
        Naming the key, the value and the reason.
    """
    from dsn import config

    for key in {**spec.space, **spec.derived}:
        config.check_key(key, parser)
    keys = list(spec.space)
    combos = list(itertools.product(*(_corner_values(spec.space[k]) for k in keys)))
    if len(combos) > max_combinations:
        combos = random.Random(0).sample(combos, max_combinations)
    ok: dict[tuple[str, Any], bool] = {}
    reason: dict[tuple[str, Any], str] = {}
    for combo in combos:
        params = dict(zip(keys, combo))
        try:
            config.set_keys(base_cfg, derive(spec, params), parser)
            valid = True
        except ConfigError as e:
            valid, msg = False, str(e)
        for k, v in params.items():
            ok[(k, v)] = ok.get((k, v), False) or valid
            if not valid:
                reason.setdefault((k, v), msg)
    bad = [(k, v) for (k, v), good in ok.items() if not good]
    if bad:
        k, v = bad[0]
        raise ConfigError(f"{spec.path}: space.{k}: the value {v!r} is invalid with every other setting tried "
                          f"({reason[(k, v)]}). Remove it or narrow the range.")


def _same(choice: Any, value: Any) -> bool:
    """A categorical choice equals a config value; string choices such as "[1.0, 1.5]" are read as YAML."""
    import yaml

    if isinstance(choice, str) and not isinstance(value, str):
        try:
            choice = yaml.safe_load(choice)
        except yaml.YAMLError:
            return False
    if isinstance(choice, (list, tuple)) and isinstance(value, (list, tuple)):
        return len(choice) == len(value) and all(_same(c, v) for c, v in zip(choice, value))
    if isinstance(choice, (int, float)) and isinstance(value, (int, float)) and not isinstance(choice, bool):
        return math.isclose(float(choice), float(value), rel_tol=1e-9, abs_tol=0.0)
    return choice == value


_OUTSIDE = object()


def _as_param(p: dict[str, Any], value: Any) -> Any:
    """``value`` as an Optuna param of the space entry ``p`` (a categorical: the matching choice; a number: cast
    to the entry's type), or ``_OUTSIDE``."""
    if p["type"] == "categorical":
        return next((c for c in p["choices"] if _same(c, value)), _OUTSIDE)
    if value is None or not p["low"] <= value <= p["high"]:
        return _OUTSIDE
    return int(value) if p["type"] == "int" else float(value)


def _outside(p: dict[str, Any]) -> str:
    """How a value misses the space entry ``p``, for error messages."""
    return f"is not one of {list(p['choices'])}" if p["type"] == "categorical" else f"is outside [{p['low']}, {p['high']}]"


def baseline_params(spec: SweepSpec, base_cfg) -> dict[str, Any]:
    """The base config's values of the space keys, as Optuna params (categorical: the matching choice).

    Raises
    ------
    ConfigError
        When a base value lies outside the space (naming the key, the value and the space).
    """
    out = {}
    for key, p in spec.space.items():
        value = _as_param(p, base_cfg[key])
        if value is _OUTSIDE:
            fix = f"add it to space.{key}" if p["type"] == "categorical" else f"widen space.{key}"
            raise ConfigError(f"{spec.path}: baseline: the base config's {key}={base_cfg[key]!r} {_outside(p)}; "
                              f"{fix} or drop `baseline`.")
        out[key] = value
    return out


def probe_params(spec: SweepSpec, baseline: dict[str, Any]) -> list[dict[str, Any]]:
    """The baseline's params with each probe's changes (a probe value must be one of its key's choices or
    inside its range).

    Raises
    ------
    ConfigError
        For a probe that is not a mapping, a key outside the space or a value outside it.
    """
    out = []
    for i, probe in enumerate(spec.probes):
        if not isinstance(probe, dict) or not probe:
            raise ConfigError(f"{spec.path}: probes[{i}] must be a mapping of space keys to values, got {probe!r}.")
        params = dict(baseline)
        for key, value in probe.items():
            p = spec.space.get(key)
            if p is None:
                raise ConfigError(f"{spec.path}: probes[{i}]: {key} is not a key of `space` ({', '.join(spec.space)}).")
            params[key] = _as_param(p, value)
            if params[key] is _OUTSIDE:
                raise ConfigError(f"{spec.path}: probes[{i}]: {key}={value!r} {_outside(p)}.")
        out.append(params)
    return out


def sample(trial, spec: SweepSpec) -> dict[str, Any]:
    """Draw one point of the space with an Optuna trial (dotted keys -> values)."""
    out = {}
    for key, p in spec.space.items():
        if p["type"] == "float":
            out[key] = trial.suggest_float(key, float(p["low"]), float(p["high"]), log=bool(p.get("log", False)),
                                           step=p.get("step"))
        elif p["type"] == "int":
            out[key] = trial.suggest_int(key, int(p["low"]), int(p["high"]), step=int(p.get("step", 1)), log=bool(p.get("log", False)))
        else:
            out[key] = trial.suggest_categorical(key, list(p["choices"]))
    return out


def make_sampler(spec: SweepSpec, seed_offset: int = 0):
    """The spec's sampler. ``seed_offset`` (the number of trials the study already has, plus the worker
    index) keeps runs reproducible while a continued study or a second worker draws new points instead of
    repeating the first run's."""
    import optuna

    s = dict(spec.sampler)
    name, seed = s.pop("name", "tpe"), s.pop("seed", 0)
    seed = None if seed is None else int(seed) + seed_offset
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, **s)


def make_pruner(spec: SweepSpec):
    import optuna

    p = dict(spec.pruner)
    name = p.pop("name", "median")
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(**p)
    return optuna.pruners.MedianPruner(**p)


def default_storage(home: str | Path) -> str:
    home = Path(home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'optuna.db'}"


def _storage(url: str):
    """An Optuna storage; SQLite gets a long lock timeout so that several local workers can share it."""
    import optuna

    if url.startswith("sqlite:"):
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    return url


# ----------------------------------------------------------------------------- pruning
def pruning_callback(trial, monitor: str, offset: int):
    """A Lightning callback that reports ``monitor`` after every validation to the Optuna trial and
    stops the fit with :class:`~dsn.errors.Pruned` when the pruner says so."""
    import lightning as L

    class OptunaPruning(L.Callback):
        def on_validation_end(self, trainer, pl_module) -> None:
            if trainer.sanity_checking:
                return
            value = trainer.callback_metrics.get(monitor)
            if value is None:
                return
            step = offset + trainer.current_epoch
            trial.report(float(value), step)
            if trial.should_prune():
                raise Pruned(f"pruned at {monitor}={float(value):.4f} (step {step})")

    return OptunaPruning()


# ----------------------------------------------------------------------------- running a study
@dataclass
class SweepResult:
    study_name: str
    storage: str
    parent_run_id: str
    n_trials: int
    best_value: float | None
    best_params: dict[str, Any]
    trials: list[dict[str, Any]]


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
) -> SweepResult:
    """Run (or continue) a study: ``n_trials`` more trials, shared by ``workers`` processes.

    ``worker_argv`` is the ``dsn sweep`` command line that extra local workers run (with their share of
    the trials); it is given by the CLI. Returns the study's state after this run.
    """
    import optuna

    from dsn import config, tracking

    base = config.load_config(spec.base, {**spec.set, **(overrides or {})})
    if spec.stages:
        base = config.set_key(base, "stages", list(spec.stages))
    if tracking_uri:
        base = config.set_key(base, "tracking.uri", tracking_uri)
    if tracking_home:
        base = config.set_key(base, "tracking.home", tracking_home)
    if experiment:
        base = config.set_key(base, "tracking.experiment", experiment)
    if spec.metric not in ("val/f1_macro", "val/acc", "val/kappa") and not spec.metric.startswith("val/"):
        raise ConfigError(f"{spec.path}: metric={spec.metric!r}: trials are selected on validation subjects only; "
                          "use a val/ metric (val/f1_macro, val/kappa, val/acc, val/f1_N1, ...).")
    check_space(spec, base)
    baseline = baseline_params(spec, base) if spec.baseline else None
    if spec.probes and baseline is None:
        raise ConfigError(f"{spec.path}: probes change the baseline trial: they need `baseline: true`.")
    probes = probe_params(spec, baseline) if baseline is not None else []
    n_trials = spec.n_trials if n_trials is None else n_trials
    study_name = study_name or spec.name
    home = Path(base.tracking.home)
    uri = tracking.tracking_uri(base.tracking.uri, home)
    tracking.check_tracking(uri)
    storage = storage or default_storage(home)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(study_name=study_name, storage=_storage(storage), load_if_exists=True,
                                    direction=spec.direction, sampler=make_sampler(spec), pruner=make_pruner(spec))
    except Exception as e:
        raise ConfigError(f"Optuna storage {storage}: cannot open study '{study_name}' ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200]}). Check the URL (and that the database server runs).") from None
    study.set_user_attr("spec", spec.path)
    if baseline is not None and not is_worker and not study.trials:
        study.enqueue_trial(baseline, user_attrs={"baseline": True})
        for params, probe in zip(probes, spec.probes):
            study.enqueue_trial(params, user_attrs={"probe": ", ".join(f"{k}={v}" for k, v in probe.items())})
    worker_index = int(os.environ.get("DSN_SWEEP_WORKER") or 0)
    study.sampler = make_sampler(spec, seed_offset=len(study.trials) + 100_003 * worker_index)
    exp_id = tracking.experiment_id(uri, base.tracking.experiment, home)
    parent = _study_run(uri, exp_id, study_name, storage, spec)

    shares = [n_trials // workers + (1 if i < n_trials % workers else 0) for i in range(max(workers, 1))]
    procs = []
    if workers > 1:
        if worker_argv is None:
            raise ConfigError("workers > 1 needs the dsn sweep command line to start the other workers.")
        for i, share in enumerate(shares[1:], start=1):
            if share:
                argv = [*worker_argv, "--n_trials", str(share), "--workers", "1", "--study", study_name, "--storage", storage]
                procs.append(subprocess.Popen([sys.executable, "-m", "dsn", "sweep", *argv], env={**os.environ, "DSN_SWEEP_WORKER": str(i)}))
    objective = _objective(spec, base, study_name, parent, uri, exp_id, verbose)
    if is_worker:  # a helper process started by another `dsn sweep --workers K`: trials only
        study.optimize(objective, n_trials=shares[0], catch=(Exception,), gc_after_trial=True)
        return _result(study, spec, parent, storage)
    tracking.reopen_run(uri, parent)
    with tracking.run_guard(uri, [parent]):
        try:
            study.optimize(objective, n_trials=shares[0], catch=(Exception,), gc_after_trial=True)
        finally:
            for p in procs:
                p.wait()
        failed = [p.returncode for p in procs if p.returncode != 0]
        if failed:
            print(f"warning: {len(failed)} worker process(es) exited with an error; their trials are recorded as they ended.")
        result = _summarise(study, spec, parent, uri, storage, verbose)
        if register and result.best_value is not None:
            _register_best(study, uri, exp_id, parent, register, verbose)
    return result


def _study_run(uri: str, exp_id: str, study_name: str, storage: str, spec: SweepSpec) -> str:
    """The study's MLflow parent run: found by its tags (a continued study), else created."""
    from dsn import tracking

    runs = tracking.find_runs(uri, exp_id, {"dsn.kind": "sweep", "dsn.study": study_name})
    if runs:
        return runs[0].info.run_id
    rid = tracking.start_run(uri, exp_id, f"sweep-{study_name}", tags={
        "dsn.kind": "sweep", "dsn.study": study_name, "optuna.storage": storage, **tracking.environment_tags()})
    tracking.log_params(uri, rid, {"sweep.spec": spec.path, "sweep.metric": spec.metric, "sweep.direction": spec.direction,
                                   "sweep.base": ",".join(spec.base), "sweep.space": {k: str(v) for k, v in spec.space.items()}})
    if spec.path:
        tracking.log_file(uri, rid, spec.path)
    tracking.set_terminated(uri, rid)
    return rid


def _objective(spec: SweepSpec, base, study_name: str, parent: str, uri: str, exp_id: str, verbose: bool):
    import optuna

    from dsn import config, tracking
    from dsn.workflows.fit import run_fit

    def trial_run(number: int):
        runs = tracking.find_runs(uri, exp_id, {"dsn.study": study_name, "dsn.trial": str(number)}, parent=parent)
        return runs[0].info.run_id if runs else None

    def objective(trial) -> float:
        params = sample(trial, spec)
        tags = {"dsn.study": study_name, "dsn.trial": str(trial.number)}
        if trial.user_attrs.get("baseline"):
            tags["dsn.baseline"] = "true"
        if trial.user_attrs.get("probe"):
            tags["dsn.probe"] = trial.user_attrs["probe"]
        try:
            cfg = config.set_keys(base, derive(spec, params))
        except ConfigError as e:
            trial.set_user_attr("pruned_reason", str(e))
            rid = tracking.start_run(uri, exp_id, f"trial-{trial.number}", parent=parent,
                                     tags={**tags, "dsn.kind": "trial", "dsn.trial_state": "PRUNED", "dsn.pruned_reason": str(e)[:5000]})
            tracking.log_params(uri, rid, params)
            tracking.set_terminated(uri, rid, "KILLED")
            if verbose:
                print(f"[trial {trial.number}] pruned before training: invalid point ({e})")
            raise optuna.TrialPruned(str(e)) from None
        if verbose:
            print(f"\n[trial {trial.number}] " + ", ".join(f"{k}={v}" for k, v in params.items()))
        offsets = {"pretrain": 0, "finetune": STEP_OFFSET}
        try:
            res = run_fit(cfg, parent_run_id=parent, tags=tags, run_name=f"trial-{trial.number}", kind="trial",
                          callbacks=lambda stage: [pruning_callback(trial, spec.metric, offsets[stage])], verbose=False)
        except Pruned as e:
            trial.set_user_attr("pruned_reason", str(e))
            rid = trial_run(trial.number)
            if rid:
                tracking.set_tags(uri, rid, {"dsn.trial_state": "PRUNED", "dsn.pruned_reason": str(e)})
            if verbose:
                print(f"[trial {trial.number}] {e}")
            raise optuna.TrialPruned(str(e)) from None
        except tracking.Terminated:  # Optuna records Ctrl-C itself, not a BaseException: close the trial here
            trial.set_user_attr("error", "terminated (SIGTERM)")
            rid = trial_run(trial.number)
            if rid:
                tracking.set_tags(uri, rid, {"dsn.trial_state": "FAILED", "dsn.error": "terminated (SIGTERM)"})
            trial.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        except KeyboardInterrupt:
            raise
        except BaseException as e:
            msg = f"{type(e).__name__}: {str(e).splitlines()[0][:500] if str(e) else ''}"
            trial.set_user_attr("error", msg)
            rid = trial_run(trial.number)
            if rid:
                tracking.set_tags(uri, rid, {"dsn.trial_state": "FAILED", "dsn.error": msg})
            print(f"[trial {trial.number}] failed: {msg}")
            raise
        value = res.final.metrics.get(spec.metric, float("nan"))
        trial.set_user_attr("run_id", res.run_id)
        trial.set_user_attr("metrics", {k: v for k, v in res.final.metrics.items() if not math.isnan(v)})
        if res.final.model_uri:
            trial.set_user_attr("model_uri", res.final.model_uri)
        tracking.set_tags(uri, res.run_id, {"dsn.trial_state": "COMPLETE"})
        tracking.log_metrics(uri, res.run_id, {"objective": value})
        if math.isnan(value):
            raise DsnError(f"trial {trial.number}: {spec.metric} is NaN (the validation subjects lack the classes it needs?).")
        if verbose:
            print(f"[trial {trial.number}] {spec.metric} = {value:.4f}")
        return value

    return objective


def trials_table(study, spec: SweepSpec, top: int | None = None) -> list[dict[str, Any]]:
    """Finished trials as rows (best first for complete ones, then pruned and failed)."""
    import optuna

    done = [t for t in study.get_trials(deepcopy=False) if t.state != optuna.trial.TrialState.RUNNING]
    complete = sorted((t for t in done if t.state == optuna.trial.TrialState.COMPLETE),
                      key=lambda t: t.value, reverse=spec.direction == "maximize")
    rest = [t for t in done if t.state != optuna.trial.TrialState.COMPLETE]
    rows = []
    for t in complete + rest:
        row = {"trial": t.number, "state": t.state.name, spec.metric: "" if t.value is None else f"{t.value:.4f}"}
        row.update({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in t.params.items()})
        note = t.user_attrs.get("pruned_reason") or t.user_attrs.get("error") or ""
        row["note"] = ("baseline (the base config) " if t.user_attrs.get("baseline") else
                       f"probe: {t.user_attrs['probe']} " if t.user_attrs.get("probe") else "") + note[:60]
        rows.append(row)
    return rows[:top] if top else rows


def _summarise(study, spec: SweepSpec, parent: str, uri: str, storage: str, verbose: bool) -> SweepResult:
    import optuna

    from dsn import tracking
    from dsn.workflows.registry import format_table

    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    best = study.best_trial if complete else None
    rows = trials_table(study, spec)
    counts = {s: sum(1 for t in study.get_trials(deepcopy=False) if t.state.name == s) for s in ("COMPLETE", "PRUNED", "FAIL")}
    tracking.log_metrics(uri, parent, {f"n_trials_{k.lower()}": v for k, v in counts.items()})
    if best is not None:
        tracking.log_metrics(uri, parent, {f"best/{spec.metric}": best.value, "best/trial": best.number})
        tracking.set_tags(uri, parent, {"best.trial": best.number, **{f"best.{k}": v for k, v in best.params.items()},
                                        "best.run_id": best.user_attrs.get("run_id", "")})
        tracking.log_dict(uri, parent, {"trial": best.number, "value": best.value, "params": best.params,
                                        "metrics": best.user_attrs.get("metrics", {})}, "best_trial.json")
    tracking.log_dict(uri, parent, rows, "trials.json")
    _log_study_plots(study, uri, parent)
    if verbose:
        print(f"\nStudy '{study.study_name}' ({storage}): {counts['COMPLETE']} complete, {counts['PRUNED']} pruned, "
              f"{counts['FAIL']} failed")
        print(format_table(rows[:10]))
        if best is not None:
            print(f"\nbest: trial {best.number}, {spec.metric} = {best.value:.4f}")
    return _result(study, spec, parent, storage, rows)


def _result(study, spec: SweepSpec, parent: str, storage: str, rows: list | None = None) -> SweepResult:
    import optuna

    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    best = study.best_trial if complete else None
    return SweepResult(study.study_name, storage, parent, len(study.trials), best.value if best else None,
                       dict(best.params) if best else {}, rows if rows is not None else trials_table(study, spec))


def _log_study_plots(study, uri: str, parent: str) -> None:
    """Optuna's optimisation history, parallel coordinates and parameter importances (PNG artifacts)."""
    import warnings

    import optuna

    from dsn import tracking

    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        return
    import optuna.visualization.matplotlib as ovm

    plots = {"optimization_history": ovm.plot_optimization_history, "parallel_coordinate": ovm.plot_parallel_coordinate}
    if len(complete) >= 2 and len(study.best_trial.params) >= 1:
        plots["param_importances"] = ovm.plot_param_importances
    for name, fn in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = fn(study)
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.set_size_inches(9, 5)
            fig.tight_layout()
            tracking.log_figure(uri, parent, fig, f"study/{name}.png")
            import matplotlib.pyplot as plt  # Optuna draws with pyplot: release its figure

            plt.close(fig)
        except Exception as e:  # a plot Optuna cannot draw (e.g. one distinct value) is skipped, not fatal
            print(f"note: could not draw {name} ({type(e).__name__}: {e})")


def _register_best(study, uri: str, exp_id: str, parent: str, name: str, verbose: bool) -> None:
    from dsn import tracking

    best = study.best_trial
    model_uri = best.user_attrs.get("model_uri")
    if not model_uri:
        print("note: the best trial logged no model (tracking.log_model false): nothing registered.")
        return
    version = tracking.register_model(uri, model_uri, name, {
        "study": study.study_name, "trial": best.number, "val_objective": f"{best.value:.4f}",
        "run_id": best.user_attrs.get("run_id", ""), **{f"param.{k}": v for k, v in best.params.items()}})
    if verbose:
        print(f"Registered the best trial's model as '{name}' version {version}")


def export_best(study, spec: SweepSpec, path: str | Path) -> Path:
    """Write the best trial's values (sampled and derived) as a config overlay YAML."""
    import yaml

    from dsn.hypnogram import atomic_write

    best = study.best_trial
    nested: dict[str, Any] = {}
    for key, value in derive(spec, dict(best.params)).items():
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    header = (f"# Best trial of study '{study.study_name}' (sweep {spec.path}): trial {best.number}, "
              f"{spec.metric} = {best.value:.4f} on validation subjects\n"
              f"# ({len(study.trials)} trials). Overlay on the sweep's base config:\n"
              f"#   dsn fit " + " ".join(f"--config {b}" for b in spec.base) + f" --config {path}\n")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        Path(tmp).write_text(header + yaml.safe_dump(nested, sort_keys=False))
    return path


def main(a) -> SweepResult:
    """``dsn sweep`` (arguments parsed by :mod:`dsn.cli`)."""
    import optuna
    import yaml

    spec = load_spec(a.spec)
    overrides = {k: yaml.safe_load(v) for k, v in a.overrides.items()}
    worker_argv = [a.spec, *sum(([f"--{k}", v] for k, v in a.overrides.items()), [])]
    for flag, value in (("--tracking.uri", a.tracking_uri), ("--tracking.home", a.tracking_home),
                        ("--tracking.experiment", a.tracking_experiment)):
        if value:
            worker_argv += [flag, value]
    res = run_sweep(spec, n_trials=a.n_trials, study_name=a.study, storage=a.storage, workers=a.workers,
                    overrides=overrides, tracking_uri=a.tracking_uri, tracking_home=a.tracking_home,
                    experiment=a.tracking_experiment, worker_argv=worker_argv, register=a.register,
                    is_worker=bool(os.environ.get("DSN_SWEEP_WORKER")))
    if a.export:
        if res.best_value is None:
            raise ConfigError(f"--export {a.export}: the study has no complete trial yet.")
        study = optuna.load_study(study_name=res.study_name, storage=_storage(res.storage))
        print(f"wrote {export_best(study, spec, a.export)}")
    return res
