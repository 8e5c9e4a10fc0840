"""Slow: the demo recipe learns — both stages score held-out subjects well above chance.

Run with `make test-slow` (about 3-5 minutes on 2 cores).
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_recipe_scores_held_out_subjects(tmp_path, monkeypatch, tracking_home):
    from dsn.data.synth import write_dataset
    from dsn.workflows.fit import main as fit_main

    monkeypatch.chdir(ROOT)
    write_dataset(tmp_path / "demo", subjects=8, hours=8, seed=0, progress=False)
    res = fit_main(["--config", "conf/demo.yaml", "--data.data_dir", str(tmp_path / "demo"),
                    "--data.cache_dir", str(tmp_path / "cache"), "--tracking.home", str(tracking_home),
                    "--tracking.log_model", "false"])
    pre, ft = res.stages
    chance = 0.2
    for stage in (pre, ft):
        assert stage.metrics["test/f1_macro"] > 2.5 * chance, stage.metrics
        assert stage.metrics["test/kappa"] > 0.4
        assert stage.metrics["val/f1_macro"] > 0.7
    # sequence learning helps on the held-out subjects
    assert ft.metrics["test/f1_macro"] >= pre.metrics["test/f1_macro"] - 0.02
