"""`dsn cv`: folds nested under one run, pooled figures that match the stored predictions, resumable."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import mlflow
import numpy as np
import pytest

from dsn import tracking
from dsn.errors import ConfigError
from dsn.systems.metrics import metrics_from_confusion
from dsn.workflows import cv
from dsn.workflows.results import confusion_of, load_predictions

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _project_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def _argv(synth_dir, home, tmp_path, *extra):
    return ["--config", "conf/demo.yaml", "--config", "conf/debug.yaml", "--data.data_dir", str(synth_dir),
            "--data.cache_dir", str(tmp_path / "cache"), "--data.progress", "false", "--net.small_kernel", "50",
            "--finetune.net.hidden_size", "16", "--finetune.net.shortcut_size", "32", "--finetune.batch_size", "2",
            "--finetune.seq_len", "5", "--pretrain.trainer.enable_progress_bar", "false",
            "--finetune.trainer.enable_progress_bar", "false", "--tracking.log_model", "false",
            "--tracking.home", str(home), "--folds", "3", *extra]


def test_stage_figures_match_sklearn():
    from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score, precision_score, recall_score

    from dsn.workflows.results import Prediction

    rng = np.random.default_rng(0)
    folds, ys, ps = [], [], []
    for _ in range(3):
        y = rng.integers(0, 5, 200)
        p = np.where(rng.random(200) < 0.6, y, rng.integers(0, 5, 200))
        folds.append([Prediction("r", "s", y, np.eye(5, dtype=np.float32)[p])])
        ys.append(y), ps.append(p)
    fig = cv.stage_figures(folds, ["W", "N1", "N2", "N3", "REM"])
    y, p = np.concatenate(ys), np.concatenate(ps)
    assert fig["pooled"]["acc"] == pytest.approx(accuracy_score(y, p))
    assert fig["pooled"]["f1_macro"] == pytest.approx(f1_score(y, p, average="macro"))
    assert fig["pooled"]["kappa"] == pytest.approx(cohen_kappa_score(y, p))
    assert fig["pooled"]["precision_N1"] == pytest.approx(precision_score(y, p, average=None)[1])
    assert fig["pooled"]["recall_REM"] == pytest.approx(recall_score(y, p, average=None)[4])
    per = [f1_score(a, b, average="macro") for a, b in zip(ys, ps)]
    assert fig["mean"]["f1_macro"] == pytest.approx(np.mean(per))
    assert fig["sd"]["f1_macro"] == pytest.approx(np.std(per, ddof=1))
    assert fig["n_epochs"] == 600


@pytest.fixture
def dsn_log(caplog, monkeypatch):
    """The ``dsn`` loggers' records, once each (whether or not an earlier test ran the CLI, whose handler
    stops them propagating to the root logger)."""
    lg = logging.getLogger("dsn")
    monkeypatch.setattr(lg, "propagate", False)
    lg.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="dsn")
    yield caplog
    lg.removeHandler(caplog.handler)


def test_cv_pools_folds_and_a_rerun_skips_them(synth_dir, tracking_home, tmp_path, monkeypatch, dsn_log):
    from dsn.systems.finetune import FinetuneSystem

    out = tmp_path / "out"
    calls = {"n": 0}
    orig = FinetuneSystem.on_train_epoch_end

    def interrupt_second_fold(self):
        calls["n"] += 1
        if calls["n"] == 2:  # the fine-tuning stage of fold 1
            raise KeyboardInterrupt
        return orig(self)

    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(FinetuneSystem, "on_train_epoch_end", interrupt_second_fold)
        cv.main(_argv(synth_dir, tracking_home, tmp_path, "--out", str(out)))
    c = mlflow.MlflowClient(tracking.tracking_uri(None, tracking_home))
    exp = c.get_experiment_by_name("dsn-debug").experiment_id
    folds_before = {r.data.tags["dsn.fold"]: r for r in c.search_runs([exp], "tags.`dsn.kind` = 'fold'")}
    assert folds_before["0"].info.status == "FINISHED" and folds_before["1"].info.status == "KILLED"

    dsn_log.clear()
    summary = cv.main(_argv(synth_dir, tracking_home, tmp_path, "--out", str(out)))  # continues
    printed = dsn_log.text
    assert "fold 1/3: finished earlier" in printed and "fold 2/3 (resuming)" in printed
    runs = c.search_runs([exp], "tags.`dsn.kind` = 'fold'")
    assert sorted(r.data.tags["dsn.fold"] for r in runs) == ["0", "1", "2"]  # fold 1 resumed in its own run
    assert {r.data.tags["dsn.fold"]: r.info.run_id for r in runs}["1"] == folds_before["1"].info.run_id
    cv_runs = c.search_runs([exp], "tags.`dsn.kind` = 'cv'")
    assert len(cv_runs) == 1 and cv_runs[0].info.status == "FINISHED"
    assert all(r.data.tags["mlflow.parentRunId"] == cv_runs[0].info.run_id for r in runs)

    # every subject is tested exactly once; pooled figures = recomputation from the stored predictions
    on_disk = json.loads((out / "cv_summary.json").read_text())
    assert on_disk["pooled"]["f1_macro"] == pytest.approx(summary["pooled"]["f1_macro"], nan_ok=True)
    subjects = [s for f in on_disk["folds"] for s in f["test_subjects"]]
    assert sorted(subjects) == sorted(set(subjects)) and len(subjects) == 6
    for stage in ("pretrain", "finetune"):
        preds = [p for r in runs for p in load_predictions(tracking_home / "checkpoints" / r.info.run_id / stage / "predictions_test.npz")]
        cm = confusion_of(preds)
        np.testing.assert_array_equal(cm, np.array(on_disk["stages"][stage]["confusion"]))
        ref = metrics_from_confusion(cm)
        for k in ("acc", "f1_macro", "kappa"):
            assert on_disk["stages"][stage]["pooled"][k] == pytest.approx(ref[k], nan_ok=True)
        # the validation subjects of the folds, pooled the same way (the fold-1 figures read back from disk)
        vpreds = [p for r in runs for p in load_predictions(tracking_home / "checkpoints" / r.info.run_id / stage / "predictions_val.npz")]
        vcm = confusion_of(vpreds)
        assert on_disk["validation"][stage]["n_epochs"] == int(vcm.sum()) > 0
        assert on_disk["validation"][stage]["pooled"]["f1_macro"] == pytest.approx(metrics_from_confusion(vcm)["f1_macro"], nan_ok=True)
    assert on_disk["n_epochs"] == int(cm.sum())
    arts = {a.path for a in c.list_artifacts(cv_runs[0].info.run_id)}
    assert "cv_summary.json" in arts
    table = cv.format_summary(summary)
    assert "paper: Sleep-EDF-20 Fpz-Cz" in table and "full model (finetune), pooled" in table
    # calibration: pooled ECE / Brier before -> after and confident vs flagged accuracy, in the JSON, table and metrics
    cal = on_disk["stages"]["finetune"]["calibration"]
    assert cal["n_epochs"] == on_disk["n_epochs"] and {"ece_raw", "ece", "brier_raw", "brier", "flagged_frac"} <= set(cal)
    assert f"finetune: ECE {cal['ece_raw']:.3f} -> {cal['ece']:.3f}" in table
    cv_metrics = cv_runs[0].data.metrics
    assert cv_metrics["finetune/pooled/ece"] == pytest.approx(cal["ece"]) and "pooled/brier_raw" in cv_metrics
    assert "validation subjects, pooled" in table

    # a third run of the same command, with overlays that cannot change the weights, trains nothing
    dsn_log.clear()
    cv.main(_argv(synth_dir, tracking_home, tmp_path, "--data.pin_memory", "true", "--data.num_workers", "2",
                  "--pretrain.trainer.log_every_n_steps", "1", "--tracking.run_name", "renamed"))
    assert len(c.search_runs([exp], "tags.`dsn.kind` = 'fold'")) == 3
    assert len(c.search_runs([exp], "tags.`dsn.kind` = 'cv'")) == 1
    assert dsn_log.text.count("finished earlier") == 3
    # registering a fold that finished without a logged model is refused, not skipped silently
    with pytest.raises(ConfigError, match=r"--register_fold 0: fold 0 .* has no logged model"):
        cv.main(_argv(synth_dir, tracking_home, tmp_path, "--tracking.log_model", "true", "--register_fold", "0"))
    assert c.search_registered_models() == []
