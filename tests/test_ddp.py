"""Distributed data parallel on CPU (2 processes, gloo): sharded samplers and metrics synchronised across ranks."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import lightning as L
import numpy as np
import pytest

from dsn.data.datamodule import SleepEDFDataModule
from dsn.data.recording import Recording
from dsn.data.sampling import BalancedSampler
from dsn.models import DeepFeatureNet
from dsn.systems import PretrainSystem, ema_callback
from dsn.systems.metrics import metrics_from_confusion


def _recording(name: str, n: int, seed: int) -> Recording:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 5, n)
    x = (rng.standard_normal((n, 1, 300)) + y[:, None, None]).astype(np.float32)  # 30 s at 10 Hz, learnable
    return Recording(name, name[:5], 1, x, y, 10.0)


def _datamodule() -> SleepEDFDataModule:
    """The real data module, loaders and samplers on in-memory recordings (no files to read)."""
    dm = SleepEDFDataModule("unused", sfreq=10.0, batch_size=16, eval_batch_size=6, progress=False)
    dm._files = []  # nothing to discover: prepare_data and setup find the recordings already loaded
    dm.recordings = {
        "train": [_recording("SC4001E0", 40, 0), _recording("SC4011E0", 33, 1)],
        "val": [_recording("SC4021E0", 23, 2), _recording("SC4031E0", 14, 3)],  # 37 epochs: 19 + 18 per rank
        "test": [],
    }
    return dm


class _Dump(L.Callback):
    """Each rank writes what it trained on, what it predicted and what was logged."""

    def __init__(self, out: Path):
        self.out = out
        self.train_keys: list = []

    def on_train_epoch_start(self, trainer, pl_module):
        self.train_keys = [int(k) for k in trainer.train_dataloader.sampler]

    def on_validation_end(self, trainer, pl_module):
        y_true, y_pred = pl_module.eval_outputs["val"]
        logged = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps({
            "y_true": y_true.tolist(), "y_pred": y_pred.tolist(), "logged": logged,
            "train_keys": self.train_keys, "world_size": trainer.world_size,
            "n_val_batches": int(trainer.num_val_batches[0]),
        }))


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_ddp_validation_metrics_equal_the_metrics_of_all_ranks_predictions(tmp_path):
    dm = _datamodule()
    system = PretrainSystem(DeepFeatureNet(sfreq=10.0, n_filters_first=4, n_filters=4, n_convs=1, bn_momentum=0.1), lr=1e-2)
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp_spawn", use_distributed_sampler=False, max_epochs=1,
        num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[ema_callback(0.9), _Dump(tmp_path)],  # EMA: picklable for spawn
    )
    trainer.fit(system, datamodule=dm)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(r["world_size"] == 2 for r in ranks)

    # training: equal, disjoint shards that together are the single-process oversampled epoch
    shards = [r["train_keys"] for r in ranks]
    labels = np.concatenate([r.y for r in dm.recordings["train"]])
    full = list(BalancedSampler(labels, seed=0, num_replicas=1, rank=0))
    padded = full + full[: len(full) % 2]  # DistributedSampler's padding
    assert len(shards[0]) == len(shards[1]) == len(padded) // 2
    assert [shards[i % 2][i // 2] for i in range(len(padded))] == padded

    # validation: every epoch scored exactly once, on uneven shards (19 + 18 epochs, 4 + 3 batches)
    assert sorted(len(r["y_true"]) for r in ranks) == [18, 19]
    assert sorted(r["n_val_batches"] for r in ranks) == [3, 4]
    y_true = np.concatenate([r["y_true"] for r in ranks])
    y_pred = np.concatenate([r["y_pred"] for r in ranks])
    val_labels = np.concatenate([r.y for r in dm.recordings["val"]])
    assert Counter(y_true.tolist()) == Counter(val_labels.tolist())

    cm = np.zeros((5, 5), np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    recomputed = metrics_from_confusion(cm)
    for r in ranks:
        logged = r["logged"]
        for name, value in recomputed.items():
            assert logged[f"val/{name}"] == pytest.approx(value, rel=1e-6, nan_ok=True), name
    assert ranks[0]["logged"]["val/loss"] == ranks[1]["logged"]["val/loss"]  # synchronised over the ranks
