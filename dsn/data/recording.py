"""A preprocessed recording (epochs + labels) and how one is built from its EDF files or the cache."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from dsn.data import cache
from dsn.data.edf import (
    UNANNOTATED,
    RecordingFiles,
    epoch_labels,
    read_eeg,
    read_hypnogram,
    trim_and_clean,
)
from dsn.data.labels import IGNORE_INDEX, RK_TO_AASM


@dataclass(frozen=True)
class Preprocessing:
    """Every parameter that changes a preprocessed recording (they all enter the cache key).

    Parameters
    ----------
    channel : EEG channel name (``EEG Fpz-Cz`` as in the paper; ``EEG Pz-Oz`` also exists).
    sfreq : sampling rate after resampling, Hz.
    epoch_sec : epoch length, seconds.
    trim_minutes : wake kept before the first / after the last sleep epoch (``None``: keep all).
    unscored : ``"drop"`` (official code) or ``"mask"`` (keep as ``IGNORE_INDEX`` so sequences stay contiguous).
    length_mismatch : ``"raise"`` or ``"crop"`` when hypnogram and signal lengths disagree.
    """

    channel: str = "EEG Fpz-Cz"
    sfreq: float = 100.0
    epoch_sec: float = 30.0
    trim_minutes: float | None = 30.0
    unscored: Literal["drop", "mask"] = "drop"
    length_mismatch: Literal["raise", "crop"] = "raise"

    @property
    def n_times(self) -> int:
        return int(round(self.epoch_sec * self.sfreq))


@dataclass
class Recording:
    """One preprocessed night.

    Attributes
    ----------
    name : recording name (``SC4001E0``).
    subject : subject id (``SC400``).
    night : night number.
    x : ndarray, shape (n_epochs, n_chans, n_times), float32 microvolts; usually a read-only memory map.
    y : ndarray, shape (n_epochs,), int64 class indices, ``IGNORE_INDEX`` for masked epochs.
    sfreq : sampling rate of ``x``.
    """

    name: str
    subject: str
    night: int
    x: np.ndarray
    y: np.ndarray
    sfreq: float
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.y)


def preprocess(files: RecordingFiles, prep: Preprocessing) -> tuple[np.ndarray, np.ndarray]:
    """Read and preprocess a recording from its EDF files (no cache).

    Returns
    -------
    x : ndarray (n_epochs, 1, n_times) float32 microvolts
    y : ndarray (n_epochs,) int64
    """
    epochs, keep, y = _prepare(files, prep)
    return np.ascontiguousarray(epochs[keep]), y


def _prepare(files: RecordingFiles, prep: Preprocessing) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The recording's epochs (all of them: a view of the signal), the indices of those to keep, and their labels."""
    signal, sfreq = read_eeg(files.psg, prep.channel, prep.sfreq)
    n_times = prep.n_times
    n_epochs = len(signal) // n_times
    onsets, durations, labels = read_hypnogram(files.hypnogram, RK_TO_AASM)
    y = epoch_labels(
        onsets, durations, labels, n_epochs, prep.epoch_sec, RK_TO_AASM, prep.length_mismatch, str(files.hypnogram)
    )
    keep = trim_and_clean(y, prep.trim_minutes, prep.epoch_sec, prep.unscored, source=str(files.hypnogram))
    y = y[keep]
    y[y == UNANNOTATED] = IGNORE_INDEX
    return signal[: n_epochs * n_times].reshape(n_epochs, 1, n_times), keep, y


def load_recording(
    files: RecordingFiles, prep: Preprocessing, cache_dir: str | Path | None = None, use_cache: bool = True
) -> Recording:
    """Load a recording, from the cache when present, else from EDF (then written to the cache).

    A cache entry is written straight from the decoded signal (the kept epochs are never copied in memory)
    and returned memory-mapped.
    """
    params = {k: getattr(prep, k) for k in prep.__dataclass_fields__}
    folder = None
    if use_cache:
        cache_dir = Path(cache_dir) if cache_dir is not None else cache.default_cache_dir()
        folder = cache_dir / f"{files.name}-{cache.cache_key([files.psg, files.hypnogram], params)}"
        entry = cache.load_entry(folder)
        if entry is not None:
            x, y, meta = entry
            return Recording(files.name, files.subject, files.night, x, y, prep.sfreq, meta)
    epochs, keep, y = _prepare(files, prep)
    meta = {"psg": str(files.psg), "hypnogram": str(files.hypnogram), "params": params}
    if folder is not None:
        cache.write_entry(folder, epochs, y, meta, rows=keep)
        entry = cache.load_entry(folder)
        if entry is not None:
            x, y, meta = entry
            return Recording(files.name, files.subject, files.night, x, y, prep.sfreq, meta)
    return Recording(files.name, files.subject, files.night, np.ascontiguousarray(epochs[keep]), y, prep.sfreq, meta)
