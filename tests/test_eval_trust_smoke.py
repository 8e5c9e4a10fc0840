"""benchmarks/eval_trust.py runs at its small size and prints its tables (issue 34); its AUROC is right."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _bench():
    spec = importlib.util.spec_from_file_location("dsn_eval_trust", BENCHMARKS / "eval_trust.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_auroc_and_summary_rows():
    bench = _bench()
    assert bench.auroc([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 1.0
    assert bench.auroc([0.9, 0.8, 0.2, 0.1], [False, False, True, True]) == 0.0
    assert bench.auroc([1, 1, 1, 1], [False, True, False, True]) == 0.5
    assert np.isnan(bench.auroc([1, 2], [True, True]))
    nights = [{"f1": 0.3, "plausibility": (2, 3.0)}, {"f1": 0.9, "plausibility": (0, 0.0)},
              {"f1": 0.5, "plausibility": (0, 1.0)}]
    rows = {r[0]: r[1:] for r in bench.summary_rows(nights)}
    assert rows["plausibility"] == ["50 % (1/2)", "0 % (0/1)", "1.00"]
    assert rows["feature_shift"] == ["n/a", "n/a", "n/a"]


@pytest.mark.slow
def test_eval_trust_small(capsys, tmp_path):
    _bench().main(["--small", "--work", str(tmp_path)])
    out = capsys.readouterr().out
    for text in ["CPU:", "prediction-shift threshold", "feature-shift threshold", "a: own test", "b: site B",
                 "c: othergen", "d: amplitude x5", "d: 50 Hz mains", "Verdicts per set", "warned, badly scored",
                 "AUROC for badly scored", "combined + familiarity"]:
        assert text in out, text
    table = out.split("AUROC for badly scored |")[1]
    for det in ("plausibility", "prediction_shift", "feature_shift", "combined"):
        assert f"| {det} " in table
