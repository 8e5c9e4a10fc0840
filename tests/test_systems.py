"""The two LightningModules: fast_dev_run, optimiser recipe, weight transfer, LSTM state carrying."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from dsn.data.datamodule import SleepEDFDataModule
from dsn.models import DeepFeatureNet, DeepSleepNet
from dsn.systems.finetune import FinetuneSystem, load_pretrained
from dsn.systems.pretrain import PretrainSystem


def _trainer(**kw):
    kw = {"accelerator": "cpu", "logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
          "enable_model_summary": False, **kw}
    return L.Trainer(**kw)


@pytest.fixture
def dm(synth_dir, tmp_path):
    d = SleepEDFDataModule(str(synth_dir), n_folds=3, cache_dir=str(tmp_path / "c"), batch_size=16, progress=False)
    d.setup()
    return d


def test_pretrain_fast_dev_run(dm):
    system = PretrainSystem(DeepFeatureNet(bn_momentum=0.1))
    _trainer(fast_dev_run=2).fit(system, datamodule=dm)
    assert set(system.last_metrics) >= {"val/acc", "val/f1_macro", "val/kappa", "val/f1_N1", "train/acc"}
    assert system.confusion["val"].shape == (5, 5) and system.confusion["val"].sum() > 0


def test_finetune_fast_dev_run(dm):
    dm.mode, dm.batch_size, dm.seq_len = "finetune", 2, 10
    net = DeepSleepNet(DeepFeatureNet(), hidden_size=32, shortcut_size=64)
    system = FinetuneSystem(net)
    _trainer(fast_dev_run=2).fit(system, datamodule=dm)
    assert "val/f1_macro" in system.last_metrics
    y_true, y_pred = system.eval_outputs["val"]
    assert y_true.shape == y_pred.shape == (20,)


def test_pretrain_optimizer_recipe():
    system = PretrainSystem(DeepFeatureNet(), l2_layers="small")
    opt = system.configure_optimizers()
    assert opt.defaults["betas"] == (0.9, 0.999) and opt.defaults["lr"] == 1e-4
    decayed = [p for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]]
    assert len(decayed) == 1 and decayed[0] is system.feature_net.first_conv_weights("small")[0]
    both = PretrainSystem(DeepFeatureNet(), l2_layers="both").configure_optimizers()
    assert sum(len(g["params"]) for g in both.param_groups if g["weight_decay"] == 1e-3) == 2
    n = sum(len(g["params"]) for g in opt.param_groups)
    assert n == len(list(system.parameters()))


def test_finetune_two_learning_rates():
    net = DeepSleepNet(DeepFeatureNet(), hidden_size=16, shortcut_size=32)
    opt = FinetuneSystem(net, lr_pretrained=1e-6, lr_new=1e-4).configure_optimizers()
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert all(lr_of[id(p)] == 1e-6 for p in net.feature_net.parameters())
    assert all(lr_of[id(p)] == 1e-4 for p in net.new_parameters())
    assert len(lr_of) == len(list(net.parameters()))


def test_weight_transfer_from_pretrain_checkpoint(dm, tmp_path):
    system = PretrainSystem(DeepFeatureNet(bn_momentum=0.1))
    trainer = _trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(system, datamodule=dm)
    path = tmp_path / "pre.ckpt"
    trainer.save_checkpoint(path)
    net = DeepSleepNet(DeepFeatureNet(bn_momentum=0.1), hidden_size=16, shortcut_size=32)
    ft = FinetuneSystem(net, pretrained=str(path))
    x = torch.randn(4, 1, 3000)
    system.eval(), ft.eval()
    torch.testing.assert_close(ft.feature_net(x), system.feature_net(x))
    with pytest.raises(ValueError, match="do not fit the feature net.*same `net` settings"):
        load_pretrained(DeepFeatureNet(small_kernel=40), str(path))
    with pytest.raises(ValueError, match="pretrained checkpoint not found"):
        load_pretrained(DeepFeatureNet(), str(tmp_path / "missing.ckpt"))


def test_state_is_carried_within_a_stream_and_reset_at_new_recordings():
    net = DeepSleepNet(DeepFeatureNet(), hidden_size=8, shortcut_size=16)
    system = FinetuneSystem(net)
    seen = []
    orig = net.forward

    def spy(x, state=None, return_state=False):
        seen.append(None if state is None else [t.clone() for t in state])
        return orig(x, state, return_state)

    net.forward = spy
    x = torch.randn(2, 3, 1, 3000)
    y = torch.zeros(2, 3, dtype=torch.long)
    system.eval()
    with torch.no_grad():
        system._shared_step((x, y, torch.tensor([True, True])), "val")
        carried = system._state["val"]
        system._shared_step((x, y, torch.tensor([False, False])), "val")
        system._shared_step((x, y, torch.tensor([False, True])), "val")  # row 1 starts a new recording
    assert seen[0] is None
    assert all(torch.equal(a, b) for a, b in zip(seen[1], carried))
    assert all((t[:, 1] == 0).all() and (t[:, 0] != 0).any() for t in seen[2])
    no_carry = FinetuneSystem(net, carry_state=False)  # same net (and spy): the state is never passed on
    no_carry.eval()
    with torch.no_grad():
        no_carry._shared_step((x, y, torch.tensor([True, True])), "val")
        no_carry._shared_step((x, y, torch.tensor([False, False])), "val")
    assert no_carry._state["val"] is not None  # there was a state to carry...
    assert seen[-2:] == [None, None]  # ...but every chunk started from zeros


def test_gradients_clipped_to_global_norm(dm):
    dm.mode, dm.batch_size, dm.seq_len = "finetune", 2, 5
    norms = []

    class Spy(L.Callback):
        def on_before_zero_grad(self, trainer, pl_module, optimizer):  # sees the previous step's clipped grads
            g = [p.grad for p in pl_module.parameters() if p.grad is not None]
            if g:
                norms.append(float(torch.norm(torch.stack([t.norm() for t in g]))))

    net = DeepSleepNet(DeepFeatureNet(), hidden_size=16, shortcut_size=32)
    system = FinetuneSystem(net, grad_clip_norm=1e-3)
    _trainer(max_steps=3, limit_val_batches=0, callbacks=[Spy()]).fit(system, datamodule=dm)
    assert norms and max(norms) <= 1e-3 * 1.001
