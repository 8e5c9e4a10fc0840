"""Datasets and samplers: single epochs (pretraining) and contiguous sequences (fine-tuning).

All pieces work on lists of :class:`~dsn.data.recording.Recording` and never copy whole recordings:
items are sliced from the (memory-mapped) arrays on access.

Augmentation keys
-----------------
Training augmentation is decided by the samplers, not the datasets: a sampler knows the epoch (Lightning
calls its ``set_epoch``) in the main process, while a dataset may live in a worker process that never
hears of it. A sampler therefore yields *keys*: a plain ``int`` item index (no augmentation: evaluation,
and training with the paper's defaults), or a tuple ``(index, skip, shift)``, read by the datasets as

* ``skip``: whole epochs to move a sequence window forward (``SequenceDataset`` only; labels move with it);
* ``shift``: samples to move the signal window by in the recording's continuous signal (labels unchanged),
  clipped so the window stays inside the recording (:func:`read_shifted`).

Distributed training
--------------------
Every sampler here shards itself over DDP processes: ``num_replicas`` and ``rank`` default to
``torch.distributed``'s world size and rank when a process group is initialised, else 1 and 0. Training
shards have equal lengths (padded by repetition as :class:`torch.utils.data.DistributedSampler` pads), so
every process runs the same number of optimiser steps; evaluation shards are disjoint and unpadded, so every
epoch is scored exactly once. Lightning must therefore not insert its own ``DistributedSampler``: use
``Trainer(use_distributed_sampler=False)`` with them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from dsn.data.recording import Recording, release_recording

#: What the samplers yield and the datasets accept: an item index, or ``(index, skip, shift)``.
Key = int | tuple[int, int, int]


def _unpack(key) -> tuple[int, int, int]:
    if isinstance(key, tuple | list):
        i, skip, shift = key
        return int(i), int(skip), int(shift)
    return int(key), 0, 0


def _check_int(name: str, value, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ValueError(f"{name}={value!r}: must be an integer >= {low}")
    return int(value)


def resolve_replicas(num_replicas: int | None = None, rank: int | None = None) -> tuple[int, int]:
    """``(num_replicas, rank)``: the given values, else ``torch.distributed``'s when it is initialised, else ``(1, 0)``.

    Raises
    ------
    ValueError
        If ``num_replicas < 1`` or ``rank`` is not in ``0..num_replicas - 1``.
    """
    dist = torch.distributed
    initialised = dist.is_available() and dist.is_initialized()
    if num_replicas is None:
        num_replicas = dist.get_world_size() if initialised else 1
    if rank is None:
        rank = dist.get_rank() if initialised else 0
    num_replicas = _check_int("num_replicas", num_replicas, 1)
    if isinstance(rank, bool) or not isinstance(rank, int | np.integer) or not 0 <= rank < num_replicas:
        raise ValueError(f"rank={rank!r}: must be an integer in 0..{num_replicas - 1} (num_replicas={num_replicas})")
    return num_replicas, int(rank)


def shard_even(items: Sequence, num_replicas: int, rank: int) -> list:
    """The :class:`~torch.utils.data.DistributedSampler` rule: ``items`` padded by repeating them from the
    start to a multiple of ``num_replicas``, then every ``num_replicas``-th item from position ``rank``.

    All shards have ``ceil(len(items) / num_replicas)`` items; together they hold every item, and only
    the padding repeats items.
    """
    items = list(items)
    if not items or num_replicas == 1:
        return items
    total = math.ceil(len(items) / num_replicas) * num_replicas
    padded = (items * math.ceil(total / len(items)))[:total]
    return padded[rank::num_replicas]


def _shard_even_array(keys: np.ndarray, num_replicas: int, rank: int) -> np.ndarray:
    """:func:`shard_even` of an array of keys (rows), without a Python list: the same items in the same order."""
    n = len(keys)
    if not n or num_replicas == 1:
        return keys
    total = math.ceil(n / num_replicas) * num_replicas
    return keys[np.arange(rank, total, num_replicas) % n]


#: Keys turned into Python objects per block while a sampler is iterated (an epoch's keys stay one array).
_KEY_BLOCK = 4096


def _key_array(order: np.ndarray, draws: _ShiftDraws) -> np.ndarray:
    """An epoch's keys as one int64 array: ``order`` (plain indices) or, with augmentation, rows ``(index, skip,
    shift)`` whose skips and shifts are drawn as the samplers always drew them (skips first, then shifts)."""
    order = np.asarray(order, dtype=np.int64)
    if not draws.active:
        return order
    skips = draws.skips(len(order))
    return np.stack([order, skips, draws.shifts(len(order))], axis=1).astype(np.int64, copy=False)


def _iter_keys(keys: np.ndarray) -> Iterator[Key]:
    """The keys of an array from :func:`_key_array`, as the datasets take them (``int`` or ``(int, int, int)``),
    made a block at a time."""
    for a in range(0, len(keys), _KEY_BLOCK):
        block = keys[a : a + _KEY_BLOCK].tolist()
        if keys.ndim == 2:
            yield from map(tuple, block)
        else:
            yield from block


def shard_contiguous(n_items: int, num_replicas: int, rank: int) -> range:
    """Positions ``rank`` holds when ``n_items`` are cut into ``num_replicas`` contiguous blocks without
    repetition (sizes differ by at most one; evaluation)."""
    base, extra = divmod(n_items, num_replicas)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


def read_shifted(x: np.ndarray, start: int, length: int, shift: int = 0) -> np.ndarray:
    """``length`` epochs of ``x`` read from the recording's continuous signal, ``shift`` samples after
    the start of epoch ``start``.

    ``x`` is ``(n_epochs, n_chans, n_times)``; the epochs are taken as one continuous signal, so a shifted
    window borrows samples from its neighbours. The window start is clipped to ``[0, (n_epochs - length) *
    n_times]`` so it never leaves the recording. Returns a float32 ``(length, n_chans, n_times)`` copy.
    """
    if shift == 0:
        return np.array(x[start : start + length], dtype=np.float32)
    n_epochs, n_chans, n_times = x.shape
    s = min(max(start * n_times + shift, 0), max(n_epochs - length, 0) * n_times)
    e0, off = divmod(s, n_times)
    block = np.array(x[e0 : e0 + length + (off > 0)], dtype=np.float32)  # a copy: never a view of the memmap
    flat = block.transpose(1, 0, 2).reshape(n_chans, -1)[:, off : off + length * n_times]
    return np.ascontiguousarray(flat.reshape(n_chans, -1, n_times).transpose(1, 0, 2))


def balanced_indices(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Class-balanced oversampling as in the official code.

    Each class's indices are repeated ``max_count // count`` times, then topped up with
    ``max_count - repeated`` indices of that class drawn at random without replacement, so every
    class ends with exactly as many items as the largest. Classes absent from ``y`` stay absent.

    Returns
    -------
    ndarray of int64 indices into ``y`` (grouped by class, not shuffled).
    """
    y = np.asarray(y)
    classes, counts = np.unique(y, return_counts=True)
    target = counts.max()
    out = []
    for c, n in zip(classes, counts):
        idx = np.flatnonzero(y == c)
        reps = target // n
        extra = rng.choice(idx, size=target - reps * n, replace=False)
        out.append(np.concatenate([np.tile(idx, reps), extra]))
    return np.concatenate(out).astype(np.int64)


class EpochDataset(Dataset):
    """Single 30-s epochs of several recordings (masked epochs excluded).

    Items are ``(x, y)``: ``x`` float32 tensor (n_chans, n_times), ``y`` int64 scalar tensor. An item is
    addressed by its index, or by a key ``(index, 0, shift)``: the epoch's window moved by ``shift``
    samples in the continuous signal (see the module docstring), label unchanged. With ``release`` (the data
    module's loaders), each read gives the recording's memory-mapped pages back
    (:func:`~dsn.data.recording.release_recording`).
    """

    def __init__(self, recordings: Sequence[Recording], release: bool = False):
        self.recordings, self.release = list(recordings), release
        rec, ep = [], []
        for i, r in enumerate(self.recordings):
            e = np.flatnonzero(r.y >= 0)
            rec.append(np.full(len(e), i))
            ep.append(e)
        self._rec = np.concatenate(rec) if rec else np.zeros(0, int)
        self._ep = np.concatenate(ep) if ep else np.zeros(0, int)
        self.labels = (
            np.concatenate([r.y[r.y >= 0] for r in self.recordings]) if self.recordings else np.zeros(0, np.int64)
        )

    def __len__(self) -> int:
        return len(self._ep)

    def __getitem__(self, key: Key) -> tuple[torch.Tensor, torch.Tensor]:
        i, skip, shift = _unpack(key)
        if skip:
            raise ValueError(f"EpochDataset key {key!r}: single epochs cannot be skipped (skip must be 0)")
        r = self.recordings[self._rec[i]]
        e = int(self._ep[i])
        x = read_shifted(r.x, e, 1, shift)[0]
        if self.release:
            release_recording(r)
        return torch.from_numpy(x), torch.tensor(int(r.y[e]))


class _ShiftDraws:
    """Per-epoch random skips and shifts, drawn from ``(seed, epoch, 1)`` (the order draws use ``(seed, epoch)``)."""

    def __init__(self, seed: int, epoch: int, max_skip: int, max_shift: int):
        self.rng = np.random.default_rng([seed, epoch, 1])
        self.max_skip, self.max_shift = max_skip, max_shift

    @property
    def active(self) -> bool:
        return bool(self.max_skip or self.max_shift)

    def skips(self, n: int) -> np.ndarray:
        return self.rng.integers(0, self.max_skip + 1, n) if self.max_skip else np.zeros(n, np.int64)

    def shifts(self, n: int) -> np.ndarray:
        return self.rng.integers(-self.max_shift, self.max_shift + 1, n) if self.max_shift else np.zeros(n, np.int64)


class _Resumable:
    """A training sampler's position inside an epoch, for a fit resumed from a checkpoint saved mid-epoch.

    :meth:`resume_at` sets the epoch and how many of its first keys (or batches, for a batch sampler) the next
    iteration of that epoch leaves out, so a resumed fit sees the rest of the epoch in the order it would have
    seen it; the skip is used once, and only by an iteration of that epoch (``set_epoch`` to another epoch
    cancels it).
    """

    epoch: int
    _resume: tuple[int, int] | None = None

    def resume_at(self, epoch: int, skip: int) -> None:
        """Iterate epoch ``epoch`` next, without its first ``skip`` keys (batches for a batch sampler)."""
        self.epoch = _check_int("epoch", epoch)
        self._resume = (self.epoch, _check_int("skip", skip))

    def _skip(self) -> int:
        resume, self._resume = self._resume, None
        return resume[1] if resume is not None and resume[0] == self.epoch else 0


class BalancedSampler(_Resumable, Sampler[Key]):
    """Shuffled class-balanced oversampling of an :class:`EpochDataset` (see :func:`balanced_indices`).

    Parameters
    ----------
    labels : numpy.ndarray
        Class index per dataset item.
    seed : int, default 0
        Base seed; epoch ``e`` uses ``(seed, e)``.
    redraw : bool, default False
        Draw a new top-up every epoch; if False the oversampled set is drawn once (the official code) and
        only its order is reshuffled each epoch.
    max_shift : int, default 0
        Signal-shift augmentation: every item's window is moved by a random offset of ``-max_shift ..
        max_shift`` samples (new draws every epoch); 0 (the paper) yields plain indices.
    num_replicas : int, optional
        Number of DDP processes; default ``torch.distributed``'s world size when initialised, else 1.
    rank : int, optional
        This process's rank; default ``torch.distributed``'s rank when initialised, else 0.

    Notes
    -----
    With several processes each rank gets every ``num_replicas``-th item of the epoch's shuffled list,
    padded by repetition to ``ceil(n / num_replicas)`` items (as ``DistributedSampler``), so all ranks run
    the same number of steps. Use ``Trainer(use_distributed_sampler=False)``.
    """

    def __init__(
        self,
        labels: np.ndarray,
        seed: int = 0,
        redraw: bool = False,
        max_shift: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ):
        self.labels = np.asarray(labels)
        self.seed = seed
        self.redraw = redraw
        self.max_shift = _check_int("max_shift", max_shift)
        self.num_replicas, self.rank = resolve_replicas(num_replicas, rank)
        self.epoch = 0
        self._fixed = balanced_indices(self.labels, np.random.default_rng(seed))

    def set_epoch(self, epoch: int) -> None:  # called by Lightning at the start of every epoch
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self._fixed) / self.num_replicas)

    def __iter__(self) -> Iterator[Key]:
        rng = np.random.default_rng([self.seed, self.epoch])
        idx = balanced_indices(self.labels, rng) if self.redraw else self._fixed
        order = rng.permutation(idx)
        draws = _ShiftDraws(self.seed, self.epoch, 0, self.max_shift)
        keys = _key_array(order, draws)
        return _iter_keys(_shard_even_array(keys, self.num_replicas, self.rank)[self._skip():])


class ShardedSampler(_Resumable, Sampler[Key]):
    """Items ``0 .. n_items - 1``, shuffled or in order, sharded over DDP processes.

    The sampler of the training loaders that do not oversample (``oversample: false``, fine-tuning with
    ``sequence_sampling: shuffle``) and of the pretraining evaluation loaders.

    Parameters
    ----------
    n_items : int
        Dataset length.
    shuffle : bool, default True
        A new random order every epoch (from ``(seed, epoch)``); False keeps the dataset order.
    seed : int, default 0
        Base seed of the order and of the augmentation draws.
    even : bool, default True
        True (training): every rank gets ``ceil(n_items / num_replicas)`` items, padded by repetition.
        False (evaluation): contiguous blocks without repetition, every item exactly once.
    max_skip : int, default 0
        Move every (sequence) item forward by a random ``0 .. max_skip`` epochs (``SequenceDataset`` keys).
    max_shift : int, default 0
        Move every item's signal window by a random ``-max_shift .. max_shift`` samples.
    num_replicas : int, optional
        Number of DDP processes; default ``torch.distributed``'s world size when initialised, else 1.
    rank : int, optional
        This process's rank; default ``torch.distributed``'s rank when initialised, else 0.

    Raises
    ------
    ValueError
        With ``even=False``, if there are fewer items than processes (a process without evaluation data
        would leave the others waiting in a collective operation).
    """

    def __init__(
        self,
        n_items: int,
        shuffle: bool = True,
        seed: int = 0,
        even: bool = True,
        max_skip: int = 0,
        max_shift: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ):
        self.n_items = _check_int("n_items", n_items)
        self.shuffle, self.seed, self.even, self.epoch = shuffle, seed, even, 0
        self.max_skip = _check_int("max_skip", max_skip)
        self.max_shift = _check_int("max_shift", max_shift)
        self.num_replicas, self.rank = resolve_replicas(num_replicas, rank)
        if not even and 0 < n_items < self.num_replicas:
            raise ValueError(
                f"{n_items} evaluation items cannot be split over {self.num_replicas} processes without repeating "
                "some; use fewer processes for evaluation"
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.even:
            return math.ceil(self.n_items / self.num_replicas)
        return len(shard_contiguous(self.n_items, self.num_replicas, self.rank))

    def __iter__(self) -> Iterator[Key]:
        order = np.arange(self.n_items)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(order)
        draws = _ShiftDraws(self.seed, self.epoch, self.max_skip, self.max_shift)
        keys = _key_array(order, draws)
        if self.even:
            return _iter_keys(_shard_even_array(keys, self.num_replicas, self.rank)[self._skip():])
        part = shard_contiguous(len(keys), self.num_replicas, self.rank)
        return _iter_keys(keys[part.start : part.stop][self._skip():])


class SequenceDataset(Dataset):
    """Contiguous windows of epochs that never cross recordings.

    Parameters
    ----------
    recordings : sequence of Recording
        The recordings.
    windows : numpy.ndarray
        Int array (n_windows, 4): recording index, start epoch, length, is-first-chunk-of-stream.

    Items are ``(x, y, first)``: ``x`` (seq_len, n_chans, n_times) float32, ``y`` (seq_len,) int64
    (``IGNORE_INDEX`` for masked epochs), ``first`` bool tensor: the LSTM state must be reset before it.
    A window is addressed by its index, or by a key ``(index, skip, shift)``: the window starts ``skip``
    epochs later (labels move with it) and its signal is moved by ``shift`` samples in the continuous
    signal (labels unchanged); see the module docstring. ``release``: as :class:`EpochDataset`'s.
    """

    def __init__(self, recordings: Sequence[Recording], windows: np.ndarray, release: bool = False):
        self.recordings, self.release = list(recordings), release
        self.windows = np.asarray(windows, dtype=np.int64).reshape(-1, 4)

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, key: Key) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        i, skip, shift = _unpack(key)
        rec, start, length, first = (int(v) for v in self.windows[i])
        r = self.recordings[rec]
        start += skip
        if start + length > len(r):
            raise ValueError(f"window {i} skipped by {skip} epochs ends after recording {r.name} ({len(r)} epochs)")
        x = read_shifted(r.x, start, length, shift)
        if self.release:
            release_recording(r)
        return torch.from_numpy(x), torch.from_numpy(np.array(r.y[start : start + length])), torch.tensor(bool(first))


def independent_windows(recordings: Sequence[Recording], seq_len: int, skip_first: int = 0) -> np.ndarray:
    """Non-overlapping windows of ``seq_len`` epochs, each its own stream (``first`` = 1).

    The remainder of a recording shorter than ``seq_len`` is left out, as in the official code. With
    ``skip_first`` the windows tile the first ``len - skip_first`` epochs, so each can later be moved
    forward by up to ``skip_first`` epochs (a ``skip`` key) and stay inside its recording.
    """
    rows = [
        (i, s, seq_len, 1)
        for i, r in enumerate(recordings)
        for s in range(0, len(r) - skip_first - seq_len + 1, seq_len)
    ]
    return np.array(rows, dtype=np.int64).reshape(-1, 4)


def stream_layout(n_epochs: int, batch_size: int, seq_len: int, keep_tail: bool = False) -> list[list[tuple[int, int, int]]]:
    """How one recording is streamed: a list of batches, each a list of ``(start, length, first)`` rows.

    The recording is cut into ``n_rows = min(batch_size, n_epochs // seq_len)`` contiguous streams of
    ``n_epochs // n_rows`` epochs (the official ``iterate_batch_seq_minibatches``); batch ``k`` holds the
    ``k``-th chunk of ``seq_len`` epochs of every stream, so row ``j`` of consecutive batches continues
    the same stretch of signal and the LSTM state can be carried. With one stream and ``keep_tail``,
    a last shorter chunk covers the remainder, so every epoch is scored (evaluation).
    """
    n_rows = min(batch_size, n_epochs // seq_len)
    if n_rows == 0:
        return [[(0, n_epochs, 1)]] if keep_tail and n_epochs > 0 else []
    row_len = n_epochs // n_rows
    n_chunks = row_len // seq_len
    batches = [[(j * row_len + k * seq_len, seq_len, int(k == 0)) for j in range(n_rows)] for k in range(n_chunks)]
    if keep_tail and n_rows == 1 and n_chunks * seq_len < n_epochs:
        batches.append([(n_chunks * seq_len, n_epochs - n_chunks * seq_len, 0)])
    return batches


class _EpochHook:
    """Lightning calls ``set_epoch`` on ``loader.sampler`` and ``loader.batch_sampler.sampler`` only, never on
    a custom ``batch_sampler`` itself: this stands at ``batch_sampler.sampler`` and forwards the call."""

    def __init__(self, owner: StreamBatchSampler):
        self.owner = owner

    def set_epoch(self, epoch: int) -> None:
        self.owner.set_epoch(epoch)


def _balanced_cuts(bounds: Sequence[int], total: int, parts: int) -> list[int]:
    """``parts + 1`` cut positions in ``0..total`` taken from ``bounds`` (sorted, holding 0 and ``total``),
    each piece non-empty and as close to ``total / parts`` long as the bounds allow."""
    bounds = list(bounds)
    cuts = [0]
    for q in range(1, parts):
        lo = bounds.index(cuts[-1]) + 1
        hi = len(bounds) - (parts - q)  # leave one bound per remaining piece
        cand = bounds[lo:hi]
        cuts.append(min(cand, key=lambda b: abs(b - q * total / parts)))
    return cuts + [total]


class StreamBatchSampler(_Resumable, Sampler[list[Key]]):
    """Batches that stream recordings in order so an LSTM can carry its state (the official recipe).

    Use with a :class:`SequenceDataset` built on :attr:`windows`. Each batch comes from one recording
    (see :func:`stream_layout`); recordings are visited in a new random order every epoch when
    ``shuffle`` is set.

    Parameters
    ----------
    recordings : sequence of Recording
        The recordings.
    batch_size : int
        Streams (rows) per batch.
    seq_len : int
        Epochs per chunk.
    shuffle : bool, default True
        Visit the recordings in a new random order every epoch (from ``(seed, epoch)``).
    keep_tail : bool, default False
        With one stream per recording, a last shorter chunk covers the remainder (evaluation).
    seed : int, default 0
        Base seed of the order and of the augmentation draws.
    skip_first : int, default 0
        Every epoch, each recording's streams start after a random skip of ``0 .. skip_first`` epochs
        (TinySleepNet's sequence augmentation: chunk boundaries move between epochs). The layout is made
        for ``len - skip_first`` epochs, so the number of batches is the same every epoch. 0: the paper.
    max_shift : int, default 0
        Signal-shift augmentation: every stream's signal is moved by one random offset of ``-max_shift ..
        max_shift`` samples per epoch (all its chunks alike, so consecutive chunks stay contiguous), clipped so
        the whole stream stays inside its recording.
    even : bool, default True
        Sharding over DDP processes. True (training): the epoch's list of batches (recordings in their
        order) is cut into ``num_replicas`` contiguous pieces of ``ceil(n_batches / num_replicas)`` batches,
        the last padded by wrapping around to the first batches, so every rank runs the same number of steps
        and streams stay contiguous within a rank (a piece that starts inside a recording starts with a zero
        LSTM state, as every epoch does). False (evaluation): contiguous pieces without repetition, cut
        between recordings (balanced by batches) when there are at least as many recordings as processes,
        else between chunks.
    num_replicas : int, optional
        Number of DDP processes; default ``torch.distributed``'s world size when initialised, else 1.
    rank : int, optional
        This process's rank; default ``torch.distributed``'s rank when initialised, else 0.

    Notes
    -----
    The sampler shards the streams itself: Lightning's own distributed sampler cannot wrap a batch sampler
    like this one, so DDP training needs ``Trainer(use_distributed_sampler=False)``.
    """

    def __init__(
        self,
        recordings: Sequence[Recording],
        batch_size: int,
        seq_len: int,
        shuffle: bool = True,
        keep_tail: bool = False,
        seed: int = 0,
        skip_first: int = 0,
        max_shift: int = 0,
        even: bool = True,
        num_replicas: int | None = None,
        rank: int | None = None,
    ):
        self.shuffle, self.seed, self.epoch, self.even = shuffle, seed, 0, even
        self.skip_first = _check_int("skip_first", skip_first)
        self.max_shift = _check_int("max_shift", max_shift)
        self.num_replicas, self.rank = resolve_replicas(num_replicas, rank)
        self.sampler = _EpochHook(self)
        windows, self._batches = [], []
        for i, r in enumerate(recordings):
            rec_batches = []
            for batch in stream_layout(max(len(r) - self.skip_first, 0), batch_size, seq_len, keep_tail):
                rec_batches.append(list(range(len(windows), len(windows) + len(batch))))
                windows.extend((i, s, n, f) for s, n, f in batch)
            self._batches.append(rec_batches)
        self.windows = np.array(windows, dtype=np.int64).reshape(-1, 4)
        self._n_rows = [len(b[0]) if b else 0 for b in self._batches]
        # how far each stream (row) may move, in samples, before it leaves its recording: (epochs free
        # before its first chunk, epochs free after its last chunk without a skip)
        self._n_times = [int(r.x.shape[-1]) for r in recordings]
        self._room = []
        for r, b in zip(recordings, self._batches):
            first = [int(self.windows[w][1]) for w in b[0]] if b else []
            last = [int(self.windows[w][1] + self.windows[w][2]) for w in b[-1]] if b else []
            self._room.append([(f, len(r) - e) for f, e in zip(first, last)])
        self._n_batches = sum(len(b) for b in self._batches)
        if not even and 0 < self._n_batches < self.num_replicas:
            raise ValueError(
                f"{self._n_batches} evaluation chunks cannot be split over {self.num_replicas} processes without "
                "repeating some; use fewer processes for evaluation"
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _epoch_batches(self) -> tuple[list[list[Key]], list[int]]:
        """This epoch's batches over all recordings in visiting order, and the positions where recordings start."""
        order = np.arange(len(self._batches))
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(order)
        draws = _ShiftDraws(self.seed, self.epoch, self.skip_first, self.max_shift)
        skips = draws.skips(len(self._batches)).tolist()
        shifts = np.split(draws.shifts(sum(self._n_rows)), np.cumsum(self._n_rows)[:-1]) if self._n_rows else []
        batches: list[list[Key]] = []
        starts = []
        for i in order:
            starts.append(len(batches))
            # one offset per stream, clipped so that the whole stream stays inside the recording
            t = self._n_times[i]
            row_shift = [
                int(np.clip(shifts[i][j], -(before + skips[i]) * t, (after - skips[i]) * t))
                for j, (before, after) in enumerate(self._room[i])
            ] if draws.active else []
            for b in self._batches[i]:
                if draws.active:
                    batches.append([(w, skips[i], row_shift[j]) for j, w in enumerate(b)])
                else:
                    batches.append(list(b))
        return batches, starts + [len(batches)]

    def _shard(self) -> list[list[Key]]:
        batches, starts = self._epoch_batches()
        n, r = len(batches), self.num_replicas
        if r == 1 or n == 0:
            return batches
        if self.even:
            size = math.ceil(n / r)
            return [batches[(self.rank * size + j) % n] for j in range(size)]
        bounds = sorted(set(starts))  # between recordings (those without batches give no bound)
        if len(bounds) - 1 < r:  # fewer recordings than processes: between chunks
            bounds = list(range(n + 1))
        cuts = _balanced_cuts(bounds, n, r)
        return batches[cuts[self.rank] : cuts[self.rank + 1]]

    def __len__(self) -> int:
        if self.even:
            return math.ceil(self._n_batches / self.num_replicas)
        return len(self._shard())

    def __iter__(self) -> Iterator[list[Key]]:
        yield from self._shard()[self._skip():]
