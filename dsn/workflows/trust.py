"""One verdict on a scored night: the detectors of :mod:`dsn.trust` and dsn's own signals, combined.

Used by ``dsn predict``, ``dsn evaluate`` and the served model, so that every place that scores a night
judges it the same way:

- the plausibility rules (:func:`dsn.trust.plausibility.check_night`) on the predicted hypnogram;
- the prediction-level shift (:func:`dsn.trust.shift.check_shift`) when the model's calibration stored a
  reference (``calibration["shift"]``, fitted on its validation nights);
- the familiarity check (:mod:`dsn.familiarity`): a night unlike the training nights is ``check``;
- impossible signals scored with ``--force`` (:mod:`dsn.data.sanity`): ``do not use``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dsn.trust import Verdict, check_night, check_shift, combine

__all__ = ["night_verdict"]


def _familiarity_finding(familiar: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    if not familiar:
        return []
    from dsn.familiarity import verdict

    level = "ok" if familiar.get("familiar", True) else "check"
    return [{"name": "familiarity", "level": level, "value": float(familiar.get("score", 0.0)),
             "reason": verdict(familiar)}]


def _signal_findings(problems: Sequence[Any]) -> list[dict[str, Any]]:
    def get(p, k):
        return p.get(k) if isinstance(p, Mapping) else getattr(p, k)

    return [{"name": "signal", "level": "do_not_use", "value": None,
             "reason": f"impossible signal on {get(p, 'channel')} ({get(p, 'kind')}), scored with --force"}
            for p in problems]


def night_verdict(stages: np.ndarray, epoch_sec: float = 30.0, *, calibration: Mapping[str, Any] | None = None,
                  period: slice | None = None, familiar: Mapping[str, Any] | None = None,
                  problems: Sequence[Any] = (), norms: Any = None, age: float | None = None) -> Verdict:
    """The verdict on one scored night.

    Parameters
    ----------
    stages : numpy.ndarray, shape (n_epochs,)
        The predicted stage of every 30-s epoch of the recording (dsn's class order).
    epoch_sec : float
        Length of a sleep epoch in seconds.
    calibration : mapping, optional
        The model's calibration (``SleepScorer.calibration``); its ``shift`` reference, when present, turns
        on the prediction-level shift check.
    period : slice, optional
        The epochs the model scored as the sleep period (``dsn predict``'s final pass); the shift check counts
        only these, as its reference counted the validation nights' sleep periods. Default: every epoch.
    familiar : mapping, optional
        :func:`dsn.familiarity.check`'s result for the night.
    problems : sequence
        The night's impossible channels (:mod:`dsn.data.sanity`), when scored with ``--force``.
    norms, age
        Passed to :func:`~dsn.trust.plausibility.check_night` (a norms file overriding the shipped ranges,
        the subject's age in years).

    Returns
    -------
    dsn.trust.Verdict
    """
    stages = np.asarray(stages)
    findings: list[Any] = list(check_night(stages, epoch_sec, norms=norms, age=age))
    reference = (calibration or {}).get("shift")
    if reference:
        scored = stages[period] if period is not None else stages
        n = len(reference["confusion"])
        findings.append(check_shift(reference, np.bincount(scored, minlength=n)[:n]))
    findings += _familiarity_finding(familiar)
    findings += _signal_findings(problems)
    return combine(findings)
