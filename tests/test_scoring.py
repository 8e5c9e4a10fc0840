"""SleepScorer: streaming a night through the sequence model, chunk-offset averaging, spec round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dsn.models import DeepFeatureNet, DeepSleepNet
from dsn.models.scoring import SleepScorer
from dsn.models.spec import build_scorer

PRE = {"channel": "EEG Fpz-Cz", "sfreq": 100.0, "epoch_sec": 30.0, "trim_minutes": 30.0, "unscored": "drop"}


def _scorer(mode: str = "official", seq_len: int = 5, n_offsets: int = 1, carry_state: bool = True) -> SleepScorer:
    torch.manual_seed(0)
    net_cfg = {"n_filters_first": 8, "n_filters": 8}
    ft_cfg = {"hidden_size": 8, "shortcut_size": 16, "bidirectional_mode": mode}
    net = DeepSleepNet(DeepFeatureNet(**net_cfg), **ft_cfg)
    return SleepScorer(net, PRE, {"net": net_cfg, "finetune_net": ft_cfg}, seq_len=seq_len,
                       carry_state=carry_state, n_offsets=n_offsets).eval()


def _night(n: int = 23) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((n, 1, 3000)).astype(np.float32)


def _streamed(scorer: SleepScorer, x: np.ndarray, bounds: list[tuple[int, int]]) -> np.ndarray:
    """Reference: the chunks fed one by one through the network's own forward, state carried."""
    state, outs = None, []
    with torch.no_grad():
        for i, j in bounds:
            logits, state = scorer.net(torch.from_numpy(x[None, i:j]), state if scorer.carry_state else None,
                                       return_state=True)
            outs.append(torch.softmax(logits[0], -1))
    return torch.cat(outs).numpy()


@pytest.mark.parametrize(("n", "offset", "expected"), [
    (12, 0, [(0, 5), (5, 10), (10, 12)]),
    (12, 2, [(0, 2), (2, 7), (7, 12)]),
    (3, 4, [(0, 3)]),
    (10, 5, [(0, 5), (5, 10)]),
])  # fmt: skip
def test_chunk_bounds_cover_the_night_with_a_shorter_first_chunk(n, offset, expected):
    assert _scorer(seq_len=5).chunk_bounds(n, offset) == expected


@pytest.mark.parametrize("mode", ["official", "pytorch"])
@pytest.mark.parametrize("carry_state", [True, False])
def test_offset_averaging_is_the_mean_of_shifted_streamings(mode, carry_state):
    x = _night()
    scorer = _scorer(mode, seq_len=5, n_offsets=3, carry_state=carry_state)
    # offsets round(k * 5 / 3) for k = 0, 1, 2: 0, 2, 3
    expected = np.mean([_streamed(scorer, x, scorer.chunk_bounds(len(x), o)) for o in (0, 2, 3)], axis=0)
    proba = scorer.predict_proba(x, batch_size=7)
    np.testing.assert_allclose(proba, expected, atol=1e-5)
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-5)
    # and it is not the plain streaming: shifting the boundaries changes the backward direction's context
    one = _scorer(mode, seq_len=5, n_offsets=1, carry_state=carry_state).predict_proba(x)
    np.testing.assert_allclose(scorer.predict_proba(x, n_offsets=1), one, atol=1e-6)  # per-call override
    np.testing.assert_allclose(one, _streamed(scorer, x, scorer.chunk_bounds(len(x))), atol=1e-5)
    assert not np.allclose(proba, one, atol=1e-4)


def test_n_offsets_survives_the_spec_round_trip():
    scorer = _scorer(n_offsets=4)
    rebuilt = build_scorer(scorer.spec(), scorer.state_dict())
    assert rebuilt.n_offsets == 4
    x = _night(17)
    np.testing.assert_allclose(rebuilt.predict_proba(x), scorer.predict_proba(x), atol=1e-6)
    old_spec = {k: v for k, v in scorer.spec().items() if k != "n_offsets"}  # models saved before the option
    assert build_scorer(old_spec, scorer.state_dict()).n_offsets == 1


@pytest.mark.parametrize("bad", [0, 6, 2.5, True])
def test_n_offsets_out_of_range_is_refused(bad):
    with pytest.raises(ValueError, match=r"n_offsets=.*\[1, seq_len=5\]"):
        _scorer(seq_len=5, n_offsets=bad)


def test_scoring_on_a_cpu_leaves_subnormal_floats_as_they_were():
    # the scorer flushes subnormals to zero while it runs (speed), and must give the default back afterwards
    tiny = torch.tensor([1e-40])
    assert tiny.item() != 0.0  # the default: subnormals kept
    proba = _scorer(seq_len=5, n_offsets=2).predict_proba(_night(12))
    assert proba.shape == (12, 5)
    assert (torch.tensor([1e-40]) * 1.0).item() != 0.0
