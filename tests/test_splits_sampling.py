"""Subject-wise splits and the pretraining / fine-tuning samplers (pure pieces, no files)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from dsn.data.errors import DataError
from dsn.data.recording import Recording
from dsn.data.sampling import (
    BalancedSampler,
    EpochDataset,
    SequenceDataset,
    ShardedSampler,
    StreamBatchSampler,
    balanced_indices,
    independent_windows,
    read_shifted,
    stream_layout,
)
from dsn.data.splits import Split, fixed_split, subject_kfold

SUBJECTS = [f"SC4{i:02d}" for i in range(20)]


@pytest.mark.parametrize("n_folds", [2, 5, 20])
def test_kfold_subject_wise_and_covering(n_folds):
    tests = []
    for fold in range(n_folds):
        s = subject_kfold(SUBJECTS, n_folds, fold, n_val_subjects=2, seed=3)
        assert not (set(s.train) & set(s.val) or set(s.train) & set(s.test) or set(s.val) & set(s.test))
        assert sorted(s.train + s.val + s.test) == SUBJECTS
        assert len(s.val) == 2
        tests += s.test
    assert sorted(tests) == SUBJECTS  # every subject is tested exactly once
    if n_folds == 20:
        assert all(len(subject_kfold(SUBJECTS, 20, f, 2, 3).test) == 1 for f in range(20))  # leave-one-subject-out


def test_kfold_deterministic_for_a_seed():
    assert subject_kfold(SUBJECTS, 5, 1, 2, seed=7) == subject_kfold(SUBJECTS, 5, 1, 2, seed=7)
    assert subject_kfold(SUBJECTS, 5, 1, 2, seed=7) != subject_kfold(SUBJECTS, 5, 1, 2, seed=8)


def test_kfold_errors():
    with pytest.raises(DataError, match="fold=5: must be in 0..4"):
        subject_kfold(SUBJECTS, 5, 5)
    with pytest.raises(DataError, match="n_folds=30"):
        subject_kfold(SUBJECTS, 30, 0)
    with pytest.raises(DataError, match="not enough for 2 validation"):
        subject_kfold(SUBJECTS[:3], 3, 0, n_val_subjects=2)


def test_split_rejects_overlap_and_unknown_subjects():
    with pytest.raises(DataError, match=r"\['a'\] are in both train and test"):
        Split(("a", "b"), ("c",), ("a",))
    with pytest.raises(DataError, match=r"subjects \['zz'\] not found"):
        fixed_split(["SC400"], ["zz"], [], SUBJECTS)


def test_balanced_indices_official_rule():
    y = np.array([0] * 10 + [1] * 3 + [2] * 4 + [4] * 1)
    idx = balanced_indices(y, np.random.default_rng(0))
    counts = Counter(y[idx].tolist())
    assert counts == {0: 10, 1: 10, 2: 10, 4: 10}  # absent class 3 stays absent
    per_item = Counter(idx.tolist())
    assert all(per_item[i] == 1 for i in range(10))  # largest class once each
    assert sorted(per_item[i] for i in range(10, 13)) == [3, 3, 4]  # 3 repeats + 1 random top-up
    assert sorted(per_item[i] for i in range(13, 17)) == [2, 2, 3, 3]


def test_balanced_sampler_redraw():
    y = np.array([0] * 50 + [1] * 7 + [2] * 13)
    fixed = BalancedSampler(y, seed=1, redraw=False)
    a = sorted(fixed)
    fixed.set_epoch(1)
    assert sorted(fixed) == a and len(a) == 150  # same multiset, new order
    redraw = BalancedSampler(y, seed=1, redraw=True)
    draws = []
    for e in range(4):
        redraw.set_epoch(e)
        draws.append(tuple(sorted(redraw)))
    assert len(set(draws)) > 1
    assert all(Counter(y[list(d)].tolist()) == {0: 50, 1: 50, 2: 50} for d in draws)


def _rec(name, n, subject="SC400", offset=0):
    x = (np.arange(n, dtype=np.float32)[:, None, None] + offset) * np.ones((1, 1, 30), np.float32)
    y = np.arange(n) % 5
    return Recording(name, subject, 1, x, y, 1.0)


def test_epoch_dataset_skips_masked():
    r = _rec("A", 10)
    r.y[3] = -1
    ds = EpochDataset([r, _rec("B", 5, offset=100)])
    assert len(ds) == 14 and (ds.labels >= 0).all()
    x, y = ds[3]
    assert x.shape == (1, 30) and float(x[0, 0]) == 4.0 and int(y) == 4
    assert float(ds[9][0][0, 0]) == 100.0


def test_stream_layout_rows_are_contiguous():
    batches = stream_layout(103, batch_size=4, seq_len=5)
    # 4 streams of 25 epochs: 5 chunks of 5
    assert len(batches) == 5 and all(len(b) == 4 for b in batches)
    for j in range(4):
        starts = [b[j][0] for b in batches]
        assert starts == [j * 25 + 5 * k for k in range(5)]
    assert [b[0][2] for b in batches] == [1, 0, 0, 0, 0]
    # short recording: fewer streams; eval: one stream with a tail covering every epoch
    assert len(stream_layout(12, batch_size=4, seq_len=5)[0]) == 2
    ev = stream_layout(12, batch_size=1, seq_len=5, keep_tail=True)
    assert [r for b in ev for r in b] == [(0, 5, 1), (5, 5, 0), (10, 2, 0)]
    assert stream_layout(3, 1, 5, keep_tail=True) == [[(0, 3, 1)]]
    assert stream_layout(3, 4, 5) == []


def test_stream_batch_sampler_and_sequence_dataset():
    recs = [_rec("A", 60), _rec("B", 40, offset=1000)]
    s = StreamBatchSampler(recs, batch_size=2, seq_len=10, shuffle=True, seed=0)
    ds = SequenceDataset(recs, s.windows)
    seen = []
    for batch in s:
        rec_ids = {int(ds.windows[i][0]) for i in batch}
        assert len(rec_ids) == 1  # a batch never mixes recordings
        seen.append(batch)
    assert len(seen) == len(s) == 3 + 2
    x, y, first = ds[seen[0][0]]
    assert x.shape == (10, 1, 30) and y.shape == (10,)
    # consecutive chunks of a row continue the signal
    a = ds[s._batches[0][0][1]][0][:, 0, 0]
    b = ds[s._batches[0][1][1]][0][:, 0, 0]
    assert float(b[0]) == float(a[-1]) + 1
    orders = set()
    for e in range(6):
        s.set_epoch(e)
        orders.add(tuple(next(iter(s))))
    assert len(orders) == 2  # recordings visited in a new order across epochs


def test_independent_windows_never_cross_recordings():
    recs = [_rec("A", 23), _rec("B", 10)]
    w = independent_windows(recs, 5)
    assert w.tolist() == [[0, 0, 5, 1], [0, 5, 5, 1], [0, 10, 5, 1], [0, 15, 5, 1], [1, 0, 5, 1], [1, 5, 5, 1]]


# ---------------------------------------------------------------------------------------------- augmentation
def _ramp(name, n, t=30, subject="SC400"):
    """A recording whose continuous signal is its sample index: sample s of epoch e holds e * t + s."""
    x = np.arange(n * t, dtype=np.float32).reshape(n, 1, t)
    return Recording(name, subject, 1, x, np.arange(n) % 5, 1.0)


def test_read_shifted_moves_the_window_in_the_continuous_signal():
    x = _ramp("A", 6).x
    np.testing.assert_array_equal(read_shifted(x, 2, 1, 0)[0, 0], np.arange(60, 90))
    np.testing.assert_array_equal(read_shifted(x, 2, 1, 7)[0, 0], np.arange(67, 97))  # borrows from epoch 3
    np.testing.assert_array_equal(read_shifted(x, 2, 1, -5)[0, 0], np.arange(55, 85))  # borrows from epoch 1
    np.testing.assert_array_equal(read_shifted(x, 0, 1, -5)[0, 0], np.arange(0, 30))  # clipped at the start
    np.testing.assert_array_equal(read_shifted(x, 5, 1, 4)[0, 0], np.arange(150, 180))  # clipped at the end
    seq = read_shifted(x, 1, 3, 10)  # a sequence moves as one block
    assert seq.shape == (3, 1, 30)
    np.testing.assert_array_equal(seq.reshape(-1), np.arange(40, 130))


def test_balanced_sampler_shift_keys_move_items_by_the_drawn_offset():
    recs = [_ramp("A", 20), _ramp("B", 11)]
    ds = EpochDataset(recs)
    plain = BalancedSampler(ds.labels, seed=3)
    shifted = BalancedSampler(ds.labels, seed=3, max_shift=6)
    keys = list(shifted)
    assert [k[0] for k in keys] == list(plain)  # same items in the same order: only the windows move
    offsets = np.array([k[2] for k in keys])
    assert offsets.min() >= -6 and offsets.max() <= 6 and len(set(offsets.tolist())) > 5
    for key in keys[:40]:
        i, _, shift = key
        x, y = ds[key]
        rec, e = recs[ds._rec[i]], int(ds._ep[i])
        start = min(max(e * 30 + shift, 0), (len(rec) - 1) * 30)
        np.testing.assert_array_equal(x[0].numpy(), np.arange(start, start + 30) + 0.0)
        assert int(y) == int(rec.y[e])  # labels unchanged
    assert list(BalancedSampler(ds.labels, seed=3, max_shift=6)) == keys  # reproducible
    shifted.set_epoch(1)
    assert [k[2] for k in shifted] != offsets.tolist()  # new draws every epoch


def test_stream_sampler_skip_and_shift_keep_streams_contiguous():
    recs = [_ramp("A", 50), _ramp("B", 37)]
    s = StreamBatchSampler(recs, batch_size=2, seq_len=5, seed=1, skip_first=3, max_shift=4)
    plain = StreamBatchSampler(recs, batch_size=2, seq_len=5, seed=1)
    ds = SequenceDataset(recs, s.windows)
    seen_skips = set()
    for epoch in range(4):
        s.set_epoch(epoch)
        batches = list(s)
        assert len(batches) == len(s)  # the same number of batches every epoch
        by_row: dict[tuple[int, int], list] = {}
        for batch in batches:
            for j, key in enumerate(batch):
                w, skip, shift = key
                rec, start, length, _ = s.windows[w]
                seen_skips.add(skip)
                assert 0 <= skip <= 3 and -4 <= shift <= 4
                x, y, _ = ds[key]
                np.testing.assert_array_equal(y.numpy(), recs[rec].y[start + skip : start + skip + length])
                by_row.setdefault((int(rec), j), []).append(x.numpy().reshape(-1))
        for chunks in by_row.values():  # one offset per stream: consecutive chunks continue the signal
            signal = np.concatenate(chunks)
            np.testing.assert_array_equal(np.diff(signal), np.ones(len(signal) - 1))
    assert seen_skips == {0, 1, 2, 3}
    assert len(s) <= len(plain)  # the last skip_first epochs are left out of the layout


def test_stream_sampler_set_epoch_reaches_it_through_lightning():
    """Lightning calls set_epoch on ``loader.batch_sampler.sampler`` only: the stream order must still change."""
    from lightning.fabric.utilities.data import _set_sampler_epoch
    from torch.utils.data import DataLoader

    recs = [_rec(c, 20) for c in "ABCDE"]
    s = StreamBatchSampler(recs, batch_size=2, seq_len=5, seed=0)
    dl = DataLoader(SequenceDataset(recs, s.windows), batch_sampler=s)
    orders = set()
    for epoch in range(5):
        _set_sampler_epoch(dl, epoch)
        assert s.epoch == epoch
        orders.add(tuple(s.windows[b[0]][0] for b in s))
    assert len(orders) > 1


def test_sharded_sampler_shift_skip_and_eval_order():
    s = ShardedSampler(10, shuffle=False, even=False)
    assert list(s) == list(range(10))  # evaluation: plain indices, in order
    aug = ShardedSampler(10, seed=2, max_skip=2, max_shift=3)
    keys = list(aug)
    assert sorted(k[0] for k in keys) == list(range(10))
    assert {k[1] for k in keys} <= {0, 1, 2} and all(-3 <= k[2] <= 3 for k in keys)
    recs = [_ramp("A", 23)]
    windows = independent_windows(recs, 5, skip_first=2)
    assert windows[:, 1].tolist() == [0, 5, 10, 15]  # the last window leaves room for a skip of 2
    ds = SequenceDataset(recs, windows)
    x, y, _ = ds[(3, 2, -1)]
    np.testing.assert_array_equal(x.numpy().reshape(-1), np.arange(17 * 30 - 1, 22 * 30 - 1))
    np.testing.assert_array_equal(y.numpy(), recs[0].y[17:22])


# ---------------------------------------------------------------------------------------------- sharding
@pytest.mark.parametrize("n_replicas", [2, 3])
def test_balanced_sampler_shards_are_equal_and_cover_the_epoch(n_replicas):
    y = np.array([0] * 30 + [1] * 7 + [2] * 13)  # 90 oversampled items
    single = BalancedSampler(y, seed=4, max_shift=2, num_replicas=1, rank=0)
    single.set_epoch(2)
    full = list(single)
    shards = []
    for rank in range(n_replicas):
        s = BalancedSampler(y, seed=4, max_shift=2, num_replicas=n_replicas, rank=rank)
        s.set_epoch(2)
        shards.append(list(s))
        assert len(shards[-1]) == len(s) == 90 // n_replicas
    # 90 divides evenly: the shards are disjoint positions of the single-process list and hold all of it
    interleaved = [shards[i % n_replicas][i // n_replicas] for i in range(90)]
    assert interleaved == full


def test_shards_pad_by_repetition_when_uneven():
    shards = [list(ShardedSampler(7, shuffle=False, num_replicas=3, rank=r)) for r in range(3)]
    assert [len(s) for s in shards] == [3, 3, 3]  # equal steps on every rank
    flat = sum(shards, [])
    assert sorted(set(flat)) == list(range(7)) and len(flat) - len(set(flat)) == 2  # only the padding repeats
    ev = [list(ShardedSampler(7, shuffle=False, even=False, num_replicas=3, rank=r)) for r in range(3)]
    assert ev == [[0, 1, 2], [3, 4], [5, 6]]  # evaluation: contiguous, every item exactly once
    with pytest.raises(ValueError, match="2 evaluation items cannot be split over 3 processes"):
        ShardedSampler(2, shuffle=False, even=False, num_replicas=3, rank=0)
    with pytest.raises(ValueError, match=r"rank=3: must be an integer in 0..2 \(num_replicas=3\)"):
        ShardedSampler(7, num_replicas=3, rank=3)


def test_stream_sampler_shards_streams_over_ranks():
    recs = [_rec("A", 60), _rec("B", 40), _rec("C", 30), _rec("D", 50)]
    kw = {"batch_size": 2, "seq_len": 10, "seed": 5}
    single = StreamBatchSampler(recs, **kw)
    single.set_epoch(1)
    full = [tuple(b) for b in single]  # 3 + 2 + 1 + 2 = 8 batches
    assert len(full) == 8
    ranks = []
    for rank in range(2):
        s = StreamBatchSampler(recs, num_replicas=2, rank=rank, **kw)
        s.set_epoch(1)
        ranks.append([tuple(b) for b in s])
        assert len(ranks[-1]) == len(s) == 4
    assert ranks[0] + ranks[1] == full  # contiguous halves of the epoch: disjoint, all of it, streams intact
    odd = [StreamBatchSampler(recs[:3], num_replicas=2, rank=r, **kw) for r in range(2)]  # 6 batches
    assert [len(list(s)) for s in odd] == [3, 3]
    three = [[tuple(b) for b in StreamBatchSampler(recs, num_replicas=3, rank=r, **kw)] for r in range(3)]
    assert [len(p) for p in three] == [3, 3, 3]  # 8 batches: one repeated from the start
    assert set(sum(three, [])) == set(full)
    # evaluation: cut between recordings, every chunk exactly once
    ev_single = StreamBatchSampler(recs, 1, 10, shuffle=False, keep_tail=True, even=False)
    ev_full = [tuple(b) for b in ev_single]
    ev = [[tuple(b) for b in StreamBatchSampler(recs, 1, 10, shuffle=False, keep_tail=True, even=False,
                                                num_replicas=2, rank=r)] for r in range(2)]
    assert ev[0] + ev[1] == ev_full
    rec_of = {r: {int(ev_single.windows[b[0]][0]) for b in ev[r]} for r in range(2)}
    assert not rec_of[0] & rec_of[1]  # no recording is split between ranks
