"""Nothing lost, nothing stuck at the command line (issue 30, items 2-7): read-only and missing tracking stores,
output paths, impossible signals, misleading messages and leftovers. Each case: one line, a non-zero exit, and
nothing left behind (no --out folder, no partial output, no new store, no run)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_artifact import FROZEN

from dsn.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]
MODEL = str(FROZEN)  # a sequence model folder: EEG Fpz-Cz, 100 Hz, zscore


@pytest.fixture(autouse=True)
def _project_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def _error(capsys, rc: int) -> str:
    """The command's stderr, asserted to be one error line and a non-zero exit."""
    cap = capsys.readouterr()
    lines = [x for x in cap.err.splitlines() if x.strip()]
    assert rc != 0, cap
    assert len(lines) == 1 and lines[0].startswith("dsn "), cap.err
    assert "Traceback" not in cap.err + cap.out
    return lines[0]


def flatten_channel(src: Path, dst: Path, label: str = "EEG Fpz-Cz", change=np.zeros_like) -> Path:
    """A copy of an EDF file whose channel ``label`` is ``change(signal)`` (default: zeros, a disconnected electrode)."""
    from edfio import Edf, EdfSignal, read_edf

    edf = read_edf(src)
    sigs = [EdfSignal(change(s.data) if s.label == label else s.data, s.sampling_frequency, label=s.label,
                      physical_dimension=s.physical_dimension, physical_range=s.physical_range,
                      digital_range=s.digital_range) for s in edf.signals]
    dst.parent.mkdir(parents=True, exist_ok=True)
    Edf(sigs, starttime=edf.starttime, recording=edf.recording, data_record_duration=edf.data_record_duration).write(dst)
    return dst


def _runs(db: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(db) as c:
        return list(c.execute("select run_uuid, status from runs"))


# ----------------------------------------------------------------------------- tracking stores (item 2, item 7)
def test_read_only_store_is_refused_before_any_run(synth_dir, tracking_home, monkeypatch, capsys):
    """Simulates a read-only database file and, separately, a read-only empty folder (os.access says no write:
    what a chmod does for a user, a read-only mount for root). Tests run as root, where chmod stops nothing, so
    the check is made to see a read-only store; the real mount is tested below where mounting is allowed."""
    db = tracking_home / "mlflow.db"
    before = db.read_bytes()
    real = os.access
    read_only = {db, tracking_home}
    monkeypatch.setattr(os, "access", lambda p, mode, **k: not (Path(p) in read_only and mode & os.W_OK) and real(p, mode, **k))
    t = time.perf_counter()
    rc = cli(["fit", "--config", "conf/demo.yaml", "--config", "conf/debug.yaml", "--data.data_dir", str(synth_dir),
              "--tracking.home", str(tracking_home)])
    line = _error(capsys, rc)
    assert f"tracking store {db} is read-only" in line and "--tracking.home" in line
    assert db.read_bytes() == before  # no run, no experiment
    empty = tracking_home.parent / "empty"
    empty.mkdir()
    read_only.add(empty)
    rc = cli(["registry", "promote", "deepsleepnet", "1", "--tracking.home", str(empty)])
    line = _error(capsys, rc)
    assert f"the folder {empty} is read-only" in line and "writable tracking home" in line
    assert list(empty.iterdir()) == [] and time.perf_counter() - t < 60


def _mount_read_only(src: Path, dst: Path) -> bool:
    dst.mkdir()
    ok = subprocess.run(["mount", "--bind", str(src), str(dst)], capture_output=True).returncode == 0
    if ok and subprocess.run(["mount", "-o", "remount,ro,bind", str(dst)], capture_output=True).returncode != 0:
        subprocess.run(["umount", str(dst)], capture_output=True)
        ok = False
    return ok


def test_read_only_mount_is_refused_and_still_read(tracking_home, tmp_path, capsys):
    """A real read-only file system (a bind mount, where this machine allows mounting): `registry promote`
    is one line and writes nothing, `registry list` still reads the store."""
    ro = tmp_path / "ro"
    if shutil.which("mount") is None or not _mount_read_only(tracking_home, ro):
        pytest.skip("cannot make a read-only bind mount here (needs root and mount)")
    try:
        line = _error(capsys, cli(["registry", "promote", "m", "1", "--tracking.home", str(ro)]))
        assert f"tracking store {ro / 'mlflow.db'} is read-only" in line
        assert cli(["registry", "list", "--tracking.home", str(ro)]) == 0
        assert "(none)" in capsys.readouterr().out
    finally:  # lazily: MLflow's engine may still hold the database open
        subprocess.run(["umount", "-l", str(ro)], capture_output=True)


def test_read_only_commands_never_create_a_store(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    line = _error(capsys, cli(["registry", "list", "--tracking.uri", "sqlite:///NEW.db"]))
    assert "no tracking store at" in line and "NEW.db" in line
    line = _error(capsys, cli(["registry", "show", "models:/deepsleepnet@champion"]))
    assert f"no tracking store at {tmp_path / 'mlruns' / 'mlflow.db'}" in line
    line = _error(capsys, cli(["predict", str(tmp_path / "x.edf"), "--model", "models:/m@champion", "--out", "o"]))
    assert "x.edf: recording file not found" in line
    assert list(tmp_path.iterdir()) == []  # no NEW.db, no mlruns/, no o/


# ----------------------------------------------------------------------------- output paths (item 3)
def test_output_paths_are_checked_before_any_work(synth_dir, tmp_path, capsys):
    psg = str(sorted(synth_dir.glob("*-PSG.edf"))[0])
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("notes\n")
    folder = tmp_path / "folder"
    folder.mkdir()
    line = _error(capsys, cli(["export", MODEL, "--out", str(folder)]))
    assert f"--out {folder}: an existing folder" in line and str(folder / "model.onnx") in line
    line = _error(capsys, cli(["export", MODEL, "--format", "torchscript", "--out", str(tmp_path / "m.onnx")]))
    assert "a .onnx file is onnx, not torchscript" in line and "m.pt" in line
    line = _error(capsys, cli(["predict", psg, "--model", MODEL, "--out", str(a_file)]))
    assert f"--out {a_file}: an existing file, not a folder" in line
    line = _error(capsys, cli(["predict", psg, "--model", MODEL, "--out", str(a_file / "sub")]))
    assert f"{a_file} is a file, not a folder" in line
    line = _error(capsys, cli(["synth", str(a_file)]))
    assert f"OUT_DIR {a_file}: an existing file" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file.txt", "folder"] and not list(folder.iterdir())


def test_output_folder_read_only_is_one_line(synth_dir, tmp_path, monkeypatch, capsys):
    """Simulates a read-only folder (os.access says no write, as for a user without permission)."""
    psg = str(sorted(synth_dir.glob("*-PSG.edf"))[0])
    ro = tmp_path / "ro"
    ro.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: not (Path(p) == ro and mode & os.W_OK) and real(p, mode, **k))
    line = _error(capsys, cli(["predict", psg, "--model", MODEL, "--out", str(ro / "out")]))
    assert f"the folder {ro} is read-only" in line
    line = _error(capsys, cli(["synth", str(ro)]))
    assert f"the folder {ro} is read-only" in line
    line = _error(capsys, cli(["export", MODEL, "--out", str(ro / "m.onnx")]))
    assert f"--out {ro / 'm.onnx'}: the folder {ro} is read-only" in line
    assert not list(ro.iterdir())


def test_any_os_error_at_the_boundary_is_one_line(tmp_path, monkeypatch, capsys):
    import dsn.workflows.export as export

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied", str(tmp_path / "m.onnx"))

    monkeypatch.setattr(export, "export", denied)
    line = _error(capsys, cli(["export", MODEL, "--out", str(tmp_path / "m.onnx")]))
    assert line == (f"dsn export: error: {tmp_path / 'm.onnx'}: permission denied (PermissionError); choose a "
                    "location you can write to, or fix its permissions.")
    monkeypatch.setattr(export, "export", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    assert "no space left on device (OSError); free some space" in _error(capsys, cli(["export", MODEL, "--out", "x.onnx"]))


def test_export_format_follows_the_extension(tmp_path, capsys):
    import torch

    assert cli(["export", MODEL, "--out", str(tmp_path / "m.pt")]) == 0
    assert "(torchscript," in capsys.readouterr().out
    torch.jit.load(str(tmp_path / "m.pt"))  # a TorchScript file, as its name says
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


# ----------------------------------------------------------------------------- impossible signals (item 4)
def test_flat_night_is_refused_and_leaves_nothing(synth_dir, tmp_path, capsys):
    psgs = sorted(synth_dir.glob("*-PSG.edf"))
    flat = flatten_channel(psgs[1], tmp_path / "in" / "flat-PSG.edf")
    out = tmp_path / "out"
    line = _error(capsys, cli(["predict", str(psgs[0]), str(flat), "--model", MODEL, "--out", str(out)]))
    assert f"{flat} (EEG Fpz-Cz): the signal is flat" in line and "--force" in line
    assert not out.exists()  # the good first night was not scored either: every input is checked first


def test_force_scores_an_impossible_night_and_flags_every_output(synth_dir, tmp_path, capsys):
    import mne

    from dsn.hypnogram import read_csv

    def saturate(x):  # a recorder stuck at its rails most of the night
        return np.clip(x, -2.0, 2.0)

    flat = flatten_channel(sorted(synth_dir.glob("*-PSG.edf"))[0], tmp_path / "flat-PSG.edf", change=saturate)
    out = tmp_path / "out"
    line = _error(capsys, cli(["predict", str(flat), "--model", MODEL, "--out", str(out)]))
    assert "(EEG Fpz-Cz): the signal is saturated" in line and not out.exists()
    assert cli(["predict", str(flat), "--model", MODEL, "--out", str(out), "--force"]) == 0
    cap = capsys.readouterr()
    assert "warning: impossible signal, scored with --force" in cap.err and "EEG Fpz-Cz" in cap.err
    summary = json.loads((out / "flat_summary.json").read_text())
    assert [(p["channel"], p["kind"]) for p in summary["signal_problems"]] == [("EEG Fpz-Cz", "saturated")]
    n = summary["n_epochs"]
    assert summary["confidence"]["low_confidence_epochs"] == n
    with open(out / "flat_hypnogram.csv") as f:
        assert {row.rstrip("\n").split(",")[-1] for row in list(f)[1:]} == {"1"}  # every epoch flagged
    assert len(read_csv(out / "flat_hypnogram.csv").stages) == n
    ann = mne.read_annotations(out / "flat_low_confidence.edf")
    assert list(ann.description) == ["Impossible signal (EEG Fpz-Cz saturated), scored with --force"]
    assert ann.onset[0] == 0 and ann.duration[0] == pytest.approx(n * 30.0)


def test_evaluate_refuses_a_flat_night_before_its_run(synth_copy, tracking_home, tmp_path, capsys):
    psg = sorted(synth_copy.glob("*-PSG.edf"))[2]
    flatten_channel(psg, psg)
    out = tmp_path / "ev"
    line = _error(capsys, cli(["evaluate", "--model", MODEL, "--data.data_dir", str(synth_copy), "--out", str(out),
                               "--tracking.home", str(tracking_home), "--data.cache_dir", str(tmp_path / "c")]))
    assert f"{psg} (EEG Fpz-Cz): the signal is flat" in line and "pooled figures" in line
    assert _runs(tracking_home / "mlflow.db") == [] and not out.exists()


# ----------------------------------------------------------------------------- messages (item 6), leftovers (item 7)
def test_messages_name_the_real_cause(synth_dir, tmp_path, capsys):
    psg = str(sorted(synth_dir.glob("*-PSG.edf"))[0])
    text = tmp_path / "model.txt"
    text.write_text("not a model\n")
    line = _error(capsys, cli(["predict", psg, "--model", str(text), "--out", str(tmp_path / "o")]))
    assert f"{text}: not a model file" in line and "upgrade" not in line and "pickled" not in line
    line = _error(capsys, cli(["predict", str(synth_dir), "--model", MODEL, "--out", str(tmp_path / "o")]))
    assert f"{synth_dir}: a folder, not a recording file" in line and "-PSG.edf" in line and "not found" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.txt"]


# ----------------------------------------------------------------------------- dsn ui (item 5)
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
def test_ui_stopped_with_sigterm_stops_its_server(tracking_home):
    from dsn.workflows.ui import _alive, _descendants

    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.Popen([sys.executable, "-m", "dsn", "ui", "--port", str(port), "--tracking.home", str(tracking_home)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not _listening(port) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
        assert _listening(port), "the MLflow UI did not start"
        below = _descendants(proc.pid)
        assert below
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        deadline = time.monotonic() + 5
        while (_listening(port) or any(_alive(p) for p in below)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _listening(port)
        assert not [p for p in below if _alive(p)]
    finally:
        if proc.poll() is None:
            proc.kill()
