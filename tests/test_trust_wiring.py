"""The feature-level shift wired into a model (issue 34): fitted at calibration time from the training nights'
encoder features, stored compactly in the spec (a checkpoint still loads with weights_only=True), used by
night_verdict; a model without the reference (an older spec) skips that detector."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_artifact import night, tiny_scorer

from dsn.trust import fit_feature_reference
from dsn.workflows.calibration import feature_reference
from dsn.workflows.trust import night_verdict, scored_features

W, N2, REM = 0, 2, 4


def _recordings(n_nights: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    return [SimpleNamespace(x=night(60, seed=seed + i), y=rng.integers(0, 5, 60)) for i in range(n_nights)]


@pytest.fixture(scope="module")
def calibrated():
    scorer = tiny_scorer()
    ref = feature_reference(scorer, {"train": _recordings(3, 0), "val": _recordings(1, 10)})
    scorer.calibration = {"temperature": 1.0, "features": ref}
    return scorer


def test_feature_reference_fitted_from_training_and_validation_nights(calibrated):
    ref = calibrated.calibration["features"]
    assert ref["n_epochs"] and sum(ref["n_epochs"]) == 180  # every training epoch, with its true stage
    assert len(ref["val_scores"]) == 1 and ref["threshold"] == pytest.approx(1.5 * ref["val_scores"][0])
    # nothing to fit on: no reference (the detector is then skipped)
    assert feature_reference(tiny_scorer(), {"train": _recordings(2, 0)}) is None


def test_verdict_uses_the_reference_and_an_older_spec_skips_it(calibrated):
    stages = np.r_[np.full(20, W), np.full(30, N2), np.full(10, REM)]
    x = night(60, seed=10)
    feats = scored_features(calibrated, x)
    assert feats.shape[0] == 60
    v = night_verdict(stages, calibration=calibrated.calibration, features=feats)
    finding = next(f for f in v.findings if f["name"] == "feature_shift")
    assert finding["level"] == "ok"  # the validation night itself
    far = scored_features(calibrated, x * 50 + 200)
    v = night_verdict(stages, calibration=calibrated.calibration, features=far)
    assert "feature_shift" in v.rules and v.verdict != "trusted"
    older = tiny_scorer()
    older.calibration = {"temperature": 1.0}  # a spec from before the feature reference
    assert scored_features(older, x) is None
    v = night_verdict(stages, calibration=older.calibration, features=scored_features(older, x))
    assert "feature_shift" not in {f["name"] for f in v.findings}


def test_spec_with_the_reference_is_compact_and_loads_with_weights_only(calibrated, tmp_path):
    from dsn.workflows.registry import load_scorer

    ckpt = tmp_path / "selected.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in calibrated.net.state_dict().items()},
                "dsn_scorer": calibrated.spec()}, ckpt)
    torch.load(ckpt, map_location="cpu", weights_only=True)  # plain containers and strings only
    back = load_scorer(str(ckpt))
    x = night(60, seed=3)
    a = night_verdict(np.zeros(60, int), calibration=calibrated.calibration, features=scored_features(calibrated, x))
    b = night_verdict(np.zeros(60, int), calibration=back.calibration, features=scored_features(back, x))
    assert a.as_dict() == b.as_dict()
    # The paper's network: 3072 features, 32 components: about 0.5 MB of spec (float32, base64).
    rng = np.random.default_rng(0)
    big = fit_feature_reference(rng.standard_normal((400, 3072)), rng.integers(0, 5, 400),
                                [rng.standard_normal((50, 3072))])
    size = len(json.dumps(big))
    assert 3072 * 32 * 4 < size < 0.7e6, size
