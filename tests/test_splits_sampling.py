"""Subject-wise splits and the pretraining / fine-tuning samplers (pure pieces, no files)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from dsn.data.edf import DataError
from dsn.data.recording import Recording
from dsn.data.sampling import (
    BalancedSampler,
    EpochDataset,
    SequenceDataset,
    StreamBatchSampler,
    balanced_indices,
    independent_windows,
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
