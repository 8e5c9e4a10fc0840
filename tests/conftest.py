"""Shared fixtures: a small synthetic Sleep-EDF data set and one MLflow tracking store per test session."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
SLEEP_EDF = SHARED / "sleep-edf"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Never touch the user's ~/.cache/dsn from tests."""
    monkeypatch.setenv("DSN_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "dsn-cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """6 subjects x 1 night x 1.5 h of synthetic Sleep-EDF (shared by the session; do not modify)."""
    from dsn.data.synth import write_dataset

    out = tmp_path_factory.mktemp("synth")
    write_dataset(out, subjects=6, nights=1, hours=1.5, seed=0, progress=False)
    return out


@pytest.fixture
def synth_copy(synth_dir, tmp_path) -> Path:
    """A private copy of the synthetic data set, free to break."""
    dst = tmp_path / "data"
    shutil.copytree(synth_dir, dst)
    return dst


@pytest.fixture(scope="session")
def _tracking_template(tmp_path_factory) -> Path:
    """One migrated sqlite tracking database per session (creating one takes seconds)."""
    import mlflow

    home = tmp_path_factory.mktemp("mlruns-template")
    mlflow.MlflowClient(f"sqlite:///{home / 'mlflow.db'}").search_experiments()
    return home / "mlflow.db"


@pytest.fixture
def tracking_home(_tracking_template, tmp_path) -> Path:
    """A fresh tracking home (copied from the template database)."""
    home = tmp_path / "mlruns"
    home.mkdir()
    shutil.copy(_tracking_template, home / "mlflow.db")
    return home


def needs_shared(path: Path):
    return pytest.mark.skipif(not path.exists(), reason=f"{path} not available (real Sleep-EDF fragments live in ../shared)")


# ----------------------------------------------------------------------------- a throw-away PostgreSQL
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    initdb = found[-1] if found else shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@pytest.fixture
def postgres(request):
    """A throw-away PostgreSQL server on 127.0.0.1 with an empty database `optuna`; stopped in a finaliser.

    Skips (with the reason) where the server binaries or psycopg are missing or the server does not start.
    """
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: install postgresql (15) to run this test")
    try:
        import psycopg
    except ImportError:
        pytest.skip("psycopg is not installed: pip install 'psycopg[binary]' (the `test` extra has it)")
    as_root = hasattr(os, "geteuid") and os.geteuid() == 0  # initdb refuses root: run the server as `postgres`
    if as_root and subprocess.run(["id", "postgres"], capture_output=True).returncode != 0:
        pytest.skip("running as root and there is no `postgres` user to run the PostgreSQL server as")
    folder = Path(tempfile.mkdtemp(prefix="dsn-pg-"))  # not under pytest's tmp (0700, unreadable by postgres)
    if as_root:
        shutil.chown(folder, "postgres")

    def sh(cmd: list[str]) -> subprocess.CompletedProcess:
        line = " ".join(f"'{c}'" for c in cmd)
        full = ["su", "postgres", "-c", line] if as_root else cmd
        return subprocess.run(full, capture_output=True, text=True, timeout=120)

    port = _free_port()
    data = folder / "data"

    def stop():
        sh([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"])
        shutil.rmtree(folder, ignore_errors=True)

    request.addfinalizer(stop)
    init = sh([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"])
    if init.returncode != 0:
        pytest.skip(f"initdb failed, no PostgreSQL server for this test: {(init.stderr or init.stdout)[-500:]}")
    start = sh([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-w", "-o",
                f"-p {port} -k {folder} -c listen_addresses=127.0.0.1", "start"])  # fmt: skip
    if start.returncode != 0:
        log = (folder / "log").read_text()[-500:] if (folder / "log").exists() else ""
        pytest.skip(f"pg_ctl start failed, no PostgreSQL server for this test: {start.stderr[-300:]} {log}")
    with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres", autocommit=True) as conn:
        conn.execute("create database optuna")
    return f"postgresql+psycopg://postgres@127.0.0.1:{port}/optuna"
