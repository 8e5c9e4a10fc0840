"""Per-recording amplitude normalisation of the EEG (a recipe switch; the paper feeds raw microvolts).

EEG amplitude differs between people and nights by tens of per cent (skull thickness, age, electrode
impedance), and a network trained on a few subjects reads a quieter subject's slow waves as N2 and its N2 as
N1. Dividing each recording by a scale measured on that same recording removes the difference while keeping
every relation inside the night (N3 stays larger than N2). The statistics are taken over the epochs the
recording keeps (after trimming to the sleep period), so training, evaluation and ``dsn predict`` (which
trims by the model's own first-pass hypnogram, see :func:`sleep_window`) measure the same thing.

Methods:

* ``"none"`` (the paper): microvolts as read.
* ``"zscore"``: ``(x - mean) / std``.
* ``"robust"``: ``(x - median) / (IQR / 1.349)`` (the IQR of a normal distribution is 1.349 standard
  deviations, so both methods give unit scale on Gaussian data); insensitive to a few large artefacts.

The centre is taken from the signal as it is, the scale from its 0.5-30 Hz band (:data:`SCALE_BAND`, the
EEG proper; given the sampling rate), so that slow electrode drifts (sweat) and mains or muscle noise,
whose size has nothing to do with the brain's, do not set it: a broadband scale shrank the slow waves of a
synthetic subject with a sweat artefact until they passed for N2. The signal itself is not filtered.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from dsn.data.hypnograms import sleep_period

__all__ = ["NORMALIZE_METHODS", "SCALE_BAND", "NormalizeMethod", "normalize", "scale_stats", "sleep_window"]

NormalizeMethod = Literal["none", "zscore", "robust"]
NORMALIZE_METHODS = ("none", "zscore", "robust")

_IQR_PER_SD = 1.3489795

#: Frequency band (Hz) whose amplitude sets the scale (the upper edge is capped at 0.45 x the sampling rate).
SCALE_BAND = (0.5, 30.0)


def _band(v: np.ndarray, sfreq: float) -> np.ndarray:
    from scipy.signal import butter, sosfiltfilt

    low, high = SCALE_BAND[0], min(SCALE_BAND[1], 0.45 * sfreq)
    if v.size < 64 or not high > low:
        return v
    sos = butter(4, [low, high], btype="band", fs=sfreq, output="sos")
    return sosfiltfilt(sos, v.astype(np.float64)).astype(np.float32)


def scale_stats(x: np.ndarray, method: NormalizeMethod, sfreq: float | None = None) -> tuple[float, float]:
    """``(center, scale)`` of a recording's samples for ``method`` (``(0, 1)`` for ``"none"``).

    Parameters
    ----------
    x : ndarray
        ``(n_epochs, n_chans, n_times)`` epochs in recording order (any shape: every sample counts).
    method : {"none", "zscore", "robust"}
    sfreq : float, optional
        Sampling rate: the scale is measured on the :data:`SCALE_BAND` band of the signal. ``None``: on the
        signal as it is.

    Raises
    ------
    ValueError
        For an unknown method, an empty recording, or a flat signal (zero scale: a disconnected electrode).
    """
    if method not in NORMALIZE_METHODS:
        raise ValueError(f"normalize={method!r}: must be one of {list(NORMALIZE_METHODS)}")
    if method == "none":
        return 0.0, 1.0
    v = np.asarray(x, dtype=np.float32).reshape(-1)
    if v.size == 0:
        raise ValueError("cannot normalise an empty recording (no epochs kept)")
    b = v if sfreq is None else _band(v, float(sfreq))
    if method == "zscore":
        center, scale = float(v.mean(dtype=np.float64)), float(b.std(dtype=np.float64))
    else:
        center = float(np.median(v))
        q1, q3 = (float(q) for q in np.percentile(b, [25, 75]))
        scale = (q3 - q1) / _IQR_PER_SD
    if not np.isfinite(scale) or scale <= 1e-12:
        raise ValueError(f"the signal is flat (scale {scale:g}): check the electrode / channel, or use normalize: none")
    return center, scale


def normalize(x: np.ndarray, method: NormalizeMethod, sfreq: float | None = None,
              stats_from: np.ndarray | None = None) -> np.ndarray:
    """``x`` normalised with the statistics (:func:`scale_stats`) of ``stats_from`` (default ``x`` itself), as
    float32, each channel by its own.

    ``x`` is ``(n_epochs, n_chans, n_times)`` (any other shape is one channel). ``"none"`` returns ``x``
    unchanged (no copy). Otherwise a new array ``(x - center) / scale`` with one centre and scale per channel
    (an EOG is not scaled by the EEG's amplitude).
    """
    if method == "none":
        scale_stats(x, method)  # validates the name
        return x
    src = x if stats_from is None else stats_from
    if np.ndim(x) != 3 or np.shape(x)[1] == 1:
        center, scale = scale_stats(src, method, sfreq)
        return ((np.asarray(x, dtype=np.float32) - np.float32(center)) / np.float32(scale)).astype(np.float32, copy=False)
    out = np.empty(np.shape(x), dtype=np.float32)
    for c in range(out.shape[1]):
        try:
            center, scale = scale_stats(np.asarray(src)[:, c], method, sfreq)
        except ValueError as e:
            raise ValueError(f"channel {c + 1} of {out.shape[1]}: {e}") from None
        out[:, c] = (np.asarray(x[:, c], dtype=np.float32) - np.float32(center)) / np.float32(scale)
    return out


def sleep_window(stages: np.ndarray, trim_minutes: float | None, epoch_sec: float = 30.0, wake: int = 0) -> slice:
    """The epochs from ``trim_minutes`` before the first to ``trim_minutes`` after the last non-wake epoch.

    The training data's trimming rule (:func:`dsn.data.hypnograms.sleep_period`), applied to a
    predicted hypnogram; all epochs when ``trim_minutes`` is None or nothing but wake was predicted.
    """
    stages = np.asarray(stages)
    return sleep_period(stages != wake, trim_minutes, epoch_sec) or slice(0, len(stages))
