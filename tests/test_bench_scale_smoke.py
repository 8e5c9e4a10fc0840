"""benchmarks/bench_scale.py runs at a tiny size and prints every figure with a finite growth exponent (issue 33)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_scale as bench  # noqa: E402


def test_exponent_and_flags():
    assert bench.exponent([10, 100, 1000], [5.0, 50.0, 500.0]) == pytest.approx(1.0)
    assert bench.exponent([10, 100, 1000], [3.0, 3.0, 3.0]) == pytest.approx(0.0)
    assert bench.exponent([10, 100], [1.0, 100.0]) == pytest.approx(2.0)
    assert math.isnan(bench.exponent([10, 100], [1.0, float("nan")]))
    figs = [{k: 1.0 for k, _, _ in bench.FIGURES} for _ in range(2)]
    figs[1]["pretrain_peak_mb"] = 10.0  # memory that grows linearly: past its target 0
    figs[1]["prep_s"] = 10.0  # preparation linear: on target
    figs[1]["pretrain_steps_per_s"] = 0.1  # throughput falling with the data: past its target 0
    figs[1]["finetune_steps_per_s"] = 2.0  # rising: not flagged
    rows = {r[0]: r for r in bench.table_rows([10, 100], figs, 0.25)}
    assert rows["peak RSS, pretrain epoch, MB"][-1] == "PAST TARGET"
    assert rows["preparation, s in all"][-1] == ""
    assert rows["pretrain steps/s"][-1] == "PAST TARGET"
    assert rows["finetune steps/s"][-1] == ""


@pytest.mark.slow
def test_bench_scale_tiny(capsys, tmp_path):
    bench.main(["--nights", "2", "4", "--hours", "1", "--tiny", "--batches", "4", "--distinct", "3", "--work", str(tmp_path)])
    out = capsys.readouterr().out
    assert "CPU:" in out and "3 distinct" in out  # 4 recordings: 3 nights written, one linked again
    assert len(list(tmp_path.glob("gen/seed0/polysomnography/edfs/shhs1/*.edf"))) == 3
    lines = {ln.split("|")[1].strip(): ln for ln in out.splitlines() if ln.startswith("| ")}
    for _, label, target in bench.FIGURES:
        assert label in lines, label
        cells = [c.strip() for c in lines[label].split("|")[1:-1]]
        values, exp = [float(c) for c in cells[1:3]], float(cells[3])
        assert all(math.isfinite(v) and v > 0 for v in values), (label, cells)
        assert math.isfinite(exp), (label, cells)
        assert float(cells[4]) == target
    assert float(lines["cache, MB per night"].split("|")[2]) > 0.5  # two channels, 1 h at 100 Hz: ~2.9 MB


def test_val_nights_caps_the_validation_split(tmp_path):
    spec = {"data_dir": str(tmp_path), "cache_dir": str(tmp_path / "cache"), "normalize": "none", "tiny": True,
            "subjects": [f"shhs-{3000000 + i}" for i in range(200)]}
    assert len(bench._config(spec).data.val_subjects) == 40  # 20 % of the nights
    capped = bench._config({**spec, "val_nights": 20}).data
    assert len(capped.val_subjects) == 20 and len(capped.train_subjects) == 180
    assert not set(capped.val_subjects) & set(capped.train_subjects)
