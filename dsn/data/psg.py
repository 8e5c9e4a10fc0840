"""Reading an unscored PSG recording into 30-s epochs for sleep scoring (``dsn predict``).

Unlike :mod:`dsn.data.recording`, nothing here needs a hypnogram: the whole recording is cut into
consecutive epochs from its first sample, without trimming (nothing is known about sleep yet). The
channels are read with :func:`dsn.data.edf.read_channels`; every problem is a one-line
:class:`~dsn.data.errors.DataError` naming the file and saying what to do.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dsn.data.edf import EdfHeader, NotEdfError, read_channels, read_header
from dsn.data.errors import DataError

__all__ = ["ScoringInput", "read_epochs"]


@dataclass(frozen=True)
class ScoringInput:
    """One recording cut into epochs, ready for a model.

    Attributes
    ----------
    name : str
        File stem without a trailing ``-PSG`` (``SC4001E0-PSG.edf`` -> ``SC4001E0``).
    path : Path
        The PSG file.
    channels : list of str
        The channels read, in the model's order (their names as the model knows them).
    labels : list of str
        The file labels read for each channel (an alias's or a derivation's ``"PLUS - MINUS"``).
    x : ndarray, shape (n_epochs, n_chans, n_times), float32
        The signals in microvolts, epoch by epoch (``n_times = sfreq * epoch_sec``).
    onsets : ndarray, shape (n_epochs,), float64
        Start of each epoch in seconds from the recording start (``0, epoch_sec, 2 * epoch_sec, ...``).
    sfreq : float
        Sampling rate of ``x`` in Hz (after resampling).
    source_sfreqs : list of float
        Each channel's rate in the file, in Hz.
    start : datetime.datetime or None
        Recording start from the EDF header, a naive wall-clock time (EDF has no time zone);
        ``None`` when the header has none.
    n_dropped_samples : int
        Samples (at ``sfreq``) after the last whole epoch, left out of ``x``; always fewer than
        one epoch.
    """

    name: str
    path: Path
    channels: list[str]
    labels: list[str]
    x: np.ndarray
    onsets: np.ndarray
    sfreq: float
    source_sfreqs: list[float]
    start: _dt.datetime | None
    n_dropped_samples: int

    @property
    def channel(self) -> str:
        """The channels' names joined by ``", "`` (the one channel of a single-channel model)."""
        return ", ".join(self.channels)

    @property
    def source_sfreq(self) -> float:
        """The lowest of :attr:`source_sfreqs`."""
        return float(min(self.source_sfreqs))

    @property
    def n_epochs(self) -> int:
        """Number of epochs, ``x.shape[0]``."""
        return int(self.x.shape[0])

    @property
    def epoch_sec(self) -> float:
        """Epoch length in seconds, ``x.shape[-1] / sfreq``."""
        return float(self.x.shape[-1] / self.sfreq)


def read_epochs(
    path: str | Path,
    channels: str | Sequence[str] = "EEG Fpz-Cz",
    sfreq: float = 100.0,
    epoch_sec: float = 30.0,
    aliases: Mapping[str, Sequence[str]] | None = None,
    trained_sfreqs: Sequence[float] | None = None,
) -> ScoringInput:
    """Read the channels of a PSG EDF file (no hypnogram needed) and cut them into epochs.

    The channels are found as in training (labels, aliases, derivations: :mod:`dsn.data.channels`) and
    resampled to ``sfreq``; the tail shorter than one epoch is dropped (reported in ``n_dropped_samples``).
    Nothing is trimmed at the start.

    Parameters
    ----------
    path : str or Path
        PSG file in EDF or EDF+ format.
    channels : str or sequence of str, default "EEG Fpz-Cz"
        The model's channels, in its order (one string: one channel).
    sfreq : float, default 100.0
        Sampling rate the model expects, in Hz. ``sfreq * epoch_sec`` must be a whole number.
    epoch_sec : float, default 30.0
        Epoch length in seconds.
    aliases : mapping, optional
        The model's ``{canonical: [alias, ...]}`` table (added to the built-in one).
    trained_sfreqs : sequence of float, optional
        Each channel's lowest rate in the model's training files: a channel below ``sfreq`` is upsampled
        when the model was trained on files that slow (an NSRR EOG at 50 Hz), refused otherwise.

    Returns
    -------
    ScoringInput
        ``x`` of shape ``(n_epochs, n_chans, round(sfreq * epoch_sec))``, float32 microvolts, with
        ``n_epochs = floor(duration / epoch_sec)``.

    Raises
    ------
    DataError
        If the file is missing, not EDF, truncated or unreadable; if a channel is not in it
        (the message lists the channels present and the aliases tried); if the recording is shorter than one
        epoch; or if a channel is sampled below ``sfreq`` and below its rate in training (upsampling cannot
        create the frequencies the model relies on: a model trained at the file's rate or lower is needed).
    """
    path = Path(path)
    channels = [channels] if isinstance(channels, str) else list(channels)
    n_times = _samples_per_epoch(path, sfreq, epoch_sec)
    header = _header(path)
    hint = ("The model reads these channels; score a recording that has them, or name this file's channel "
            "with `--channel NAME` (the derivation the model was trained on).")
    sig = read_channels(path, channels, sfreq, aliases, hint=hint)
    _check_rates(path, sig.names, sig.source_sfreq, sfreq, trained_sfreqs)
    x, n_dropped = _cut(path, sig.data, n_times, sfreq, epoch_sec)
    name = path.stem[: -len("-PSG")] if path.stem.endswith("-PSG") else path.stem
    return ScoringInput(
        name=name, path=path, channels=list(sig.names), labels=list(sig.labels), x=x,
        onsets=np.arange(len(x), dtype=np.float64) * epoch_sec, sfreq=float(sig.sfreq),
        source_sfreqs=list(sig.source_sfreq), start=header.start, n_dropped_samples=n_dropped,
    )


def _cut(path: Path, data: np.ndarray, n_times: int, sfreq: float, epoch_sec: float) -> tuple[np.ndarray, int]:
    """``(n_epochs, n_chans, n_times)`` float32 epochs of ``(n_chans, n_samples)`` signals and the number of
    samples after the last whole epoch (left out)."""
    n_samples = data.shape[1]
    if n_samples < n_times:
        raise DataError(
            f"{path}: recording lasts {n_samples / sfreq:.1f} s, shorter than one {epoch_sec:g}-s epoch; nothing "
            "to score. Pass a longer recording."
        )
    n_epochs = n_samples // n_times
    used = n_epochs * n_times
    x = np.ascontiguousarray(data[:, :used].reshape(len(data), n_epochs, n_times).transpose(1, 0, 2), dtype=np.float32)
    return x, int(n_samples - used)


def _samples_per_epoch(path: Path, sfreq: float, epoch_sec: float) -> int:
    """``sfreq * epoch_sec``, refused unless a whole number."""
    n_times_f = sfreq * epoch_sec
    if not (sfreq > 0 and epoch_sec > 0) or abs(n_times_f - round(n_times_f)) > 1e-6:
        raise DataError(
            f"{path}: sfreq={sfreq} Hz and epoch_sec={epoch_sec} s do not give a whole number of samples per "
            "epoch; use a model whose sampling rate times the epoch length is an integer."
        )
    return int(round(n_times_f))


def _header(path: Path) -> EdfHeader:
    """The file's header (:func:`dsn.data.edf.read_header`), with what to pass instead of a missing or non-EDF file."""
    if not path.is_file():
        raise DataError(f"{path}: file not found. Pass the path of a PSG recording in EDF or BDF format.")
    try:
        return read_header(path)  # truncated downloads too
    except NotEdfError:
        raise DataError(
            f"{path}: not an EDF or BDF file (it does not start with their header). Pass a PSG recording in "
            "EDF/EDF+ or BDF format (e.g. SC4001E0-PSG.edf); convert other formats to EDF first."
        ) from None


def _check_rates(path: Path, names: Sequence[str], rates: Sequence[float], sfreq: float,
                 trained_sfreqs: Sequence[float] | None) -> None:
    """Refuse a channel sampled below the model's rate and below its rate in the model's training files."""
    for c, (name, rate) in enumerate(zip(names, rates)):
        trained = trained_sfreqs[c] if trained_sfreqs is not None and c < len(trained_sfreqs) else sfreq
        if rate < min(sfreq, trained) - 1e-6:
            raise DataError(
                f"{path}: channel '{name}' is sampled at {rate:g} Hz, below the model's {sfreq:g} Hz"
                + (f" and its training files' {trained:g} Hz" if trained < sfreq else "")
                + "; upsampling would invent the high frequencies the model relies on. Use a model trained at "
                f"{rate:g} Hz or lower."
            )
