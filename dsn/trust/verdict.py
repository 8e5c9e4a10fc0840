"""One verdict per night from the trust detectors: ``trusted``, ``check`` or ``do not use``, with its reasons.

Every detector result is a *finding* with a ``name``, a ``level`` (``ok``, ``check`` or ``do_not_use``) and a
one-line ``reason``: :class:`dsn.trust.plausibility.RuleResult`, :class:`dsn.trust.shift.ShiftResult`, or a
mapping with those keys (another detector, e.g. a feature-level shift). The verdict is the most severe
level among them; its reasons are those of the findings at that level or ``check`` (the findings that are
``ok`` are kept in the dict form but named nowhere else).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dsn.errors import DsnError

__all__ = ["VERDICTS", "Verdict", "combine"]

#: Finding level -> verdict.
VERDICTS = {"ok": "trusted", "check": "check", "do_not_use": "do not use"}
_RANK = {"ok": 0, "check": 1, "do_not_use": 2}


def _finding(f: Any) -> dict[str, Any]:
    get = f.get if isinstance(f, Mapping) else (lambda k, d=None: getattr(f, k, d))
    name, level, reason = get("name"), get("level"), get("reason", "")
    if not name or level not in _RANK:
        raise DsnError(f"trust finding {f!r}: needs a name and a level among {list(_RANK)}")
    return {"name": str(name), "level": str(level), "value": get("value"), "reason": str(reason or name)}


@dataclass(frozen=True)
class Verdict:
    """The verdict on one night.

    Attributes
    ----------
    verdict : str
        ``"trusted"``, ``"check"`` or ``"do not use"``.
    reasons : tuple of str
        One line per finding behind it, the ``do_not_use`` ones first.
    findings : tuple of dict
        Every finding: ``name``, ``level``, ``value``, ``reason``.
    """

    verdict: str
    reasons: tuple[str, ...] = ()
    findings: tuple[dict[str, Any], ...] = field(default=())

    @property
    def rules(self) -> list[str]:
        """Names of the findings behind the verdict (empty when trusted)."""
        return [f["name"] for f in self.findings if f["level"] != "ok"]

    @property
    def code(self) -> int:
        """0 trusted, 1 check, 2 do not use (a number for metrics and exit codes)."""
        return {v: _RANK[k] for k, v in VERDICTS.items()}[self.verdict]

    def as_dict(self) -> dict[str, Any]:
        """JSON form: ``verdict``, ``code``, ``reasons`` (list), ``rules`` (names), ``findings``."""
        return {"verdict": self.verdict, "code": self.code, "reasons": list(self.reasons), "rules": self.rules,
                "findings": [dict(f) for f in self.findings]}

    def as_row(self) -> dict[str, str | int | float]:
        """Flat form for a CSV row, MLflow tags or metrics: ``trust_verdict``, ``trust_code``,
        ``trust_rules`` (names joined by ``;``), ``trust_reasons`` (joined by ``; ``) and
        ``trust_<name>`` = each finding's value where it has a number."""
        row: dict[str, str | int | float] = {"trust_verdict": self.verdict, "trust_code": self.code,
                                             "trust_rules": ";".join(self.rules), "trust_reasons": "; ".join(self.reasons)}
        for f in self.findings:
            if isinstance(f["value"], int | float) and not isinstance(f["value"], bool):
                row[f"trust_{f['name']}"] = float(f["value"])
        return row

    def text(self) -> str:
        """One line for a summary: ``verdict: do not use (rem_share: ...; rem_latency: ...)``."""
        return f"verdict: {self.verdict}" + (f" ({'; '.join(self.reasons)})" if self.reasons else "")


def combine(*findings: Any) -> Verdict:
    """The verdict from detector findings (given one by one or as lists).

    Parameters
    ----------
    *findings
        Findings or iterables of findings (e.g. ``check_night(...)`` and ``check_shift(...)``).

    Returns
    -------
    Verdict
        ``trusted`` when every finding is ``ok`` (or there are none), else the most severe level, with the
        reasons of every finding that is not ``ok``, the most severe first.
    """
    flat: list[dict[str, Any]] = []
    for f in findings:
        items = f if isinstance(f, Iterable) and not isinstance(f, Mapping | str) else [f]
        flat.extend(_finding(x) for x in items)
    worst = max((_RANK[f["level"]] for f in flat), default=0)
    level = next(k for k, v in _RANK.items() if v == worst)
    flagged = sorted((f for f in flat if f["level"] != "ok"), key=lambda f: -_RANK[f["level"]])
    return Verdict(VERDICTS[level], tuple(f["reason"] for f in flagged), tuple(flat))
