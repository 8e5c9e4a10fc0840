"""Reading an unscored PSG recording into 30-s epochs for sleep scoring (``dsn predict``).

Unlike :mod:`dsn.data.recording`, nothing here needs a hypnogram: the whole recording is cut into
consecutive epochs from its first sample, without trimming (nothing is known about sleep yet). The
channel is read with :func:`dsn.data.edf.read_eeg`; every problem is a one-line
:class:`~dsn.data.edf.DataError` naming the file and saying what to do.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dsn.data.edf import DataError, check_edf_size, read_eeg

__all__ = ["ScoringInput", "read_epochs"]

#: The first 8 bytes of every EDF/EDF+ file (version field "0" padded with spaces).
_EDF_MAGIC = b"0       "


@dataclass(frozen=True)
class ScoringInput:
    """One recording cut into epochs, ready for a model.

    Attributes
    ----------
    name : str
        File stem without a trailing ``-PSG`` (``SC4001E0-PSG.edf`` -> ``SC4001E0``).
    path : Path
        The PSG file.
    channel : str
        The channel that was read.
    x : ndarray, shape (n_epochs, 1, n_times), float32
        The signal in microvolts, epoch by epoch (``n_times = sfreq * epoch_sec``).
    onsets : ndarray, shape (n_epochs,), float64
        Start of each epoch in seconds from the recording start (``0, epoch_sec, 2 * epoch_sec, ...``).
    sfreq : float
        Sampling rate of ``x`` in Hz (after resampling).
    source_sfreq : float
        Sampling rate of ``channel`` in the file, in Hz.
    start : datetime.datetime or None
        Recording start from the EDF header, a naive wall-clock time (EDF has no time zone);
        ``None`` when the header has none.
    n_dropped_samples : int
        Samples (at ``sfreq``) after the last whole epoch, left out of ``x``; always fewer than
        one epoch.
    """

    name: str
    path: Path
    channel: str
    x: np.ndarray
    onsets: np.ndarray
    sfreq: float
    source_sfreq: float
    start: _dt.datetime | None
    n_dropped_samples: int

    @property
    def n_epochs(self) -> int:
        """Number of epochs, ``x.shape[0]``."""
        return int(self.x.shape[0])

    @property
    def epoch_sec(self) -> float:
        """Epoch length in seconds, ``x.shape[-1] / sfreq``."""
        return float(self.x.shape[-1] / self.sfreq)


def _channel_rate(raw, channel: str) -> float:
    """Sampling rate of one channel as stored in the file.

    MNE reports a single ``info["sfreq"]`` (the highest rate in the file) and upsamples slower
    channels to it, so the channel's own rate comes from the reader's per-signal sample counts.
    Falls back to ``info["sfreq"]`` if those are not available.
    """
    try:
        extras = raw._raw_extras[0]
        n_samps = np.asarray(extras["n_samps"])
        record = float(np.asarray(extras["record_length"]).reshape(-1)[0])
        if record > 0 and n_samps.size >= len(raw.ch_names):
            return float(n_samps[raw.ch_names.index(channel)]) / record
    except (AttributeError, KeyError, IndexError, TypeError, ValueError):
        pass
    return float(raw.info["sfreq"])


def _start(raw) -> _dt.datetime | None:
    meas = raw.info.get("meas_date")
    if meas is None:
        return None
    return meas.replace(tzinfo=None) if isinstance(meas, _dt.datetime) else None


def read_epochs(
    path: str | Path,
    channel: str = "EEG Fpz-Cz",
    sfreq: float = 100.0,
    epoch_sec: float = 30.0,
) -> ScoringInput:
    """Read one channel of a PSG EDF file (no hypnogram needed) and cut it into epochs.

    The channel is resampled to ``sfreq`` when the file's rate is higher; the tail shorter than one
    epoch is dropped (reported in ``n_dropped_samples``). Nothing is trimmed at the start.

    Parameters
    ----------
    path : str or Path
        PSG file in EDF or EDF+ format.
    channel : str, default "EEG Fpz-Cz"
        Channel name as stored in the file.
    sfreq : float, default 100.0
        Sampling rate the model expects, in Hz. ``sfreq * epoch_sec`` must be a whole number.
    epoch_sec : float, default 30.0
        Epoch length in seconds.

    Returns
    -------
    ScoringInput
        ``x`` of shape ``(n_epochs, 1, round(sfreq * epoch_sec))``, float32 microvolts, with
        ``n_epochs = floor(duration / epoch_sec)``.

    Raises
    ------
    DataError
        If the file is missing, not EDF, truncated or unreadable; if ``channel`` is not in it
        (the message lists the channels present); if the recording is shorter than one epoch; or
        if the channel is sampled below ``sfreq`` (upsampling cannot create the frequencies the
        model relies on: a model trained at the file's rate or lower is needed).
    """
    import mne

    path = Path(path)
    n_times_f = sfreq * epoch_sec
    if not (sfreq > 0 and epoch_sec > 0) or abs(n_times_f - round(n_times_f)) > 1e-6:
        raise DataError(
            f"{path}: sfreq={sfreq} Hz and epoch_sec={epoch_sec} s do not give a whole number of samples per "
            "epoch; use a model whose sampling rate times the epoch length is an integer."
        )
    n_times = int(round(n_times_f))

    if not path.is_file():
        raise DataError(f"{path}: file not found. Pass the path of a PSG recording in EDF format.")
    with open(path, "rb") as f:
        magic = f.read(len(_EDF_MAGIC))
    if magic != _EDF_MAGIC:
        raise DataError(
            f"{path}: not an EDF file (it does not start with the EDF header). Pass a PSG recording in "
            "EDF/EDF+ format (e.g. SC4001E0-PSG.edf); convert other formats to EDF first."
        )
    check_edf_size(path)  # truncated downloads
    try:
        raw = mne.io.read_raw_edf(path, preload=False, verbose="error")
    except Exception as e:  # MNE raises many types for broken files
        raise DataError(f"{path}: MNE could not read this EDF file ({type(e).__name__}: {e}).") from None

    if channel not in raw.ch_names:
        raise DataError(
            f"{path}: channel '{channel}' not found. Channels in this file: {', '.join(raw.ch_names)}. "
            "Choose one with `--channel NAME` (the derivation the model was trained on)."
        )
    source_sfreq = _channel_rate(raw, channel)
    if source_sfreq < sfreq - 1e-6:
        raise DataError(
            f"{path}: channel '{channel}' is sampled at {source_sfreq:g} Hz, below the model's {sfreq:g} Hz; "
            "upsampling would invent the high frequencies the model relies on. Use a model trained at "
            f"{source_sfreq:g} Hz or lower."
        )
    duration = raw.n_times / float(raw.info["sfreq"])
    if duration < epoch_sec:
        raise DataError(
            f"{path}: recording lasts {duration:.1f} s, shorter than one {epoch_sec:g}-s epoch; nothing to "
            "score. Pass a longer recording."
        )
    start = _start(raw)
    del raw

    signal, out_sfreq = read_eeg(path, channel=channel, sfreq=sfreq)
    n_epochs = signal.size // n_times
    if n_epochs == 0:  # resampling can shave a sample off a recording of exactly one epoch
        raise DataError(
            f"{path}: after resampling to {sfreq:g} Hz the recording has {signal.size} samples, fewer than one "
            f"{epoch_sec:g}-s epoch ({n_times}); nothing to score. Pass a longer recording."
        )
    used = n_epochs * n_times
    x = np.ascontiguousarray(signal[:used], dtype=np.float32).reshape(n_epochs, 1, n_times)
    onsets = np.arange(n_epochs, dtype=np.float64) * epoch_sec
    name = path.stem[: -len("-PSG")] if path.stem.endswith("-PSG") else path.stem
    return ScoringInput(
        name=name,
        path=path,
        channel=channel,
        x=x,
        onsets=onsets,
        sfreq=float(out_sfreq),
        source_sfreq=source_sfreq,
        start=start,
        n_dropped_samples=int(signal.size - used),
    )
