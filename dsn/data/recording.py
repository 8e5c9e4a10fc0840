"""A preprocessed recording (epochs + labels) and how one is built from its EDF files or the cache."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from dsn.data import cache
from dsn.data.channels import DEFAULT_CHANNELS, channel_names, merge_aliases, parse_channel
from dsn.data.datasets import RecordingFiles
from dsn.data.edf import read_channels
from dsn.data.errors import DataError
from dsn.data.hypnograms import UNANNOTATED, stage_labels, trim_and_clean
from dsn.data.labels import IGNORE_INDEX
from dsn.data.normalize import SCALE_BAND, NormalizedEpochs, NormalizeMethod, channel_stats
from dsn.data.sanity import check_signals

#: How a cache entry may store the epochs (``Preprocessing.cache_dtype``).
CACHE_DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class Preprocessing:
    """Every parameter that changes a preprocessed recording (they all enter the cache key).

    Parameters
    ----------
    channels : tuple of str, default ("EEG Fpz-Cz",)
        The channels, in order: labels, aliases or derivations ``"NAME=PLUS-MINUS"`` (see
        :mod:`dsn.data.channels`); a single string is one channel. ``EEG Fpz-Cz`` as in the paper.
    sfreq : float, default 100.0
        Sampling rate of every channel after resampling, Hz.
    epoch_sec : float, default 30.0
        Epoch length, seconds.
    trim_minutes : float or None, default 30.0
        Wake kept before the first / after the last sleep epoch (``None``: keep all).
    unscored : {"drop", "mask"}, default "drop"
        Unscored epochs removed (official code) or kept as ``IGNORE_INDEX`` so sequences stay contiguous.
    length_mismatch : {"raise", "crop"}, default "raise"
        What to do when hypnogram and signal lengths disagree.
    channel_aliases : mapping, optional
        ``{canonical: [alias, ...]}`` added to the built-in alias table (a profile's, the user's).
    cache_dtype : {"float32", "float16"}, default "float32"
        How the cache stores the epochs (float16: half the bytes, about 3 significant digits; read back as
        float32). Enters the cache key only when not the default, so float32 entries keep their keys.

    Raises
    ------
    ValueError
        For no channel, a malformed derivation, two channels of the same name, or another cache dtype.
    """

    channels: tuple[str, ...] = DEFAULT_CHANNELS
    sfreq: float = 100.0
    epoch_sec: float = 30.0
    trim_minutes: float | None = 30.0
    unscored: Literal["drop", "mask"] = "drop"
    length_mismatch: Literal["raise", "crop"] = "raise"
    channel_aliases: Mapping[str, Sequence[str]] | None = None
    cache_dtype: Literal["float32", "float16"] = "float32"

    def __post_init__(self) -> None:
        if self.cache_dtype not in CACHE_DTYPES:
            raise ValueError(f"cache_dtype={self.cache_dtype!r}: must be one of {list(CACHE_DTYPES)}")
        chans = (self.channels,) if isinstance(self.channels, str) else tuple(str(parse_channel(c)) for c in self.channels)
        if not chans:
            raise ValueError("channels: give at least one channel, e.g. [EEG Fpz-Cz]")
        names = channel_names(chans)
        if len(set(names)) != len(names):
            raise ValueError(f"channels: {list(chans)} names a channel twice")
        object.__setattr__(self, "channels", tuple(str(parse_channel(c)) for c in chans))
        object.__setattr__(self, "channel_aliases", merge_aliases(self.channel_aliases) or None)

    @property
    def n_chans(self) -> int:
        return len(self.channels)

    @property
    def channel_names(self) -> list[str]:
        """The channels' names (a derivation's name without its formula)."""
        return channel_names(self.channels)

    @property
    def n_times(self) -> int:
        return int(round(self.epoch_sec * self.sfreq))

    def params(self) -> dict[str, Any]:
        """The parameters as a JSON-able dict (the cache key's and the meta file's)."""
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["channels"] = list(self.channels)
        if d["cache_dtype"] == "float32":  # the default: the keys of the entries written before the option
            del d["cache_dtype"]
        return d


@dataclass
class Recording:
    """One preprocessed night.

    Attributes
    ----------
    name : recording name (``SC4001E0``).
    subject : subject id (``SC400``).
    night : night number.
    x : ndarray, shape (n_epochs, n_chans, n_times), float32 (float16 with ``cache_dtype: float16``) microvolts;
        usually a read-only memory map.
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
    cache_folder: Path | None = None  # the cache entry it was read from (None: not cached)

    def __len__(self) -> int:
        return len(self.y)


def preprocess(files: RecordingFiles, prep: Preprocessing) -> tuple[np.ndarray, np.ndarray]:
    """Read and preprocess a recording from its EDF files (no cache).

    Returns
    -------
    x : ndarray (n_epochs, n_chans, n_times) float32 microvolts
    y : ndarray (n_epochs,) int64
    """
    epochs, keep, y, _ = _prepare(files, prep)
    return np.ascontiguousarray(epochs[keep]), y


def _prepare(files: RecordingFiles, prep: Preprocessing) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """The recording's epochs (all of them; for one channel a view of the signal), the indices of those to keep,
    their labels, and what was read (file labels and rates per channel)."""
    sig = read_channels(files.psg, prep.channels, prep.sfreq, prep.channel_aliases)
    n_times = prep.n_times
    n_epochs = sig.data.shape[1] // n_times
    y = stage_labels(files, n_epochs, prep.epoch_sec, prep.length_mismatch)
    keep = trim_and_clean(y, prep.trim_minutes, prep.epoch_sec, prep.unscored, source=str(files.hypnogram))
    y = y[keep]
    y[y == UNANNOTATED] = IGNORE_INDEX
    data = sig.data[:, : n_epochs * n_times]
    if len(data) == 1:
        epochs = data.reshape(n_epochs, 1, n_times)
    else:  # (n_chans, n_epochs, n_times) -> a (n_epochs, n_chans, n_times) view: only the kept epochs get copied
        epochs = data.reshape(len(data), n_epochs, n_times).transpose(1, 0, 2)
    info = {"labels": sig.labels, "source_sfreq": sig.source_sfreq}
    return epochs, keep, y, info


def load_recording(
    files: RecordingFiles, prep: Preprocessing, cache_dir: str | Path | None = None, use_cache: bool = True
) -> Recording:
    """Load a recording, from the cache when present, else from EDF (then written to the cache).

    A cache entry is written straight from the decoded signal (the kept epochs are never copied in memory)
    and returned memory-mapped. The entry's key holds the channels and aliases, so another channel set never
    reads it; its ``meta.json`` records the file labels read and their rates (``meta["channels"]``).
    """
    params = prep.params()
    if not files.profile.is_default:  # how another data set's hypnogram is read (Sleep-EDF keys stay as they were)
        params["hypnogram"] = files.profile.reading_key()
    folder = None
    if use_cache:
        cache_dir = Path(cache_dir) if cache_dir is not None else cache.default_cache_dir()
        folder = cache_dir / f"{files.name}-{cache.cache_key([files.psg, files.hypnogram], params)}"
        entry = cache.load_entry(folder)
        if entry is not None and _entry_fits(entry, prep):
            x, y, meta = entry
            return Recording(files.name, files.subject, files.night, x, y, prep.sfreq, meta, folder)
    epochs, keep, y, info = _prepare(files, prep)
    meta = {"psg": str(files.psg), "hypnogram": str(files.hypnogram), "params": params, "channels": info,
            # judged once, while the night is in memory: a warm set-up then reads no sample (dsn.data.sanity)
            "signal_problems": [{"channel": p.channel, "kind": p.kind, "share": float(p.share)}
                                for p in check_signals(epochs[keep], prep.channel_names)]}
    if folder is not None:
        try:
            cache.write_entry(folder, epochs, y, meta, rows=keep, dtype=prep.cache_dtype)
        except OverflowError as e:
            raise DataError(f"{files.psg}: {e} (data.cache_dtype {prep.cache_dtype}); use data.cache_dtype: float32") from None
        entry = cache.load_entry(folder)
        if entry is not None and _entry_fits(entry, prep):
            x, y, meta = entry
            return Recording(files.name, files.subject, files.night, x, y, prep.sfreq, meta, folder)
    x = np.ascontiguousarray(epochs[keep]).astype(prep.cache_dtype, copy=False)  # as a cache entry would hold it
    return Recording(files.name, files.subject, files.night, x, y, prep.sfreq, meta)


def _entry_fits(entry: tuple[np.ndarray, np.ndarray, dict], prep: Preprocessing) -> bool:
    """Whether a cache entry has the shape ``prep`` makes (a stale or foreign entry is rebuilt, never used)."""
    x = entry[0]
    return x.ndim == 3 and x.shape[1:] == (prep.n_chans, prep.n_times) and x.dtype == np.dtype(prep.cache_dtype)


#: Bump when :func:`dsn.data.normalize.channel_stats` changes in a way its inputs (method, rate, band) do not capture.
STATS_VERSION = 1


def normalized_epochs(rec: Recording, method: NormalizeMethod) -> np.ndarray | NormalizedEpochs:
    """``rec.x`` normalised by ``method`` without a copy: a :class:`~dsn.data.normalize.NormalizedEpochs` over the
    (memory-mapped) epochs, with the same values as ``normalize(rec.x, method, rec.sfreq)``; ``rec.x`` for ``"none"``.

    The per-channel statistics read every sample once; for a cached recording they are kept beside its cache
    entry (``stats-<method>.json``) and read back by later set-ups, which then touch no sample.

    Raises
    ------
    ValueError
        As :func:`~dsn.data.normalize.channel_stats` (unknown method, flat channel).
    """
    if method == "none":
        return rec.x
    tag = {"version": STATS_VERSION, "method": method, "sfreq": float(rec.sfreq), "band": list(SCALE_BAND),
           "shape": list(rec.x.shape)}
    name = f"stats-{method}.json"
    kept = cache.read_extra(rec.cache_folder, name) if rec.cache_folder is not None else None
    if kept is not None and kept.get("tag") == tag:
        return NormalizedEpochs(rec.x, kept["centers"], kept["scales"])
    centers, scales = channel_stats(rec.x, method, rec.sfreq)
    release_pages(rec.x)  # every page was read once: leave them to the page cache, not this process
    if rec.cache_folder is not None:
        cache.write_extra(rec.cache_folder, name, {"tag": tag, "centers": centers, "scales": scales})
    return NormalizedEpochs(rec.x, centers, scales)


def release_pages(x: np.ndarray) -> None:
    """Drop the pages of a memory-mapped array from this process's resident memory (``madvise(MADV_DONTNEED)``;
    they stay in the page cache and are read back on the next access). Nothing for an array in memory or where
    the call is not available."""
    import mmap

    mm = getattr(x, "_mmap", None)
    if mm is not None and hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        try:
            mm.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):  # a closed map: nothing to release
            pass


def release_memory(recordings: Sequence[Recording]) -> None:
    """Give back what reading ``recordings`` left in this process: their memory-mapped pages
    (:func:`release_pages` on each one's epochs, the map under a :class:`~dsn.data.normalize.NormalizedEpochs`)
    and the freed heap the C allocator keeps (:func:`malloc_trim`). The values are untouched: the pages stay in
    the page cache and are read back on the next access. Called after each evaluation pass."""
    for rec in recordings:
        release_recording(rec)
    malloc_trim()


def release_recording(rec: Recording) -> None:
    """Drop ``rec``'s memory-mapped pages from this process (:func:`release_pages` on its epochs, the map under a
    :class:`~dsn.data.normalize.NormalizedEpochs` included).

    The datasets call it after each read: a read of one random 30-s epoch maps far more than its own bytes (the
    page cache's large folios and the read-ahead around a fault: about 0.6 MB on the 8-h nights of
    ``bench_scale.py``), so over a training epoch every training night would stay resident. It costs a few
    microseconds (a walk of an almost empty page table); the pages stay in the page cache."""
    release_pages(getattr(rec.x, "raw", rec.x))


def malloc_trim() -> None:
    """Return the freed heap glibc keeps to the system (``malloc_trim(0)``); nothing on another C library or system."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl): no malloc_trim
        return
    trim(0)
