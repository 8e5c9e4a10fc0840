"""Shared fixtures: a small synthetic Sleep-EDF data set and one MLflow tracking store per test session."""

from __future__ import annotations

import os
import shutil
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
