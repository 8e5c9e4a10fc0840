"""The `dsn` command line: help, synth, ui."""

from __future__ import annotations

import subprocess
import sys

import mne

from dsn.cli import main


def test_help_is_fast_and_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(c in out for c in ("synth", "fit", "ui"))
    # `dsn --help` must not import the heavy stack
    code = "import sys, dsn.cli; dsn.cli.main(['--help']); print(sorted(m for m in ('torch','lightning','mlflow','mne') if m in sys.modules))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip().endswith("[]")


def test_unknown_command(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_synth_writes_files_mne_reads(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "x"), "--subjects", "2", "--hours", "1", "--seed", "3"]) == 0
    psgs = sorted((tmp_path / "x").glob("*-PSG.edf"))
    assert [p.name for p in psgs] == ["SC4001E0-PSG.edf", "SC4011E0-PSG.edf"]
    raw = mne.io.read_raw_edf(psgs[0], verbose="error")
    assert "EEG Fpz-Cz" in raw.ch_names and raw.info["sfreq"] == 100.0
    assert "wrote 2 recordings" in capsys.readouterr().out


def test_fit_reports_bad_data_dir_clearly(tmp_path, capsys):
    rc = main(["fit", "--config", "conf/debug.yaml", "--data.data_dir", str(tmp_path / "none"),
               "--tracking.home", str(tmp_path / "home")])
    err = capsys.readouterr().err
    assert rc == 1 and "data folder not found" in err and "dsn synth" in err


def test_ui_serves_project_store_on_loopback(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    assert main(["ui", "--tracking.home", str(tmp_path / "home"), "--port", "5123"]) == 0
    cmd = calls[0]
    assert cmd[1:4] == ["-m", "mlflow", "ui"]
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "5123"
    assert cmd[cmd.index("--backend-store-uri") + 1] == f"sqlite:///{(tmp_path / 'home').resolve()}/mlflow.db"
    assert "http://127.0.0.1:5123/" in capsys.readouterr().out
