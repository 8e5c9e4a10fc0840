"""The training workflow (`run_fit`) and the defects it fixes, each with a regression test."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest

from dsn import config, tracking
from dsn.cli import main as cli_main
from dsn.errors import ConfigError, DsnError
from dsn.workflows.fit import Prediction, confusion_of, load_predictions, run_fit, save_predictions  # the re-exports

TINY = {
    "data.n_folds": 3, "data.progress": False, "net.small_kernel": 50,
    "finetune.net.hidden_size": 16, "finetune.net.shortcut_size": 32,
    "finetune.batch_size": 2, "finetune.seq_len": 5, "finetune.trainer.limit_val_batches": 1.0,
    "pretrain.trainer.enable_progress_bar": False, "finetune.trainer.enable_progress_bar": False,
    "tracking.log_model": False,
}  # fmt: skip


@pytest.fixture(autouse=True)
def _project_root(monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])


def tiny_cfg(synth_dir, home, tmp_path, **extra):
    return config.load_config(["conf/demo.yaml", "conf/debug.yaml"], {
        **TINY, "data.data_dir": str(synth_dir), "data.cache_dir": str(tmp_path / "cache"),
        "tracking.home": str(home), **extra})  # fmt: skip


def _runs(home, experiment="dsn-debug"):
    c = mlflow.MlflowClient(tracking.tracking_uri(None, home))
    exp = c.get_experiment_by_name(experiment)
    return [] if exp is None else c.search_runs([exp.experiment_id])


def test_result_carries_predictions_confusion_and_metrics(synth_dir, tracking_home, tmp_path):
    import os

    res = run_fit(tiny_cfg(synth_dir, tracking_home, tmp_path), verbose=False)
    # regression: Lightning's MLflow logger left MLFLOW_TRACKING_URI set, redirecting later commands
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert [s.name for s in res.stages] == ["pretrain", "finetune"]
    for st in res.stages:
        for split in ("val", "test"):
            preds = st.predictions[split]
            assert preds and all(p.proba.shape == (len(p.y_true), 5) for p in preds)
            np.testing.assert_allclose(preds[0].proba.sum(1), 1.0, atol=1e-5)
            cm = confusion_of(preds)
            np.testing.assert_array_equal(cm, st.confusion[split])
            assert cm.sum() == sum(int((p.y_true >= 0).sum()) for p in preds)
            acc = np.trace(cm) / cm.sum()
            assert st.metrics[f"{split}/acc"] == pytest.approx(acc)
    # the stored predictions are the same as the returned ones
    ckpt_dir = tracking_home / "checkpoints" / res.run_id / "finetune"
    stored = load_predictions(ckpt_dir / "predictions_test.npz")
    for a, b in zip(stored, res.stage("finetune").predictions["test"]):
        assert a.name == b.name
        np.testing.assert_array_equal(a.proba, b.proba)


def test_predictions_roundtrip(tmp_path):
    preds = [Prediction("A", "SC400", np.array([0, 1, -1]), np.eye(5, dtype=np.float32)[[0, 2, 1]])]
    save_predictions(tmp_path / "p.npz", preds)
    back = load_predictions(tmp_path / "p.npz")
    assert back[0].name == "A" and back[0].subject == "SC400"
    np.testing.assert_array_equal(back[0].y_pred, [0, 2, 1])
    np.testing.assert_array_equal(confusion_of(back)[[0, 1], [0, 2]], [1, 1])
    assert not list(tmp_path.glob("*.tmp"))


def test_debug_overlay_on_recordings_longer_than_the_evaluated_batches(synth_dir, tracking_home, tmp_path):
    """Regression: with limit_val_batches covering only part of a recording, the hypnogram step crashed
    (`NumPy boolean array indexing assignment cannot assign ...`). The selected model is now evaluated on
    whole recordings, whatever the per-epoch evaluation was limited to."""
    cfg = tiny_cfg(synth_dir, tracking_home, tmp_path, **{"data.eval_batch_size": 20, "pretrain.trainer.limit_val_batches": 2,
                                                          "finetune.trainer.limit_val_batches": 3})
    res = run_fit(cfg, verbose=False)
    for st in res.stages:
        val = st.predictions["val"][0]
        assert len(val.y_true) > 40  # longer than what the limited per-epoch evaluation saw
        assert st.confusion["val"].sum() == int((val.y_true >= 0).sum())
    arts = {a.path for a in mlflow.MlflowClient(res.tracking_uri).list_artifacts(res.stage("finetune").run_id, "val")}
    assert any(p.startswith("val/hypnogram_") for p in arts)


def test_invalid_value_is_one_line_error(capsys):
    rc = cli_main(["fit", "--config", "conf/demo.yaml", "--net.drop_prob", "1.5"])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert err.startswith("dsn fit: error: net.drop_prob") and "[0, 1)" in err and "1.5" in err


def test_unknown_key_and_wrong_type_are_config_errors():
    cfg = config.load_config(["conf/demo.yaml"])
    with pytest.raises(ConfigError, match=r"net.dropprob: not a config key \(did you mean net.drop_prob"):
        config.set_key(cfg, "net.dropprob", 0.3)
    with pytest.raises(ConfigError, match="pretrain.system.lr='abc'"):
        config.set_key(cfg, "pretrain.system.lr", "abc")
    with pytest.raises(ConfigError, match="shortcut_size"):
        config.set_key(cfg, "finetune.net.hidden_size", 64)  # the shortcut must be 2 x hidden
    assert issubclass(ConfigError, DsnError)


def test_set_key_revalidates_and_links_sfreq():
    cfg = config.load_config(["conf/demo.yaml"])
    new = config.set_keys(cfg, {"data.sfreq": 50.0, "pretrain.system.lr": 0.01})
    assert new.net.sfreq == 50.0 and new.data.sfreq == 50.0 and new.pretrain.system.lr == 0.01
    assert cfg.net.sfreq == 100.0 and cfg.pretrain.system.lr == 0.001  # the original is untouched
    with pytest.raises(ConfigError, match="net.sfreq follows data.sfreq"):
        config.set_key(cfg, "net.sfreq", 50.0)


def test_bad_data_folder_leaves_no_run(tmp_path, tracking_home, capsys):
    rc = cli_main(["fit", "--config", "conf/debug.yaml", "--data.data_dir", str(tmp_path / "none"),
                   "--tracking.home", str(tracking_home)])
    assert rc == 1 and "data folder not found" in capsys.readouterr().err
    assert _runs(tracking_home) == []


def test_selected_metrics_do_not_touch_the_curves(synth_dir, tracking_home, tmp_path):
    """Regression: the selected model's figures were logged under the curves' keys and step, so a curve
    jumped when the best epoch was not the last."""
    cfg = tiny_cfg(synth_dir, tracking_home, tmp_path, **{"pretrain.trainer.max_epochs": 2, "stages": ["pretrain"]})
    res = run_fit(cfg, verbose=False)
    c = mlflow.MlflowClient(res.tracking_uri)
    hist = c.get_metric_history(res.stage("pretrain").run_id, "val/f1_macro")
    assert len(hist) == 2 and sorted(h.step for h in hist) == sorted({h.step for h in hist})
    sel = c.get_metric_history(res.stage("pretrain").run_id, "selected/val/f1_macro")
    assert len(sel) == 1 and sel[0].value == pytest.approx(res.stage("pretrain").metrics["val/f1_macro"])
    top = c.get_run(res.run_id).data.metrics
    assert top["val/f1_macro"] == pytest.approx(res.stage("pretrain").metrics["val/f1_macro"])


def test_each_stage_logs_its_own_data_settings(synth_dir, tracking_home, tmp_path):
    """Regression: the fine-tuning run logged mode=pretrain and batch_size=100 from a mutated data module."""
    res = run_fit(tiny_cfg(synth_dir, tracking_home, tmp_path), verbose=False)
    c = mlflow.MlflowClient(res.tracking_uri)
    pre = c.get_run(res.stage("pretrain").run_id).data.params
    ft = c.get_run(res.stage("finetune").run_id).data.params
    assert pre["mode"] == "pretrain" and pre["batch_size"] == "100"
    assert ft["mode"] == "finetune" and ft["batch_size"] == "2" and ft["seq_len"] == "5"


def test_resume_refuses_a_different_config(synth_dir, tracking_home, tmp_path, monkeypatch):
    from dsn.systems.pretrain import PretrainSystem

    cfg = tiny_cfg(synth_dir, tracking_home, tmp_path, stages=["pretrain"])
    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(PretrainSystem, "on_train_epoch_end", lambda self: (_ for _ in ()).throw(KeyboardInterrupt()))
        run_fit(cfg, verbose=False)
    changed = config.set_key(cfg, "pretrain.system.lr", 0.5)
    with pytest.raises(ConfigError, match=r"pretrain.system.lr: 0.001 -> 0.5.*--allow_config_change"):
        run_fit(changed, resume="last", verbose=False)
    killed = [r for r in _runs(tracking_home) if r.data.tags.get("dsn.kind") == "fit"]
    assert len(killed) == 1 and killed[0].info.status == "KILLED"  # refused before reopening anything
    res = run_fit(changed, resume="last", allow_config_change=True, verbose=False)
    assert res.run_id == killed[0].info.run_id
    assert mlflow.MlflowClient(res.tracking_uri).get_run(res.run_id).info.status == "FINISHED"


def test_nested_under_a_parent_with_callbacks_and_tags(synth_dir, tracking_home, tmp_path):
    import lightning as L

    uri = tracking.tracking_uri(None, tracking_home)
    exp = tracking.experiment_id(uri, "dsn-debug", tracking_home)
    parent = tracking.start_run(uri, exp, "outer")
    seen = []

    class Spy(L.Callback):
        def __init__(self, stage):
            self.stage = stage

        def on_validation_end(self, trainer, pl_module):
            seen.append(self.stage)

    res = run_fit(tiny_cfg(synth_dir, tracking_home, tmp_path), parent_run_id=parent, callbacks=lambda s: [Spy(s)],
                  tags={"dsn.fold": "2"}, run_name="fold-2", kind="fold", verbose=False)
    assert set(seen) == {"pretrain", "finetune"}
    run = mlflow.MlflowClient(uri).get_run(res.run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent and run.data.tags["dsn.fold"] == "2"
    assert run.data.tags["dsn.kind"] == "fold" and run.info.run_name == "fold-2"


def test_nan_loss_fails_with_clear_error(synth_dir, tracking_home, tmp_path, monkeypatch):
    import torch

    from dsn.systems.pretrain import PretrainSystem

    orig = PretrainSystem.training_step
    monkeypatch.setattr(PretrainSystem, "training_step", lambda self, b, i: orig(self, b, i) * torch.tensor(float("nan")))
    with pytest.raises(DsnError, match="training diverged"):
        run_fit(tiny_cfg(synth_dir, tracking_home, tmp_path, stages=["pretrain"]), verbose=False)
    runs = _runs(tracking_home)
    assert runs and all(r.info.status == "FAILED" for r in runs)
    assert not list((tracking_home / "checkpoints").rglob("last.ckpt"))  # a diverged state is not kept for a resume


def test_last_ckpt_is_written_when_a_fit_stops_not_after_every_epoch(synth_dir, tracking_home, tmp_path, monkeypatch):
    from dsn.systems.pretrain import PretrainSystem

    cfg = tiny_cfg(synth_dir, tracking_home, tmp_path, stages=["pretrain"], **{"pretrain.trainer.max_epochs": 2})
    res = run_fit(cfg, verbose=False)
    done = tracking_home / "checkpoints" / res.run_id / "pretrain"
    assert (done / "selected.ckpt").is_file() and list(done.glob("best-*.ckpt")) and not (done / "last.ckpt").exists()

    def fail(self):  # an error a rerun may not meet again (out of memory, a lost file system)
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(PretrainSystem, "on_train_epoch_end", fail)
    with pytest.raises(RuntimeError, match="out of memory"):
        run_fit(cfg, verbose=False)
    failed = next(r for r in _runs(tracking_home) if r.data.tags.get("dsn.kind") == "fit" and r.info.status == "FAILED")
    assert (tracking_home / "checkpoints" / failed.info.run_id / "pretrain" / "last.ckpt").is_file()  # for --resume
    monkeypatch.undo()
    resumed = run_fit(cfg, resume=failed.info.run_id, verbose=False)
    assert resumed.run_id == failed.info.run_id and resumed.stage("pretrain").metrics


def test_finite_loss_reads_the_device_count_at_the_epoch_end_not_every_step():
    import lightning as L

    from dsn.workflows.callbacks import FiniteLoss

    class Module:
        def __init__(self, bad):
            self.bad, self.reads = bad, 0

        def nonfinite_steps(self):
            self.reads += 1
            return self.bad

    trainer = type("T", (), {"current_epoch": 4})()
    cb = FiniteLoss("finetune")
    assert type(cb).on_train_batch_end is L.Callback.on_train_batch_end  # nothing (no host sync) per step
    ok = Module(0)
    cb.on_validation_start(trainer, ok), cb.on_train_epoch_end(trainer, ok)
    assert ok.reads == 2
    with pytest.raises(DsnError, match=r"\[finetune\] training diverged: the loss was NaN or infinite in 3 training step\(s\) of epoch 4"):
        cb.on_validation_start(trainer, Module(3))  # before the epoch's validation: no checkpoint of a diverged epoch


def test_finetune_only_from_a_model_reference(synth_dir, tracking_home, tmp_path):
    """`finetune.system.pretrained` takes any model reference, resolved in the fit's own tracking store."""
    import torch

    pre = run_fit(tiny_cfg(synth_dir, tracking_home, tmp_path, stages=["pretrain"], **{"tracking.log_model": True}),
                  verbose=False)
    ref = pre.stage("pretrain").model_uri
    cfg = tiny_cfg(synth_dir, tracking_home, tmp_path, stages=["finetune"], **{
        "finetune.system.pretrained": ref, "finetune.system.lr_pretrained": 1e-12, "finetune.trainer.max_epochs": 1})
    ft = run_fit(cfg, verbose=False)
    w_pre = pre.stage("pretrain").scorer.feature_net.small_branch.conv1.conv.weight
    w_ft = ft.stage("finetune").scorer.feature_net.small_branch.conv1.conv.weight
    torch.testing.assert_close(w_ft, w_pre, atol=1e-8, rtol=0)  # started from the pretrained weights
    bad = tiny_cfg(synth_dir, tracking_home, tmp_path, stages=["finetune"], **{"finetune.system.pretrained": "runs:/nope/model"})
    with pytest.raises(DsnError, match="runs:/nope/model"):
        run_fit(bad, verbose=False)


# ----------------------------------------------------------------------------- reliability (issue 21, issue 20)
NEUTRAL = {"tracking.run_name": "renamed", "tracking.log_model": True, "data.pin_memory": True, "data.num_workers": 1,
           "data.progress": True, "pretrain.trainer.log_every_n_steps": 1, "pretrain.trainer.enable_progress_bar": True}


def test_identity_ignores_keys_that_cannot_change_the_weights():
    cfg = config.load_config(["conf/demo.yaml"])
    assert config.identity_items(config.set_keys(cfg, NEUTRAL)) == config.identity_items(cfg)
    for key, value in {"tracking.experiment": "other", "pretrain.trainer.precision": "bf16-mixed",
                       "finetune.trainer.devices": 2, "pretrain.trainer.accelerator": "gpu"}.items():
        assert key in {k for k, v in config.identity_items(config.set_key(cfg, key, value)).items()
                       if str(v) != str(config.identity_items(cfg).get(k))}, key


def test_resume_accepts_a_loader_or_tracking_overlay_and_refuses_a_precision_change(synth_dir, tracking_home, tmp_path,
                                                                                    monkeypatch):
    from dsn.systems.pretrain import PretrainSystem

    cfg = tiny_cfg(synth_dir, tracking_home, tmp_path, stages=["pretrain"])
    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(PretrainSystem, "on_train_epoch_end", lambda self: (_ for _ in ()).throw(KeyboardInterrupt()))
        run_fit(cfg, verbose=False)
    for key, value in {"pretrain.trainer.precision": "bf16-mixed", "pretrain.trainer.devices": 2}.items():
        with pytest.raises(ConfigError, match=rf"{key}: .*--allow_config_change"):
            run_fit(config.set_key(cfg, key, value), resume="last", verbose=False)
    neutral = {**NEUTRAL, "data.num_workers": 0, "data.progress": False, "pretrain.trainer.enable_progress_bar": False}
    res = run_fit(config.set_keys(cfg, neutral), resume="last", verbose=False)  # accepted: same weights
    fits = [r for r in _runs(tracking_home) if r.data.tags.get("dsn.kind") == "fit"]
    assert len(fits) == 1 and res.run_id == fits[0].info.run_id and fits[0].info.status == "FINISHED"


def test_register_without_log_model_and_empty_validation_are_refused_before_any_run(synth_dir, tracking_home, tmp_path,
                                                                                    capsys):
    rc = cli_main(["fit", "--config", "conf/demo.yaml", "--config", "conf/debug.yaml", "--data.data_dir", str(synth_dir),
                   "--tracking.home", str(tracking_home), "--tracking.register", "m"])  # debug.yaml: log_model false
    err = capsys.readouterr().err
    assert rc == 1 and err.strip().count("\n") == 0 and "tracking.register='m' needs tracking.log_model: true" in err
    with pytest.raises(ConfigError, match=r"data.n_val_subjects=0: must be at least 1"):
        tiny_cfg(synth_dir, tracking_home, tmp_path, **{"data.n_val_subjects": 0})
    no_val = tiny_cfg(synth_dir, tracking_home, tmp_path, **{"data.train_subjects": ["SC400", "SC401"],
                                                            "data.test_subjects": ["SC402"]})
    with pytest.raises(DsnError, match=r"the val split has no recordings .*data.val_subjects"):
        run_fit(no_val, verbose=False)
    assert _runs(tracking_home) == []


def test_a_windows_path_is_not_a_model_uri(synth_dir, tracking_home, tmp_path):
    from dsn.workflows.build import is_model_uri

    assert is_model_uri("models:/m@champion") and is_model_uri("runs:/abc/model") and is_model_uri("s3://b/k")
    assert not is_model_uri("C:/x/selected.ckpt") and not is_model_uri("c:/x.pt") and not is_model_uri("/x/selected.ckpt")
    cfg = tiny_cfg(synth_dir, tracking_home, tmp_path, stages=["finetune"], **{"finetune.system.pretrained": "C:/x/selected.ckpt"})
    with pytest.raises(ConfigError, match=r"C:/x/selected.ckpt: pretrained checkpoint not found"):
        run_fit(cfg, verbose=False)
    assert _runs(tracking_home) == []  # reported before any run opens


def test_resume_of_a_finished_fit_returns_its_model_and_registers_it(synth_dir, tracking_home, tmp_path):
    """Issue 20: `dsn fit --resume --tracking.register NAME` of a fit whose last stage had finished."""
    cfg = tiny_cfg(synth_dir, tracking_home, tmp_path, stages=["pretrain"], **{"tracking.log_model": True})
    first = run_fit(cfg, verbose=False)
    again = run_fit(config.set_key(cfg, "tracking.register", "dsn-resumed"), resume=first.run_id, verbose=False)
    st, was = again.stage("pretrain"), first.stage("pretrain")
    assert st.model_uri == was.model_uri and st.selected_epoch == was.selected_epoch is not None
    assert st.metrics == pytest.approx(was.metrics)
    assert again.registered == ("dsn-resumed", "1")
    assert mlflow.MlflowClient(again.tracking_uri).get_run(again.run_id).info.status == "FINISHED"
