"""Tests of dsn.models: SAME padding, DeepFeatureNet, FeatureClassifierNet, DeepSleepNet."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dsn.models import (
    Conv1dSame,
    DeepFeatureNet,
    DeepSleepNet,
    FeatureClassifierNet,
    MaxPool1dSame,
    l2_penalty,
    same_output_length,
    same_padding,
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _small_seq_net(mode: str = "official", **kwargs) -> DeepSleepNet:
    """A small and fast DeepSleepNet (10 Hz, short kernels, narrow layers)."""
    fnet = DeepFeatureNet(sfreq=10.0, n_filters_first=4, n_filters=8, bn_momentum=0.1)
    return DeepSleepNet(fnet, hidden_size=8, shortcut_size=16, bidirectional_mode=mode, bn_momentum=0.1, **kwargs)


# --------------------------------------------------------------------------------------------
# SAME padding
# --------------------------------------------------------------------------------------------
CASES = [
    (n, k, s)
    for n in (1, 2, 5, 7, 16, 63, 100, 500, 3000)
    for k in (1, 2, 3, 4, 6, 8, 50)
    for s in (1, 2, 3, 4, 6, 8, 50)
]


@pytest.mark.parametrize(("n", "k", "s"), CASES)
def test_same_padding_formula(n: int, k: int, s: int) -> None:
    out = math.ceil(n / s)
    total = max((out - 1) * s + k - n, 0)
    left, right = same_padding(n, k, s)
    assert same_output_length(n, s) == out
    assert left + right == total
    assert left == total // 2 and right - left in (0, 1)  # smaller half on the left


def test_same_padding_lengths_of_modules() -> None:
    for n, k, s in CASES[::7]:
        x = torch.randn(1, 1, n)
        conv = Conv1dSame(1, 2, k, s)
        pool = MaxPool1dSame(k, s)
        assert conv(x).shape == (1, 2, math.ceil(n / s))
        assert pool(x).shape == (1, 1, math.ceil(n / s))
        assert conv.output_length(n) == pool.output_length(n) == math.ceil(n / s)


def test_conv_same_left_right_split() -> None:
    # n=5, k=4, s=1: total pad 3 -> 1 left, 2 right. A kernel that picks its first tap shows the left pad.
    conv = Conv1dSame(1, 1, 4, 1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 0] = 1.0
    x = torch.arange(1.0, 6.0).view(1, 1, 5)
    assert same_padding(5, 4, 1) == (1, 2)
    assert conv(x).flatten().tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    # the last tap shows the right pad (2 zeros at the end)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 3] = 1.0
    assert conv(x).flatten().tolist() == [3.0, 4.0, 5.0, 0.0, 0.0]


def test_conv_same_matches_explicit_padding() -> None:
    conv = Conv1dSame(2, 3, 7, 3)
    x = torch.randn(2, 2, 20)
    left, right = same_padding(20, 7, 3)
    ref = nn.functional.conv1d(nn.functional.pad(x, (left, right)), conv.weight, stride=3)
    torch.testing.assert_close(conv(x), ref)


def test_maxpool_same_pads_with_minus_inf() -> None:
    # all-negative input: zero padding would leak 0 into the edge windows
    x = -torch.arange(1.0, 8.0).view(1, 1, 7)  # [-1, ..., -7]
    pool = MaxPool1dSame(4, 4)  # out 2, total pad 1 -> 0 left, 1 right
    assert same_padding(7, 4, 4) == (0, 1)
    assert pool(x).flatten().tolist() == [-1.0, -5.0]
    pool = MaxPool1dSame(3, 1)  # total pad 2 -> 1 left, 1 right
    y = pool(x).flatten().tolist()
    assert y == [-1.0, -1.0, -2.0, -3.0, -4.0, -5.0, -6.0]
    assert all(math.isfinite(v) for v in y)


def test_maxpool_same_default_stride() -> None:
    assert MaxPool1dSame(8).stride == 8


# --------------------------------------------------------------------------------------------
# DeepFeatureNet
# --------------------------------------------------------------------------------------------
def test_feature_net_100hz() -> None:
    net = DeepFeatureNet()
    assert (net.n_times, net.small_kernel, net.small_stride, net.large_kernel, net.large_stride) == (
        3000,
        50,
        6,
        400,
        50,
    )
    assert net.small_lengths == (3000, 500, 63, 63, 16)
    assert net.large_lengths == (3000, 60, 15, 15, 8)
    assert net.n_features == 3072
    net.eval()
    x = torch.randn(3, 1, 3000)
    assert net(x).shape == (3, 3072)
    assert net.small_branch(x).shape == (3, 128, 16)
    assert net.large_branch(x).shape == (3, 128, 8)
    # stage-by-stage lengths
    h = x
    for name, lengths in (("small_branch", net.small_lengths), ("large_branch", net.large_lengths)):
        h = x
        branch = getattr(net, name)
        h = branch.conv1(h)
        assert h.shape[-1] == lengths[1]
        h = branch.pool1(h)
        assert h.shape[-1] == lengths[2]
        h = branch.conv4(branch.conv3(branch.conv2(h)))
        assert h.shape[-1] == lengths[3]
        assert branch.pool2(h).shape[-1] == lengths[4]
    assert _n_params(net) == 604032


def test_feature_net_256hz() -> None:
    net = DeepFeatureNet(sfreq=256.0)
    assert (net.n_times, net.small_kernel, net.small_stride, net.large_kernel, net.large_stride) == (
        7680,
        128,
        16,
        1024,
        128,
    )
    assert net.small_lengths == (7680, 480, 60, 60, 15)
    assert net.large_lengths == (7680, 60, 15, 15, 8)
    assert net.n_features == 128 * (15 + 8) == 2944
    assert net(torch.randn(2, 1, 7680)).shape == (2, net.n_features)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sfreq": 100.0, "small_kernel": 25, "small_stride": 3, "large_kernel": 200, "large_stride": 25},
        {"sfreq": 200.0},
        {"sfreq": 128.0, "n_chans": 2, "n_times": 3000},
        {"sfreq": 50.0, "n_convs": 0, "n_filters_first": 16},
        {
            "sfreq": 100.0,
            "n_filters_first": 8,
            "n_filters": 16,
            "n_convs": 1,
            "small_pool": 4,
            "large_pool": 8,
            "large_conv_kernel": 3,
        },
    ],
)
def test_feature_net_custom_args_match_forward(kwargs: dict) -> None:
    net = DeepFeatureNet(**kwargs)
    for name in ("small_kernel", "small_stride", "large_kernel", "large_stride"):
        if name in kwargs:
            assert getattr(net, name) == kwargs[name]
    out = net(torch.randn(2, net.n_chans, net.n_times))
    assert out.shape == (2, net.n_features)
    assert net.small_branch(torch.randn(1, net.n_chans, net.n_times)).shape[-1] == net.small_lengths[-1]


def test_feature_net_wrong_shapes() -> None:
    net = DeepFeatureNet()
    with pytest.raises(ValueError, match=r"n_chans=2 .*n_chans=1"):
        net(torch.randn(2, 2, 3000))
    with pytest.raises(ValueError, match=r"n_times=2999 .*n_times=3000.*rebuild"):
        net(torch.randn(2, 1, 2999))
    with pytest.raises(ValueError, match=r"3-d input.*\(2, 3000\)"):
        net(torch.randn(2, 3000))


def test_feature_net_too_short_and_bad_args() -> None:
    with pytest.raises(ValueError, match=r"n_times=300 .*large_kernel=400.*smaller large_kernel"):
        DeepFeatureNet(n_times=300)
    with pytest.raises(ValueError, match=r"n_times=40 .*small_kernel=50"):
        DeepFeatureNet(n_times=40, large_kernel=10)
    with pytest.raises(ValueError, match="small_stride"):
        DeepFeatureNet(small_stride=0)
    with pytest.raises(ValueError, match="drop_prob"):
        DeepFeatureNet(drop_prob=1.0)
    with pytest.raises(ValueError, match="sfreq"):
        DeepFeatureNet(sfreq=-1.0)


def test_first_conv_weights() -> None:
    net = DeepFeatureNet()
    small = net.first_conv_weights("small")
    both = net.first_conv_weights("both")
    assert len(small) == 1 and small[0] is net.small_branch.conv1.conv.weight
    assert small[0].shape == (64, 1, 50)
    assert len(both) == 2 and both[0] is small[0] and both[1] is net.large_branch.conv1.conv.weight
    assert both[1].shape == (64, 1, 400)
    assert net.first_conv_weights() == small
    assert net.first_conv_weights("none") == []
    with pytest.raises(ValueError, match="which"):
        net.first_conv_weights("large")
    w = small[0]
    torch.testing.assert_close(l2_penalty(small, 1e-3), 1e-3 * (w**2).sum() / 2)
    assert float(l2_penalty([], 1e-3)) == 0.0


def test_dropout_train_vs_eval_feature_net() -> None:
    net = DeepFeatureNet(sfreq=10.0, n_filters_first=4, n_filters=8)
    x = torch.randn(4, 1, net.n_times)
    net.train()
    assert not torch.equal(net(x), net(x))
    net.eval()
    assert torch.equal(net(x), net(x))


def test_feature_classifier_net() -> None:
    fnet = DeepFeatureNet()
    model = FeatureClassifierNet(fnet, n_outputs=5)
    assert model.feature_net is fnet
    assert model(torch.randn(3, 1, 3000)).shape == (3, 5)
    assert _n_params(model) == 604032 + 3072 * 5 + 5


# --------------------------------------------------------------------------------------------
# DeepSleepNet
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["official", "pytorch"])
@pytest.mark.parametrize("seq_len", [25, 3])
def test_deepsleepnet_shapes(mode: str, seq_len: int) -> None:
    model = _small_seq_net(mode)
    x = torch.randn(2, seq_len, 1, model.feature_net.n_times)
    assert model(x).shape == (2, seq_len, 5)
    logits, state = model(x, return_state=True)
    assert logits.shape == (2, seq_len, 5)
    k = 2 if mode == "official" else 4
    n = 4 if mode == "official" else 2
    assert len(state) == n and all(t.shape == (k, 2, 8) for t in state)
    # the state is accepted back, also with another seq_len
    logits2 = model(torch.randn(2, 1, 1, model.feature_net.n_times), state=state)
    assert logits2.shape == (2, 1, 5)


def test_deepsleepnet_full_size_100hz() -> None:
    model = DeepSleepNet(DeepFeatureNet())
    assert model.feature_net.n_features == 3072
    model.eval()
    with torch.no_grad():
        logits, state = model(torch.randn(1, 3, 1, 3000), return_state=True)
    assert logits.shape == (1, 3, 5)
    assert [tuple(t.shape) for t in state] == [(2, 1, 512)] * 4
    lstm = 4 * (4 * 512 * (3072 + 512) + 2 * 4 * 512) / 2 + 4 * (4 * 512 * (512 + 512) + 2 * 4 * 512) / 2
    assert _n_params(model) == 604032 + 3072 * 1024 + 2 * 1024 + lstm + 1024 * 5 + 5


def test_deepsleepnet_modes_differ_in_params() -> None:
    official = DeepSleepNet(DeepFeatureNet(), bidirectional_mode="official")
    pytorch = DeepSleepNet(DeepFeatureNet(), bidirectional_mode="pytorch")
    assert _n_params(pytorch) > _n_params(official)
    # the difference is the second layer's input: 2*hidden instead of hidden, in both directions
    assert _n_params(pytorch) - _n_params(official) == 2 * 4 * 512 * 512


def test_deepsleepnet_bad_args_and_inputs() -> None:
    fnet = DeepFeatureNet(sfreq=10.0, n_filters_first=4, n_filters=8)
    with pytest.raises(ValueError, match=r"shortcut_size=100 must equal 2 \* hidden_size=16"):
        DeepSleepNet(fnet, hidden_size=8, shortcut_size=100)
    with pytest.raises(ValueError, match="bidirectional_mode"):
        DeepSleepNet(fnet, hidden_size=8, shortcut_size=16, bidirectional_mode="tf")
    model = DeepSleepNet(fnet, hidden_size=8, shortcut_size=16)
    with pytest.raises(ValueError, match=r"4-d input.*\(2, 1, 300\)"):
        model(torch.randn(2, 1, 300))
    with pytest.raises(ValueError, match=r"n_times=299"):
        model(torch.randn(2, 3, 1, 299))
    with pytest.raises(ValueError, match=r"n_chans=3"):
        model(torch.randn(2, 3, 3, 300))
    with pytest.raises(ValueError, match=r"state tensor has shape \(2, 3, 8\), expected \(2, 2, 8\)"):
        model(torch.randn(2, 3, 1, 300), state=model.init_state(3))
    with pytest.raises(ValueError, match="tuple of 4 tensors"):
        model(torch.randn(2, 3, 1, 300), state=model.init_state(2)[:2])


@pytest.mark.parametrize(("mode", "n_layers"), [("official", 2), ("official", 1), ("pytorch", 1)])
def test_stateful_forward_direction_is_chunk_invariant(mode: str, n_layers: int) -> None:
    model = _small_seq_net(mode, n_layers=n_layers).eval()
    h = model.hidden_size
    seq_len = 5
    feats = torch.randn(3, 2 * seq_len, model.feature_net.n_features)
    with torch.no_grad():
        full, _ = model.run_lstm(feats)
        out1, state = model.run_lstm(feats[:, :seq_len])
        out2, _ = model.run_lstm(feats[:, seq_len:], state)
    chunked = torch.cat([out1, out2], dim=1)
    torch.testing.assert_close(chunked[..., :h], full[..., :h], rtol=1e-5, atol=1e-6)
    # the backward direction is not chunk-invariant (documented)
    assert not torch.allclose(chunked[..., h:], full[..., h:])
    # without the carried state the forward direction of the second chunk changes
    with torch.no_grad():
        out2_fresh, _ = model.run_lstm(feats[:, seq_len:])
    assert not torch.allclose(out2_fresh[..., :h], full[:, seq_len:, :h])


def test_pytorch_mode_forward_half_depends_on_chunking() -> None:
    # documented: nn.LSTM(bidirectional=True, num_layers=2) feeds layer 1's backward output into
    # layer 2's forward direction, so the forward half is not chunk-invariant there
    model = _small_seq_net("pytorch").eval()
    h = model.hidden_size
    feats = torch.randn(3, 10, model.feature_net.n_features)
    with torch.no_grad():
        full, _ = model.run_lstm(feats)
        out1, state = model.run_lstm(feats[:, :5])
    assert not torch.allclose(out1[..., :h], full[:, :5, :h])


def test_stateful_full_model_with_raw_input() -> None:
    model = _small_seq_net().eval()
    x = torch.randn(2, 4, 1, model.feature_net.n_times)
    with torch.no_grad():
        a, s1 = model(x, return_state=True)
        b, s2 = model(x, state=s1, return_state=True)
        c = model(x, state=model.init_state(2))
    torch.testing.assert_close(a, c)  # init_state == None
    assert not torch.allclose(a, b)
    assert all(not torch.equal(u, v) for u, v in zip(s1, s2, strict=True))


@pytest.mark.parametrize("mode", ["official", "pytorch"])
def test_mask_state(mode: str) -> None:
    model = _small_seq_net(mode)
    _, state = model(torch.randn(4, 2, 1, model.feature_net.n_times), return_state=True)
    keep = torch.tensor([True, False, True, False])
    masked = DeepSleepNet.mask_state(state, keep)
    assert len(masked) == len(state)
    for old, new in zip(state, masked, strict=True):
        assert new.shape == old.shape
        assert torch.equal(new[:, keep], old[:, keep])
        assert torch.all(new[:, ~keep] == 0)
        assert torch.any(old[:, ~keep] != 0)  # the input is not modified
    assert model.mask_state(None, keep) is None
    with pytest.raises(ValueError, match="keep has 3 rows"):
        model.mask_state(state, keep[:3])
    detached = DeepSleepNet.detach_state(state)
    assert all(not t.requires_grad for t in detached)


@pytest.mark.parametrize("mode", ["official", "pytorch"])
def test_deepsleepnet_dropout_train_vs_eval(mode: str) -> None:
    model = _small_seq_net(mode)
    x = torch.randn(2, 3, 1, model.feature_net.n_times)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


def test_lstm_dropout_after_every_layer() -> None:
    # official mode: dropout after each layer, the last included -> some LSTM outputs are exactly 0 in train
    model = _small_seq_net("official").train()
    feats = torch.randn(4, 6, model.feature_net.n_features)
    out, _ = model.run_lstm(feats)
    assert (out == 0).float().mean() > 0.2
    model.eval()
    out, _ = model.run_lstm(feats)
    assert (out == 0).float().mean() == 0


def test_forget_bias_init() -> None:
    model = _small_seq_net("official")
    h = model.hidden_size
    lstm = model.fwd_layers[0]
    assert torch.all(lstm.bias_ih_l0[h : 2 * h] == 1.0)
    assert torch.all(lstm.bias_ih_l0[:h] == 0) and torch.all(lstm.bias_hh_l0 == 0)
    default = _small_seq_net("official", lstm_forget_bias=None)
    assert torch.any(default.fwd_layers[0].bias_hh_l0 != 0)


@pytest.mark.parametrize("mode", ["official", "pytorch"])
def test_param_groups_partition(mode: str) -> None:
    model = _small_seq_net(mode)
    pre = model.pretrained_parameters()
    new = model.new_parameters()
    ids_pre, ids_new = [id(p) for p in pre], [id(p) for p in new]
    assert len(set(ids_pre)) == len(ids_pre) and len(set(ids_new)) == len(ids_new)
    assert not set(ids_pre) & set(ids_new)
    assert set(ids_pre) | set(ids_new) == {id(p) for p in model.parameters()}
    assert set(ids_pre) == {id(p) for p in model.feature_net.parameters()}
    assert sum(p.numel() for p in pre + new) == _n_params(model)


def test_weight_transfer_from_pretrained_feature_net() -> None:
    kwargs = {"sfreq": 10.0, "n_filters_first": 4, "n_filters": 8, "bn_momentum": 0.5}
    pretrained = FeatureClassifierNet(DeepFeatureNet(**kwargs))
    # move the batch-norm running statistics away from their initial values
    pretrained.train()
    for _ in range(3):
        pretrained(torch.randn(8, 1, 300) * 3 + 1)
    model = DeepSleepNet(DeepFeatureNet(**kwargs), hidden_size=8, shortcut_size=16)
    model.feature_net.load_state_dict(pretrained.feature_net.state_dict())
    pretrained.eval()
    model.eval()
    x = torch.randn(2, 3, 1, 300)
    with torch.no_grad():
        ref = pretrained.feature_net(x.view(6, 1, 300)).view(2, 3, -1)
        got = model.extract_features(x)
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
