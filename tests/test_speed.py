"""Speed work (issue 23) that must not change results: offset streams as rows of one batch, batches drawn on the
device, a training step without host-device syncs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dsn.data import sampling as smp
from dsn.data.device_sampling import DeviceBatches
from dsn.data.recording import Recording
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


# ---------------------------------------------------------------- device-side batches


def _recordings(n_chans: int = 2, n_times: int = 40) -> list[Recording]:
    rng = np.random.default_rng(0)
    recs = []
    for i, n in enumerate((37, 52, 23)):
        x = rng.standard_normal((n, n_chans, n_times)).astype(np.float32)
        y = rng.integers(0, 5, n)
        y[rng.random(n) < 0.1] = -1  # masked (unscored) epochs
        recs.append(Recording(f"R{i}", f"S{i}", 1, x, y, 100.0))
    return recs


def _same_batches(loader, device_batches, epochs=(0, 3)) -> int:
    seen = 0
    for epoch in epochs:  # what Lightning does at every epoch start: set_epoch on both objects' samplers
        for obj in (loader, device_batches):
            for s in (getattr(obj, "sampler", None), getattr(getattr(obj, "batch_sampler", None), "sampler", None)):
                if s is not None and hasattr(s, "set_epoch"):
                    s.set_epoch(epoch)
        ref, got = list(loader), list(device_batches)
        assert len(got) == len(ref) == len(device_batches) == len(loader)
        for a, b in zip(ref, got):
            assert len(a) == len(b)
            for ta, tb in zip(a, b):
                assert ta.dtype == tb.dtype and ta.shape == tb.shape
                assert torch.equal(ta, tb)
        seen += len(ref)
    return seen


@pytest.mark.parametrize(("oversample", "max_shift"), [(True, 0), (True, 13), (False, 7)])
def test_device_batches_equal_the_pretraining_loader(oversample, max_shift):
    from torch.utils.data import DataLoader

    ds = smp.EpochDataset(_recordings())

    def sampler():
        if oversample:
            return smp.BalancedSampler(ds.labels, seed=5, max_shift=max_shift)
        return smp.ShardedSampler(len(ds), shuffle=True, seed=5, max_shift=max_shift)

    loader = DataLoader(ds, batch_size=16, sampler=sampler())
    assert _same_batches(loader, DeviceBatches(ds, sampler=sampler(), batch_size=16)) > 4


@pytest.mark.parametrize(("skip_first", "max_shift"), [(0, 0), (3, 11)])
def test_device_batches_equal_the_streamed_finetuning_loader(skip_first, max_shift):
    from torch.utils.data import DataLoader

    recs = _recordings()

    def sampler():
        return smp.StreamBatchSampler(recs, batch_size=3, seq_len=5, seed=2, skip_first=skip_first, max_shift=max_shift)

    s = sampler()
    loader = DataLoader(smp.SequenceDataset(recs, s.windows), batch_sampler=s)
    t = sampler()
    assert _same_batches(loader, DeviceBatches(smp.SequenceDataset(recs, t.windows), batch_sampler=t)) > 4


def test_device_batches_equal_the_shuffled_sequence_loader():
    from torch.utils.data import DataLoader

    recs = _recordings()
    ds = smp.SequenceDataset(recs, smp.independent_windows(recs, 5, 2))
    loader = DataLoader(ds, batch_size=4, sampler=smp.ShardedSampler(len(ds), seed=1, max_skip=2, max_shift=9))
    ref = DeviceBatches(ds, sampler=smp.ShardedSampler(len(ds), seed=1, max_skip=2, max_shift=9), batch_size=4)
    assert _same_batches(loader, ref) > 4


def test_device_batches_refuse_bad_arguments():
    ds = smp.EpochDataset(_recordings())
    with pytest.raises(ValueError, match="either sampler"):
        DeviceBatches(ds)
    with pytest.raises(ValueError, match="batch_size=0"):
        DeviceBatches(ds, sampler=smp.ShardedSampler(len(ds)), batch_size=0)


@pytest.mark.parametrize("mode", ["pretrain", "finetune"])
def test_datamodule_device_batches_switch(synth_dir, tmp_path, mode):
    from dsn.data.datamodule import SleepEDFDataModule

    kw = {"n_folds": 3, "cache_dir": str(tmp_path / "c"), "progress": False, "mode": mode, "batch_size": 8,
          "seq_len": 10, "max_shift": 0.1, "skip_first": 2, "seed": 4}
    plain = SleepEDFDataModule(str(synth_dir), **kw)
    on_device = SleepEDFDataModule(str(synth_dir), device_batches=True, **kw)
    plain.setup()
    on_device.setup()
    batches = on_device.train_dataloader()
    assert isinstance(batches, DeviceBatches)
    assert _same_batches(plain.train_dataloader(), batches, epochs=(1,)) > 0


# ---------------------------------------------------------------- the training step without host syncs
def _tiny_pretrain_system():
    from dsn.systems.pretrain import PretrainSystem

    torch.manual_seed(0)
    return PretrainSystem(DeepFeatureNet(n_filters_first=4, n_filters=4, n_times=400, sfreq=100.0))


def test_eval_loss_is_the_mean_over_scored_epochs():
    import lightning as L

    from dsn.data.labels import IGNORE_INDEX

    system = _tiny_pretrain_system()
    gen = torch.Generator().manual_seed(1)
    batches = []
    for n, n_ignored in ((7, 2), (5, 0), (4, 4), (6, 1)):  # one batch without any scored epoch
        y = torch.randint(0, 5, (n,), generator=gen)
        y[:n_ignored] = IGNORE_INDEX
        batches.append((torch.randn(n, 1, 400, generator=gen), y))
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    from torch.utils.data import DataLoader

    logged = trainer.validate(system, dataloaders=DataLoader(batches, batch_size=None), verbose=False)[0]
    system.eval()
    with torch.no_grad():
        losses = [(float(system._loss(system(x), y)), max(int((y != IGNORE_INDEX).sum()), 1)) for x, y in batches]
    expected = sum(v * n for v, n in losses) / sum(n for _, n in losses)
    assert logged["val/loss"] == pytest.approx(expected, rel=1e-6)
    y_true, y_pred = system.eval_outputs["val"]
    assert isinstance(y_true, np.ndarray) and len(y_true) == len(y_pred) == 22


def test_nonfinite_losses_are_counted_on_the_device_and_read_once():
    system = _tiny_pretrain_system()
    logits, y = torch.randn(3, 5), torch.tensor([0, 1, 2])
    with pytest.warns(UserWarning):  # self.log without a trainer
        for loss in (1.0, float("nan"), 2.0, float("inf")):
            system._step_end("train", torch.tensor(loss), logits, y)
    assert system.nonfinite_steps() == 2
    assert system.nonfinite_steps() == 0  # reset by the read


def test_fused_adam_only_on_cuda(monkeypatch):
    system = _tiny_pretrain_system()
    assert not system.configure_optimizers().defaults.get("fused")  # CPU: the default implementation, as before
    monkeypatch.setattr(type(system), "device", property(lambda self: torch.device("cuda")))
    assert system.configure_optimizers().defaults["fused"] is True


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["pretrain", "finetune"])
def test_training_on_device_batches_gives_the_same_weights(synth_dir, tmp_path, mode):
    import lightning as L

    from dsn.data.datamodule import SleepEDFDataModule
    from dsn.systems.finetune import FinetuneSystem
    from dsn.systems.pretrain import PretrainSystem

    weights = []
    for device_batches in (False, True):
        dm = SleepEDFDataModule(str(synth_dir), n_folds=3, cache_dir=str(tmp_path / "c"), progress=False, mode=mode,
                                batch_size=4, seq_len=5, max_shift=0.1, skip_first=2, device_batches=device_batches)
        torch.manual_seed(0)
        cnn = DeepFeatureNet(n_filters_first=4, n_filters=4, bn_momentum=0.1)
        system = PretrainSystem(cnn) if mode == "pretrain" else FinetuneSystem(DeepSleepNet(cnn, hidden_size=4, shortcut_size=8))
        L.Trainer(accelerator="cpu", max_epochs=2, limit_train_batches=3, limit_val_batches=0, logger=False,
                  enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False).fit(system, datamodule=dm)
        weights.append(system.state_dict())
    assert weights[0].keys() == weights[1].keys()
    for k in weights[0]:
        assert torch.equal(weights[0][k], weights[1][k]), k


@pytest.mark.slow
def test_bench_protocol_runs_folds_in_parallel(capsys, tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_protocol.py"
    spec = importlib.util.spec_from_file_location("bench_protocol", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(["--scale", "0.005", "--subjects", "3", "--folds", "2", "--parallel", "1", "2", "--data", str(tmp_path / "d"),
              "--config", "conf/demo.yaml", "--", "--config", "conf/debug.yaml", "--net.small_kernel", "50",
              "--finetune.net.hidden_size", "16", "--finetune.net.shortcut_size", "32"])
    out = capsys.readouterr().out
    assert "--parallel 2" in out and "2 fold(s) of the protocol at scale 0.005" in out
    assert len(list((tmp_path / "d").glob("*-PSG.edf"))) == 6  # 3 subjects x 2 nights
