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
