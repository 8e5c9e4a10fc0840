"""Training batches drawn on the device: a fold's training signal held there, batches gathered by index.

A :class:`~torch.utils.data.DataLoader` over :class:`~dsn.data.sampling.EpochDataset` /
:class:`~dsn.data.sampling.SequenceDataset` copies every epoch on the host (~13 µs each) and then the batch to
the GPU, on the training step's critical path. :class:`DeviceBatches` instead holds the training recordings
once on the device (their signals end to end, ``(n_chans, n_samples)``, and their labels) and gathers each batch
there with one indexing operation. The order is the samplers' own: the same :class:`~dsn.data.sampling.BalancedSampler`,
:class:`~dsn.data.sampling.ShardedSampler` or :class:`~dsn.data.sampling.StreamBatchSampler` yields the keys on
the host (seeded per epoch; no device work), their window starts are computed there with the datasets' rules
(:func:`~dsn.data.sampling.read_shifted`'s clipping, a sequence window's skip), copied to the device once per
epoch, and every batch holds exactly the values the DataLoader's would (tested on CPU).

Memory: 4 bytes per sample of the training recordings (a 20-subject Sleep-EDF fold, trimmed: about 0.45 GB).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from dsn.data.sampling import EpochDataset, SequenceDataset, _unpack

__all__ = ["DeviceBatches"]


class DeviceBatches:
    """An iterable of training batches gathered on ``device``, in the order a DataLoader would give them.

    Parameters
    ----------
    dataset : EpochDataset or SequenceDataset
        The training items (their recordings are copied to ``device`` once, at construction).
    sampler : Sampler, optional
        Per-item sampler (keys, see :mod:`dsn.data.sampling`), batched by ``batch_size`` (the last batch may be
        shorter, as a DataLoader without ``drop_last``).
    batch_size : int, optional
        Items per batch with ``sampler``.
    batch_sampler : Sampler, optional
        Yields lists of keys, one list per batch (:class:`~dsn.data.sampling.StreamBatchSampler`); instead of
        ``sampler`` and ``batch_size``.
    device : torch.device or str, default "cpu"
        Where the signal lives and batches are made.

    Notes
    -----
    Batches are what the DataLoader's default collation gives: ``(x, y)`` with ``x`` ``(batch, n_chans,
    n_times)`` float32 and ``y`` ``(batch,)`` int64 for an :class:`EpochDataset`; ``(x, y, first)`` with ``x``
    ``(batch, seq_len, n_chans, n_times)``, ``y`` ``(batch, seq_len)`` int64 and ``first`` ``(batch,)`` bool for
    a :class:`SequenceDataset` (all rows of a batch have the same length, as the DataLoader needs).

    Lightning calls ``set_epoch`` on ``.sampler`` and ``.batch_sampler.sampler`` of whatever it iterates: both
    attributes are the given samplers, so the per-epoch order and augmentation draws follow as with a DataLoader.
    Every ``iter()`` takes one number from torch's global generator, as a DataLoader does (its workers' base seed),
    so a training run gives the same weights as with a ``num_workers: 0`` DataLoader for the same seed (tested);
    a DataLoader with persistent workers draws it once per fit instead.
    """

    def __init__(self, dataset: EpochDataset | SequenceDataset, sampler=None, batch_size: int | None = None,
                 batch_sampler=None, device: torch.device | str = "cpu") -> None:
        if (batch_sampler is None) == (sampler is None):
            raise ValueError("DeviceBatches needs either sampler (with batch_size) or batch_sampler")
        if sampler is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size={batch_size!r}: must be an integer >= 1 with a per-item sampler")
        if not isinstance(dataset, EpochDataset | SequenceDataset):
            raise TypeError(f"DeviceBatches reads EpochDataset or SequenceDataset items, got {type(dataset).__name__}")
        self.dataset, self.sampler, self.batch_size, self.batch_sampler = dataset, sampler, batch_size, batch_sampler
        self.device = torch.device(device)
        recs = dataset.recordings
        if not recs:
            raise ValueError("DeviceBatches: the dataset has no recordings")
        shapes = {tuple(r.x.shape[1:]) for r in recs}
        if len(shapes) != 1:
            raise ValueError(f"DeviceBatches: recordings with different epoch shapes {sorted(shapes)}")
        self.n_chans, self.n_times = shapes.pop()
        self._n_epochs = np.array([len(r) for r in recs], dtype=np.int64)
        self._epoch0 = np.concatenate([[0], np.cumsum(self._n_epochs)[:-1]])  # first epoch of each recording
        # the signals end to end, channel-major: a window of any length is one contiguous run of samples
        sig = np.concatenate([np.asarray(r.x, dtype=np.float32).transpose(1, 0, 2).reshape(self.n_chans, -1) for r in recs], 1)
        self.signal = torch.from_numpy(sig).to(self.device)  # (n_chans, n_samples)
        self.labels = torch.from_numpy(np.concatenate([np.asarray(r.y, dtype=np.int64) for r in recs])).to(self.device)
        self._sequences = isinstance(dataset, SequenceDataset)

    def __len__(self) -> int:
        if self.batch_sampler is not None:
            return len(self.batch_sampler)
        return math.ceil(len(self.sampler) / self.batch_size)

    def _batches(self) -> list[list]:
        if self.batch_sampler is not None:
            return [list(b) for b in self.batch_sampler]
        keys = list(self.sampler)
        return [keys[i : i + self.batch_size] for i in range(0, len(keys), self.batch_size)]

    def window_starts(self, keys: Sequence) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
        """Where the items of ``keys`` start: ``(first sample, first label, length in epochs, first-of-stream)``.

        The sample is an index into :attr:`signal`'s columns, the label into :attr:`labels`; the rules are the
        datasets' (:meth:`EpochDataset.__getitem__`, :meth:`SequenceDataset.__getitem__`, :func:`read_shifted`).

        Raises
        ------
        ValueError
            If the items of one batch have different lengths, or a skipped window leaves its recording.
        """
        ds, t = self.dataset, self.n_times
        k = np.array([_unpack(key) for key in keys], dtype=np.int64).reshape(-1, 3)
        i, skip, shift = k[:, 0], k[:, 1], k[:, 2]
        if self._sequences:
            rec, start, length, first = (ds.windows[i, c] for c in range(4))
            start = start + skip
            n_rec = self._n_epochs[rec]
            bad = np.flatnonzero(start + length > n_rec)
            if bad.size:
                j = int(bad[0])
                raise ValueError(f"window {int(i[j])} skipped by {int(skip[j])} epochs ends after recording "
                                 f"{ds.recordings[int(rec[j])].name} ({int(n_rec[j])} epochs)")
            if len(set(length.tolist())) > 1:
                raise ValueError(f"a batch of windows of different lengths {sorted(set(length.tolist()))}")
            n = int(length[0]) if len(length) else 0
        else:
            if skip.any():
                raise ValueError("EpochDataset keys: single epochs cannot be skipped (skip must be 0)")
            rec, start = ds._rec[i].astype(np.int64), ds._ep[i].astype(np.int64)
            n_rec, n, first = self._n_epochs[rec], 1, np.zeros(len(i), bool)
        s = start * t
        shifted = shift != 0
        s[shifted] = np.clip(s[shifted] + shift[shifted], 0, np.maximum(n_rec[shifted] - n, 0) * t)
        return self._epoch0[rec] * t + s, self._epoch0[rec] + start, n, first.astype(bool)

    def gather(self, samples: Tensor, labels: Tensor, n: int, first: Tensor | None = None) -> tuple[Tensor, ...]:
        """One batch from device tensors of window starts (``(batch,)`` int64 each; see :meth:`window_starts`)."""
        b, c, t = samples.shape[0], self.n_chans, self.n_times
        x = self.signal[:, samples[:, None] + torch.arange(n * t, device=self.device)]  # (n_chans, batch, n * n_times)
        y = self.labels[labels[:, None] + torch.arange(n, device=self.device)]  # (batch, n)
        if not self._sequences:
            return x.permute(1, 0, 2).contiguous(), y[:, 0]
        return x.view(c, b, n, t).permute(1, 2, 0, 3).contiguous(), y, first

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        batches = self._batches()  # the sampler's order for this epoch (host only)
        # a DataLoader draws its workers' base seed from torch's global generator at every iter(): so do we,
        # so that dropout and everything else drawn after it is the same as with a DataLoader (num_workers 0)
        torch.empty((), dtype=torch.int64).random_()
        if not batches:
            return
        sizes = [len(b) for b in batches]
        starts = [self.window_starts(b) for b in batches]
        # one host -> device copy per epoch; slices of it per batch
        samples = torch.from_numpy(np.concatenate([s[0] for s in starts])).to(self.device, non_blocking=True)
        labels = torch.from_numpy(np.concatenate([s[1] for s in starts])).to(self.device, non_blocking=True)
        first = torch.from_numpy(np.concatenate([s[3] for s in starts])).to(self.device, non_blocking=True)
        pos = 0
        for size, (_, _, n, _) in zip(sizes, starts):
            sl = slice(pos, pos + size)
            pos += size
            yield self.gather(samples[sl], labels[sl], n, first[sl])
