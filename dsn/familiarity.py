""""This night is unlike the training data": a compact description of nights and a check against it.

At the end of training the scorer stores :func:`describe` of its training and validation nights (the
signal the network saw, i.e. after the model's normalisation): per channel the amplitude (log10 of the
median epoch standard deviation), the relative power in the delta, theta, alpha, sigma and beta bands and
above 30 Hz, the share of power at the mains frequencies (50 and 60 Hz, where below Nyquist, and the
Nyquist bin itself at 100 Hz), the skewness of the signal (its sign flips with the polarity), and the nightly
mean confidence (validation nights), each as the median and spread over the nights. :func:`check` computes
the same for a new night and returns a familiarity score (the largest robust z-score over the features) and
one warning per reason where a feature is past the threshold, which is set so that every validation night
passes (compared with the training nights only) with a margin. Flat and clipped channels are absolute
checks (share of flat epochs, share of samples at the channel's extreme value).

numpy only; the description is JSON-ready (lists of floats) so it lives in ``SleepScorer.spec()``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["BANDS", "check", "describe", "night_features", "verdict"]

#: Frequency bands (Hz) whose share of the 0.5-30 Hz power is described.
BANDS = {"delta": (0.5, 4.0), "theta": (4.0, 8.0), "alpha": (8.0, 12.0), "sigma": (12.0, 16.0), "beta": (16.0, 30.0)}
#: Smallest spread of each feature (a few training nights can agree closely by chance).
_FLOOR = {"log_amp": 0.05, "mains": 0.25, "high": 0.1, "skew": 0.1, "mean_confidence": 0.03}
_BAND_FLOOR = 0.05
#: Absolute limits: share of flat epochs, share of samples at the channel's extreme value.
FLAT_LIMIT = 0.05
CLIP_LIMIT = 2e-3
#: A night is "clipped" only past this multiple of the largest clipped share of the training/validation nights
#: (recorders that saturate the same way at the same site are not a warning).
CLIP_FACTOR = 3.0
#: The score threshold is at least this, and at least ``MARGIN`` x the largest validation night's score.
MIN_THRESHOLD = 4.0
MARGIN = 1.5


def night_features(x: np.ndarray, sfreq: float, mean_confidence: float | None = None,
                   max_epochs: int = 400) -> dict[str, Any]:
    """Features of one night.

    Parameters
    ----------
    x : ndarray, shape (n_epochs, n_chans, n_times)
        The night's epochs as the network sees them (after normalisation).
    sfreq : float
        Sampling rate in Hz.
    mean_confidence : float, optional
        Mean top-class probability of the night's epochs.
    max_epochs : int, default 400
        Epochs used for the spectrum (evenly spaced; all of them for the amplitude and the flat/clip checks).

    Returns
    -------
    dict
        Per-channel lists: ``log_amp``, ``<band>`` (log10 share of the 0.5-30 Hz power), ``high`` (log10
        power above 30 Hz over the 0.5-30 Hz power), ``mains`` (log10 share of the power within 1 Hz of 50
        or 60 Hz, or in the top 1 Hz below Nyquist when that is 50 Hz), ``skew``, ``flat`` (share of epochs
        whose standard deviation is under 1e-3 of the night's median, or zero), ``clip`` (share of samples
        within 0.1 % of the channel's largest absolute value); and ``mean_confidence`` when given.
    """
    x = np.nan_to_num(np.asarray(x, dtype=np.float64))
    n_ep, n_ch, n_t = x.shape
    sd = x.std(axis=2)  # (n_epochs, n_chans)
    med = np.median(sd, axis=0)
    flat = (sd <= np.maximum(1e-3 * med, 1e-12)).mean(axis=0)
    peak = np.abs(x).max(axis=(0, 2))
    clip = (np.abs(x) >= 0.999 * peak[None, :, None]).mean(axis=(0, 2)) * (peak > 0)
    live = sd > np.maximum(1e-3 * med, 1e-12)
    pick = np.unique(np.linspace(0, n_ep - 1, min(n_ep, max_epochs)).astype(int))
    xs = x[pick] - x[pick].mean(axis=2, keepdims=True)
    power = np.abs(np.fft.rfft(xs, axis=2)) ** 2  # (epochs, chans, freqs)
    freqs = np.fft.rfftfreq(n_t, 1.0 / sfreq)
    out: dict[str, Any] = {"log_amp": [], "high": [], "mains": [], "skew": [], "flat": flat.tolist(),
                           "clip": clip.tolist(), **{b: [] for b in BANDS}}
    nyq = sfreq / 2.0
    mains_bins = np.zeros(freqs.shape, dtype=bool)
    for f0 in (50.0, 60.0):
        if f0 < nyq - 0.5:
            mains_bins |= np.abs(freqs - f0) <= 1.0
        elif abs(f0 - nyq) < 1e-6:
            mains_bins |= freqs >= nyq - 1.0
    tiny = 1e-12
    for c in range(n_ch):
        keep = live[pick, c]
        p = power[keep, c].mean(axis=0) if keep.any() else np.zeros(freqs.shape)
        sleep_band = p[(freqs >= 0.5) & (freqs < 30.0)].sum() + tiny
        for name, (lo, hi) in BANDS.items():
            out[name].append(float(np.log10(p[(freqs >= lo) & (freqs < hi)].sum() / sleep_band + tiny)))
        out["high"].append(float(np.log10(p[freqs >= 30.0].sum() / sleep_band + tiny)))
        out["mains"].append(float(np.log10(p[mains_bins].sum() / (p[freqs >= 0.5].sum() + tiny) + tiny)))
        out["log_amp"].append(float(np.log10(med[c] + tiny)))
        xc = x[live[:, c], c] if live[:, c].any() else x[:, c]
        xc = xc - xc.mean(axis=1, keepdims=True)
        s = xc.std(axis=1)
        skew = ((xc**3).mean(axis=1) / np.maximum(s, tiny) ** 3)[s > 0]
        out["skew"].append(float(np.median(skew)) if skew.size else 0.0)
    if mean_confidence is not None:
        out["mean_confidence"] = float(mean_confidence)
    return out


_CONTINUOUS = ("log_amp", *BANDS, "high", "mains", "skew")


def _stats(nights: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, list[float] | float]]:
    """Median and robust spread of every continuous feature over nights."""
    out: dict[str, dict[str, Any]] = {}
    for key in (*_CONTINUOUS, "mean_confidence"):
        vals = [n[key] for n in nights if key in n]
        if not vals:
            continue
        v = np.asarray(vals, dtype=np.float64)
        med = np.median(v, axis=0)
        mad = 1.4826 * np.median(np.abs(v - med), axis=0)
        sd = v.std(axis=0, ddof=1) if len(v) > 1 else np.zeros_like(med)
        scale = np.maximum(np.maximum(mad, sd), _FLOOR.get(key, _BAND_FLOOR))
        out[key] = {"median": np.atleast_1d(med).tolist() if np.ndim(med) else float(med),
                    "scale": np.atleast_1d(scale).tolist() if np.ndim(scale) else float(scale),
                    "min": np.atleast_1d(v.min(axis=0)).tolist() if v.ndim > 1 else float(v.min()),
                    "max": np.atleast_1d(v.max(axis=0)).tolist() if v.ndim > 1 else float(v.max())}
    return out


def _zscores(features: Mapping[str, Any], ref: Mapping[str, Any]) -> dict[str, np.ndarray]:
    z = {}
    for key, st in ref.items():
        if key in features:
            z[key] = (np.asarray(features[key], dtype=np.float64) - np.asarray(st["median"])) / np.asarray(st["scale"])
    return z


def _score(z: Mapping[str, np.ndarray]) -> float:
    vals = [np.max(np.abs(v)) for k, v in z.items() if k != "mean_confidence"]
    if "mean_confidence" in z:
        vals.append(float(max(0.0, -float(z["mean_confidence"]))))  # only unusually *low* confidence counts
    return float(max(vals)) if vals else 0.0


def describe(train: Iterable[Mapping[str, Any]], val: Iterable[Mapping[str, Any]],
             channels: Sequence[str] = ()) -> dict[str, Any]:
    """The description a scorer stores: feature statistics of the training + validation nights and the threshold.

    Parameters
    ----------
    train, val : iterables of dict
        :func:`night_features` of the training and of the validation nights (only the validation nights
        carry ``mean_confidence``, from the calibrated probabilities of the selected model).
    channels : sequence of str
        Channel names, in the order of the per-channel lists (for the warning lines).

    Returns
    -------
    dict
        ``{"version": 1, "channels", "n_nights", "stats", "threshold", "clip_max"}``: ``stats`` of all nights
        (``clip_max``: the largest clipped share per channel, see :data:`CLIP_FACTOR`); the
        threshold is ``max(MIN_THRESHOLD, MARGIN * max score of a validation night against the training
        nights)``.
    """
    train, val = list(train), list(val)
    ref_train = _stats(train) if train else _stats(val)
    if "mean_confidence" not in ref_train and any("mean_confidence" in v for v in val):
        ref_train["mean_confidence"] = _stats(val)["mean_confidence"]
    val_scores = [_score(_zscores(v, ref_train)) for v in val]
    threshold = max(MIN_THRESHOLD, MARGIN * max(val_scores, default=0.0))
    clips = [n["clip"] for n in train + val if n.get("clip")]
    return {"version": 1, "channels": list(channels), "n_nights": {"train": len(train), "val": len(val)},
            "stats": _stats(train + val), "threshold": float(threshold),
            "clip_max": np.max(np.asarray(clips, dtype=np.float64), axis=0).tolist() if clips else [],
            "val_scores": [float(s) for s in val_scores]}


def check(features: Mapping[str, Any], description: Mapping[str, Any]) -> dict[str, Any]:
    """Compare a night's :func:`night_features` with a stored :func:`describe`.

    Returns
    -------
    dict
        ``score`` (largest robust z-score; only low confidence counts for the confidence), ``threshold``,
        ``familiar`` (no warning), ``warnings`` (one line per reason), ``zscores`` (per feature).
    """
    ref = description["stats"]
    thr = float(description["threshold"])
    chans = list(description.get("channels") or []) or [f"channel {i}" for i in range(len(features["log_amp"]))]
    z = _zscores(features, ref)
    warnings: list[str] = []

    def over(key: str, sign: int = 0) -> list[int]:
        v = np.atleast_1d(z.get(key, np.zeros(0)))
        hit = (v * sign > thr) if sign else (np.abs(v) > thr)
        return np.flatnonzero(hit).tolist()

    for c in over("log_amp"):
        ratio = 10 ** (features["log_amp"][c] - ref["log_amp"]["median"][c])
        warnings.append(f"amplitude far outside the training range on {chans[c]}: x{ratio:.2g} the training nights' median")
    for c in over("mains", +1):
        warnings.append(f"mains noise on {chans[c]}: {100 * 10 ** features['mains'][c]:.1f}% of the power at 50/60 Hz")
    for c, f in enumerate(features.get("flat", [])):
        if f > FLAT_LIMIT:
            warnings.append(f"flat channel {chans[c]}: {100 * f:.0f}% of the epochs carry no signal")
    seen = list(description.get("clip_max") or [])  # descriptions written before it: the absolute limit alone
    flat = list(features.get("flat", []))
    for c, f in enumerate(features.get("clip", [])):
        if c < len(flat) and flat[c] > FLAT_LIMIT and f > 0.5:  # a flat channel sits "at its extreme": not clipping
            continue
        if f > max(CLIP_LIMIT, CLIP_FACTOR * (seen[c] if c < len(seen) else 0.0)):
            warnings.append(f"clipped channel {chans[c]}: {100 * f:.2f}% of the samples at the extreme value")
    for c in over("skew"):
        if np.sign(features["skew"][c]) != np.sign(ref["skew"]["median"][c]):
            warnings.append(f"inverted polarity on {chans[c]}? the signal's skewness has the opposite sign to training")
    spectral = sorted({c for k in (*BANDS, "high") for c in over(k)})
    for c in spectral:
        worst = max((*BANDS, "high"), key=lambda k: abs(z[k][c]) if k in z else 0.0)
        warnings.append(f"unusual spectrum on {chans[c]}: {worst} power z = {z[worst][c]:+.1f} against the training nights")
    if "mean_confidence" in z and float(z["mean_confidence"]) < -thr:
        warnings.append(f"unusually low confidence: mean top-class probability {features['mean_confidence']:.2f} "
                        f"(validation nights {ref['mean_confidence']['median']:.2f})")
    score = _score(z)
    largest = _largest(z, chans)
    if score > thr and not warnings and largest:  # past the threshold on a feature no rule above words
        warnings.append(f"unusual {_feature_name(largest['feature'])} on {largest['channel']}: z = {largest['z']:+.1f} "
                        "against the training nights")
    return {"score": score, "threshold": thr, "familiar": not warnings, "warnings": warnings, "largest": largest,
            "zscores": {k: np.atleast_1d(v).round(2).tolist() for k, v in z.items()}}


def _feature_name(key: str) -> str:
    return {"log_amp": "amplitude", "high": "power above 30 Hz", "mains": "mains power", "skew": "skewness",
            "mean_confidence": "mean confidence"}.get(key, f"{key} power")


def _largest(z: Mapping[str, np.ndarray], chans: Sequence[str]) -> dict[str, Any] | None:
    """The feature (and channel) of the largest z-score that counts in the score (low confidence only)."""
    best = None
    for key, v in z.items():
        v = np.atleast_1d(v)
        for c, val in enumerate(v.tolist()):
            size = max(0.0, -val) if key == "mean_confidence" else abs(val)
            if best is None or size > best[0]:
                channel = "the night" if key == "mean_confidence" else (chans[c] if c < len(chans) else f"channel {c}")
                best = (size, {"feature": key, "channel": channel, "z": float(val)})
    return best[1] if best else None


def verdict(result: Mapping[str, Any]) -> str:
    """The one-line verdict of :func:`check`, naming the feature that drives the score, e.g. ``familiarity score
    6.6 (threshold 4.0; largest: skewness z = +6.6 on EEG Fpz-Cz): this night is unlike the training data``."""
    big = result.get("largest")
    named = f"; largest: {_feature_name(big['feature'])} z = {big['z']:+.1f} on {big['channel']}" if big else ""
    return (f"familiarity score {result['score']:.1f} (threshold {result['threshold']:.1f}{named}): "
            + ("like the training nights" if result["familiar"] else "this night is unlike the training data"))
