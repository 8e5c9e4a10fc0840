"""The done-when check of several channels: an NSRR-layout data set (EEG at 125 Hz, EOG at 50 Hz) trains a
two-channel model through both stages, and `dsn predict` on one of its EDF files writes the four outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dsn.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _project_root(monkeypatch):
    monkeypatch.chdir(ROOT)


@pytest.mark.slow
def test_nsrr_two_channel_fit_then_predict(tmp_path, tracking_home, capsys):
    data = tmp_path / "nsrr"
    assert cli(["synth", str(data), "--layout", "nsrr", "--subjects", "4", "--hours", "1.5"]) == 0
    rc = cli(["fit", "--config", "conf/demo.yaml", "--config", "conf/debug.yaml", "--data.dataset", "nsrr",
              "--data.data_dir", str(data), "--data.channels", "[EEG, EOG(L)]", "--data.cache_dir", str(tmp_path / "cache"),
              "--data.progress", "false", "--net.small_kernel", "50", "--finetune.net.hidden_size", "16",
              "--finetune.net.shortcut_size", "32", "--finetune.batch_size", "2", "--finetune.seq_len", "5",
              "--pretrain.trainer.enable_progress_bar", "false", "--finetune.trainer.enable_progress_bar", "false",
              "--tracking.home", str(tracking_home)])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert "[pretrain]" in printed.out and "[finetune]" in printed.out
    ckpt = next(tracking_home.glob("checkpoints/*/finetune/selected.ckpt"))
    spec = torch.load(ckpt, map_location="cpu", weights_only=False)["dsn_scorer"]
    assert spec["config"]["net"]["n_chans"] == 2
    prep = spec["preprocessing"]
    assert prep["channels"] == ["EEG", "EOG(L)"] and prep["source_sfreq"] == [125.0, 50.0]
    assert "EOG(L)" in prep["channel_aliases"]  # the profile's aliases travel with the model

    edf = sorted(data.rglob("*.edf"))[0]
    out = tmp_path / "out"
    rc = cli(["predict", str(edf), "--model", str(ckpt), "--out", str(out), "--tracking.home", str(tracking_home)])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    name = edf.stem
    written = {p.name for p in out.iterdir()}
    assert {f"{name}_{s}" for s in ("hypnogram.csv", "hypnogram.edf", "hypnogram.png", "summary.json")} <= written
    summary = json.loads((out / f"{name}_summary.json").read_text())
    assert summary["channels"] == ["EEG", "EOG(L)"] and summary["source_sfreqs"] == [125.0, 50.0]
    assert summary["n_epochs"] == int(1.5 * 120)
