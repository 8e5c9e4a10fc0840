"""The command boundary: every command in ``dsn.cli.COMMANDS`` is a module with ``build_parser``, ``parse``,
``run`` and ``render``; ``dsn/cli.py`` only dispatches, renders and maps errors to exit codes."""

from __future__ import annotations

import ast
import importlib
import sys
import types
from pathlib import Path

import pytest

from dsn import cli
from dsn.errors import ConfigError
from dsn.tracking import Terminated
from dsn.workflows.cli_args import Output

CLI = Path(cli.__file__)


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_command_module_exposes_the_same_four_names(name):
    module = importlib.import_module(cli.COMMANDS[name].module)
    missing = [f for f in ("build_parser", "parse", "run", "render") if not callable(getattr(module, f, None))]
    assert missing == [], f"{module.__name__} lacks {missing}"
    assert module.build_parser().prog == f"dsn {name}"


def _enclosing_functions(tree: ast.AST) -> dict[ast.AST, str]:
    owner: dict[ast.AST, str] = {}
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef):
            for node in ast.walk(fn):
                if node is not fn:
                    owner.setdefault(node, fn.name)  # (the outermost function: ast.walk goes breadth first)
    return owner


def test_cli_module_only_dispatches():
    tree = ast.parse(CLI.read_text())
    owner = _enclosing_functions(tree)
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    assert not [n.lineno for n in calls if isinstance(n.func, ast.Attribute) and n.func.attr == "add_argument"]
    prints = {owner.get(n, "<module>") for n in calls if isinstance(n.func, ast.Name) and n.func.id == "print"}
    assert prints <= {"dispatch", "main"}, prints
    assert len(CLI.read_text().splitlines()) < 200


def _fake_command(monkeypatch, run):
    module = types.ModuleType("dsn_fake_command")
    module.build_parser = lambda: None
    module.parse = lambda argv: list(argv)
    module.run = run
    module.render = lambda r: r
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(cli.COMMANDS, "fake", cli.Command("a fake command", module.__name__))


def test_dispatch_prints_each_part_to_its_stream_and_returns_the_status(monkeypatch, capsys):
    _fake_command(monkeypatch, lambda argv: Output().out(f"ran {argv}").err("warning: w").out("").out("done"))
    assert cli.main(["fake", "x"]) == 0
    cap = capsys.readouterr()
    assert cap.out == "ran ['x']\ndone\n" and cap.err == "warning: w\n"
    _fake_command(monkeypatch, lambda argv: Output(code=3).out("text").err("dsn fake: --strict: no"))
    assert cli.main(["fake"]) == 3
    _fake_command(monkeypatch, lambda argv: "plain text")
    assert cli.main(["fake"]) == 0 and capsys.readouterr().out.endswith("plain text\n")


@pytest.mark.parametrize(("error", "code", "line"), [
    (ConfigError("--x 1: too small; give 2."), 1, "dsn fake: error: --x 1: too small; give 2."),
    (PermissionError(13, "Permission denied", "/ro/f"), 1,
     "dsn fake: error: /ro/f: permission denied (PermissionError); choose a location you can write to, or fix its "
     "permissions."),
    (KeyboardInterrupt(), 130, "dsn fake: interrupted"),
    (Terminated(), 143, "dsn fake: terminated"),
])
def test_dispatch_maps_errors_to_one_line_and_an_exit_code(monkeypatch, capsys, error, code, line):
    def fail(argv):
        raise error

    _fake_command(monkeypatch, fail)
    assert cli.main(["fake"]) == code
    assert capsys.readouterr().err.strip() == line
