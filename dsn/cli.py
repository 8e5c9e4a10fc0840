"""The ``dsn`` command: ``synth``, ``data``, ``fit``, ``sweep``, ``cv``, ``predict``, ``evaluate``, ``registry``, ``export``, ``ui``, ``config``.

Each command is a module of :mod:`dsn.workflows` (see :data:`COMMANDS`) exposing ``build_parser()``,
``parse(argv)``, ``run(args)`` and ``render(result)`` (:mod:`dsn.workflows.cli_args`). This file only
dispatches (parse -> run -> render -> print), sets up logging, and turns the library's
:class:`~dsn.errors.DsnError` into one ``dsn <cmd>: error: ...`` line (exit 1), any ``OSError`` into one line,
an interrupt into exit 130 and a SIGTERM into 143. The command modules are imported only when their command
runs, so ``dsn --help`` answers at once.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import NamedTuple

from dsn.workflows.cli_args import SUMMARY, Output

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

RESUME_HINT = " (continue with the same command and --resume)"


class Command(NamedTuple):
    """A ``dsn`` command: its one-line description, its module, whether it can be resumed after an interrupt."""

    description: str
    module: str
    resumable: bool = False


#: name -> :class:`Command` (the one-line descriptions are kept with the parsers' shared helpers, which open each
#: command's ``--help`` with them)
COMMANDS: dict[str, Command] = {
    "synth": Command(SUMMARY["synth"], "dsn.workflows.synth"),
    "data": Command(SUMMARY["data"], "dsn.workflows.data"),
    "fit": Command(SUMMARY["fit"], "dsn.workflows.fit", resumable=True),
    "sweep": Command(SUMMARY["sweep"], "dsn.workflows.sweep.command"),
    "cv": Command(SUMMARY["cv"], "dsn.workflows.cv.command", resumable=True),
    "predict": Command(SUMMARY["predict"], "dsn.workflows.predict"),
    "evaluate": Command(SUMMARY["evaluate"], "dsn.workflows.evaluate"),
    "registry": Command(SUMMARY["registry"], "dsn.workflows.registry"),
    "export": Command(SUMMARY["export"], "dsn.workflows.export"),
    "ui": Command(SUMMARY["ui"], "dsn.workflows.ui"),
    "config": Command(SUMMARY["config"], "dsn.workflows.configs"),
}


def dispatch(cmd: str, argv: list[str]) -> int:
    """Parse, run, render and print ``dsn CMD ARGV``; its exit status."""
    module = importlib.import_module(COMMANDS[cmd].module)
    shown = module.render(module.run(module.parse(argv)))
    out = Output().out(shown) if isinstance(shown, str) else shown
    for text, to_stderr in out.parts:
        if text:
            print(text, file=sys.stderr if to_stderr else sys.stdout)
    return out.code


# ----------------------------------------------------------------------------- logging and warnings
class _Stream(logging.StreamHandler):
    """A handler writing to whatever ``sys.<name>`` is at the time (not the stream of the moment it was
    made, which a test harness or a redirect may have closed since)."""

    def __init__(self, name: str):
        super().__init__()
        self._name = name

    @property
    def stream(self):
        return getattr(sys, self._name)

    @stream.setter
    def stream(self, value):
        pass


class _NoTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def setup_logging(quiet_lightning: bool = False) -> None:
    """The command line's logging and warnings (the library never changes them): ``dsn.*`` messages as
    plain lines on stdout (warnings and errors on stderr), Lightning's lines on stderr without its tips,
    and library deprecation noise that says nothing to a user of dsn hidden. Installed once per process;
    ``quiet_lightning`` also hides Lightning's start-up lines (a sweep runs many fits)."""
    import warnings

    for prefix in ("lightning.pytorch", "pytorch_lightning"):
        logging.getLogger(f"{prefix}.utilities.rank_zero").setLevel(logging.WARNING if quiet_lightning else logging.INFO)
    dsn_log = logging.getLogger("dsn")
    if any(getattr(h, "_dsn_cli", False) for h in dsn_log.handlers):
        return
    out, err = _Stream("stdout"), _Stream("stderr")
    out.addFilter(lambda r: r.levelno < logging.WARNING)
    err.setLevel(logging.WARNING)
    for h in (out, err):
        h._dsn_cli = True
        h.setFormatter(logging.Formatter("%(message)s"))
        dsn_log.addHandler(h)
    dsn_log.setLevel(logging.INFO)
    dsn_log.propagate = False
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    for prefix in ("lightning.pytorch", "pytorch_lightning"):
        logging.getLogger(f"{prefix}.utilities.rank_zero").addFilter(_NoTips())
        # Lightning prints through the root logger when one is configured first (MLflow's import does):
        # give it its own plain handler, as it has when imported first
        lg = logging.getLogger(prefix)
        if not lg.handlers:
            handler = _Stream("stderr")
            handler.addFilter(_NoTips())
            lg.addHandler(handler)
            lg.propagate = False
    logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)


def os_error_line(e: OSError) -> str:
    """One line for an ``OSError``: the path(s), what the system said, and what to do."""
    import errno

    where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
    what = e.strerror or str(e) or type(e).__name__
    todo = {errno.EACCES: "choose a location you can write to, or fix its permissions",
            errno.EPERM: "choose a location you can write to, or fix its permissions",
            errno.EROFS: "the file system is read-only: write somewhere else",
            errno.ENOSPC: "free some space or write somewhere else",
            errno.EDQUOT: "free some space or write somewhere else",
            errno.ENOENT: "check the path",
            errno.EISDIR: "give a file, not a folder",
            errno.ENOTDIR: "a part of the path is a file, not a folder: check the path",
            errno.EEXIST: "it exists already: remove it or choose another name"}.get(e.errno, "check the path and retry")
    return f"{where + ': ' if where else ''}{what[0].lower() + what[1:]} ({type(e).__name__}); {todo}."


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: dsn <command> [options]\n\ncommands:")
        for name, c in COMMANDS.items():
            print(f"  {name:<9} {c.description}")
        print("\nRun `dsn <command> --help` for a command's options.")
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from dsn import __version__

        print(f"dsn {__version__}")
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"dsn: unknown command '{cmd}'. Commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    from dsn.errors import DsnError
    from dsn.tracking import Terminated

    hint = RESUME_HINT if COMMANDS[cmd].resumable else ""
    setup_logging(quiet_lightning=cmd == "sweep")
    try:
        return dispatch(cmd, rest)
    except DsnError as e:
        print(f"dsn {cmd}: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a file system or network refusal dsn did not foresee: one line, never a traceback
        print(f"dsn {cmd}: error: {os_error_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ndsn {cmd}: interrupted{hint}", file=sys.stderr)
        return 130
    except Terminated:
        print(f"\ndsn {cmd}: terminated{hint}", file=sys.stderr)
        return 143


if __name__ == "__main__":
    sys.exit(main())
