"""``dsn config``: the files dsn ships, listed and printed.

::

    dsn config list                      # recipes, data-set profiles, sweep specs, SLURM scripts: name and first line
    dsn config show recommended          # print a built-in file, to copy and edit:
    dsn config show demo > my.yaml       #   then  dsn fit --config my.yaml
    dsn config show nsrr --kind profile  # --kind when two kinds share a name

A recipe is named without a path wherever a config file is taken (``dsn fit --config recommended``,
``--config demo --config debug``), a profile as ``--data.dataset NAME``, a sweep as ``dsn sweep NAME``; a path
that exists always wins. Where the files live is :mod:`dsn.resources`' business (the checkout's ``conf/`` and
``sweeps/``, or the installed package's copies).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dsn import resources
from dsn.errors import ConfigError

__all__ = ["KIND_TITLES", "BuiltinFile", "build_parser", "entries", "parse", "render", "run", "show"]

#: kind -> how it is used (the heading of `dsn config list`)
KIND_TITLES = {
    "recipe": "recipes (dsn fit / dsn cv --config NAME; overlays stack: --config demo --config debug)",
    "profile": "data-set profiles (--data.dataset NAME, dsn data DIR --dataset NAME)",
    "model": "network overlays (stack on a recipe: --config paper --config conf/models/NAME.yaml)",
    "sweep": "sweep specs (dsn sweep NAME)",
    "slurm": "SLURM scripts (copy, edit, sbatch)",
}
Kind = Literal["recipe", "profile", "model", "sweep", "slurm"]


@dataclass
class BuiltinFile:
    """One shipped file: its kind, name, where it is read from, its first comment line and (for ``show``) its text."""

    kind: str
    name: str
    path: Path
    summary: str = ""
    text: str | None = None


def build_parser():
    """``dsn config list`` / ``dsn config show NAME`` (jsonargparse, one sub-parser per action)."""
    from jsonargparse import ArgumentParser

    p = ArgumentParser(prog="dsn config", description="List the built-in recipes, data-set profiles, sweep specs and "
                       "SLURM scripts; print one to copy and edit.")
    sub = p.add_subcommands(dest="action", required=True)
    ls = ArgumentParser(prog="dsn config list", description="Every built-in file by kind, with its first comment line.")
    ls.add_argument("--kind", type=Kind | None, default=None, help="Only this kind (null: all).")
    sh = ArgumentParser(prog="dsn config show", description="Print a built-in file as it is (redirect it to a file "
                        "to copy and edit it).")
    sh.add_argument("name", type=str, help="Its name, as `dsn config list` shows it (e.g. recommended, nsrr, kernels).")
    sh.add_argument("--kind", type=Kind | None, default=None, help="Its kind, when two kinds share the name (null: any).")
    for name, q in (("list", ls), ("show", sh)):
        sub.add_subcommand(name, q, help=q.description)
    return p


def _summary(path: Path) -> str:
    """The first comment line of a shipped file (``#!`` lines skipped), without its ``#``."""
    for line in path.read_text().splitlines():
        if line.startswith("#") and not line.startswith("#!"):
            return line.lstrip("#").strip()
        if line.strip() and not line.startswith("#"):
            break
    return ""


def entries(kind: str | None = None) -> list[BuiltinFile]:
    """Every built-in file (of ``kind``), kinds in :data:`KIND_TITLES` order, names sorted."""
    out = []
    for k in KIND_TITLES if kind is None else (kind,):
        for name in resources.names(k):
            path = resources.find(k, name)
            out.append(BuiltinFile(k, name, path, _summary(path)))
    return out


def show(name: str, kind: str | None = None) -> BuiltinFile:
    """The built-in file ``name`` with its text.

    Raises
    ------
    ConfigError
        When no built-in file has that name, or several kinds do and ``kind`` is not given.
    """
    found = [(k, p) for k in (KIND_TITLES if kind is None else (kind,)) if (p := resources.find(k, name))]
    if not found:
        names = ", ".join(e.name for e in entries(kind))
        raise ConfigError(f"{name!r}: no built-in {kind or 'file'} of that name; built-in: {names} (dsn config list).")
    if len(found) > 1:
        kinds = " or ".join(f"--kind {k}" for k, _ in found)
        raise ConfigError(f"{name!r}: several built-in files have that name; add {kinds}.")
    k, path = found[0]
    return BuiltinFile(k, Path(path).stem, path, _summary(path), path.read_text())


def parse(argv: Sequence[str]):
    return build_parser().parse_args(list(argv))


def run(ns) -> BuiltinFile | list[BuiltinFile]:
    """``dsn config``: the list of built-in files, or the one to show (the CLI prints :func:`render` of it)."""
    a = ns[ns.action]
    return show(a.name, a.kind) if ns.action == "show" else entries(a.kind)


def render(result: BuiltinFile | list[BuiltinFile]) -> str:
    """What ``dsn config`` prints: a shown file's text as it is, or the list grouped by kind."""
    if isinstance(result, BuiltinFile):
        return result.text.rstrip("\n")
    lines: list[str] = []
    for kind, title in KIND_TITLES.items():
        group = [e for e in result if e.kind == kind]
        if group:
            width = max(len(e.name) for e in group)
            lines += ["", f"{title}:"] if lines else [f"{title}:"]
            lines += [f"  {e.name:<{width}}  {e.summary}".rstrip() for e in group]
    lines += ["", f"(read from {resources.root()}; print one with `dsn config show NAME`)"]
    return "\n".join(lines)
