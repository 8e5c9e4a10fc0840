"""Calibration of a selected model: a temperature and a low-confidence threshold fitted on the validation
subjects, the description of its training nights, and their figures.

``dsn fit`` calls :func:`calibrate_selected` and :func:`describe_nights` once per stage, after selection and
evaluation (:func:`dsn.workflows.stage.calibrate`): the temperature and the threshold are fitted on the
validation subjects' predictions only (never the test subjects'), stored in the scorer
(``spec()["calibration"] = {"temperature": T, "threshold": t}``, ``spec()["familiarity"]``) so that
``selected.ckpt``, the logged model, ``dsn predict``, the hypnodensity and the CSV use them, and the expected
calibration error and Brier score are reported before (``*_raw``) and after on every split, with the accuracy
of the confident and the flagged epochs. ``dsn cv`` pools the same figures over folds with
:func:`pooled_calibration`; a resumed finished stage gets them back with :func:`restore_trust`.

Predictions (:class:`dsn.workflows.results.Prediction`) keep the network's raw probabilities; the calibrated
ones are :func:`dsn.evaluation.apply_temperature` of them. Nothing here writes or logs: the stage's recorder
does (:meth:`dsn.workflows.recorder.Recorder.record_trust`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dsn import evaluation
from dsn.evaluation import LOW_CONFIDENCE

#: Most training epochs the feature reference is fitted on (evenly strided over the training nights).
MAX_FEATURE_EPOCHS = 4000
#: Most validation epochs per night scored for the feature threshold (a night's score is a median).
MAX_VAL_EPOCHS = 1200

#: The bounds of the threshold a fit chooses on validation epochs (:func:`low_confidence_threshold`).
THRESHOLD_BOUNDS = (0.3, 0.8)


def _stack(preds: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """``(n, C)`` probabilities and ``(n,)`` labels of several recordings, concatenated."""
    if not preds:
        return np.zeros((0, 1)), np.zeros(0, dtype=np.int64)
    return np.concatenate([p.proba for p in preds]), np.concatenate([p.y_true for p in preds])


def split_figures(proba: np.ndarray, y: np.ndarray, temperature: float,
                  threshold: float = LOW_CONFIDENCE) -> dict[str, float]:
    """Calibration and confidence figures of one split from raw probabilities.

    Parameters
    ----------
    proba : ndarray, shape (n_epochs, n_classes)
        The network's raw probabilities.
    y : ndarray, shape (n_epochs,)
        True classes (negative: unscored, left out).
    temperature : float
        Calibration temperature.
    threshold : float, default ``LOW_CONFIDENCE``
        Epochs whose calibrated top-class probability is below it are "flagged".

    Returns
    -------
    dict of str to float
        ``ece_raw``, ``ece``, ``brier_raw``, ``brier`` (15-bin top-label ECE, multi-class Brier),
        ``flagged_frac`` (share of scored epochs flagged), ``acc_confident`` and ``acc_flagged`` (accuracy
        of the confident / flagged epochs; NaN when there are none).
    """
    if len(y) == 0:
        return {}
    cal = evaluation.apply_temperature(proba, temperature)
    keep = y >= 0
    top, _ = evaluation.confidence(cal[keep])
    correct = cal[keep].argmax(1) == y[keep]
    flagged = top < threshold
    nan = float("nan")
    return {
        "ece_raw": evaluation.expected_calibration_error(proba, y),
        "ece": evaluation.expected_calibration_error(cal, y),
        "brier_raw": evaluation.brier_score(proba, y),
        "brier": evaluation.brier_score(cal, y),
        "flagged_frac": float(flagged.mean()) if flagged.size else nan,
        "acc_confident": float(correct[~flagged].mean()) if (~flagged).any() else nan,
        "acc_flagged": float(correct[flagged].mean()) if flagged.any() else nan,
    }


def low_confidence_threshold(proba: np.ndarray, y: np.ndarray, bounds: tuple[float, float] = THRESHOLD_BOUNDS) -> float:
    """The default low-confidence threshold, chosen on validation epochs.

    The rule: the largest calibrated top-class probability ``t`` such that the validation epochs whose
    top-class probability is below ``t`` are right less than half the time (so the flagged epochs, taken
    together, are more often wrong than right), bounded to ``bounds``; the lower bound when even the least
    confident epochs are right at least half the time (or there are no scored epochs).

    Parameters
    ----------
    proba : ndarray, shape (n_epochs, n_classes)
        Calibrated probabilities of the validation epochs.
    y : ndarray, shape (n_epochs,)
        True classes (negative: unscored, left out).
    bounds : (float, float), default ``THRESHOLD_BOUNDS``
        Smallest and largest threshold returned.

    Returns
    -------
    float
    """
    lo, hi = bounds
    keep = y >= 0
    if not keep.any():
        return float(lo)
    top, _ = evaluation.confidence(proba[keep])
    correct = (proba[keep].argmax(1) == y[keep]).astype(np.float64)
    order = np.argsort(top, kind="stable")
    top, correct = top[order], correct[order]
    n = np.arange(1, len(top) + 1)
    below = np.cumsum(correct) / n < 0.5  # accuracy of the epochs up to and including each one
    if not below.any():
        return float(lo)
    k = int(np.flatnonzero(below)[-1])
    # every epoch up to k is flagged: the threshold sits just above its confidence (midway to the next one)
    t = float(top[k] if k + 1 == len(top) else (top[k] + top[k + 1]) / 2)
    if t <= top[k]:
        t = float(np.nextafter(top[k], np.inf))
    return float(min(hi, max(lo, t)))


def calibrate_selected(scorer, predictions: Mapping[str, Sequence[Any]],
                       threshold: float | None = None) -> tuple[dict[str, float], dict[str, tuple]]:
    """Fit the selected model's temperature on its validation predictions, store it, report the figures.

    Parameters
    ----------
    scorer : dsn.models.scoring.SleepScorer
        The selected model; its ``calibration`` is set to ``{"temperature": T, "threshold": t}``.
    predictions : mapping of split to list of Prediction
        Raw predictions per split (``"val"``: the only one fitted on; ``"test"`` optional, only reported).
    threshold : float, optional
        Low-confidence threshold (``calibration.low_confidence``); None: :func:`low_confidence_threshold`
        of the calibrated validation epochs.

    Returns
    -------
    metrics : dict of str to float
        ``calibration/temperature``, ``calibration/threshold`` and, per split, ``{split}/ece_raw``,
        ``{split}/ece``, ``{split}/brier_raw``, ``{split}/brier``, ``{split}/flagged_frac``,
        ``{split}/acc_confident``, ``{split}/acc_flagged``; only finite values (no flagged epoch: no
        ``acc_flagged``).
    reliability : dict of split to (raw bins, calibrated bins, title)
        :func:`dsn.evaluation.reliability_bins` of each split, for :func:`dsn.plots.reliability_figure`.
    """
    proba, y = _stack(predictions.get("val", []))
    temperature = evaluation.fit_temperature(np.log(np.clip(proba, 1e-12, None)), y) if len(y) else 1.0
    if threshold is None:
        threshold = low_confidence_threshold(evaluation.apply_temperature(proba, temperature), y) if len(y) else LOW_CONFIDENCE
    scorer.calibration = {"temperature": float(temperature), "threshold": float(threshold)}
    reference = shift_reference(predictions.get("val", []))
    if reference is not None:
        scorer.calibration["shift"] = reference
    metrics: dict[str, float] = {"calibration/temperature": float(temperature), "calibration/threshold": float(threshold)}
    if reference is not None:
        metrics["calibration/shift_threshold"] = reference["threshold"]
    reliability = {}
    for split, preds in predictions.items():
        proba, y = _stack(preds)
        if len(y) == 0 or not (y >= 0).any():
            continue
        figs = split_figures(proba, y, temperature, threshold)
        metrics.update({f"{split}/{k}": v for k, v in figs.items()})
        raw = evaluation.reliability_bins(proba, y)
        cal = evaluation.reliability_bins(evaluation.apply_temperature(proba, temperature), y)
        title = f"{split} subjects: reliability (T = {temperature:.2f}; ECE {figs['ece_raw']:.3f} -> {figs['ece']:.3f})"
        reliability[split] = (raw, cal, title)
    return finite(metrics), reliability


def shift_reference(preds: Sequence[Any]) -> dict[str, Any] | None:
    """The prediction-level shift reference of the selected model (:func:`dsn.trust.shift.fit_reference`):
    its validation confusion matrix pooled over the scored epochs and each validation night's predicted-stage
    counts (the nights as training scored them: the sleep period plus ``trim_minutes``, as ``dsn predict``'s
    final pass). None without validation nights."""
    from dsn.trust import fit_reference

    nights = [(p.proba.argmax(-1), np.asarray(p.y_true)) for p in preds if len(p.y_true)]
    if not nights:
        return None
    k = preds[0].proba.shape[-1]
    confusion = np.zeros((k, k))
    for pred, y in nights:
        keep = (y >= 0) & (y < k)
        np.add.at(confusion, (y[keep], pred[keep]), 1)
    counts = np.stack([np.bincount(pred, minlength=k)[:k] for pred, _ in nights])
    return fit_reference(confusion, counts)


def feature_reference(scorer, recordings: Mapping[str, Sequence[Any]]) -> dict[str, Any] | None:
    """The feature-level shift reference of the selected model (:func:`dsn.trust.fit_feature_reference`):
    class Gaussians of its epoch encoder's features on the training nights' epochs with their true stages (at
    most :data:`MAX_FEATURE_EPOCHS`, evenly strided), the threshold from the validation nights' scores
    (``recordings[split]``: objects with ``x``, the normalised epochs, and ``y``, the stages). None for a model
    without a separate encoder or without training or validation nights."""
    from dsn.trust import fit_feature_reference
    from dsn.workflows.trust import epoch_features

    train, val = recordings.get("train") or [], recordings.get("val") or []
    if scorer.kind == "epoch" or not train or not val:
        return None
    stride = max(1, -(-sum(len(r.y) for r in train) // MAX_FEATURE_EPOCHS))
    feats = np.concatenate([epoch_features(scorer, np.asarray(r.x[::stride])) for r in train])
    labels = np.concatenate([np.asarray(r.y)[::stride] for r in train])
    val_feats = [epoch_features(scorer, np.asarray(r.x[:: max(1, -(-len(r.y) // MAX_VAL_EPOCHS))])) for r in val]
    return fit_feature_reference(feats, labels, val_feats)


def format_figures(figures: Mapping[str, float]) -> str:
    """One line of a split's (or a cv pool's) figures: ECE and Brier raw -> calibrated, accuracy of the confident vs
    the flagged epochs, the share flagged (``n/a`` for a figure left out)."""

    def get(key: str, pct: bool = False) -> str:
        v = figures.get(key)
        if v is None or not np.isfinite(v):
            return "n/a"
        return f"{100 * v:.1f}%" if pct else f"{v:.3f}"

    return (f"ECE {get('ece_raw')} -> {get('ece')}, Brier {get('brier_raw')} -> {get('brier')}; accuracy "
            f"{get('acc_confident', True)} on confident vs {get('acc_flagged', True)} on low-confidence epochs "
            f"({get('flagged_frac', True)} of the epochs flagged)")


def finite(metrics: Mapping[str, float]) -> dict[str, float]:
    """The figures that are numbers (NaN ones, e.g. the accuracy of no flagged epoch, left out)."""
    return {k: float(v) for k, v in metrics.items() if v is not None and np.isfinite(v)}


def pooled_calibration(folds: Sequence[Mapping[str, Any]], stage: str, key: str = "predictions") -> dict[str, float]:
    """``dsn cv``: the figures of :func:`split_figures` over the pooled epochs of every fold.

    Each fold's raw probabilities are calibrated with that fold's temperature and flagged with that fold's
    threshold (its stage metrics ``calibration/temperature``, ``calibration/threshold``; 1 and
    ``LOW_CONFIDENCE`` when absent), as its model would score them; then the epochs are pooled. ECE and Brier
    are :func:`split_figures`' ``*_raw`` figures of the pooled raw and of the pooled calibrated probabilities;
    the flagged share and the accuracy of confident and flagged epochs are each fold's :func:`split_figures`
    (what its fit reports), pooled by their epoch counts. NaN figures (no flagged epoch) are left out.
    """
    raw, cal, ys = [], [], []
    counts = np.zeros(4)  # scored, flagged, right among the confident, right among the flagged epochs
    for f in folds:
        proba, y = _stack(f.get(key, {}).get(stage, []))
        if len(y) == 0:
            continue
        m = f.get("metrics", {}).get(stage, {})
        t = float(m.get("calibration/temperature", 1.0))
        raw.append(proba), ys.append(y)
        cal.append(evaluation.apply_temperature(proba, t) if t != 1.0 else proba)
        figs = split_figures(proba, y, t, float(m.get("calibration/threshold", LOW_CONFIDENCE)))
        n = int((y >= 0).sum())
        n_flagged = round(figs["flagged_frac"] * n) if n else 0  # each figure is a count over n epochs: exact back
        right = [round(figs[k] * c) if c else 0 for k, c in (("acc_confident", n - n_flagged), ("acc_flagged", n_flagged))]
        counts += [n, n_flagged, *right]
    if not ys:
        return {}
    y = np.concatenate(ys)
    before, after = split_figures(np.concatenate(raw), y, 1.0), split_figures(np.concatenate(cal), y, 1.0)
    n, n_flagged, right_confident, right_flagged = counts
    nan = float("nan")
    return finite({
        "ece_raw": before["ece_raw"], "ece": after["ece_raw"], "brier_raw": before["brier_raw"], "brier": after["brier_raw"],
        "flagged_frac": n_flagged / n if n else nan,
        "acc_confident": right_confident / (n - n_flagged) if n > n_flagged else nan,
        "acc_flagged": right_flagged / n_flagged if n_flagged else nan,
        "n_epochs": float(n),
    })  # fmt: skip


def describe_nights(scorer, recordings: Mapping[str, Sequence[Any]], predictions: Mapping[str, Sequence[Any]]) -> dict:
    """:func:`dsn.familiarity.describe` of the training and validation nights (``recordings[split]``: objects
    with ``x``, the normalised ``(n_epochs, n_chans, n_times)`` epochs), with the validation nights' mean
    calibrated confidence from ``predictions["val"]``."""
    from dsn import familiarity

    channels = scorer.channels
    train = [familiarity.night_features(r.x, scorer.sfreq) for r in recordings.get("train", [])]
    conf = {p.name: float(evaluation.confidence(evaluation.apply_temperature(p.proba, scorer.temperature))[0].mean())
            for p in predictions.get("val", []) if len(p.proba)}
    val = [familiarity.night_features(r.x, scorer.sfreq, conf.get(r.name)) for r in recordings.get("val", [])]
    return familiarity.describe(train, val, channels)


def restore_trust(scorer, spec: Mapping[str, Any]) -> None:
    """A resumed stage's scorer: the calibration and familiarity description stored in its checkpoint's spec."""
    scorer.calibration = dict(spec.get("calibration") or {})
    scorer.familiarity = dict(spec.get("familiarity") or {})
