"""Tests of the calibration and confidence figures of dsn.evaluation (hand-computed values, known cases)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from dsn import evaluation


def test_ece_hand_computed() -> None:
    # 4 epochs, 2 classes, 15 bins. Confidences 0.9, 0.9 (bin 13: (12/15, 13/15]... 0.9 -> ceil(13.5)-1 = 13),
    # 0.6 (ceil(9)-1 = 8) and 0.55 (ceil(8.25)-1 = 8).
    proba = np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4], [0.45, 0.55]])
    y = np.array([0, 0, 0, 1])  # right, wrong, right, right
    # bin 13: confidence 0.9, accuracy 0.5 -> |gap| 0.4, weight 2/4
    # bin 8: confidence 0.575, accuracy 1.0 -> |gap| 0.425, weight 2/4
    expected = 0.5 * 0.4 + 0.5 * 0.425
    assert evaluation.expected_calibration_error(proba, y, n_bins=15) == pytest.approx(expected)
    # unscored epochs are left out
    assert evaluation.expected_calibration_error(np.vstack([proba, [[1.0, 0.0]]]), np.r_[y, -1]) == pytest.approx(expected)
    b = evaluation.reliability_bins(proba, y)
    assert b["count"].sum() == 4 and b["count"][13] == 2 and b["count"][8] == 2
    assert math.isnan(evaluation.expected_calibration_error(proba[:0], y[:0]))


def test_brier_hand_computed() -> None:
    proba = np.array([[0.9, 0.1], [0.1, 0.9]])
    y = np.array([0, 0])
    assert evaluation.brier_score(proba, y) == pytest.approx(((0.1**2 + 0.1**2) + (0.9**2 + 0.9**2)) / 2)


@pytest.mark.parametrize("true_t", [0.5, 2.5])
def test_fit_temperature_recovers_a_known_scaling(true_t: float) -> None:
    rng = np.random.default_rng(0)
    n, c = 4000, 5
    z = rng.normal(size=(n, c)) * 2.0
    p_true = np.exp(evaluation._log_softmax(z))
    y = np.array([rng.choice(c, p=row) for row in p_true])  # labels drawn from softmax(z): T = 1 is right for z
    t_hat = evaluation.fit_temperature(z * true_t, y)  # logits scaled by true_t need T = true_t
    assert t_hat == pytest.approx(true_t, rel=0.08)
    # log-probabilities give the same temperature as logits
    assert evaluation.fit_temperature(np.log(p_true) * true_t, y) == pytest.approx(t_hat, rel=1e-4)
    # recalibrating lowers the ECE of the mis-scaled probabilities and keeps the argmax
    raw = np.exp(evaluation._log_softmax(z * true_t))
    cal = evaluation.apply_temperature(raw, t_hat)
    assert evaluation.expected_calibration_error(cal, y) < evaluation.expected_calibration_error(raw, y)
    np.testing.assert_array_equal(cal.argmax(1), raw.argmax(1))
    np.testing.assert_allclose(cal.sum(1), 1.0, atol=1e-5)


def test_confidence_and_entropy() -> None:
    top, ent = evaluation.confidence(np.array([[1.0, 0, 0, 0, 0], [0.2] * 5, [0.5, 0.5, 0, 0, 0]]))
    np.testing.assert_allclose(top, [1.0, 0.2, 0.5])
    np.testing.assert_allclose(ent, [0.0, 1.0, math.log(2) / math.log(5)], atol=1e-12)


def test_pooled_calibration_uses_each_folds_temperature() -> None:
    from types import SimpleNamespace

    from dsn.workflows.calibration import pooled_calibration, split_figures

    rng = np.random.default_rng(1)
    folds, cal_parts, raw_parts, ys = [], [], [], []
    for t in (0.5, 3.0):
        z = rng.normal(size=(500, 5)) * 2
        y = rng.integers(0, 5, 500)
        raw = np.exp(evaluation._log_softmax(z / 0.7))
        folds.append({"predictions": {"finetune": [SimpleNamespace(y_true=y, proba=raw)]},
                      "metrics": {"finetune": {"calibration/temperature": t}}})
        raw_parts.append(raw)
        cal_parts.append(evaluation.apply_temperature(raw, t))
        ys.append(y)
    out = pooled_calibration(folds, "finetune")
    y = np.concatenate(ys)
    assert out["ece_raw"] == pytest.approx(evaluation.expected_calibration_error(np.concatenate(raw_parts), y))
    assert out["ece"] == pytest.approx(evaluation.expected_calibration_error(np.concatenate(cal_parts), y))
    assert out["brier"] == pytest.approx(evaluation.brier_score(np.concatenate(cal_parts), y))
    # confident vs flagged accuracy: the split at the threshold of the calibrated top-class probability
    figs = split_figures(np.concatenate(cal_parts), y, 1.0, threshold=0.5)
    assert out["acc_flagged"] == pytest.approx(figs["acc_flagged"])
    top = np.concatenate(cal_parts).max(1)
    assert out["flagged_frac"] == pytest.approx((top < 0.5).mean())
    assert pooled_calibration(folds, "pretrain") == {}


def test_low_confidence_threshold_rule() -> None:
    from dsn.workflows.calibration import THRESHOLD_BOUNDS, low_confidence_threshold

    def proba_of(top):  # 5 classes: class 0 at `top`, the rest shared
        top = np.asarray(top, dtype=np.float64)
        return np.column_stack([top, *[(1 - top) / 4] * 4])

    top = np.array([0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.9, 0.95])
    # right (class 0) from the 4th least confident on: the 3 below 0.5 are all wrong, the 4 below 0.6 right 1/4,
    # the 5 below 0.7 right 2/5, the 6 below 0.9 right 3/6 (not less than half): the threshold flags the 5 least confident
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    t = low_confidence_threshold(proba_of(top), y)
    assert t == pytest.approx((0.6 + 0.7) / 2)
    flagged = top < t
    assert flagged.sum() == 5 and (y[flagged] == 0).mean() < 0.5 <= (y[top < 0.9] == 0).mean()
    # bounded, and the lower bound when even the least confident epochs are mostly right
    assert low_confidence_threshold(proba_of(top), np.ones(8, dtype=int)) == THRESHOLD_BOUNDS[1]
    assert low_confidence_threshold(proba_of(top), np.zeros(8, dtype=int)) == THRESHOLD_BOUNDS[0]
    assert low_confidence_threshold(proba_of(top), -np.ones(8, dtype=int)) == THRESHOLD_BOUNDS[0]  # unscored only


def _tiny_cfg(synth_dir, home, tmp_path, **extra):
    from dsn import config

    return config.load_config(["conf/demo.yaml", "conf/debug.yaml"], {
        "data.n_folds": 3, "data.progress": False, "net.small_kernel": 50, "stages": ["pretrain"],
        "pretrain.trainer.enable_progress_bar": False, "data.data_dir": str(synth_dir),
        "data.cache_dir": str(tmp_path / "cache"), "tracking.home": str(home), **extra})  # fmt: skip


@pytest.fixture
def _project_root(monkeypatch):
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).resolve().parents[1])


def test_fit_calibrates_on_validation_and_stores_it_everywhere(synth_dir, tracking_home, tmp_path, _project_root) -> None:
    """A fit's selected.ckpt and its logged model carry the temperature and threshold fitted on the saved
    validation predictions (so never on the test subjects'), figures for val and test are logged (finite
    only) with a reliability diagram each, the familiarity description is stored, a resumed finished stage
    restores them all, and `dsn predict` flags with the model's threshold."""
    import json

    import mlflow
    import torch

    from dsn.cli import main as cli
    from dsn.workflows.calibration import low_confidence_threshold
    from dsn.workflows.registry import load_scorer
    from dsn.workflows.results import load_predictions
    from dsn.workflows.run import run_fit

    cfg = _tiny_cfg(synth_dir, tracking_home, tmp_path, **{"tracking.log_model": True})
    res = run_fit(cfg, verbose=False)
    st = res.stage("pretrain")
    ckpt_dir = Path(st.selected_checkpoint).parent
    val = load_predictions(ckpt_dir / "predictions_val.npz")
    proba, y = np.concatenate([p.proba for p in val]), np.concatenate([p.y_true for p in val])
    t_val = evaluation.fit_temperature(np.log(np.clip(proba, 1e-12, None)), y)
    thr_val = low_confidence_threshold(evaluation.apply_temperature(proba, t_val), y)
    test = load_predictions(ckpt_dir / "predictions_test.npz")
    proba_t, y_t = np.concatenate([p.proba for p in test]), np.concatenate([p.y_true for p in test])
    assert t_val != pytest.approx(evaluation.fit_temperature(np.log(np.clip(proba_t, 1e-12, None)), y_t), rel=1e-3)

    spec = torch.load(st.selected_checkpoint, map_location="cpu", weights_only=True)["dsn_scorer"]
    assert spec["calibration"]["temperature"] == pytest.approx(t_val, rel=1e-9)
    assert spec["calibration"]["threshold"] == pytest.approx(thr_val)
    assert spec["familiarity"]["n_nights"] == {"train": len(res.data_summary["recordings"]["train"]),
                                               "val": len(val)}
    logged = load_scorer(st.model_uri, res.tracking_uri)
    assert logged.calibration == spec["calibration"] and logged.familiarity["threshold"] == spec["familiarity"]["threshold"]

    # figures: val and test, before and after, finite; logged on the stage run (selected/...) and the fit run
    c = mlflow.MlflowClient(res.tracking_uri)
    stage_metrics = c.get_run(st.run_id).data.metrics
    for split in ("val", "test"):
        for k in ("ece_raw", "ece", "brier_raw", "brier", "flagged_frac"):
            assert f"{split}/{k}" in st.metrics and f"selected/{split}/{k}" in stage_metrics
        assert f"{split}/acc_confident" in st.metrics or f"{split}/acc_flagged" in st.metrics
    assert st.metrics["val/ece"] <= st.metrics["val/ece_raw"] + 1e-9  # the temperature minimises the val NLL
    assert st.metrics["test/ece"] == pytest.approx(evaluation.expected_calibration_error(
        evaluation.apply_temperature(proba_t, t_val), y_t))
    assert st.metrics["calibration/temperature"] == pytest.approx(t_val)
    assert all(np.isfinite(v) for v in st.metrics.values())
    assert all(np.isfinite(v) for v in c.get_run(res.run_id).data.metrics.values())
    arts = {a.path for a in c.list_artifacts(st.run_id, "calibration")}
    assert arts == {"calibration/reliability_val.png", "calibration/reliability_test.png"}
    assert "familiarity.json" in {a.path for a in c.list_artifacts(st.run_id)}

    # a resumed finished fit reloads the stage with its calibration and description
    again = run_fit(cfg, resume=res.run_id, verbose=False).stage("pretrain")
    assert again.scorer.calibration == spec["calibration"] and again.scorer.familiarity == spec["familiarity"]
    assert again.metrics["calibration/temperature"] == pytest.approx(t_val)

    # dsn predict flags with the model's threshold unless --low_confidence is given
    psg = sorted(Path(synth_dir).glob("*-PSG.edf"))[0]
    assert cli(["predict", str(psg), "--model", st.selected_checkpoint, "--out", str(tmp_path / "out")]) == 0
    summary = json.loads(next((tmp_path / "out").glob("*_summary.json")).read_text())
    assert summary["confidence"]["threshold"] == pytest.approx(thr_val)
    assert summary["confidence"]["temperature"] == pytest.approx(t_val)


def test_fit_without_test_subjects_calibrates_and_the_threshold_key_overrides(synth_dir, tracking_home, tmp_path,
                                                                             _project_root) -> None:
    import torch

    from dsn.workflows.run import run_fit

    cfg = _tiny_cfg(synth_dir, tracking_home, tmp_path, **{"test": False, "tracking.log_model": False,
                                                           "calibration.low_confidence": 0.42})
    st = run_fit(cfg, verbose=False).stage("pretrain")
    assert "test" not in st.predictions and not any(k.startswith("test/") for k in st.metrics)
    spec = torch.load(st.selected_checkpoint, map_location="cpu", weights_only=True)["dsn_scorer"]
    assert spec["calibration"]["threshold"] == 0.42 and spec["calibration"]["temperature"] != 1.0
    assert st.metrics["calibration/threshold"] == 0.42 and "val/ece" in st.metrics
    top = evaluation.apply_temperature(np.concatenate([p.proba for p in st.predictions["val"]]),
                                       spec["calibration"]["temperature"]).max(1)
    assert st.metrics["val/flagged_frac"] == pytest.approx((top < 0.42).mean())


def test_calibration_key_is_checked() -> None:
    from dsn import config
    from dsn.errors import ConfigError

    with pytest.raises(ConfigError, match=r"calibration.low_confidence=1.5"):
        config.check(config.parse(["--calibration.low_confidence", "1.5"]))


def test_cv_summary_holds_the_pooled_calibration_block() -> None:
    from dsn.data.labels import STAGES
    from dsn.workflows import cv
    from dsn.workflows.calibration import pooled_calibration
    from dsn.workflows.results import Prediction

    rng = np.random.default_rng(2)

    def preds(n, k):
        y = rng.integers(0, 5, n)
        z = rng.normal(size=(n, 5)) + 3.0 * np.eye(5)[y] * (rng.random(n) < 0.7)[:, None]
        return [Prediction(f"r{k}", f"s{k}", y, np.exp(evaluation._log_softmax(z * 2)).astype(np.float32))]

    folds = []
    for k, t in enumerate((0.6, 2.0, 1.3)):
        metrics = {"calibration/temperature": t, "calibration/threshold": 0.3 + 0.1 * k}
        folds.append({"fold": k, "predictions": {"finetune": preds(300, k)}, "val_predictions": {"finetune": preds(100, k)},
                      "metrics": {"finetune": metrics}})
    summary = cv.summarise(folds, ["finetune"], STAGES)
    assert summary["calibration"] == summary["stages"]["finetune"]["calibration"] == pooled_calibration(folds, "finetune")
    assert summary["validation"]["finetune"]["calibration"] == pooled_calibration(folds, "finetune", "val_predictions")
    c = summary["calibration"]
    assert c["n_epochs"] == 900 and c["ece"] != c["ece_raw"]
    # each fold's own threshold flags its epochs
    flagged = sum(int((evaluation.apply_temperature(f["predictions"]["finetune"][0].proba, f["metrics"]["finetune"]["calibration/temperature"])
                       .max(1) < f["metrics"]["finetune"]["calibration/threshold"]).sum()) for f in folds)
    assert c["flagged_frac"] == pytest.approx(flagged / 900)
    table = cv.format_summary(summary)
    assert f"ECE {c['ece_raw']:.3f} -> {c['ece']:.3f}" in table
    assert f"accuracy {100 * c['acc_confident']:.1f}% on confident vs {100 * c['acc_flagged']:.1f}%" in table


def test_dsn_fit_shows_each_splits_calibration_line() -> None:
    from types import SimpleNamespace

    from dsn.workflows.fit import render as render_fit

    metrics = {"val/acc": 0.8, "val/ece_raw": 0.21, "val/ece": 0.05, "val/brier_raw": 0.4, "val/brier": 0.3,
               "val/flagged_frac": 0.1, "val/acc_confident": 0.85, "val/acc_flagged": 0.4,
               "test/acc": 0.7, "test/ece_raw": 0.25, "test/ece": 0.08, "test/brier_raw": 0.5, "test/brier": 0.45,
               "test/flagged_frac": 0.0, "test/acc_confident": 0.7,  # no flagged test epoch: acc_flagged left out
               "calibration/temperature": 1.7, "calibration/threshold": 0.45}
    st = SimpleNamespace(name="finetune", metrics=metrics, confusion={"val": None, "test": None}, predictions={})
    out = render_fit(SimpleNamespace(stages=[st], registered=None, experiment_id="1", run_id="r", tracking_uri="sqlite://"))
    assert "ECE 0.210 -> 0.050, Brier 0.400 -> 0.300; accuracy 85.0% on confident vs 40.0% on low-confidence epochs" in out
    assert "ECE 0.250 -> 0.080" in out and "70.0% on confident vs n/a on low-confidence epochs (0.0% of the epochs" in out
    assert "temperature 1.70, low confidence below 0.45" in out


def test_calibration_stores_a_shift_reference_that_flags_a_shifted_night() -> None:
    """The selected model's calibration keeps its validation confusion and per-night predicted counts
    (dsn.trust.shift): a night predicted like the validation nights passes, 72 % REM is flagged."""
    from types import SimpleNamespace

    from dsn.workflows.calibration import calibrate_selected
    from dsn.workflows.trust import night_verdict

    rng = np.random.default_rng(0)
    mix = np.array([0.15, 0.08, 0.45, 0.12, 0.20])

    def night(n=900):
        y = rng.choice(5, size=n, p=mix)
        logits = rng.normal(size=(n, 5))
        logits[np.arange(n), y] += 3.0  # a good scorer: mostly right
        p = np.exp(logits)
        return SimpleNamespace(proba=p / p.sum(1, keepdims=True), y_true=y)

    scorer = SimpleNamespace(calibration={})
    metrics, _ = calibrate_selected(scorer, {"val": [night() for _ in range(4)]})
    ref = scorer.calibration["shift"]
    assert np.asarray(ref["val_pred_counts"]).shape == (4, 5) and np.asarray(ref["confusion"]).sum() == 4 * 900
    assert metrics["calibration/shift_threshold"] == pytest.approx(ref["threshold"])
    like = rng.choice(5, size=900, p=mix)
    shifted = rng.choice(5, size=900, p=[0.05, 0.02, 0.06, 0.15, 0.72])
    levels = {}
    for name, stages in (("like", like), ("shifted", shifted)):
        v = night_verdict(stages, calibration=scorer.calibration, norms={"rules": {}})
        levels[name] = next(f["level"] for f in v.findings if f["name"] == "prediction_shift")
    assert levels["like"] == "ok" and levels["shifted"] != "ok"
