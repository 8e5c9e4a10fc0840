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


# ----------------------------------------------------------------------------- the package's pieces
def test_pooled_flags_are_each_folds_own_figures_pooled():
    """A fold's threshold sits just above the confidence of some epochs (as the fit's rule chooses it): the pooled
    figures flag exactly the epochs that fold's own figures flag (the comparison in float64, not float32)."""
    from dsn import evaluation
    from dsn.workflows.calibration import low_confidence_threshold, pooled_calibration, split_figures
    from dsn.workflows.results import Prediction

    rng = np.random.default_rng(3)
    folds, own = [], []
    for k, t in enumerate((0.8, 1.7)):
        y = rng.integers(0, 5, 400)
        z = rng.normal(size=(400, 5)) + 2.0 * np.eye(5)[y] * (rng.random(400) < 0.6)[:, None]
        p = np.exp(evaluation._log_softmax(z)).astype(np.float32)
        p[:40] = p[40]  # ties at one confidence: a threshold chosen there is the next float above it
        y[:40] = (p[40].argmax() + 1) % 5
        thr = low_confidence_threshold(evaluation.apply_temperature(p, t), y)
        folds.append({"predictions": {"finetune": [Prediction(f"r{k}", f"s{k}", y, p)]},
                      "metrics": {"finetune": {"calibration/temperature": t, "calibration/threshold": thr}}})
        own.append(split_figures(p, y, t, thr))
    pooled = pooled_calibration(folds, "finetune")
    flagged = [round(f["flagged_frac"] * 400) for f in own]
    assert pooled["flagged_frac"] == sum(flagged) / 800
    right = sum(round(f["acc_flagged"] * n) for f, n in zip(own, flagged))
    assert pooled["acc_flagged"] == right / sum(flagged)
    one = pooled_calibration(folds[:1], "finetune")
    assert {k: one[k] for k in own[0]} == pytest.approx(own[0], nan_ok=True)


def test_metric_table_formats_cv_and_evaluate_rows_alike():
    from dsn.workflows.cv.report import MetricTable
    from dsn.workflows.evaluate import format_summary as evaluate_summary

    figs = {"acc": 0.8123, "f1_macro": 0.7, "kappa": 0.65432, "f1_W": 0.9, "f1_N1": float("nan"), "n_epochs": 120}
    table = MetricTable(["W", "N1"])
    assert table.header() == " " * 34 + "        acc        MF1      kappa       F1 W      F1 N1"
    assert table.row("x", figs) == "x" + " " * 33 + "       81.2       70.0      0.654       90.0        n/a"
    assert table.spread_row("  sd", {"acc": 0.5, "kappa": 0.1}, {"acc": 0.01, "kappa": 0.02}).split() == [
        "sd", "50.0±1.0", "0.10±0.02"]
    summary = {"model": "m", "data_dir": "d", "dataset": "generic", "n_recordings": 1, "n_subjects": 1, "channels": [],
               "class_names": ["W", "N1"], "pooled": figs, "per_recording": [{"name": "night-1", **figs}]}
    lines = evaluate_summary(summary).splitlines()
    assert lines[1] == " " * 30 + "  epochs      acc      MF1    kappa     F1 W    F1 N1"
    assert lines[3] == "pooled" + " " * 24 + "     120     81.2     70.0    0.654     90.0      n/a"
    assert lines[4].startswith("  night-1 ") and lines[4].endswith("0.654     90.0      n/a")


def test_a_registered_fold_gets_the_tags_of_a_registered_fit(monkeypatch):
    """One registry_tags for dsn fit and dsn cv: the fold, its final stage, channels by name, the git commit."""
    from dsn import config
    from dsn.workflows.cv import runner

    got = {}
    monkeypatch.setattr(tracking, "register_model", lambda uri, model_uri, name, tags: got.update(tags) or "3")
    monkeypatch.setattr(tracking, "environment_tags", lambda: {"mlflow.source.git.commit": "abc123"})
    cfg = config.set_keys(config.load_config(["conf/demo.yaml"]), {"tracking.register": "mine"})
    base = config.set_keys(cfg, {"data.n_folds": 3, "tracking.register": None})
    fold = {"fold": 1, "run_id": "r1", "model_uri": "models:/m-1",
            "metrics": {"pretrain": {}, "finetune": {"test/f1_macro": 0.51234, "test/acc": 0.7, "val/f1_macro": 0.9}}}
    said = []
    runner._register_fold(cfg, base, "sqlite:///unused.db", fold, "cv-parent", lambda *a: said.append(a))
    assert got["fold"] == "1/3" and got["stage"] == "finetune" and got["run_id"] == "r1"
    assert got["cv_run_id"] == "cv-parent" and got["git_commit"] == "abc123"
    assert got["test/f1_macro"] == "0.5123" and "val/f1_macro" not in got
    assert got["channel"] == ", ".join(cfg.data.channels) and said and said[0][2] == "mine"


def test_cv_and_sweep_packages_import_one_way():
    """No import circle among the modules of dsn.workflows.cv and dsn.workflows.sweep (imports inside functions
    included)."""
    import ast

    root = ROOT / "dsn" / "workflows"
    graph = {}
    for pkg in ("cv", "sweep"):
        for path in (root / pkg).glob("*.py"):
            name = f"dsn.workflows.{pkg}" + ("" if path.stem == "__init__" else f".{path.stem}")
            deps = set()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module:
                    subs = {f"{node.module}.{a.name}" for a in node.names}  # a submodule, else a name of the module
                    deps |= {s for s in subs if (ROOT / s.replace(".", "/")).with_suffix(".py").exists()} or {node.module}
                elif isinstance(node, ast.Import):
                    deps |= {a.name for a in node.names}
            graph[name] = {d for d in deps if d.startswith(f"dsn.workflows.{pkg}")} - {name}
    def reach(start, node, seen):
        for d in graph.get(node, ()):
            if d == start:
                return True
            if d not in seen:
                seen.add(d)
                if reach(start, d, seen):
                    return True
        return False
    circles = [m for m in graph if m != "dsn.workflows.cv" and m != "dsn.workflows.sweep" and reach(m, m, set())]
    assert graph["dsn.workflows.sweep.report"] and graph["dsn.workflows.cv.runner"]
    assert circles == [], circles
