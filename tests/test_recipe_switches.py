"""Recipe switches of the training systems: weighted / smoothed loss, learning-rate schedule, EMA weight averaging."""

from __future__ import annotations

import math
import pickle

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from dsn.data.labels import IGNORE_INDEX
from dsn.models import DeepFeatureNet, DeepSleepNet
from dsn.systems import EMA, FinetuneSystem, PretrainSystem, ema_callback
from dsn.systems.base import WarmupSchedule

N_TIMES = 300  # 30 s at 10 Hz


def _fnet(**kw) -> DeepFeatureNet:
    return DeepFeatureNet(sfreq=10.0, n_filters_first=4, n_filters=4, n_convs=1, **kw)


def _trainer(**kw) -> L.Trainer:
    kw = {"accelerator": "cpu", "logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
          "enable_model_summary": False, "num_sanity_val_steps": 0, **kw}
    return L.Trainer(**kw)


def _epochs(n: int = 24, batch_size: int = 8, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, N_TIMES, generator=g)
    y = torch.arange(n) % 5
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def _sequences(n: int = 8, seq_len: int = 3, batch_size: int = 2) -> DataLoader:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, seq_len, 1, N_TIMES, generator=g)
    y = torch.arange(n * seq_len).reshape(n, seq_len) % 5
    return DataLoader(TensorDataset(x, y, torch.ones(n, dtype=torch.bool)), batch_size=batch_size)


# ---------------------------------------------------------------------------------------------- loss
def _reference_loss(logits: np.ndarray, y: np.ndarray, weights: np.ndarray, eps: float) -> float:
    """Hand-written: per scored epoch, w[y] * ((1 - eps) * -log p_y + eps * mean_c -log p_c); sum / n_scored."""
    total, n = 0.0, 0
    for row, t in zip(logits.astype(np.float64), y):
        if t == IGNORE_INDEX:
            continue
        logp = row - (row.max() + math.log(np.exp(row - row.max()).sum()))
        total += weights[t] * ((1 - eps) * -logp[t] + eps * -logp.mean())
        n += 1
    return total / n


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_weighted_smoothed_loss_equals_hand_computed_reference(eps):
    weights = [1.0, 1.5, 1.0, 2.0, 0.5]
    system = PretrainSystem(_fnet(), class_weights=weights, label_smoothing=eps)
    logits = torch.randn(2, 7, 5, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([[0, 1, 1, 2, 3, 4, IGNORE_INDEX], [1, IGNORE_INDEX, 4, 3, 3, 0, 1]])
    got = float(system._loss(logits, y))
    want = _reference_loss(logits.reshape(-1, 5).numpy(), y.reshape(-1).numpy(), np.array(weights), eps)
    assert got == pytest.approx(want, rel=1e-5)
    # the weights matter: N1 (weight 1.5) epochs pull harder than without weights
    plain = float(PretrainSystem(_fnet(), label_smoothing=eps)._loss(logits, y))
    assert plain == pytest.approx(_reference_loss(logits.reshape(-1, 5).numpy(), y.reshape(-1).numpy(), np.ones(5), eps),
                                  rel=1e-5)
    assert abs(got - plain) > 1e-3


def test_default_loss_is_pytorch_cross_entropy_and_an_unscored_batch_gives_zero():
    system = PretrainSystem(_fnet())
    logits = torch.randn(6, 5, generator=torch.Generator().manual_seed(0), requires_grad=True)
    y = torch.tensor([0, 1, IGNORE_INDEX, 3, 4, 2])
    want = torch.nn.functional.cross_entropy(logits, y, ignore_index=IGNORE_INDEX)
    assert torch.equal(system._loss(logits, y), want)  # the paper's loss, bit for bit
    for s in (system, PretrainSystem(_fnet(), label_smoothing=0.1), PretrainSystem(_fnet(), class_weights=[1, 2, 1, 1, 1])):
        masked = torch.full((6,), IGNORE_INDEX)
        loss = s._loss(logits, masked)
        (grad,) = torch.autograd.grad(loss, logits)
        assert float(loss.detach()) == 0.0 and torch.equal(grad, torch.zeros_like(grad))  # not NaN


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"class_weights": [1.0, 1.5]}, r"class_weights=\[1.0, 1.5\]: must hold one weight per class \(5"),
        ({"class_weights": [1, 1, 0, 1, 1]}, r"class_weights=0: must be a number in \(0.0, inf\)"),
        ({"label_smoothing": 1.0}, r"label_smoothing=1.0: must be a number in \[0.0, 1.0\)"),
        ({"lr_schedule": "linear"}, r"lr_schedule='linear': must be 'constant' or 'cosine'"),
        ({"warmup_epochs": -1}, r"warmup_epochs=-1: must be an integer >= 0"),
        ({"lr": 0.0}, r"lr=0.0: must be a number in \(0.0, inf\)"),
        ({"betas": (0.9, 1.0)}, r"betas=1.0: must be a number in \[0.0, 1.0\)"),
    ],
)
def test_bad_values_name_argument_value_and_range(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PretrainSystem(_fnet(), **kwargs)


def test_finetune_bad_learning_rate_and_clip():
    net = DeepSleepNet(_fnet(), hidden_size=4, shortcut_size=8)
    with pytest.raises(ValueError, match=r"lr_pretrained=-1e-06: must be a number in \(0.0, inf\)"):
        FinetuneSystem(net, lr_pretrained=-1e-6)
    with pytest.raises(ValueError, match=r"grad_clip_norm=-1.0: must be a number in \[0.0, inf\)"):
        FinetuneSystem(net, grad_clip_norm=-1.0)


# ---------------------------------------------------------------------------------------------- schedule
class _LRs(L.Callback):
    def __init__(self):
        self.lrs: list[list[float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.append([g["lr"] for g in trainer.optimizers[0].param_groups])


def test_schedule_formula():
    s = WarmupSchedule(4, 12, "cosine")
    assert [s(i) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert s(4) == 1.0 and s(8) == pytest.approx(0.5) and s(12) == pytest.approx(0.0)
    assert WarmupSchedule(0, 10, "constant")(7) == 1.0


def test_warmup_then_cosine_moves_both_finetune_learning_rates():
    net = DeepSleepNet(_fnet(bn_momentum=0.1), hidden_size=4, shortcut_size=8)
    system = FinetuneSystem(net, lr_pretrained=1e-3, lr_new=1e-2, lr_schedule="cosine", warmup_epochs=1)
    rec = _LRs()
    _trainer(max_epochs=3, limit_val_batches=0, callbacks=[rec]).fit(system, train_dataloaders=_sequences())
    assert len(rec.lrs) == 12  # 4 batches x 3 epochs
    factor = [WarmupSchedule(4, 12, "cosine")(s) for s in range(12)]
    groups = system.trainer.optimizers[0].param_groups
    base = [g["initial_lr"] for g in groups]
    assert sorted(set(base)) == [1e-3, 1e-2]  # both learning rates are scheduled
    for step, lrs in enumerate(rec.lrs):
        assert lrs == pytest.approx([b * factor[step] for b in base], rel=1e-9)
    assert rec.lrs[0] == pytest.approx([b / 4 for b in base]) and rec.lrs[3] == pytest.approx(base)
    assert max(rec.lrs[-1]) < 0.05 * 1e-2  # decayed towards 0


def test_warmup_then_constant_and_paper_default_is_constant():
    system = PretrainSystem(_fnet(bn_momentum=0.1), lr=1e-3, warmup_epochs=2)
    rec = _LRs()
    _trainer(max_epochs=3, limit_val_batches=0, callbacks=[rec]).fit(system, train_dataloaders=_epochs())
    assert [lrs[0] for lrs in rec.lrs] == pytest.approx([1e-3 * (s + 1) / 6 for s in range(6)] + [1e-3] * 3)
    paper = PretrainSystem(_fnet())
    assert isinstance(paper.configure_optimizers(), torch.optim.Adam)  # no scheduler, no trainer needed
    with pytest.raises(ValueError, match=r"warmup_epochs=5: longer than training .* must be at most max_epochs=2"):
        _trainer(max_epochs=2, limit_val_batches=0).fit(PretrainSystem(_fnet(), warmup_epochs=5), train_dataloaders=_epochs())


# ---------------------------------------------------------------------------------------------- EMA
class _Spy(L.Callback):
    """Records the module's state after every optimizer step and the state validation / test ran with."""

    def __init__(self):
        self.steps, self.val, self.test = [], [], []

    @staticmethod
    def _state(m):
        return {k: v.detach().clone() for k, v in m.state_dict().items()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps.append(self._state(pl_module))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 0:
            self.val.append((len(self.steps), self._state(pl_module)))

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 0:
            self.test.append(self._state(pl_module))


def _ema(states: list[dict], decay: float) -> dict:
    avg = {k: v.clone() for k, v in states[0].items()}
    for s in states[1:]:
        for k, v in s.items():
            avg[k] = (decay * avg[k] + (1 - decay) * v).to(v.dtype) if v.is_floating_point() else v.clone()
    return avg


def _assert_state(got: dict, want: dict, skip_int: bool = True):
    assert got.keys() == want.keys()
    for k in want:
        if skip_int and not want[k].is_floating_point():
            continue  # num_batches_tracked: averaged (and rounded) as well, meaningless
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6, msg=k)


def test_ema_validation_checkpoints_and_batchnorm_use_the_average(tmp_path):
    decay = 0.6
    spy = _Spy()
    ckpt = ModelCheckpoint(dirpath=tmp_path, filename="e{epoch}", save_top_k=-1, every_n_epochs=1,
                            auto_insert_metric_name=False)
    system = PretrainSystem(_fnet(bn_momentum=0.5), lr=1e-2)
    trainer = _trainer(max_epochs=2, enable_checkpointing=True, callbacks=[spy, ema_callback(decay), ckpt])
    trainer.fit(system, train_dataloaders=_epochs(), val_dataloaders=_epochs(8, seed=1))
    assert len(spy.steps) == 6 and [n for n, _ in spy.val] == [3, 6]

    for n_steps, validated in spy.val:  # 1. validation ran on the average of the steps so far
        _assert_state(validated, _ema(spy.steps[:n_steps], decay))
    for epoch, n_steps in ((0, 3), (1, 6)):  # 2. checkpoints hold the average in state_dict
        saved = torch.load(tmp_path / f"e{epoch}.ckpt", map_location="cpu", weights_only=False)
        want = _ema(spy.steps[:n_steps], decay)
        _assert_state(saved["state_dict"], want)
        _assert_state(saved["current_model_state"], spy.steps[n_steps - 1])  # raw weights kept for resuming
        # 3. batch-norm running statistics are averaged too (and differ from the raw ones)
        key = "model.feature_net.small_branch.conv1.bn.running_mean"
        assert key in want and not torch.allclose(want[key], spy.steps[n_steps - 1][key])
        fresh = PretrainSystem(_fnet(bn_momentum=0.5))
        fresh.load_state_dict(saved["state_dict"])  # strict: the averaged system loads as is
        _assert_state(fresh.state_dict(), want)
    # after fit the module holds the final average, and evaluation uses the module as it is
    final = _ema(spy.steps, decay)
    _assert_state(system.state_dict(), final)
    trainer.validate(system, dataloaders=_epochs(8, seed=1), verbose=False)
    _assert_state(spy.val[-1][1], final)
    trainer.test(system, dataloaders=_epochs(8, seed=1), ckpt_path=str(tmp_path / "e0.ckpt"), verbose=False)
    _assert_state(spy.test[-1], _ema(spy.steps[:3], decay))  # the best/selected checkpoint's average, not the raw


def test_ema_bad_decay_and_weights_only_checkpoints(tmp_path):
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match=rf"decay={bad}: the EMA decay must be a number in \(0, 1\)"):
            ema_callback(bad)
    assert isinstance(ema_callback(0.99), EMA)
    assert pickle.loads(pickle.dumps(ema_callback(0.99))).decay == 0.99  # strategy="ddp_spawn" pickles callbacks
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_weights_only=True)
    trainer = _trainer(max_epochs=1, enable_checkpointing=True, callbacks=[ema_callback(0.9), ckpt])
    with pytest.raises(ValueError, match="save_weights_only=True"):
        trainer.fit(PretrainSystem(_fnet()), train_dataloaders=_epochs())
