"""Is this a night an adult sleeps? The predicted hypnogram checked against adult normative ranges.

A model applied to another site's recordings can write a hypnogram no adult sleeps (72 % REM, REM 1.5 min
after sleep onset, almost no N2: issue 34) while its confidence and the signal statistics look ordinary.
:func:`check_night` measures the scored night (stage shares of total sleep time, REM latency and sleep-onset
REM, N3 in the first third of the sleep period, W/NREM/REM transitions per hour of sleep, isolated single
epochs, the longest run of one sleep stage, total sleep time) and compares each value with two bands of
:file:`norms.yaml` (shipped in this package, sources in it): inside the ``check`` band ``ok``, outside it
``check``, outside the ``do_not_use`` band ``do_not_use``. :func:`load_norms` reads the shipped file,
overridden key by key by a user file.

Definitions (AASM): 30-s epochs; sleep onset is the first epoch of any sleep stage (N1, N2, N3, REM), the
sleep period runs from it to the last epoch of sleep; REM latency is counted from sleep onset; unscored
epochs (negative values) are neither sleep nor wake and are left out of counts and transitions. One
departure, for whole recordings (Sleep-EDF's are 22 h long) and for model output: the rules look at the
*main* sleep period (:func:`main_sleep_period`), where a wake gap of more than ``max_wake_gap_min`` (90 min)
separates sleep stretches, so an evening doze, a nap or stray epochs scored as sleep by day do not move
sleep onset; total sleep time counts the whole recording. Short sleep periods (a nap, a night cut short) are
judged only on the band sides that do not need a whole night (``min_period_min`` in the norms file), and REM
latency runs to the first REM period of at least ``min_rem_bout_min`` (3 min).

Pure: numpy and PyYAML, no I/O besides reading the norms file.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from dsn.data.labels import N_CLASSES, STAGES
from dsn.errors import DsnError

__all__ = ["LEVELS", "RuleResult", "check_night", "load_norms", "main_sleep_period", "night_values"]

#: Levels in increasing severity.
LEVELS = ("ok", "check", "do_not_use")
_REM = STAGES.index("REM")
_N3 = STAGES.index("N3")
#: Keys a rule of the norms file may have.
_RULE_KEYS = {"description", "unit", "check", "do_not_use", "by_age", "source", "low_note", "high_note",
              "min_recording_min", "min_n3_min", "min_period_min", "min_rem_bout_min"}
_SIDES = ("low", "high")
_AGE_KEYS = {"ages", "check", "do_not_use", "source"}
_ARCHITECTURE_EXEMPT = {"total_sleep_time"}  # assessed whatever the amount of sleep
#: Top-level settings of a norms file: name -> (default, may be null).
_SETTINGS = {"min_tst_min": (60.0, False), "max_wake_gap_min": (90.0, True)}


class NormsError(DsnError, ValueError):
    """A norms file that cannot be used (names the file, the key and the fix)."""


@dataclass(frozen=True)
class RuleResult:
    """One plausibility rule applied to one night.

    Attributes
    ----------
    name : str
        Rule name (a key of ``rules`` in the norms file), e.g. ``"rem_share"``.
    value : float or None
        The night's value in ``unit``; None when the rule could not be assessed (``reason`` says why).
    unit : str
    check : tuple of (float or None, float or None)
        The ``ok`` range (outside it: ``check``); None = no bound.
    do_not_use : tuple of (float or None, float or None)
        Outside it: ``do_not_use``.
    level : str
        ``"ok"``, ``"check"`` or ``"do_not_use"``.
    reason : str
        One line: the value, the band it left and what that suggests (or why it was not assessed).
    """

    name: str
    value: float | None
    unit: str
    check: tuple[float | None, float | None]
    do_not_use: tuple[float | None, float | None]
    level: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (bands as lists)."""
        d = asdict(self)
        d["check"], d["do_not_use"] = list(self.check), list(self.do_not_use)
        return d


# --------------------------------------------------------------------------------------------
# The norms file
# --------------------------------------------------------------------------------------------
def _band(value: Any, where: str) -> tuple[float | None, float | None]:
    ok = isinstance(value, list | tuple) and len(value) == 2
    ok = ok and all(v is None or (isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v))
                    for v in value)
    if ok and None not in value and value[0] > value[1]:
        ok = False
    if not ok:
        raise NormsError(f"{where}: expected [low, high] with low <= high (numbers, null for no bound), got {value!r}")
    return (None if value[0] is None else float(value[0]), None if value[1] is None else float(value[1]))


def _show(band: tuple) -> str:
    """A band as written in YAML: ``[5, null]``."""
    return "[" + ", ".join("null" if v is None else f"{v:g}" for v in band) + "]"


def _inside(inner: tuple, outer: tuple) -> bool:
    lo_ok = outer[0] is None or (inner[0] is not None and inner[0] >= outer[0])
    hi_ok = outer[1] is None or (inner[1] is not None and inner[1] <= outer[1])
    return lo_ok and hi_ok


def _validate_bands(entry: Mapping, where: str) -> None:
    check = _band(entry.get("check"), f"{where}.check")
    dnu = _band(entry.get("do_not_use"), f"{where}.do_not_use")
    if not _inside(check, dnu):
        raise NormsError(f"{where}: the check band {_show(check)} must lie inside the do_not_use band {_show(dnu)}; "
                         "widen do_not_use or narrow check")


def _validate_rule(name: str, rule: Any, source: str) -> None:
    where = f"{source}: rules.{name}"
    if not isinstance(rule, Mapping):
        raise NormsError(f"{where}: expected a mapping with check and do_not_use bands, got {rule!r}")
    unknown = sorted(set(rule) - _RULE_KEYS)
    if unknown:
        raise NormsError(f"{where}.{unknown[0]}: unknown key; a rule may have {sorted(_RULE_KEYS)}")
    _validate_bands(rule, where)
    _period_sides(rule.get("min_period_min"), f"{where}.min_period_min")
    for i, row in enumerate(rule.get("by_age") or []):
        at = f"{where}.by_age[{i}]"
        if not isinstance(row, Mapping) or set(row) - _AGE_KEYS or "ages" not in row:
            raise NormsError(f"{at}: expected {{ages: [from, below], check: [..], do_not_use: [..]}}, got {row!r}")
        _band(row["ages"], f"{at}.ages")
        _validate_bands(row, at)


def _period_sides(value: Any, where: str) -> dict[str, float]:
    """A rule's ``min_period_min``: minutes of main sleep period a side of its bands needs to be judged.
    A number applies to both sides, ``{low: m, high: m}`` to each; None: every night is judged."""
    if value is None:
        return {}
    sides = dict.fromkeys(_SIDES, value) if not isinstance(value, Mapping) else dict(value)
    ok = set(sides) <= set(_SIDES) and all(
        isinstance(v, int | float) and not isinstance(v, bool) and v >= 0 for v in sides.values())
    if not ok:
        raise NormsError(f"{where}: expected minutes >= 0 or {{low: minutes, high: minutes}}, got {value!r}")
    return {k: float(v) for k, v in sides.items()}


def _read_yaml(path: Path | str, text: str) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise NormsError(f"{path}:{line} not valid YAML ({getattr(e, 'problem', e)}); fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise NormsError(f"{path}: expected a mapping with 'rules:' at the top, got {type(data).__name__}")
    return data


def _settings(data: Mapping, path: Path | str, defaults: Mapping) -> dict[str, float | None]:
    """The top-level settings of a norms file (minutes >= 0; ``max_wake_gap_min`` may be null)."""
    out = {}
    for key, (default, nullable) in _SETTINGS.items():
        v = data.get(key, defaults.get(key, default))
        if v is None and nullable:
            out[key] = None
            continue
        if isinstance(v, bool) or not isinstance(v, int | float) or not v >= 0:
            null = " or null" if nullable else ""
            raise NormsError(f"{path}: {key} must be a number of minutes >= 0{null}, got {v!r}")
        out[key] = float(v)
    return out


def _merge(base: dict[str, Any], user: dict[str, Any], path: Path | str) -> dict[str, Any]:
    allowed = ["version", *_SETTINGS, "rules"]
    unknown = sorted(set(user) - set(allowed))
    if unknown:
        raise NormsError(f"{path}: unknown top-level key {unknown[0]!r}; allowed: {', '.join(allowed)}")
    out = copy.deepcopy(base)
    out.update(_settings(user, path, base))
    rules = user.get("rules") or {}
    if not isinstance(rules, Mapping):
        raise NormsError(f"{path}: rules must be a mapping of rule name to its bands, got {rules!r}")
    for name, rule in rules.items():
        if name not in out["rules"]:
            raise NormsError(f"{path}: rules.{name}: no such rule; the rules are {sorted(out['rules'])}")
        if not isinstance(rule, Mapping):
            raise NormsError(f"{path}: rules.{name}: expected a mapping (e.g. check: [5, 35]), got {rule!r}")
        merged = {**out["rules"][name], **rule}
        if "check" in rule or "do_not_use" in rule:  # new bands: the shipped age rows no longer apply
            merged["by_age"] = rule.get("by_age", [])
        _validate_rule(name, merged, str(path))
        out["rules"][name] = merged
    return out


def load_norms(path: str | Path | None = None) -> dict[str, Any]:
    """The plausibility norms: the shipped :file:`dsn/trust/norms.yaml`, overridden by ``path``.

    Parameters
    ----------
    path : str or Path, optional
        A YAML file with the same layout holding only what changes, e.g.
        ``rules: {rem_share: {check: [5, 40]}}``. A rule given with new ``check`` / ``do_not_use`` bands
        drops the shipped ``by_age`` rows unless it gives its own.

    Returns
    -------
    dict
        ``{"version", "min_tst_min", "max_wake_gap_min", "rules": {name: {description, unit, check,
        do_not_use, ...}}}``.

    Raises
    ------
    NormsError
        For a missing or unreadable file, bad YAML, an unknown rule or key, or a band that is not
        ``[low, high]`` or does not fit inside its ``do_not_use`` band: one line naming the key and the fix.
    """
    text = resources.files("dsn.trust").joinpath("norms.yaml").read_text(encoding="utf-8")
    base = _read_yaml("dsn/trust/norms.yaml", text)
    for name, rule in base["rules"].items():
        _validate_rule(name, rule, "dsn/trust/norms.yaml")
    base.update(_settings(base, "dsn/trust/norms.yaml", {}))
    if path is None:
        return base
    p = Path(path)
    try:
        user_text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise NormsError(f"{p}: cannot read the norms file ({e.strerror or e}); give an existing YAML file") from None
    return _merge(base, _read_yaml(p, user_text), p)


# --------------------------------------------------------------------------------------------
# The night's values
# --------------------------------------------------------------------------------------------
def _as_stages(stages: Any) -> np.ndarray:
    y = np.asarray(stages)
    if y.ndim != 1 or y.size == 0:
        raise DsnError(f"stages: expected a non-empty 1-D array of stage indices, got shape {y.shape}")
    if y.dtype.kind not in "iu" and not (y.dtype.kind == "f" and np.all(y == np.round(y))):
        raise DsnError(f"stages: expected integer stage indices (0 W .. 4 REM, negative unscored), got {y.dtype}")
    y = y.astype(np.int64)
    if (y >= N_CLASSES).any():
        bad = int(np.flatnonzero(y >= N_CLASSES)[0])
        raise DsnError(f"stages: value {int(y[bad])} at epoch {bad} is not a stage index (0..{N_CLASSES - 1}: "
                       f"{', '.join(STAGES)}; negative for unscored)")
    return np.where(y < 0, -1, y)


def _run_lengths(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Values and lengths of the runs of equal consecutive values of ``v`` (non-empty)."""
    edges = np.flatnonzero(v[1:] != v[:-1]) + 1
    starts = np.r_[0, edges]
    return v[starts], np.diff(np.r_[starts, v.size])


def main_sleep_period(stages: Any, epoch_sec: float = 30.0, max_wake_gap_min: float | None = 90.0) -> slice | None:
    """The main sleep period: the stretch of sleep with the most sleep whose wake gaps are all shorter than
    ``max_wake_gap_min``, from its first to its last sleep epoch (None without sleep).

    A gap of more than ``max_wake_gap_min`` of wake (or unscored epochs) splits the recording, so a nap, an
    evening doze or stray epochs scored as sleep hours before bedtime in a 22-h recording do not move sleep
    onset. ``max_wake_gap_min`` None: from the first to the last sleep epoch of the recording (AASM's sleep
    period time).
    """
    y = _as_stages(stages)
    asleep = np.flatnonzero(y > 0)
    if asleep.size == 0:
        return None
    if max_wake_gap_min is None:
        return slice(int(asleep[0]), int(asleep[-1]) + 1)
    cuts = np.flatnonzero((np.diff(asleep) - 1) * epoch_sec / 60.0 > max_wake_gap_min) + 1
    chunks = np.split(asleep, cuts)
    best = chunks[int(np.argmax([c.size for c in chunks]))]
    return slice(int(best[0]), int(best[-1]) + 1)


def night_values(stages: Any, epoch_sec: float = 30.0, min_n3_min: float = 10.0,
                 max_wake_gap_min: float | None = 90.0, min_rem_bout_min: float = 0.0) -> dict[str, float | None]:
    """The quantities the rules look at, from one hypnogram.

    Parameters
    ----------
    stages : array-like of int, shape (n_epochs,)
        0 W, 1 N1, 2 N2, 3 N3, 4 REM (:data:`dsn.data.labels.STAGES`); negative = unscored.
    epoch_sec : float, default 30.0
    min_n3_min : float, default 10.0
    min_rem_bout_min : float, default 0.0
        ``rem_latency`` runs to the first run of REM at least this long (0: the first REM epoch, AASM).
        Minimum N3 time for ``n3_first_third`` to be computed.
    max_wake_gap_min : float or None, default 90.0
        See :func:`main_sleep_period`: every value but ``total_sleep_time`` is computed on the main sleep
        period only.

    Returns
    -------
    dict
        ``recording_min``, ``total_sleep_time`` (min, whole recording), ``period_sleep_min`` (min of sleep
        in the main sleep period), ``period_min`` (its length, sleep and wake), ``n1_share`` .. ``rem_share`` (% of the period's sleep),
        ``rem_latency`` (min from sleep onset), ``n3_first_third`` (% of N3 time in the first third of the
        sleep period), ``transitions_per_hour`` (W/NREM/REM changes per hour of sleep),
        ``isolated_epochs`` (% of the sleep period's scored epochs unlike both neighbours),
        ``longest_run`` (min). None where undefined (no sleep, no REM, too little N3).
    """
    if not epoch_sec > 0:
        raise DsnError(f"epoch_sec={epoch_sec}: the epoch length must be positive (30 s for AASM epochs)")
    y = _as_stages(stages)
    minute = epoch_sec / 60.0
    out: dict[str, float | None] = {"recording_min": y.size * minute,
                                    "total_sleep_time": np.count_nonzero(y > 0) * minute, "period_sleep_min": 0.0,
                                    "period_min": 0.0}
    names = ("n1_share", "n2_share", "n3_share", "rem_share", "rem_latency", "n3_first_third",
             "transitions_per_hour", "isolated_epochs", "longest_run")
    out |= dict.fromkeys(names)
    period = main_sleep_period(y, epoch_sec, max_wake_gap_min)
    if period is None:
        return out
    spt = y[period]
    asleep = np.flatnonzero(spt > 0)
    out["period_sleep_min"] = asleep.size * minute
    out["period_min"] = spt.size * minute
    for i, key in enumerate(("n1_share", "n2_share", "n3_share", "rem_share"), start=1):
        out[key] = 100.0 * np.count_nonzero(spt == i) / asleep.size
    rem = np.flatnonzero(spt == _REM)
    if rem.size and min_rem_bout_min > 0:  # the first run of REM long enough to be a REM period
        starts = np.flatnonzero(np.diff(np.r_[0, spt == _REM, 0]) == 1)
        ends = np.flatnonzero(np.diff(np.r_[0, spt == _REM, 0]) == -1)
        long = starts[(ends - starts) * minute >= min_rem_bout_min]
        rem = long if long.size else rem[:0]
    out["rem_latency"] = float(rem[0]) * minute if rem.size else None
    n3 = np.flatnonzero(spt == _N3)
    if n3.size * minute >= min_n3_min:
        out["n3_first_third"] = 100.0 * np.count_nonzero(n3 < spt.size / 3.0) / n3.size
    scored = spt[spt >= 0]
    state = np.select([scored == 0, scored == _REM], [0, 2], 1)  # W, REM, NREM
    out["transitions_per_hour"] = np.count_nonzero(state[1:] != state[:-1]) / (asleep.size * minute / 60.0)
    values, lengths = _run_lengths(scored)
    out["isolated_epochs"] = 100.0 * lengths[lengths == 1].sum() / scored.size
    out["longest_run"] = float(lengths[values > 0].max()) * minute
    return out


# --------------------------------------------------------------------------------------------
# The rules
# --------------------------------------------------------------------------------------------
def _bands_for(rule: Mapping, age: float | None) -> tuple[tuple, tuple]:
    check, dnu = _band(rule["check"], "check"), _band(rule["do_not_use"], "do_not_use")
    if age is None:
        return check, dnu
    for row in rule.get("by_age") or []:
        lo, hi = _band(row["ages"], "ages")
        if (lo is None or age >= lo) and (hi is None or age < hi):
            return _band(row["check"], "check"), _band(row["do_not_use"], "do_not_use")
    return check, dnu


def _outside(value: float, band: tuple) -> str | None:
    if band[0] is not None and value < band[0]:
        return "low"
    if band[1] is not None and value > band[1]:
        return "high"
    return None


def _judge(name: str, rule: Mapping, value: float | None, age: float | None, why_not: str | None,
           period_min: float = math.inf) -> RuleResult:
    check, dnu = _bands_for(rule, age)
    unit, what = rule.get("unit", ""), rule.get("description", name)
    if value is None or why_not is not None:
        reason = f"{name}: not assessed ({why_not or 'undefined for this night'})"
        return RuleResult(name, None if value is None else float(value), unit, check, dnu, "ok", reason)
    value = float(value)
    # A side that needs a whole night is not judged on a shorter sleep period (see norms.yaml).
    short = {k: m for k, m in _period_sides(rule.get("min_period_min"), name).items() if period_min < m}
    judged = [tuple(None if side in short else b for side, b in zip(_SIDES, band)) for band in (check, dnu)]
    side = _outside(value, judged[1])
    level, band = ("do_not_use", judged[1]) if side else ("check", judged[0])
    side = side or _outside(value, judged[0])
    if side is None:
        extra = "".join(f" (its {k} bound is not judged on a sleep period of {period_min:.0f} min, under {m:g})"
                        for k, m in short.items())
        return RuleResult(name, value, unit, check, dnu, "ok",
                          f"{name}: {what} {value:.1f} {unit} within {_show(judged[0])}{extra}")
    bound = band[0] if side == "low" else band[1]
    note = rule.get(f"{side}_note")
    reason = f"{name}: {what} {value:.1f} {unit} {'<' if side == 'low' else '>'} {bound:g}" + (f" ({note})" if note else "")
    return RuleResult(name, value, unit, check, dnu, level, reason)


def check_night(stages: Any, epoch_sec: float = 30.0, norms: Mapping | str | Path | None = None,
                age: float | None = None) -> list[RuleResult]:
    """Each plausibility rule of ``norms`` applied to one predicted hypnogram.

    Parameters
    ----------
    stages : array-like of int, shape (n_epochs,)
        One stage per epoch in dsn's label order (0 W, 1 N1, 2 N2, 3 N3, 4 REM); negative = unscored.
        The whole recording or its scored period: the main sleep period and its onset are found in it.
    epoch_sec : float, default 30.0
    norms : mapping, str or Path, optional
        :func:`load_norms`'s result, or a user norms file to read with it; default: the shipped norms.
    age : float, optional
        The sleeper's age in years: the rules' ``by_age`` rows apply (the all-adult bands without it).

    Returns
    -------
    list of RuleResult
        One per rule, in the norms file's order. Rules that cannot be assessed (no REM for the REM
        latency, less than ``min_tst_min`` of sleep in the main sleep period for the architecture rules,
        a recording shorter
        than ``min_recording_min``) are ``ok`` with ``value`` None or the reason saying why; a band side whose
        ``min_period_min`` exceeds the main sleep period's length (a side that needs a whole night) is not
        judged, and the reason says so.

    Raises
    ------
    DsnError
        For a hypnogram that is not 1-D stage indices, a bad ``age`` or a bad norms file.
    """
    if not isinstance(norms, Mapping):
        norms = load_norms(norms)
    if age is not None and not (isinstance(age, int | float) and 0 <= age < 130):
        raise DsnError(f"age={age!r}: expected the sleeper's age in years (0-130) or None")
    rules = norms["rules"]
    min_n3 = float(rules.get("n3_first_third", {}).get("min_n3_min", 10.0))
    bout = float(rules.get("rem_latency", {}).get("min_rem_bout_min", 0.0))
    values = night_values(stages, epoch_sec, min_n3, norms.get("max_wake_gap_min", 90.0), bout)
    tst, min_tst = values["period_sleep_min"], float(norms.get("min_tst_min", 60.0))
    results = []
    for name, rule in rules.items():
        why_not = None
        if name not in _ARCHITECTURE_EXEMPT and tst < min_tst:
            why_not = f"{tst:.1f} min of sleep in the main sleep period, under the {min_tst:g} min the rule needs"
        elif values["recording_min"] < float(rule.get("min_recording_min", 0.0)):
            why_not = f"recording of {values['recording_min']:.0f} min, under {rule['min_recording_min']} min"
        elif name == "n3_first_third" and values[name] is None:
            why_not = f"under {min_n3:g} min of N3"
        elif name == "rem_latency" and values[name] is None:
            why_not = "no REM period"
        results.append(_judge(name, rule, values.get(name), age, why_not, values["period_min"]))
    return results
