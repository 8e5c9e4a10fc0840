"""Speed work (issue 23) that must not change results: offset streams as rows of one batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dsn.models import DeepFeatureNet, DeepSleepNet
from dsn.models.scoring import SleepScorer

PRE = {"channel": "EEG Fpz-Cz", "sfreq": 100.0, "epoch_sec": 30.0, "trim_minutes": 30.0, "unscored": "drop"}


def _scorer(seq_len: int, n_offsets: int, n_layers: int = 2) -> SleepScorer:
    torch.manual_seed(0)
    net = DeepSleepNet(DeepFeatureNet(n_filters_first=8, n_filters=8), hidden_size=8, shortcut_size=16, n_layers=n_layers)
    return SleepScorer(net, PRE, {}, seq_len=seq_len, n_offsets=n_offsets).eval()


def _chunk_by_chunk(scorer: SleepScorer, x: np.ndarray) -> np.ndarray:
    """Reference: every offset's chunks fed one by one through the network's own forward, state carried."""
    n, k_all = len(x), scorer.n_offsets
    total = 0.0
    with torch.no_grad():
        for k in range(k_all):
            state, outs = None, []
            for i, j in scorer.chunk_bounds(n, round(k * scorer.seq_len / k_all)):
                logits, state = scorer.net(torch.from_numpy(x[None, i:j]), state, return_state=True)
                outs.append(torch.softmax(logits[0], -1))
            total = total + torch.cat(outs)
    return (total / k_all).numpy()


@pytest.mark.parametrize(("n", "seq_len", "n_offsets", "n_layers"), [
    (23, 5, 3, 2), (25, 5, 5, 2), (3, 5, 5, 2), (1, 4, 2, 2), (40, 7, 4, 1), (31, 6, 6, 3),
])  # fmt: skip
def test_offset_rows_give_the_probabilities_of_separate_streamings(n, seq_len, n_offsets, n_layers):
    scorer = _scorer(seq_len, n_offsets, n_layers)
    x = np.random.default_rng(n).standard_normal((n, 1, 3000)).astype(np.float32)
    proba = scorer.predict_proba(x, batch_size=7)
    np.testing.assert_allclose(proba, _chunk_by_chunk(scorer, x), atol=1e-6, rtol=0)
    assert proba.shape == (n, 5) and proba.dtype == np.float32
