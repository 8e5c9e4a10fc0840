"""benchmarks/compare_networks.py at a tiny size: dsn cv of two recipes on one synthetic set, one table, one link."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("compare_networks", ROOT / "benchmarks" / "compare_networks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_recipe_is_an_overlay_and_shares_the_budget():
    mod = _module()
    for name in mod.RECIPES:
        for path in mod.recipe_configs(name, "conf/demo.yaml"):
            assert (ROOT / path).is_file(), path
    over = mod.budget_overrides(type("A", (), {"site": "B", "epochs": 2, "batches": 7})())
    assert over["data.channels"] == ["EEG C4-A1"] and over["finetune.trainer.limit_train_batches"] == 7
    assert over["pretrain.trainer.max_epochs"] == 2 and over["tracking.experiment"] == "compare-networks-site-B"


@pytest.mark.slow  # about 3 min on the loaded 2-core machine: two cv runs of 2 folds
def test_compare_networks_smoke(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    mod = _module()
    mod.main(["--recipes", "chambon2018", "tinysleepnet", "--subjects", "4", "--hours", "0.5", "--folds", "2",
              "--epochs", "1", "--batches", "2", "--work", str(tmp_path)])
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in out.splitlines()
            if line.startswith("| chambon2018") or line.startswith("| tinysleepnet")}
    assert set(rows) == {"chambon2018", "tinysleepnet"}, out
    assert rows["chambon2018"][0] == "pretrain" and rows["tinysleepnet"][0] == "finetune"
    for cells in rows.values():
        assert 0.0 <= float(cells[1]) <= 100.0 and int(cells[-2].replace(",", "")) > 0
    link = re.search(r"#/compare-runs\?runs=%5B(.*?)%5D", out)
    assert link and link.group(1).count("%2C") == 1, out  # the two cv runs
