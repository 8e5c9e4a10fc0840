"""The documentation site builds with warnings as errors (broken references, bad docstrings) and has its pages."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = ("index", "getting-started", "commands", "configuration", "datasets", "sources", "channels", "tracking", "sweeps", "cv",
         "recipe", "predict", "trustworthy", "trust", "adapting", "scaling", "networks", "benchmarks", "development",
         "api")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_site_builds_with_warnings_as_errors(tmp_path):
    pytest.importorskip("sphinx", reason="the docs extra is not installed (pip install -e .[docs])")
    pytest.importorskip("pydata_sphinx_theme")
    out = tmp_path / "html"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    res = subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "-W", "--keep-going", "-q", "docs", str(out)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=580)
    assert res.returncode == 0, res.stderr[-5000:]
    for page in PAGES:
        assert (out / f"{page}.html").is_file(), page
    for module in ("dsn.resources", "dsn.config", "dsn.workflows.fit", "dsn.data.datasets", "dsn.models.scoring"):
        assert (out / "generated" / f"{module}.html").is_file(), module
    text = re.sub(r"<[^>]+>", "", (out / "commands.html").read_text())
    assert "dsn config list" in text and "dsn evaluate" in text


def test_every_docs_page_is_in_the_site():
    index = (ROOT / "docs" / "index.md").read_text()
    pages = {p.stem for p in (ROOT / "docs").glob("*.md")} - {"index"}
    assert {p for p in pages if f"\n{p}\n" not in index} == set()
    assert pages | {"index"} == set(PAGES)
