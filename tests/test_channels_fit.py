"""A two-channel model end to end: `dsn fit` trains both stages on EEG + EOG, the logged model and
`selected.ckpt` carry the channels, `dsn predict` reads them from a new file (or refuses one that lacks one)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dsn.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]
CHANNELS = ["Fpz-Cz", "EOG horizontal"]  # the first found by alias (the files say EEG Fpz-Cz)


@pytest.fixture(autouse=True)
def _project_root(monkeypatch):
    monkeypatch.chdir(ROOT)


@pytest.mark.slow
def test_two_channel_fit_and_predict(synth_dir, tracking_home, tmp_path, capsys):
    from dsn import config
    from dsn.workflows.fit import run_fit

    cfg = config.load_config(["conf/demo.yaml", "conf/debug.yaml"], {
        "data.data_dir": str(synth_dir), "data.cache_dir": str(tmp_path / "cache"), "data.n_folds": 3,
        "data.progress": False, "data.channels": CHANNELS, "data.normalize": "zscore",
        "net.small_kernel": 50, "finetune.net.hidden_size": 16, "finetune.net.shortcut_size": 32,
        "finetune.batch_size": 2, "finetune.seq_len": 5, "pretrain.trainer.enable_progress_bar": False,
        "finetune.trainer.enable_progress_bar": False, "tracking.home": str(tracking_home), "tracking.log_model": True})  # fmt: skip
    assert cfg.net.n_chans == 2
    res = run_fit(cfg, verbose=False)
    assert [s.name for s in res.stages] == ["pretrain", "finetune"]
    final = res.stages[-1]
    ckpts = sorted(tracking_home.glob("checkpoints/*/finetune/selected.ckpt"))
    assert len(ckpts) == 1
    spec = torch.load(ckpts[0], map_location="cpu", weights_only=False)["dsn_scorer"]
    assert spec["preprocessing"]["channels"] == CHANNELS and spec["config"]["net"]["n_chans"] == 2
    assert spec["preprocessing"]["source_sfreq"] == [100.0, 100.0]

    night = tmp_path / "night"
    night.mkdir()
    psg = sorted(Path(synth_dir).glob("*-PSG.edf"))[0]
    shutil.copy(psg, night / psg.name)
    for model in (final.model_uri, str(ckpts[0])):
        out = tmp_path / ("out-" + str(len(list(tmp_path.glob("out-*")))))
        rc = cli(["predict", str(night / psg.name), "--model", model, "--out", str(out),
                  "--tracking.home", str(tracking_home)])
        printed = capsys.readouterr().out
        assert rc == 0, printed
        assert "channels Fpz-Cz, EOG horizontal" in printed
        name = psg.name[: -len("-PSG.edf")]
        written = {p.name for p in out.iterdir()}
        assert {f"{name}_{s}" for s in ("hypnogram.csv", "hypnogram.edf", "hypnogram.png", "summary.json")} <= written
        summary = json.loads((out / f"{name}_summary.json").read_text())
        assert summary["channels"] == CHANNELS and summary["labels"] == ["EEG Fpz-Cz", "EOG horizontal"]

    # a file without the EOG: one line naming the file and the channel, and nothing written
    from edfio import Edf, EdfSignal

    eeg_only = night / "eeg-only.edf"
    Edf([EdfSignal(np.zeros(3000 * 4), 100, label="EEG Fpz-Cz", physical_range=(-100, 100))],
        data_record_duration=30).write(eeg_only)
    out = tmp_path / "refused"
    rc = cli(["predict", str(eeg_only), "--model", str(ckpts[0]), "--out", str(out), "--tracking.home", str(tracking_home)])
    captured = capsys.readouterr()
    assert rc != 0
    err = captured.err.strip()
    assert "eeg-only.edf" in err and "'EOG horizontal' not found" in err and len(err.splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())
