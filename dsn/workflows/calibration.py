"""Calibration of a selected model: a temperature fitted on the validation subjects, and its figures.

``dsn fit`` calls :func:`calibrate_selected` once per stage, after selection and evaluation: the
temperature is fitted on the validation subjects' predictions only (never the test subjects'), stored in
the scorer (``spec()["calibration"]``) so that ``dsn predict``, the hypnodensity and the CSV use it, and
the expected calibration error and Brier score are reported before (``*_raw``) and after on every split.
``dsn cv`` pools the same figures over folds with :func:`pooled_calibration`.

Predictions (:class:`dsn.workflows.fit.Prediction`) keep the network's raw probabilities; the calibrated
ones are :func:`dsn.evaluation.apply_temperature` of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dsn import evaluation

#: Default low-confidence threshold on the calibrated top-class probability (``dsn predict --low_confidence``).
LOW_CONFIDENCE = 0.5


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


def calibrate_selected(scorer, predictions: Mapping[str, Sequence[Any]]) -> tuple[dict[str, float], list]:
    """Fit the selected model's temperature on its validation predictions, store it, report the figures.

    Parameters
    ----------
    scorer : dsn.models.scoring.SleepScorer
        The selected model; its ``calibration`` is set to ``{"temperature": T}``.
    predictions : mapping of split to list of Prediction
        Raw predictions per split (``"val"`` required for fitting; ``"test"`` optional).

    Returns
    -------
    metrics : dict of str to float
        ``calibration/temperature`` and, per split, ``{split}/ece_raw``, ``{split}/ece``,
        ``{split}/brier_raw``, ``{split}/brier``, ``{split}/flagged_frac``, ``{split}/acc_confident``,
        ``{split}/acc_flagged``.
    figures : list of (artifact name, matplotlib Figure)
        A reliability diagram per split (raw and calibrated).
    """
    from dsn import plots

    proba, y = _stack(predictions.get("val", []))
    temperature = evaluation.fit_temperature(np.log(np.clip(proba, 1e-12, None)), y) if len(y) else 1.0
    scorer.calibration = {"temperature": temperature}
    metrics: dict[str, float] = {"calibration/temperature": temperature}
    figures = []
    for split, preds in predictions.items():
        proba, y = _stack(preds)
        if len(y) == 0:
            continue
        figs = split_figures(proba, y, temperature)
        metrics.update({f"{split}/{k}": v for k, v in figs.items()})
        raw = evaluation.reliability_bins(proba, y)
        cal = evaluation.reliability_bins(evaluation.apply_temperature(proba, temperature), y)
        title = f"{split} subjects: reliability (T = {temperature:.2f}; ECE {figs['ece_raw']:.3f} -> {figs['ece']:.3f})"
        figures.append((f"calibration/reliability_{split}.png", plots.reliability_figure(raw, cal, title=title)))
    return metrics, figures


def pooled_calibration(folds: Sequence[Mapping[str, Any]], stage: str, key: str = "predictions") -> dict[str, float]:
    """``dsn cv``: the figures of :func:`split_figures` over the pooled epochs of every fold.

    Each fold's raw probabilities are calibrated with that fold's temperature (its stage metric
    ``calibration/temperature``; 1 when absent), then pooled.
    """
    raw, cal, ys = [], [], []
    for f in folds:
        proba, y = _stack(f.get(key, {}).get(stage, []))
        if len(y) == 0:
            continue
        t = float(f.get("metrics", {}).get(stage, {}).get("calibration/temperature", 1.0))
        raw.append(proba)
        cal.append(evaluation.apply_temperature(proba, t) if t != 1.0 else proba)
        ys.append(y)
    if not ys:
        return {}
    y = np.concatenate(ys)
    # the pooled calibrated probabilities with T = 1 give the calibrated figures; the raw ones the raw figures
    out = split_figures(np.concatenate(cal), y, 1.0)
    out["ece_raw"] = evaluation.expected_calibration_error(np.concatenate(raw), y)
    out["brier_raw"] = evaluation.brier_score(np.concatenate(raw), y)
    return out


def describe_nights(scorer, recordings: Mapping[str, Sequence[Any]], predictions: Mapping[str, Sequence[Any]]) -> dict:
    """:func:`dsn.familiarity.describe` of the training and validation nights (``recordings[split]``: objects
    with ``x``, the normalised ``(n_epochs, n_chans, n_times)`` epochs), with the validation nights' mean
    calibrated confidence from ``predictions["val"]``."""
    from dsn import familiarity

    prep = scorer.preprocessing
    channels = prep.get("channels") or [prep.get("channel", "channel 0")]
    channels = [channels] if isinstance(channels, str) else list(channels)
    train = [familiarity.night_features(r.x, scorer.sfreq) for r in recordings.get("train", [])]
    conf = {p.name: float(evaluation.confidence(evaluation.apply_temperature(p.proba, scorer.temperature))[0].mean())
            for p in predictions.get("val", []) if len(p.proba)}
    val = [familiarity.night_features(r.x, scorer.sfreq, conf.get(r.name)) for r in recordings.get("val", [])]
    return familiarity.describe(train, val, channels)


def record_trust(uri: str, run_id: str, scorer, predictions: Mapping[str, Sequence[Any]],
                 recordings: Mapping[str, Sequence[Any]] | None = None, selected_checkpoint=None) -> dict[str, float]:
    """After selection and evaluation: :func:`calibrate_selected` and :func:`describe_nights` (stored in the
    scorer), their metrics (``selected/...``) and reliability diagrams logged to the stage run, and the
    scorer spec of the selected checkpoint updated; returns the metrics."""
    from dsn import tracking

    metrics, figures = calibrate_selected(scorer, predictions)
    if recordings:
        scorer.familiarity = describe_nights(scorer, recordings, predictions)
        metrics["familiarity/threshold"] = scorer.familiarity["threshold"]
    metrics = {k: v for k, v in metrics.items() if np.isfinite(v)}  # e.g. no flagged epoch: no acc_flagged
    tracking.log_metrics(uri, run_id, {f"selected/{k}": v for k, v in metrics.items()})
    for name, fig in figures:
        tracking.log_figure(uri, run_id, fig, name)
    if scorer.familiarity:
        tracking.log_dict(uri, run_id, scorer.familiarity, "familiarity.json")
    if selected_checkpoint is not None:
        _store_spec(selected_checkpoint, scorer.spec())
    return metrics


def restore_trust(scorer, spec: Mapping[str, Any]) -> None:
    """A resumed stage's scorer: the calibration and familiarity description stored in its checkpoint's spec."""
    scorer.calibration = dict(spec.get("calibration") or {})
    scorer.familiarity = dict(spec.get("familiarity") or {})


def _store_spec(path, spec: dict) -> None:
    """Replace the ``dsn_scorer`` spec of a selected checkpoint (atomically)."""
    from pathlib import Path

    import torch

    path = Path(path)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    ckpt["dsn_scorer"] = spec
    tmp = path.with_suffix(".spec.tmp")
    torch.save(ckpt, tmp)
    tmp.replace(path)
