"""environment.yml stays true to pyproject.toml: the same packages with the same bounds, and no install of dsn itself."""

from __future__ import annotations

from pathlib import Path

import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def _key(spec: str) -> tuple[str, frozenset[str], str]:
    r = Requirement(spec)
    return canonicalize_name(r.name), frozenset(r.extras), str(r.specifier)


def _pyproject() -> set[tuple[str, frozenset[str], str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for group in project["optional-dependencies"].values():
        specs += [s for s in group if canonicalize_name(Requirement(s).name) != "dsn"]  # dev = dsn[test] + ruff
    return {_key(s) for s in specs}


def _environment_pip() -> list[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip) == 1, "environment.yml: one pip: section expected"
    return pip[0]


def test_environment_lists_pyprojects_dependencies_with_the_same_bounds():
    env = {_key(s) for s in _environment_pip() if not s.startswith("-")}
    py = _pyproject()
    assert env - py == set(), f"in environment.yml, not in pyproject.toml (or other bounds): {sorted(env - py)}"
    assert py - env == set(), f"in pyproject.toml, not in environment.yml (or other bounds): {sorted(py - env)}"


def test_environment_installs_no_project_from_a_path():
    for spec in _environment_pip():
        assert not spec.startswith(("-e", "--editable", ".", "/", "file:")), spec
        assert canonicalize_name(Requirement(spec).name) != "dsn", spec


def test_environment_python_meets_requires_python():
    from packaging.specifiers import SpecifierSet

    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert python.split("=", 1)[1] in SpecifierSet(requires)


def test_braindecode_is_pinned_in_the_dev_install_path_and_imported_lazily():
    """braindecode (the field's sleep networks) is part of `make venv` (the dev extra) with its torchaudio step, and
    importing dsn's CLI or fit workflow does not import it (`import braindecode.models` takes seconds)."""
    import subprocess
    import sys

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert "braindecode==1.8.1" in extras["networks"]
    assert any(Requirement(s).name == "dsn" and "networks" in Requirement(s).extras for s in extras["dev"])
    from dsn.models.external import BRAINDECODE_VERSION

    assert f"braindecode=={BRAINDECODE_VERSION}" in extras["networks"]
    make = (ROOT / "Makefile").read_text()
    assert make.index('pip install --quiet -e ".[dev]"') < make.rindex("$(PY) .ci/torchaudio_fallback.py")
    code = ("import sys, dsn.cli, dsn.workflows.fit, dsn.models.networks, dsn.workflows.build; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('braindecode', 'torchaudio')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip() == "[]", out
