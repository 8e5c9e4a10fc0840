"""Networks as plain modules: TinySleepNet, the sequence models, the encoder + sequence composition and the adapter
for braindecode's sleep stagers and a user's own module (issue 31, first part).

The braindecode tests skip where braindecode is not installed; run them in an environment that has it.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from dsn.errors import DsnError, ModelError
from dsn.models import (
    DeepFeatureNet,
    EncoderSequenceNet,
    ExternalEncoder,
    LstmSequenceNet,
    NoSequence,
    TinySleepNet,
    TinySleepNetEncoder,
    TransformerSequenceNet,
    make_encoder,
    make_sequence_net,
)

N_TIMES, SFREQ = 3000, 100.0
SEQUENCE_KINDS = {
    "lstm": {},
    "transformer": {"d_model": 32, "n_heads": 4, "n_layers": 1},
    "none": {},
}


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---- a user's own modules, built by class path -------------------------------------------------------------
class UserNet(nn.Module):
    """A user's epoch network with braindecode's signature: class scores, or features with ``return_feats``."""

    def __init__(self, n_chans, n_times, sfreq, n_outputs=5, width=8, return_feats=False):
        super().__init__()
        self.return_feats = return_feats
        self.conv = nn.Conv1d(n_chans, width, kernel_size=int(sfreq), stride=int(sfreq))
        self.head = nn.Linear(width * (n_times // int(sfreq)), n_outputs)

    def forward(self, x):
        feats = torch.relu(self.conv(x)).flatten(1)
        return feats if self.return_feats else self.head(feats)


class ScoresOnly(nn.Module):
    """No ``return_feats``: the adapter gives its class scores."""

    def __init__(self, n_chans, n_times, n_outputs=5):
        super().__init__()
        self.fc = nn.Linear(n_chans * n_times, n_outputs)

    def forward(self, x):
        return self.fc(x.flatten(1))


class NoTimes(nn.Module):
    def __init__(self, n_chans, n_outputs=5):
        super().__init__()
        self.fc = nn.LazyLinear(n_outputs)


class NeedsDepth(UserNet):
    def __init__(self, n_chans, n_times, sfreq, depth):
        super().__init__(n_chans, n_times, sfreq)


class Broken(UserNet):
    def forward(self, x):
        raise RuntimeError("boom\nsecond line")


class TupleOut(UserNet):
    def forward(self, x):
        return super().forward(x), x


class AttnSleep(ScoresOnly):
    """Stands in for braindecode's AttnSleep (the one-channel check goes by the class name)."""


class USleep(ScoresOnly):
    """Stands in for braindecode's USleep (a whole-sequence network)."""


HERE = __name__


# ---- TinySleepNet ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_chans", [1, 2])
def test_tinysleepnet_encoder_shapes(n_chans):
    enc = TinySleepNetEncoder(n_chans=n_chans, n_times=N_TIMES, sfreq=SFREQ)
    assert enc.lengths == (3000, 500, 63, 16)
    assert enc.n_features == 128 * 16
    assert enc(torch.randn(4, n_chans, N_TIMES)).shape == (4, enc.n_features)
    assert enc.cnn.conv1.conv.weight.shape == (128, n_chans, 50)
    assert enc.cnn.conv1.conv.stride == (6,)  # the official code's Fs/16


@pytest.mark.parametrize("n_chans", [1, 2])
def test_tinysleepnet_shapes_and_state(n_chans):
    net = TinySleepNet(n_chans=n_chans, n_times=N_TIMES, sfreq=SFREQ, n_outputs=5).eval()
    x = torch.randn(2, 4, n_chans, N_TIMES)
    logits, (h, c) = net(x, return_state=True)
    assert logits.shape == (2, 4, 5)
    assert h.shape == c.shape == (1, 2, 128)
    # the state carries across chunks: two chunks give the outputs of one sequence (unidirectional LSTM)
    with torch.no_grad():
        first, state = net(x[:, :2], return_state=True)
        second = net(x[:, 2:], state)
    torch.testing.assert_close(torch.cat([first, second], 1), logits.detach(), rtol=1e-4, atol=1e-5)
    # without the state the second chunk differs
    assert not torch.allclose(net(x[:, 2:]).detach(), second, atol=1e-5)


def test_tinysleepnet_parameter_count():
    net = TinySleepNet(n_chans=1, n_times=N_TIMES, sfreq=SFREQ)
    assert 1.2e6 < n_params(net) < 1.6e6  # the paper: about 1.3 M
    assert n_params(net) == 1_516_421  # the module docstring's figure
    assert n_params(net.feature_net) == 400_640
    assert n_params(TinySleepNet(first_stride=25)) == 729_989  # the paper figure's stride Fs/4
    assert TinySleepNet(first_stride=25).feature_net.n_features == 512


def test_tinysleepnet_rejects_bad_inputs():
    enc = TinySleepNetEncoder(n_chans=1)
    with pytest.raises(ModelError, match="n_chans=1, n_times=3000"):
        enc(torch.randn(2, 2, N_TIMES))
    with pytest.raises(ModelError, match="first_kernel=50"):
        TinySleepNetEncoder(n_times=40)
    with pytest.raises(ModelError, match="first_stride=1000"):
        TinySleepNetEncoder(first_stride=1000)
    with pytest.raises(ModelError, match="drop_prob"):
        TinySleepNetEncoder(drop_prob=1.0)


def test_tinysleepnet_l2_weights():
    enc = TinySleepNetEncoder(n_chans=2)
    assert [tuple(w.shape) for w in enc.conv_weights()] == [(128, 2, 50)] + [(128, 128, 8)] * 3
    assert enc.first_conv_weights("small")[0] is enc.conv_weights()[0]
    assert enc.first_conv_weights("both") == enc.first_conv_weights("small")
    assert enc.first_conv_weights("none") == []


# ---- sequence models --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(SEQUENCE_KINDS))
def test_sequence_net_contract(kind):
    net = make_sequence_net(kind, n_features=24, n_outputs=5, **SEQUENCE_KINDS[kind]).eval()
    feats = torch.randn(3, 7, 24)
    logits, state = net(feats, return_state=True)
    assert logits.shape == (3, 7, 5)
    assert net(feats).shape == (3, 7, 5)
    if net.stateful:
        assert [tuple(t.shape) for t in state] == [(1, 3, 128)] * 2
        kept = net.mask_state(state, torch.tensor([True, False, True]))
        assert kept[0][:, 1].abs().sum() == 0 and torch.equal(kept[0][:, 0], state[0][:, 0])
    else:
        assert state is None and net.init_state(3) is None
        assert net.mask_state(state, torch.ones(3, dtype=torch.bool)) is None
    with pytest.raises(ModelError, match="n_features=24"):
        net(torch.randn(3, 7, 23))


def test_transformer_options():
    net = TransformerSequenceNet(16, 5, d_model=8, n_heads=2, n_layers=1, positions="learned", max_len=4).eval()
    assert net(torch.randn(2, 4, 16)).shape == (2, 4, 5)
    with pytest.raises(ModelError, match="max_len=4"):
        net(torch.randn(2, 5, 16))
    with pytest.raises(ModelError, match="multiple of n_heads=3"):
        TransformerSequenceNet(16, d_model=8, n_heads=3)
    with pytest.raises(ModelError, match="positions"):
        TransformerSequenceNet(16, positions="rotary")
    # each epoch sees its neighbours: changing one epoch changes the others' scores
    sin = TransformerSequenceNet(16, 5, d_model=8, n_heads=2, n_layers=1, drop_prob=0.0).eval()
    x = torch.randn(1, 6, 16)
    y = x.clone()
    y[0, 5] += 1.0
    assert not torch.allclose(sin(x)[0, 0], sin(y)[0, 0])


def test_no_sequence_scores_each_epoch_alone():
    net = NoSequence(16, 5).eval()
    x = torch.randn(2, 6, 16)
    y = x.clone()
    y[:, 5] += 1.0
    torch.testing.assert_close(net(x)[:, :5], net(y)[:, :5])
    ident = NoSequence(5, 5, head="identity")
    torch.testing.assert_close(ident(x[..., :5]), x[..., :5])
    with pytest.raises(ModelError, match="n_features=16"):
        NoSequence(16, 5, head="identity")


def test_make_sequence_net_errors():
    with pytest.raises(ModelError, match="'gru'.*'lstm'"):
        make_sequence_net("gru", 16)
    with pytest.raises(ModelError, match="n_hidden"):
        make_sequence_net("lstm", 16, n_hidden=3)


@pytest.mark.parametrize("kind", sorted(SEQUENCE_KINDS))
@pytest.mark.parametrize("n_chans", [1, 2])
def test_encoder_sequence_shapes_and_gradients(kind, n_chans):
    enc = TinySleepNetEncoder(n_chans=n_chans, n_times=N_TIMES, sfreq=SFREQ)
    net = EncoderSequenceNet(enc, make_sequence_net(kind, enc.n_features, 5, **SEQUENCE_KINDS[kind]))
    x = torch.randn(2, 3, n_chans, N_TIMES)
    logits, state = net(x, net.init_state(2), return_state=True)
    assert logits.shape == (2, 3, 5)
    logits.logsumexp(-1).sum().backward()
    first = enc.cnn.conv1.conv.weight
    assert first.grad is not None and first.grad.abs().sum() > 0
    assert all(p.grad is not None for p in net.new_parameters() if p.requires_grad)
    ids = {id(p) for p in net.pretrained_parameters()} | {id(p) for p in net.new_parameters()}
    assert ids == {id(p) for p in net.parameters()}


def test_encoder_sequence_checks():
    enc = TinySleepNetEncoder()
    with pytest.raises(ModelError, match="n_features=2048.*n_features=100"):
        EncoderSequenceNet(enc, LstmSequenceNet(100))
    net = EncoderSequenceNet(enc, NoSequence(enc.n_features))
    with pytest.raises(ModelError, match="4-d input"):
        net(torch.randn(2, 1, N_TIMES))


def test_deepfeaturenet_in_front_of_any_sequence_model():
    fnet = DeepFeatureNet(n_chans=2, sfreq=SFREQ, bn_momentum=0.1)
    net = EncoderSequenceNet(fnet, TransformerSequenceNet(fnet.n_features, 5, d_model=16, n_heads=2, n_layers=1))
    assert net(torch.randn(2, 3, 2, N_TIMES)).shape == (2, 3, 5)


def test_pretrain_system_takes_any_encoder():
    """The pretraining system puts its head on any encoder with ``n_features`` (l2_layers: none for an adapter)."""
    pytest.importorskip("lightning")
    from dsn.systems.pretrain import PretrainSystem

    x, y = torch.randn(4, 1, N_TIMES), torch.randint(0, 5, (4,))
    for enc, l2 in (
        (TinySleepNetEncoder(bn_momentum=0.1), "small"),
        (make_encoder(f"{HERE}.UserNet", 1, N_TIMES, SFREQ), "none"),
    ):
        system = PretrainSystem(enc, l2_layers=l2)
        assert system(x).shape == (4, 5)
        assert torch.isfinite(system._shared_step((x, y), "val"))
        assert system.configure_optimizers() is not None
    with pytest.raises(ModelError, match="set l2_layers: none"):
        PretrainSystem(make_encoder(f"{HERE}.UserNet", 1, N_TIMES, SFREQ)).configure_optimizers()


def test_finetune_system_takes_any_sequence_model():
    """The fine-tuning system's step runs unchanged on an EncoderSequenceNet, with and without a state."""
    pytest.importorskip("lightning")
    from dsn.systems.finetune import FinetuneSystem

    for seq in (LstmSequenceNet, lambda n, k: TransformerSequenceNet(n, k, d_model=16, n_heads=2, n_layers=1)):
        enc = TinySleepNetEncoder(bn_momentum=0.1)
        system = FinetuneSystem(EncoderSequenceNet(enc, seq(enc.n_features, 5)))
        batch = (torch.randn(2, 3, 1, N_TIMES), torch.randint(0, 5, (2, 3)), torch.tensor([True, True]))
        for _ in range(2):  # the second step receives the first one's state
            loss = system._shared_step(batch, "val")
        assert torch.isfinite(loss)
        assert system.configure_optimizers() is not None


# ---- the adapter ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_chans", [1, 2])
def test_adapter_user_module(n_chans):
    feats = make_encoder(f"{HERE}.UserNet", n_chans, N_TIMES, SFREQ, 5, width=4)
    assert feats.returns == "features" and feats.n_features == 4 * 30
    x = torch.randn(3, n_chans, N_TIMES)
    assert feats(x).shape == (3, 120)
    scores = make_encoder(f"{HERE}.ScoresOnly", n_chans, N_TIMES, SFREQ, 5)
    assert scores.returns == "scores" and scores.n_features == 5 and scores(x).shape == (3, 5)
    explicit = ExternalEncoder(f"{HERE}.UserNet", n_chans, N_TIMES, SFREQ, 5, return_feats=False)
    assert explicit.returns == "scores" and explicit.init_args == {"return_feats": False}
    assert feats.class_path == f"{HERE}.UserNet" and feats.init_args == {"width": 4}
    feats(x).sum().backward()
    assert feats.module.conv.weight.grad.abs().sum() > 0
    assert feats.module.training  # the dry forward pass leaves the training mode as it was
    with pytest.raises(ModelError, match=rf"n_chans={n_chans}, n_times=3000"):
        feats(torch.randn(3, n_chans + 1, N_TIMES))


def test_adapter_wraps_dsn_encoders():
    enc = make_encoder("dsn.models.TinySleepNetEncoder", 2, N_TIMES, SFREQ, 5)
    assert enc.n_features == 2048 and enc.returns == "scores"  # no return_feats: its output is its features
    assert enc.first_conv_weights("small")[0] is enc.module.cnn.conv1.conv.weight
    fnet = make_encoder("dsn.models.DeepFeatureNet", 1, N_TIMES, SFREQ, 5, bn_momentum=0.1)
    assert fnet.n_features == 3072
    net = EncoderSequenceNet(fnet, NoSequence(fnet.n_features))
    assert net(torch.randn(2, 2, 1, N_TIMES)).shape == (2, 2, 5)


@pytest.mark.parametrize(
    ("class_path", "kwargs", "match"),
    [
        ("surely_missing_pkg.nets.Net", {}, r"pip install surely_missing_pkg\b"),
        ("dsn.models.NoSuchNet", {}, "dsn.models has no 'NoSuchNet'"),
        ("dsn.errors.DsnError", {}, "not a torch.nn.Module"),
        (f"{HERE}.NoTimes", {}, "no constructor argument 'n_times'"),
        (f"{HERE}.UserNet", {"widht": 3}, "no constructor argument 'widht'"),
        (f"{HERE}.NeedsDepth", {}, "needs constructor argument 'depth'"),
        (f"{HERE}.UserNet", {"width": -1}, r"UserNet\(.*width=-1.*\): RuntimeError"),
        (f"{HERE}.TupleOut", {"return_feats": True}, "returns tuple.*returns \\(batch, n_features\\)"),
        (f"{HERE}.AttnSleep", {}, "takes one channel.*n_chans=2"),
        (f"{HERE}.USleep", {}, "whole-sequence network.*not an epoch encoder"),
        ("", {}, "class_path must be a dotted name"),
    ],
)
def test_adapter_errors_are_one_line(class_path, kwargs, match):
    with pytest.raises(ModelError, match=match) as info:
        make_encoder(class_path, 2, N_TIMES, SFREQ, 5, **kwargs)
    assert isinstance(info.value, DsnError) and "\n" not in str(info.value)


def test_adapter_dry_run_failure_names_the_shape():
    with pytest.raises(
        ModelError, match=r"fails on an input of shape \(2, n_chans=2, n_times=3000\): RuntimeError: boom"
    ):
        make_encoder(f"{HERE}.Broken", 2, N_TIMES, SFREQ, 5)


def test_braindecode_missing_names_the_install_line():
    try:
        import braindecode  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("braindecode is installed here")
    with pytest.raises(ModelError, match=r"pip install braindecode==1\.8\.1"):
        make_encoder("SleepStagerChambon2018", 2, N_TIMES, SFREQ, 5)


def test_adapter_broken_compiled_library(monkeypatch):
    """braindecode's torchaudio as installed from PyPI is a CUDA build of another torch (stack notes)."""
    import dsn.models.external as external

    def broken(name):
        raise OSError("libc10_cuda.so: cannot open shared object file: No such file or directory")

    monkeypatch.setattr(external.importlib, "import_module", broken)
    with pytest.raises(ModelError, match="libc10_cuda.so.*delete the .so files in torchaudio/lib"):
        make_encoder("SleepStagerChambon2018", 2, N_TIMES, SFREQ, 5)


def test_dsn_models_import_does_not_import_braindecode():
    code = "import sys, dsn.models; assert 'braindecode' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- braindecode's sleep stagers (skip where braindecode is not installed) --------------------------------------
BRAINDECODE = [
    ("SleepStagerChambon2018", [1, 2]),
    ("SleepStagerBlanco2020", [2]),  # n_groups=2 (its default) needs an even number of channels
    ("DeepSleepNet", [2]),  # 40 M parameters: one case
    ("AttnSleep", [1]),
]


@pytest.mark.parametrize(("name", "chans"), BRAINDECODE)
def test_braindecode_encoders(name, chans):
    pytest.importorskip("braindecode")
    for n_chans in chans:
        enc = make_encoder(f"braindecode.models.{name}", n_chans, N_TIMES, SFREQ, 5)
        assert enc.returns == "features" and enc.package == "braindecode" and enc.package_version == "1.8.1"
        out = enc(torch.randn(4, n_chans, N_TIMES))
        assert out.shape == (4, enc.n_features) and enc.n_features > 5
        out.square().mean().backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())
        net = EncoderSequenceNet(enc, LstmSequenceNet(enc.n_features, 5, hidden_size=16))
        assert net(torch.randn(2, 3, n_chans, N_TIMES)).shape == (2, 3, 5)


def test_braindecode_short_name_and_scores():
    pytest.importorskip("braindecode")
    enc = make_encoder("SleepStagerChambon2018", 2, N_TIMES, SFREQ, 5, return_feats=False, drop_prob=0.1)
    assert enc.class_path.endswith("SleepStagerChambon2018") and enc.returns == "scores" and enc.n_features == 5
    with pytest.raises(ModelError, match="set l2_layers: none"):
        enc.first_conv_weights("small")
    assert enc.first_conv_weights("none") == []


def test_braindecode_attnsleep_and_usleep_errors():
    pytest.importorskip("braindecode")
    with pytest.raises(ModelError, match="AttnSleep takes one channel"):
        make_encoder("braindecode.models.AttnSleep", 2, N_TIMES, SFREQ, 5)
    with pytest.raises(ModelError, match="USleep.*whole-sequence network"):
        make_encoder("braindecode.models.USleep", 2, N_TIMES, SFREQ, 5)
    with pytest.raises(ModelError, match="SleepStagerBlanco2020.*in_channels must be divisible by groups"):
        make_encoder("braindecode.models.SleepStagerBlanco2020", 1, N_TIMES, SFREQ, 5)
    assert make_encoder("SleepStagerBlanco2020", 1, N_TIMES, SFREQ, 5, n_groups=1).n_features > 5
    with pytest.raises(ModelError, match="no constructor argument 'n_filters'"):
        make_encoder("braindecode.models.SleepStagerChambon2018", 2, N_TIMES, SFREQ, 5, n_filters=3)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore:`torch.jit.trace:DeprecationWarning")
@pytest.mark.parametrize("adapted", [False, True])
def test_tinysleepnet_encoder_traces_for_export(adapted):
    """The export's fixed "SAME" padding (``traceable_feature_net``) applies to TinySleepNet's encoder as it is."""
    from dsn.workflows.export import traceable_feature_net

    enc = (
        TinySleepNetEncoder(n_chans=2)
        if not adapted
        else make_encoder("dsn.models.TinySleepNetEncoder", 2, N_TIMES, SFREQ)
    )
    enc.eval()
    x = torch.randn(3, 2, N_TIMES)
    traced = torch.jit.trace(traceable_feature_net(enc), x[:1])
    torch.testing.assert_close(traced(x), enc(x), rtol=1e-4, atol=1e-5)
