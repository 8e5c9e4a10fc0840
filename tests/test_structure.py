"""The package's shape, checked from its source: no import circle, one EDF header reader, MLflow client calls
in the tracking module only, and no over-long function in the workflow, data, CLI, config and tracking code."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "dsn"
MAX_LINES = 60
LONG_OK = {"synth.py", "synth_layouts.py"}  # the synthetic-signal generator is one coherent simulator


def _modules() -> dict[str, Path]:
    mods = {}
    for f in PKG.rglob("*.py"):
        parts = f.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = f
    return mods


def import_graph() -> dict[str, set[str]]:
    """Every import of a ``dsn`` module by another, module level or inside a function (a lazy import still
    ties the two modules together), as ``{module: {imported modules}}``."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, f in mods.items():
        package = name if f.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            graph[name].update(t for t in targets if t in mods and t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_sees_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle():
    assert cycles(import_graph()) == []


def _sources(*names: str):
    for n in names:
        p = PKG / n
        yield from ([p] if p.is_file() else sorted(p.rglob("*.py")))


def test_no_function_over_60_lines():
    long = []
    for f in _sources("workflows", "data", "cli.py", "config.py", "tracking.py"):
        if f.name in LONG_OK:
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_LINES:
                    long.append(f"{f.relative_to(PKG.parent)}:{node.lineno} {node.name} ({n} lines)")
    assert long == []


@pytest.mark.parametrize("pattern", [r"tracking\.client\(", r"\bMlflowClient\("])
def test_mlflow_client_only_in_tracking(pattern):
    allowed = {PKG / "tracking.py", PKG / "workflows" / "recorder.py"}
    hits = [f"{f.relative_to(PKG.parent)}:{i}" for f in PKG.rglob("*.py") if f not in allowed
            for i, line in enumerate(f.read_text().splitlines(), 1) if re.search(pattern, line)]
    assert hits == []


def test_edf_headers_read_in_one_module():
    """Header fields are read from raw bytes, edfio or MNE's ``meas_date`` in ``dsn/data/edf.py`` alone."""
    pattern = re.compile(r"b\"0       \"|b'0       '|\\xffBIOSEMI|\bread_edf\b|meas_date|\.read\(256\)")
    hits = [f"{f.relative_to(PKG.parent)}:{i}" for f in PKG.rglob("*.py") if f != PKG / "data" / "edf.py"
            and f.name not in LONG_OK
            for i, line in enumerate(f.read_text().splitlines(), 1) if pattern.search(line)]
    assert hits == []
