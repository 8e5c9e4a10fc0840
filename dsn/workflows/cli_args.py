"""What every command module shares: the one-line summaries, the parsing style, output-path checks and
:class:`Output`, the text a command's ``render`` hands the CLI.

Every command module of :mod:`dsn.workflows` (``dsn/workflows/<name>.py``, or ``<package>/command.py``)
exposes the same four names, which :mod:`dsn.cli` calls in turn: ``build_parser()``, ``parse(argv)`` (the
parsed arguments; a usage error exits 2), ``run(args)`` (the work: a result object, no printing, a
:class:`~dsn.errors.DsnError` on bad input) and ``render(result)`` (a ``str`` for stdout, or an :class:`Output`
where the command writes to stderr or exits with another status).

The parsing style: a jsonargparse ArgumentParser made by :func:`command_parser`, options spelt with
underscores or as dotted keys (``--n_trials``, ``--tracking.home``), each with ``type=``, ``default=`` and
``help=``, so ``dsn <command> --help`` lists every option with its type and default. Old spellings stay as
hidden aliases, rewritten by :func:`parse_command` before parsing (``--n-trials`` -> ``--n_trials``).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: each command's one line: what ``dsn --help`` lists, and the description of ``dsn NAME --help``
SUMMARY = {
    "synth": "write a synthetic Sleep-EDF-shaped data set (EDF files) for demos and tests",
    "data": "list what dsn fit would use from a data folder: pairs, subjects, channels, stages, problems",
    "fit": "train DeepSleepNet (pretrain + fine-tune) from a YAML config, tracked in MLflow",
    "sweep": "run an Optuna study over config keys (sweeps/<name>.yaml), one tracked fit per trial",
    "cv": "subject-wise k-fold cross-validation with pooled test figures (the paper's evaluation)",
    "predict": "score PSG recordings with a trained model: hypnogram CSV / EDF+ / PNG and night statistics",
    "evaluate": "score every labelled recording of a data set with a model: pooled and per-recording figures",
    "registry": "list, show, promote and upgrade models in the MLflow Model Registry",
    "export": "write a model's networks as ONNX or TorchScript (LSTM state as explicit input/output)",
    "ui": "open the MLflow UI on the project's tracking store",
    "config": "list the built-in recipes, data-set profiles and sweeps; print one to copy and edit",
}

REF_HELP = "Model reference: models:/NAME@ALIAS, models:/NAME/VERSION, runs:/ID/model, a model folder or a checkpoint path."


@dataclass
class Output:
    """What a command prints: ``parts``, each ``(text, to_stderr)`` in order, and its exit status."""

    parts: list[tuple[str, bool]] = field(default_factory=list)
    code: int = 0

    def out(self, text: str) -> Output:
        self.parts.append((text, False))
        return self

    def err(self, text: str) -> Output:
        self.parts.append((text, True))
        return self


def command_parser(name: str, description: str | None = None, epilog: str | None = None):
    """A jsonargparse ``ArgumentParser`` for ``dsn NAME`` (its description: the command's line in :data:`SUMMARY`).

    Add options with ``type=``, ``default=`` and ``help=``; parse with :func:`parse_command`.
    """
    from jsonargparse import ArgumentParser

    return ArgumentParser(prog=f"dsn {name}", description=description or SUMMARY[name], epilog=epilog)


def tracking_options(p, experiment: str | None = None, experiment_help: str = "the command's default") -> None:
    """``--tracking.uri``, ``--tracking.home``, ``--tracking.experiment``, spelt as in the training config."""
    p.add_argument("--tracking.uri", type=str | None, default=None,
                   help="MLflow tracking URI (null: $MLFLOW_TRACKING_URI, else sqlite:///<home>/mlflow.db).")
    p.add_argument("--tracking.home", type=str, default="mlruns", help="Local tracking home (database, artifacts).")
    p.add_argument("--tracking.experiment", type=str | None, default=experiment,
                   help=f"MLflow experiment (null: {experiment_help})." if experiment is None else "MLflow experiment.")


def rewrite_aliases(argv: Sequence[str], aliases: Mapping[str, str] | None = None,
                    appends: Sequence[str] = ()) -> list[str]:
    """``argv`` with old spellings replaced (``aliases``: ``{"--n-trials": "--n_trials"}``, also in the
    ``--old=value`` form) and each ``--flag X`` of a list option in ``appends`` turned into ``--flag+ X``, so a
    repeated flag adds to the list as argparse's ``append`` did (``--flag [a, b]`` still sets it whole)."""
    out = []
    for a in argv:
        flag, eq, value = a.partition("=")
        flag = (aliases or {}).get(flag, flag)
        out.append(flag + eq + value if eq else flag)
    for i, a in enumerate(out[:-1]):
        if a in appends and not out[i + 1].lstrip().startswith("["):
            out[i] = a + "+"
    return out


def parse_command(p, argv: Sequence[str], aliases: Mapping[str, str] | None = None,
                  appends: Sequence[str] = ()) -> argparse.Namespace:
    """Parse ``argv`` with a :func:`command_parser` parser (old spellings first rewritten, see
    :func:`rewrite_aliases`); a usage error prints ``dsn NAME: error: ...`` and exits 2.

    Returns a flat ``argparse.Namespace`` with dots turned into underscores (``--tracking.home`` ->
    ``a.tracking_home``), what the commands' ``run(args)`` functions read.
    """
    return flat(p.parse_args(rewrite_aliases(argv, aliases, appends)))


def flat(ns) -> argparse.Namespace:
    """A jsonargparse namespace as a flat ``argparse.Namespace``, dots turned into underscores."""
    return argparse.Namespace(**{k.replace(".", "_"): v for k, v in ns.items()})


def bare_flags(argv: Sequence[str], flags: Sequence[str]) -> list[str]:
    """``argv`` with each bare boolean ``flag`` of ``flags`` given its value (``--force`` -> ``--force true``)."""
    return [x for a in argv for x in ((a, "true") if a in flags else (a,))]


def checked_uri(a, write: bool = True) -> str:
    """The command's tracking URI (``a.tracking_uri``, ``a.tracking_home``), checked: reachable, and writable
    (``write``) or existing (a command that only reads never creates a store)."""
    from dsn import tracking

    if write:
        uri = tracking.tracking_uri(a.tracking_uri, a.tracking_home)
    else:
        uri = tracking.reading_uri(a.tracking_uri, a.tracking_home)
    tracking.check_tracking(uri, write=write)
    return uri


def is_remote(ref: str) -> bool:
    """A model reference read through the tracking store (``models:/``, ``runs:/``, a URI), not a local path."""
    return "://" in ref or ref.startswith(("models:/", "runs:/"))


# ----------------------------------------------------------------------------- output paths, checked before any work
def _writable(folder: Path, flag: str, given: str) -> None:
    """``folder`` (made when missing) can be written: its nearest existing ancestor is a folder, writable."""
    from dsn.errors import ConfigError

    folder = folder.absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"{flag} {given}: {existing} is a file, not a folder; check the path.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {given}: the folder {existing} is read-only; write somewhere you can (or fix its "
                          "permissions).")


def check_out_folder(path: str, flag: str = "--out") -> None:
    """An output folder (made when missing, only once there is something to write): not a file, writable.

    Raises
    ------
    ConfigError
        Naming the path and what to give instead.
    """
    from dsn.errors import ConfigError

    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{flag} {path}: an existing file, not a folder; give a folder for the outputs "
                          "(a new one is made).")
    _writable(p, flag, path)


def check_out_file(path: str, flag: str = "--out", example: str = "model.onnx") -> None:
    """An output file: not an existing folder, in a writable folder.

    Raises
    ------
    ConfigError
        Naming the path and what to give instead.
    """
    from dsn.errors import ConfigError

    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{flag} {path}: an existing folder; give the file to write (e.g. {p / example}).")
    _writable(p.parent, flag, path)
