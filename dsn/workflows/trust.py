"""One verdict on a scored night: the detectors of :mod:`dsn.trust` and dsn's own signals, combined.

Used by ``dsn predict``, ``dsn evaluate`` and the served model, so that every place that scores a night
judges it the same way:

- the plausibility rules (:func:`dsn.trust.plausibility.check_night`) on the predicted hypnogram;
- the prediction-level shift (:func:`dsn.trust.shift.check_shift`) when the model's calibration stored a
  reference (``calibration["shift"]``, fitted on its validation nights);
- the feature-level shift (:func:`dsn.trust.features.check_features`) when the model's calibration stored a
  reference (``calibration["features"]``: class Gaussians of its training epochs' encoder features, threshold on
  its validation nights; :func:`dsn.workflows.calibration.feature_reference`) and the caller passes the night's
  features (:func:`scored_features`); a model from before it (no reference) skips this detector;
- the familiarity check (:mod:`dsn.familiarity`): a night unlike the training nights is ``check``;
- impossible signals scored with ``--force`` (:mod:`dsn.data.sanity`): ``do not use``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dsn.trust import Verdict, check_features, check_night, check_shift, combine

__all__ = ["epoch_features", "night_verdict", "scored_features", "scorer_verdict"]


def epoch_features(scorer, x: np.ndarray) -> np.ndarray | None:
    """The epoch encoder's output for each of the normalised epochs ``x``, ``(n_epochs, n_features)`` float32
    (what the sequence model reads); None for a model without a separate encoder (``kind == "epoch"``)."""
    if scorer.kind == "epoch":
        return None
    return scorer.night_features(x).feats.float().cpu().numpy()


def scored_features(scorer, x_in: np.ndarray, period: slice | None = None) -> np.ndarray | None:
    """The features :func:`night_verdict` compares with the model's feature reference: the encoder's output on
    the scored period of the normalised night (``x_in[period]``, as ``dsn predict``'s final pass scored it).
    None (nothing computed) when the model stored no feature reference."""
    if not (scorer.calibration or {}).get("features"):
        return None
    return epoch_features(scorer, x_in if period is None else x_in[period])


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
                  problems: Sequence[Any] = (), norms: Any = None, age: float | None = None,
                  features: np.ndarray | None = None) -> Verdict:
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
    features : numpy.ndarray, shape (n_scored_epochs, n_features), optional
        The night's encoder features (:func:`scored_features`); with the calibration's ``features`` reference,
        the feature-level shift check. Without either, that check is skipped.
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
    feature_ref = (calibration or {}).get("features")
    if feature_ref and features is not None and len(features):
        findings.append(check_features(feature_ref, features))
    findings += _familiarity_finding(familiar)
    findings += _signal_findings(problems)
    return combine(findings)


def scorer_verdict(scorer, stages: np.ndarray, x_in: np.ndarray, period: slice | None = None, **kwargs) -> Verdict:
    """:func:`night_verdict` of a night a scorer scored: its epoch length, its calibration (the shift
    references) and the encoder features of ``x_in[period]`` (the normalised epochs it scored) filled in;
    ``kwargs`` (``familiar``, ``problems``, ``norms``, ``age``) passed on."""
    epoch_sec = float(scorer.preprocessing.get("epoch_sec", 30.0))
    return night_verdict(stages, epoch_sec, calibration=scorer.calibration, period=period,
                         features=scored_features(scorer, x_in, period), **kwargs)
