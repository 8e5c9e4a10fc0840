"""Datasets and samplers: single epochs (pretraining) and contiguous sequences (fine-tuning).

All pieces work on lists of :class:`~dsn.data.recording.Recording` and never copy whole recordings:
items are sliced from the (memory-mapped) arrays on access.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from dsn.data.recording import Recording


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

    Items are ``(x, y)``: ``x`` float32 tensor (n_chans, n_times), ``y`` int64 scalar tensor.
    """

    def __init__(self, recordings: Sequence[Recording]):
        self.recordings = list(recordings)
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

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.recordings[self._rec[i]]
        e = self._ep[i]
        return torch.from_numpy(np.array(r.x[e], dtype=np.float32)), torch.tensor(int(r.y[e]))


class BalancedSampler(Sampler[int]):
    """Shuffled class-balanced oversampling of an :class:`EpochDataset` (see :func:`balanced_indices`).

    Parameters
    ----------
    labels : class index per dataset item.
    seed : base seed; epoch ``e`` uses ``(seed, e)``.
    redraw : draw a new top-up every epoch; if False the oversampled set is drawn once (the official
        code) and only its order is reshuffled each epoch.
    """

    def __init__(self, labels: np.ndarray, seed: int = 0, redraw: bool = False):
        self.labels = np.asarray(labels)
        self.seed = seed
        self.redraw = redraw
        self.epoch = 0
        self._fixed = balanced_indices(self.labels, np.random.default_rng(seed))

    def set_epoch(self, epoch: int) -> None:  # called by Lightning at the start of every epoch
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self._fixed)

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        idx = balanced_indices(self.labels, rng) if self.redraw else self._fixed
        return iter(rng.permutation(idx).tolist())


class SequenceDataset(Dataset):
    """Contiguous windows of epochs that never cross recordings.

    Parameters
    ----------
    recordings : the recordings.
    windows : int array (n_windows, 4): recording index, start epoch, length, is-first-chunk-of-stream.

    Items are ``(x, y, first)``: ``x`` (seq_len, n_chans, n_times) float32, ``y`` (seq_len,) int64
    (``IGNORE_INDEX`` for masked epochs), ``first`` bool tensor: the LSTM state must be reset before it.
    """

    def __init__(self, recordings: Sequence[Recording], windows: np.ndarray):
        self.recordings = list(recordings)
        self.windows = np.asarray(windows, dtype=np.int64).reshape(-1, 4)

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rec, start, length, first = self.windows[i]
        r = self.recordings[rec]
        x = np.array(r.x[start : start + length], dtype=np.float32)
        return torch.from_numpy(x), torch.from_numpy(np.array(r.y[start : start + length])), torch.tensor(bool(first))


def independent_windows(recordings: Sequence[Recording], seq_len: int) -> np.ndarray:
    """Non-overlapping windows of ``seq_len`` epochs, each its own stream (``first`` = 1).

    The remainder of a recording shorter than ``seq_len`` is left out, as in the official code.
    """
    rows = [
        (i, s, seq_len, 1) for i, r in enumerate(recordings) for s in range(0, len(r) - seq_len + 1, seq_len)
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


class StreamBatchSampler(Sampler[list[int]]):
    """Batches that stream recordings in order so an LSTM can carry its state (the official recipe).

    Use with a :class:`SequenceDataset` built on :attr:`windows`. Each batch comes from one recording
    (see :func:`stream_layout`); recordings are visited in a new random order every epoch when
    ``shuffle`` is set.
    """

    def __init__(
        self,
        recordings: Sequence[Recording],
        batch_size: int,
        seq_len: int,
        shuffle: bool = True,
        keep_tail: bool = False,
        seed: int = 0,
    ):
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0
        windows, self._batches = [], []
        for i, r in enumerate(recordings):
            rec_batches = []
            for batch in stream_layout(len(r), batch_size, seq_len, keep_tail):
                rec_batches.append(list(range(len(windows), len(windows) + len(batch))))
                windows.extend((i, s, n, f) for s, n, f in batch)
            self._batches.append(rec_batches)
        self.windows = np.array(windows, dtype=np.int64).reshape(-1, 4)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return sum(len(b) for b in self._batches)

    def __iter__(self) -> Iterator[list[int]]:
        order = np.arange(len(self._batches))
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(order)
        for i in order:
            yield from self._batches[i]
