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

__all__ = ["NORMALIZE_METHODS", "SCALE_BAND", "NormalizeMethod", "NormalizedEpochs", "channel_stats", "normalize",
           "scale_stats", "sleep_window"]

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


def channel_stats(x: np.ndarray, method: NormalizeMethod, sfreq: float | None = None) -> tuple[list[float], list[float]]:
    """``(centers, scales)``, one per channel, of ``(n_epochs, n_chans, n_times)`` epochs (any other shape, or one
    channel: one of each over every sample), as :func:`normalize` applies them (:func:`scale_stats` per channel).

    Raises
    ------
    ValueError
        As :func:`scale_stats`, naming the channel of a multi-channel recording.
    """
    if np.ndim(x) != 3 or np.shape(x)[1] == 1:
        center, scale = scale_stats(x, method, sfreq)
        return [center], [scale]
    centers, scales = [], []
    n_chans = np.shape(x)[1]
    for c in range(n_chans):
        try:
            center, scale = scale_stats(np.asarray(x)[:, c], method, sfreq)
        except ValueError as e:
            raise ValueError(f"channel {c + 1} of {n_chans}: {e}") from None
        centers.append(center)
        scales.append(scale)
    return centers, scales


def normalize(x: np.ndarray, method: NormalizeMethod, sfreq: float | None = None,
              stats_from: np.ndarray | None = None) -> np.ndarray:
    """``x`` normalised with the statistics (:func:`channel_stats`) of ``stats_from`` (default ``x`` itself), as
    float32, each channel by its own.

    ``x`` is ``(n_epochs, n_chans, n_times)`` (any other shape is one channel). ``"none"`` returns ``x``
    unchanged (no copy). Otherwise a new array ``(x - center) / scale`` with one centre and scale per channel
    (an EOG is not scaled by the EEG's amplitude). :class:`NormalizedEpochs` gives the same values without
    the copy.
    """
    if method == "none":
        scale_stats(x, method)  # validates the name
        return x
    centers, scales = channel_stats(x if stats_from is None else stats_from, method, sfreq)
    if np.ndim(x) != 3 or np.shape(x)[1] == 1:
        return _apply(np.asarray(x, dtype=np.float32), centers[0], scales[0])
    out = np.empty(np.shape(x), dtype=np.float32)
    for c in range(out.shape[1]):
        out[:, c] = _apply(np.asarray(x[:, c], dtype=np.float32), centers[c], scales[c])
    return out


def _apply(x: np.ndarray, center: float, scale: float) -> np.ndarray:
    """``(x - center) / scale`` in float32 (the one formula every normalised sample goes through)."""
    return ((x - np.float32(center)) / np.float32(scale)).astype(np.float32, copy=False)


class NormalizedEpochs:
    """``(n_epochs, n_chans, n_times)`` epochs normalised on access: ``self[k]`` is ``normalize``'s ``[k]``.

    Holds the (memory-mapped) raw epochs and one centre and scale per channel (:func:`channel_stats`); every
    read slices the raw array first and normalises only that slice (float32, bit-identical to the values of
    :func:`normalize`), so a recording's normalised signal is never held in memory. Supports what the
    datasets, samplers and scorers use: ``shape``, ``ndim``, ``dtype``, ``len``, indexing whose first
    element (after any leading ``None``) selects epochs, and ``np.asarray`` (a full copy).
    """

    def __init__(self, x: np.ndarray, centers: list[float], scales: list[float]):
        if np.ndim(x) != 3 or len(centers) != np.shape(x)[1] or len(scales) != len(centers):
            raise ValueError(f"NormalizedEpochs: {len(centers)} channel statistics for epochs of shape {np.shape(x)}")
        self.raw, self.centers, self.scales = x, [float(c) for c in centers], [float(s) for s in scales]
        self.shape, self.ndim, self.dtype = tuple(np.shape(x)), 3, np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * 4

    def _rows(self, k) -> np.ndarray:
        """``normalize(raw)[k]`` for a first-axis index ``k`` (int, slice or index array)."""
        part = np.asarray(self.raw[k], dtype=np.float32)
        axis = part.ndim - 2  # the channel axis: 0 for one epoch, 1 for several
        out = np.empty(part.shape, dtype=np.float32)
        for c in range(self.shape[1]):
            sel = (slice(None),) * axis + (c,)
            out[sel] = _apply(part[sel], self.centers[c], self.scales[c])
        return out

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        lead = 0
        while lead < len(key) and key[lead] is None:
            lead += 1
        if lead == len(key) or key[lead] is Ellipsis:
            return np.asarray(self)[key]
        first, rest = key[lead], key[lead + 1 :]
        out = self._rows(first)
        if rest:
            out = out[rest if isinstance(first, int | np.integer) else (slice(None), *rest)]
        return out[(None,) * lead] if lead else out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self._rows(slice(None))
        return out if dtype is None else out.astype(dtype, copy=False)


def sleep_window(stages: np.ndarray, trim_minutes: float | None, epoch_sec: float = 30.0, wake: int = 0) -> slice:
    """The epochs from ``trim_minutes`` before the first to ``trim_minutes`` after the last non-wake epoch.

    The training data's trimming rule (:func:`dsn.data.hypnograms.sleep_period`), applied to a
    predicted hypnogram; all epochs when ``trim_minutes`` is None or nothing but wake was predicted.
    """
    stages = np.asarray(stages)
    return sleep_period(stages != wake, trim_minutes, epoch_sec) or slice(0, len(stages))
