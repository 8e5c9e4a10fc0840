"""Per-recording amplitude normalisation of the EEG (a recipe switch; the paper feeds raw microvolts).

EEG amplitude differs between people and nights by tens of per cent (skull thickness, age, electrode
impedance), and a network trained on a few subjects reads a quieter subject's slow waves as N2 and its N2 as
N1. Dividing each recording by a scale measured on that same recording removes the difference while keeping
every relation inside the night (N3 stays larger than N2). The statistics are taken over the epochs the
recording keeps (after trimming to the sleep period), so training, evaluation and ``dsn predict`` (which
trims by the model's own first-pass hypnogram, see :func:`sleep_window`) measure the same thing.

Methods:

* ``"none"`` (the paper): microvolts as read.
* ``"zscore"``: ``(x - mean) / std`` over all samples of the kept epochs.
* ``"robust"``: ``(x - median) / (IQR / 1.349)`` (the IQR of a normal distribution is 1.349 standard
  deviations, so both methods give unit scale on Gaussian data); insensitive to a few large artefacts.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = ["NORMALIZE_METHODS", "NormalizeMethod", "normalize", "scale_stats", "sleep_window"]

NormalizeMethod = Literal["none", "zscore", "robust"]
NORMALIZE_METHODS = ("none", "zscore", "robust")

_IQR_PER_SD = 1.3489795


def scale_stats(x: np.ndarray, method: NormalizeMethod) -> tuple[float, float]:
    """``(center, scale)`` of a recording's samples for ``method`` (``(0, 1)`` for ``"none"``).

    Parameters
    ----------
    x : ndarray
        ``(n_epochs, n_chans, n_times)`` epochs (any shape: every sample counts).
    method : {"none", "zscore", "robust"}

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
    if method == "zscore":
        center, scale = float(v.mean(dtype=np.float64)), float(v.std(dtype=np.float64))
    else:
        q1, center, q3 = (float(q) for q in np.percentile(v, [25, 50, 75]))
        scale = (q3 - q1) / _IQR_PER_SD
    if not np.isfinite(scale) or scale <= 1e-12:
        raise ValueError(f"the signal is flat (scale {scale:g}): check the electrode / channel, or use normalize: none")
    return center, scale


def normalize(x: np.ndarray, method: NormalizeMethod, stats_from: np.ndarray | None = None) -> np.ndarray:
    """``x`` normalised with the statistics of ``stats_from`` (default ``x`` itself), as float32.

    ``"none"`` returns ``x`` unchanged (no copy). Otherwise a new array ``(x - center) / scale``.
    """
    if method == "none":
        scale_stats(x, method)  # validates the name
        return x
    center, scale = scale_stats(x if stats_from is None else stats_from, method)
    return ((np.asarray(x, dtype=np.float32) - np.float32(center)) / np.float32(scale)).astype(np.float32, copy=False)


def sleep_window(stages: np.ndarray, trim_minutes: float | None, epoch_sec: float = 30.0, wake: int = 0) -> slice:
    """The epochs from ``trim_minutes`` before the first to ``trim_minutes`` after the last non-wake epoch.

    The same rule as the training data's trimming (:func:`dsn.data.edf.trim_and_clean`), applied to a
    predicted hypnogram; all epochs when ``trim_minutes`` is None or nothing but wake was predicted.
    """
    stages = np.asarray(stages)
    sleep = np.flatnonzero(stages != wake)
    if trim_minutes is None or sleep.size == 0:
        return slice(0, len(stages))
    pad = int(round(trim_minutes * 60.0 / epoch_sec))
    return slice(max(0, int(sleep[0]) - pad), min(len(stages), int(sleep[-1]) + pad + 1))
