"""End-to-end `dsn fit` on a tiny synthetic data set, logging to a temporary tracking home."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
import torch

from dsn import tracking
from dsn.workflows.fit import main as fit_main

TINY = [
    "--config", "conf/demo.yaml", "--config", "conf/debug.yaml",
    "--data.n_folds", "3",
    "--net.small_kernel", "50",
    "--finetune.net.hidden_size", "16", "--finetune.net.shortcut_size", "32",
    "--finetune.batch_size", "2", "--finetune.seq_len", "5",
    "--finetune.trainer.limit_val_batches", "1.0",
    "--pretrain.trainer.enable_progress_bar", "false", "--finetune.trainer.enable_progress_bar", "false",
]


def _args(synth_dir, home, tmp_path, *extra):
    return [*TINY, "--data.data_dir", str(synth_dir), "--data.cache_dir", str(tmp_path / "cache"),
            "--data.progress", "false", "--tracking.home", str(home), *extra]


@pytest.fixture(autouse=True)
def _project_root(monkeypatch):
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).resolve().parents[1])


def test_fit_logs_parent_and_child_runs(synth_dir, tracking_home, tmp_path):
    res = fit_main(_args(synth_dir, tracking_home, tmp_path, "--tracking.log_model", "true"))
    c = mlflow.MlflowClient(res.tracking_uri)
    parent = c.get_run(res.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["dsn.kind"] == "fit" and "version.torch" in parent.data.tags
    assert parent.data.params["pretrain.system.lr"] == "0.001"
    assert "data.subjects_test" in parent.data.params
    children = c.search_runs([res.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{res.parent_run_id}'")
    assert sorted(r.info.run_name for r in children) == ["finetune", "pretrain"]
    curves = {"val/acc", "val/f1_macro", "val/kappa", *[f"val/f1_{s}" for s in ("W", "N1", "N2", "N3", "REM")]}
    selected = {f"selected/{k}" for k in curves} | {"selected/test/acc", "selected/test/f1_macro", "selected/epoch"}
    for child in children:
        assert child.info.status == "FINISHED"
        assert curves | selected <= set(child.data.metrics), (curves | selected) - set(child.data.metrics)
        assert "test/acc" not in child.data.metrics  # the selected model's figures never mix with the curves
        stage = next(s for s in res.stages if s.name == child.info.run_name)
        assert child.data.metrics["selected/test/f1_macro"] == pytest.approx(stage.metrics["test/f1_macro"])
        assert "val/loss" in child.data.metrics and "train/loss" in child.data.metrics
        arts = {a.path for a in c.list_artifacts(child.info.run_id, "val")}
        assert {"val/confusion_matrix.json", "val/confusion_matrix.png", "val/confusion_matrix_normalized.png"} <= arts
        assert any(p.startswith("val/hypnogram_") for p in arts)
        assert any(a.path.endswith(".ckpt") for a in c.list_artifacts(child.info.run_id, "checkpoints"))
    parent = c.get_run(res.parent_run_id)
    assert parent.data.metrics["test/f1_macro"] == pytest.approx(res.stage("finetune").metrics["test/f1_macro"])
    assert parent.data.metrics["pretrain/test/kappa"] == pytest.approx(res.stage("pretrain").metrics["test/kappa"], nan_ok=True)
    cm_path = tracking.download_artifacts(res.tracking_uri, children[0].info.run_id, "val/confusion_matrix.json", tmp_path)
    cm = np.array(json.load(open(cm_path))["matrix"])
    assert cm.shape == (5, 5) and cm.sum() > 0
    # the config is an artifact of the parent
    assert any(a.path == "config.yaml" for a in c.list_artifacts(res.parent_run_id))
    # the final model loads back and predicts identically
    ft = next(s for s in res.stages if s.name == "finetune")
    model = tracking.load_model(ft.model_uri, res.tracking_uri)
    x = torch.randn(1, 5, 1, 3000)
    ckpt = torch.load(tracking_home / "checkpoints" / res.parent_run_id / "finetune" / "selected.ckpt", weights_only=False)
    from dsn.models import DeepFeatureNet, DeepSleepNet

    ref = DeepSleepNet(DeepFeatureNet(bn_momentum=0.1), hidden_size=16, shortcut_size=32, bn_momentum=0.1)
    ref.load_state_dict({k[4:]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")})
    ref.eval(), model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=0, atol=0)
    # fine-tuning can start from the logged pretraining model (an MLflow model URI)
    from dsn.systems.finetune import load_pretrained

    pre = next(s for s in res.stages if s.name == "pretrain")
    from dsn.workflows.registry import load_scorer

    fnet = load_pretrained(DeepFeatureNet(bn_momentum=0.1), load_scorer(pre.model_uri, res.tracking_uri)).eval()
    logged = tracking.load_model(pre.model_uri, res.tracking_uri).eval()
    with torch.no_grad():
        torch.testing.assert_close(fnet(x[0]), logged.feature_net(x[0]), rtol=0, atol=0)


def test_seeded_runs_are_reproducible(synth_dir, tracking_home, tmp_path):
    a = fit_main(_args(synth_dir, tracking_home, tmp_path, "--stages", "[pretrain]", "--tracking.log_model", "false"))
    b = fit_main(_args(synth_dir, tracking_home, tmp_path, "--stages", "[pretrain]", "--tracking.log_model", "false"))
    assert a.stages[0].metrics == b.stages[0].metrics


def test_interrupt_marks_run_killed_and_resume_continues(synth_dir, tracking_home, tmp_path, monkeypatch):
    from dsn.systems.finetune import FinetuneSystem

    def interrupt(self, *a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(FinetuneSystem, "on_train_epoch_end", interrupt)
        fit_main(_args(synth_dir, tracking_home, tmp_path, "--tracking.log_model", "false"))
    uri = tracking.tracking_uri(None, tracking_home)
    c = mlflow.MlflowClient(uri)
    runs = c.search_runs([c.get_experiment_by_name("dsn-debug").experiment_id])
    status = {r.info.run_name or "parent": r.info.status for r in runs}
    assert status["pretrain"] == "FINISHED" and status["finetune"] == "KILLED"
    parent = next(r for r in runs if r.data.tags.get("dsn.kind") == "fit")
    assert parent.info.status == "KILLED"
    res = fit_main(_args(synth_dir, tracking_home, tmp_path, "--tracking.log_model", "false", "--resume"))
    assert res.parent_run_id == parent.info.run_id
    runs = c.search_runs([res.experiment_id])
    assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs)


def test_unreachable_tracking_server_fails_before_training(synth_dir, tmp_path, capsys):
    from dsn.cli import main as cli_main

    rc = cli_main(["fit", *_args(synth_dir, tmp_path / "home", tmp_path, "--tracking.uri", "http://127.0.0.1:9")])
    err = capsys.readouterr().err
    assert rc == 1 and "http://127.0.0.1:9 is not reachable" in err and "Start the server" in err
    assert not (tmp_path / "cache").exists()  # no data was even loaded


def test_print_config_and_overlays(capsys):
    with pytest.raises(SystemExit):
        fit_main(["--config", "conf/demo.yaml", "--config", "conf/debug.yaml", "--finetune.seq_len", "7", "--print_config"])
    out = capsys.readouterr().out
    assert "seq_len: 7" in out and "limit_train_batches: 3" in out and "experiment: dsn-debug" in out


def test_sigterm_marks_runs_killed_and_cli_exits_143(synth_dir, tracking_home, tmp_path, monkeypatch, capsys):
    from dsn.cli import main as cli_main
    from dsn.systems.pretrain import PretrainSystem

    def terminate(self, *a, **k):  # what the SIGTERM handler installed by dsn fit raises
        raise tracking.Terminated()

    monkeypatch.setattr(PretrainSystem, "on_train_epoch_end", terminate)
    rc = cli_main(["fit", *_args(synth_dir, tracking_home, tmp_path, "--tracking.log_model", "false")])
    assert rc == 143 and "--resume" in capsys.readouterr().err
    c = mlflow.MlflowClient(tracking.tracking_uri(None, tracking_home))
    runs = c.search_runs([c.get_experiment_by_name("dsn-debug").experiment_id])
    assert runs and all(r.info.status == "KILLED" for r in runs)
    parent = next(r for r in runs if r.data.tags.get("dsn.kind") == "fit")
    assert (tracking_home / "checkpoints" / parent.info.run_id / "pretrain" / "last.ckpt").is_file()
