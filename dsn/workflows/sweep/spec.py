"""The sweep file: loading it, checking its space, its metric and its baseline/probes, and sampling it.

Everything here is pure configuration work: no study, no run, no process is touched.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsn.errors import ConfigError

__all__ = ["PARAM_TYPES", "SweepSpec", "baseline_params", "check_metric", "check_space", "derive", "load_spec",
           "make_pruner", "make_sampler", "metric_names", "probe_params", "sample"]


@dataclass
class SweepSpec:
    """A parsed sweep file (see :mod:`dsn.workflows.sweep`)."""

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
#: The space key whose choices are config files stacked on the base (an architecture's overlay: ``conf/models/*.yaml``).
CONFIG_KEY = "config"


def load_spec(path: str | Path) -> SweepSpec:
    """Read and check a sweep file.

    Raises
    ------
    ConfigError
        Naming the file and the entry that is wrong.
    """
    import yaml

    from dsn.resources import list_sweeps, resolve_sweep

    path = resolve_sweep(str(path))  # a file, else a built-in sweep's name (`kernels`, `sweeps/kernels.yaml`)
    if not path.is_file():
        raise ConfigError(f"{path}: sweep file not found (built-in: {list_sweeps()}).")
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
    _check_entries(spec)
    return spec


def _check_entries(spec: SweepSpec) -> None:
    path = spec.path
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
    overlay = spec.space.get(CONFIG_KEY)
    if overlay is not None and (overlay.get("type") != "categorical" or not all(
            c is None or isinstance(c, str) for c in overlay["choices"])):
        raise ConfigError(f"{path}: space.{CONFIG_KEY}: a categorical choice of config files to stack on the base "
                          "(e.g. [null, conf/models/tinysleepnet.yaml]; null: the base alone).")
    for key, dv in spec.derived.items():
        if dv.get("from") not in spec.space:
            raise ConfigError(f"{path}: derived.{key}: `from` must name a key of `space` (got {dv.get('from')!r}).")
    if spec.sampler.get("name", "tpe") not in ("tpe", "random"):
        raise ConfigError(f"{path}: sampler {spec.sampler.get('name')!r}: use tpe or random.")
    if spec.pruner.get("name", "median") not in ("median", "hyperband", "none"):
        raise ConfigError(f"{path}: pruner {spec.pruner.get('name')!r}: use median, hyperband or none.")


def metric_names(split: str = "val") -> list[str]:
    """The figures every stage records for the selected model on ``split`` (``val/acc``, ``val/f1_macro``,
    ``val/kappa``, ``val/f1_<stage>``): what a sweep's ``metric`` may name (a trial's objective)."""
    import numpy as np

    from dsn.data.labels import STAGES
    from dsn.evaluation import metrics_from_confusion

    return [f"{split}/{k}" for k in metrics_from_confusion(np.eye(len(STAGES)), STAGES)]


def check_metric(spec: SweepSpec) -> None:
    """Reject a ``metric`` that no system logs, naming the closest logged name.

    Raises
    ------
    ConfigError
        For a name outside ``val/`` (trials are selected on validation subjects only) or a typo.
    """
    import difflib

    known = metric_names("val")
    if spec.metric in known:
        return
    if not spec.metric.startswith("val/"):
        raise ConfigError(f"{spec.path}: metric={spec.metric!r}: trials are selected on validation subjects only; "
                          f"use a val/ metric ({', '.join(known)}).")
    close = difflib.get_close_matches(spec.metric, known, n=1, cutoff=0.0)
    raise ConfigError(f"{spec.path}: metric={spec.metric!r} is not logged by the systems; did you mean {close[0]}? "
                      f"(logged: {', '.join(known)})")


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
        if key != CONFIG_KEY:
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
    """The spec's pruner (median, hyperband or none)."""
    import optuna

    p = dict(spec.pruner)
    name = p.pop("name", "median")
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(**p)
    return optuna.pruners.MedianPruner(**p)
