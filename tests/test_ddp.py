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
    from lightning.pytorch.strategies import DDPStrategy

    # broadcast_buffers=False: with DDP's buffer broadcast on, about 1 run in 7 logged figures that were not
    # those of the ranks' own predictions (seen 2026-12-01, 2 CPU processes, gloo; 0 in 10 without it). The
    # suspect is the broadcast of rank 0's batch-norm buffers on the first evaluation forward after training;
    # the end-to-end `dsn fit` DDP test below keeps the default.
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy=DDPStrategy(start_method="spawn", broadcast_buffers=False),
        use_distributed_sampler=False, max_epochs=1,
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


# ----------------------------------------------------------------------------- `dsn fit` under DDP, end to end
DDP_FLAGS = [f"--{stage}.trainer.{k}" if i % 2 == 0 else v
             for stage in ("pretrain", "finetune")
             for k, v in (("strategy", "ddp"), ("devices", "2"), ("accelerator", "cpu"))
             for i in (0, 1)]  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_ddp_fit_makes_one_run_tree_and_logs_the_metrics_of_all_ranks(synth_dir, tracking_home, tmp_path):
    """`dsn fit` with Lightning's ddp launcher (it runs the command again as rank 1): one MLflow run tree,
    written by rank 0 only, and per-epoch validation figures pooled over both ranks' predictions.

    Two validation subjects, so that each rank streams one whole recording (the fine-tuning evaluation cuts
    between recordings) and the pooled figures equal the single-process figures of the same model."""
    import os
    import subprocess
    import sys

    import mlflow

    from dsn import config, tracking
    from dsn.workflows.fit import confusion_of
    from dsn.workflows.registry import load_scorer

    root = Path(__file__).resolve().parents[1]
    overrides = {
        "data.n_folds": 3, "data.n_val_subjects": 2, "data.progress": False, "net.small_kernel": 50,
        "finetune.net.hidden_size": 16, "finetune.net.shortcut_size": 32, "finetune.batch_size": 2, "finetune.seq_len": 5,
        "pretrain.trainer.limit_train_batches": 8, "pretrain.trainer.limit_val_batches": 1.0,
        "finetune.trainer.limit_val_batches": 1.0, "pretrain.system.lr": 3e-3,
        "net.bn_momentum": 0.5, "finetune.net.bn_momentum": 0.5,  # settled BN statistics: a model that predicts several stages
        "pretrain.trainer.enable_progress_bar": False, "finetune.trainer.enable_progress_bar": False,
        "data.data_dir": str(synth_dir), "data.cache_dir": str(tmp_path / "cache"), "tracking.home": str(tracking_home),
    }  # fmt: skip
    flags = [x for k, v in overrides.items() for x in (f"--{k}", str(v).lower() if isinstance(v, bool) else str(v))]
    cmd = [sys.executable, "-m", "dsn", "fit", "--config", "conf/demo.yaml", "--config", "conf/debug.yaml", *flags, *DDP_FLAGS]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_PORT")}
    res = subprocess.run(cmd, cwd=root, env={**env, "MLFLOW_DISABLE_TELEMETRY": "true"}, capture_output=True, text=True, timeout=360)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert "MEMBER: 2/2" in out  # rank 1 really joined (Lightning prints it from every rank)

    c = mlflow.MlflowClient(tracking.tracking_uri(None, tracking_home))
    exp = c.get_experiment_by_name("dsn-debug")
    runs = c.search_runs([exp.experiment_id])
    fits = [r for r in runs if r.data.tags.get("dsn.kind") == "fit"]
    assert len(fits) == 1 and len(runs) == 3, [(r.info.run_name, r.data.tags.get("dsn.kind")) for r in runs]
    fit = fits[0].info.run_id
    stages = {r.data.tags["dsn.stage"]: r for r in runs if "dsn.stage" in r.data.tags}
    assert set(stages) == {"pretrain", "finetune"}
    assert all(r.data.tags["mlflow.parentRunId"] == fit and r.info.status == "FINISHED" for r in stages.values())
    assert [p.name for p in (tracking_home / "checkpoints").iterdir()] == [fit]  # one folder, rank 0's

    cfg = config.load_config(["conf/demo.yaml", "conf/debug.yaml"], overrides)
    from dsn.data.datamodule import SleepEDFDataModule

    dm = SleepEDFDataModule(**config.to_dict(cfg)["data"])
    dm.setup()
    assert len(dm.recordings["val"]) == 2
    for name, run in stages.items():
        # the last epoch's per-epoch curve value, as the DDP ranks logged it (pooled over both ranks)
        logged = {k: c.get_metric_history(run.info.run_id, k)[-1].value for k in run.data.metrics if k.startswith("val/")}
        assert {"val/f1_macro", "val/kappa", "val/acc", "val/f1_N3"} <= set(logged)
        # one process, the same (only, so selected) epoch's checkpoint, the same validation recordings
        scorer = load_scorer(str(tracking_home / "checkpoints" / fit / name / "selected.ckpt"))
        from dsn.workflows.fit import Prediction

        preds = [Prediction(r.name, r.subject, np.asarray(r.y), scorer.predict_proba(r.x)) for r in dm.recordings["val"]]
        cm = confusion_of(preds)
        assert cm.sum() == sum(len(r.y) for r in dm.recordings["val"])
        assert len(np.unique(np.concatenate([p.y_pred for p in preds]))) > 1, f"{name}: a constant model proves little"
        recomputed = metrics_from_confusion(cm)
        for k, v in recomputed.items():
            assert logged[f"val/{k}"] == pytest.approx(v, abs=1e-6, nan_ok=True), (name, k)
        assert run.data.metrics["selected/val/f1_macro"] == pytest.approx(recomputed["f1_macro"], abs=1e-6)
