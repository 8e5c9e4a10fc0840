"""The ``dsn`` command: ``synth``, ``data``, ``fit``, ``sweep``, ``cv``, ``predict``, ``evaluate``, ``registry``, ``export``, ``ui``.

One module per command lives in :mod:`dsn.workflows`; this file only parses arguments, prints, and
turns the library's :class:`~dsn.errors.DsnError` into one ``dsn <cmd>: error: ...`` line (exit 1).
Heavy libraries (torch, lightning, mlflow, mne) are imported inside the commands, so ``dsn --help``
answers at once.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

RESUME_HINT = " (continue with the same command and --resume)"


# ----------------------------------------------------------------------------- the parsing style
# Every command parses its options with a jsonargparse ArgumentParser made by `command_parser`: options spelt
# with underscores or as dotted keys (`--n_trials`, `--tracking.home`), each with `type=`, `default=` and
# `help=`, so `dsn <command> --help` lists every option with its type and default. Old spellings stay as
# hidden aliases, rewritten by `parse_command` before parsing (`--n-trials` -> `--n_trials`).
def command_parser(name: str, description: str | None = None, epilog: str | None = None):
    """A jsonargparse ``ArgumentParser`` for ``dsn NAME`` (its description: the command's line in ``COMMANDS``).

    Add options with ``type=``, ``default=`` and ``help=``; parse with :func:`parse_command`.
    """
    from jsonargparse import ArgumentParser

    return ArgumentParser(prog=f"dsn {name}", description=description or COMMANDS[name][0], epilog=epilog)


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
    ``a.tracking_home``), what the workflows' ``main(a)`` functions read.
    """
    ns = p.parse_args(rewrite_aliases(argv, aliases, appends))
    return _flat(ns)


def _flat(ns) -> argparse.Namespace:
    return argparse.Namespace(**{k.replace(".", "_"): v for k, v in ns.items()})


def _uri(a, write: bool = True) -> str:
    """The command's tracking URI, checked: reachable, and writable (``write``) or existing (a command that only
    reads never creates a store)."""
    from dsn import tracking

    if write:
        uri = tracking.tracking_uri(a.tracking_uri, a.tracking_home)
    else:
        uri = tracking.reading_uri(a.tracking_uri, a.tracking_home)
    tracking.check_tracking(uri, write=write)
    return uri


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


# ----------------------------------------------------------------------------- commands
def _synth(argv: list[str]) -> int:
    p = command_parser("synth")
    p.add_argument("out_dir", type=str, help="Folder to write SC4ssNE0-PSG.edf / SC4ssNEX-Hypnogram.edf pairs into.")
    p.add_argument("--subjects", type=int, default=4, help="Number of subjects (at most 100).")
    p.add_argument("--nights", type=Literal[1, 2], default=1, help="Nights per subject.")
    p.add_argument("--hours", type=float, default=8.0, help="Recording length in hours.")
    p.add_argument("--seed", type=int, default=0, help="Random seed.")
    p.add_argument("--sfreq", type=float, default=100.0, help="EEG/EOG sampling rate in Hz (sleep-edf layout).")
    p.add_argument("--layout", type=Literal["sleep-edf", "nsrr", "bids", "generic"], default="sleep-edf",
                   help="File layout, channel names and rates, hypnogram format of a data-set profile.")
    p.add_argument("--site", type=Literal["A", "B"], default="A",
                   help="Recording site: A (the generator's) or B (a second lab: 0.6 x amplitude, 3 uV noise, 5 uV of "
                        "60-Hz mains, a central EEG C4-A1 channel), for adapting a model to a new site (dsn fit --init).")
    p.add_argument("--site_gain", type=float | None, default=None, help="Amplitude factor of the EEG/EOG (null: the site's).")
    p.add_argument("--site_noise", type=float | None, default=None, help="White amplifier noise, uV RMS (null: the site's).")
    p.add_argument("--site_mains", type=float | None, default=None, help="Mains interference, uV (null: the site's).")
    p.add_argument("--site_mains_freq", type=float | None, default=None, help="Mains frequency, Hz (null: the site's).")
    p.add_argument("--site_channel", type=str | None, default=None,
                   help="Label of the first EEG channel instead of 'EEG Fpz-Cz' (null: the site's).")
    p.add_argument("--site_mix", type=float | None, default=None,
                   help="Fraction of Pz-Oz in that channel, another derivation (null: the site's).")
    a = parse_command(p, argv)
    from dsn.errors import ConfigError

    check_out_folder(a.out_dir, "OUT_DIR")
    site = _site(a)
    if a.layout != "sleep-edf":
        if site is not None:
            raise ConfigError(f"--site {a.site} / --site_*: a new site is written in the sleep-edf layout only "
                              f"(drop --layout {a.layout}).")
        from dsn.data.synth_layouts import write_layout

        pairs = write_layout(a.out_dir, a.layout, subjects=a.subjects, nights=a.nights, hours=a.hours, seed=a.seed)
        print(f"wrote {len(pairs)} recordings in the {a.layout} layout to {a.out_dir} (read with --data.dataset {a.layout})")
        return 0
    from dsn.data.synth import write_dataset

    pairs = write_dataset(a.out_dir, subjects=a.subjects, nights=a.nights, hours=a.hours, seed=a.seed, sfreq=a.sfreq,
                          site=site)
    print(f"wrote {len(pairs)} recordings ({2 * len(pairs)} EDF files) to {a.out_dir}"
          + (f" as site {a.site} ({site.describe()})" if site is not None else ""))
    if site is not None and site.channel:
        print(f"  (the EEG channel is {site.channel!r}: for a model's EEG Fpz-Cz give "
              f"--data.channel_aliases '{{EEG Fpz-Cz: [{site.channel}]}}')")
    return 0


def _site(a):
    """The :class:`~dsn.data.synth.SiteShift` of ``dsn synth``'s site options; None for the generator's own site."""
    from dsn.data.synth import SiteShift, site_shift
    from dsn.errors import ConfigError

    try:
        site = site_shift(a.site, gain=a.site_gain, noise=a.site_noise, mains=a.site_mains, mains_freq=a.site_mains_freq,
                          channel=a.site_channel, mix=a.site_mix)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return None if site == SiteShift() else site


def _data(argv: list[str]) -> int:
    from dsn.workflows.data import format_report, main

    rep = main(argv)
    print(format_report(rep))
    if rep.problems:
        print(f"dsn data: error: {len(rep.problems)} problem(s) would stop dsn fit (listed above)", file=sys.stderr)
        return 1
    return 0


def _evaluate(argv: list[str]) -> int:
    from dsn.workflows.evaluate import format_summary, main

    summary = main(argv)
    print(format_summary(summary))
    print(f"MLflow run {summary['run_id']}; wrote {summary['json']}")
    return 0


def _fit(argv: list[str]) -> int:
    from dsn.workflows.fit import main

    res = main(argv)
    if res.run_id:  # (a DDP rank other than 0 has nothing to show)
        print(render_fit(res))
    return 0


def render_fit(res) -> str:
    """What ``dsn fit`` shows at the end: each stage's selected-model report, the registered model, the links."""
    from dsn import tracking
    from dsn.evaluation import format_report
    from dsn.workflows.calibration import format_figures

    lines: list[str] = []
    for st in res.stages:
        for split in st.confusion:
            subjects = sorted({p.subject for p in st.predictions.get(split, [])})
            figures = {k[len(split) + 1:]: v for k, v in st.metrics.items() if k.startswith(f"{split}/")}
            lines += ["", f"[{st.name}] {split} subjects {', '.join(subjects)}", format_report(figures, split)]
            if "ece" in figures:
                lines.append(format_figures(figures))
        if "calibration/temperature" in st.metrics:
            lines.append(f"[{st.name}] calibrated on the validation subjects: temperature "
                         f"{st.metrics['calibration/temperature']:.2f}, low confidence below "
                         f"{st.metrics['calibration/threshold']:.2f} (stored in the model)")
    if res.registered:
        name, version = res.registered
        lines += ["", f"Registered model '{name}' version {version} (models:/{name}/{version})"]
    lines += ["", f"MLflow: experiment id {res.experiment_id}, run {res.run_id}", f"  tracking URI {res.tracking_uri}",
              f"  run `dsn ui` and open {tracking.ui_url(5000, res.experiment_id)}"]
    return "\n".join(lines)



SWEEP_EPILOG = ("Any key of the base config can be overridden for every trial as a dotted flag, as in `dsn fit` "
                "(e.g. --data.data_dir data/demo --data.n_folds 4); `dsn fit --help` lists them.")


def sweep_parser():
    """``dsn sweep``'s own options (base-config overrides are split off first, see :func:`split_overrides`)."""
    p = command_parser("sweep", epilog=SWEEP_EPILOG)
    p.add_argument("spec", type=str, help="Sweep file (sweeps/<name>.yaml).")
    p.add_argument("--n_trials", type=int | None, default=None, help="Trials to add in this run (null: the spec's n_trials).")
    p.add_argument("--study", type=str | None, default=None,
                   help="Study name (null: the spec's file name); the same name continues the study.")
    p.add_argument("--storage", type=str | None, default=None,
                   help="Optuna storage URL (null: sqlite:///<tracking home>/optuna.db); e.g. "
                        "postgresql+psycopg://user@host/db for several machines.")
    p.add_argument("--workers", type=int, default=1, help="Worker processes on this machine sharing the study.")
    p.add_argument("--export", type=str | None, default=None, help="Write the best trial as a config overlay (e.g. conf/best.yaml).")
    p.add_argument("--register", type=str | None, default=None, help="Register the best trial's model under this name.")
    p.add_argument("--heartbeat_interval", type=int, default=30,
                   help="Seconds between a running trial's heartbeats in the study storage (0: none).")
    p.add_argument("--grace_period", type=int, default=60,
                   help="A trial without a heartbeat for this many seconds (its process died) is failed when a sweep "
                        "of the study starts, and its parameters are tried again.")
    tracking_options(p, experiment_help="the base config's tracking.experiment")
    return p


def split_overrides(argv: Sequence[str], own: set[str]) -> tuple[list[str], dict[str, str]]:
    """``argv`` without the base-config overrides, and those as ``{dotted key: text}`` (read as YAML later).

    An override is a dotted flag that is not one of the command's ``own`` (``--data.data_dir X`` or
    ``--data.data_dir=X``) or the old ``--set KEY=VALUE``.

    Raises
    ------
    ConfigError
        For ``--set`` without ``KEY=VALUE`` or a dotted flag without a value.
    """
    from dsn.errors import ConfigError

    rest, overrides, i = [], {}, 0
    while i < len(argv):
        a = argv[i]
        flag, eq, value = a.partition("=")
        if flag == "--set" or (flag.startswith("--") and "." in flag and flag not in own):
            if not eq:
                if i + 1 == len(argv):
                    raise ConfigError(f"{flag}: give a value (e.g. --data.data_dir data/demo).")
                value, i = argv[i + 1], i + 1
            if flag == "--set":
                key, eq, value = value.partition("=")
                if not eq:
                    raise ConfigError(f"--set {key}: use KEY=VALUE (better: --{key} VALUE).")
                flag = "--" + key
            overrides[flag[2:]] = value
        else:
            rest.append(a)
        i += 1
    return rest, overrides


def _sweep(argv: list[str]) -> int:
    p = sweep_parser()
    own = {s for action in p._actions for s in action.option_strings}
    rest, overrides = split_overrides(argv, own)
    a = parse_command(p, rest, aliases={"--n-trials": "--n_trials"})
    a.overrides = overrides
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from dsn.workflows.sweep import format_summary, main

    res = main(a)
    if not os.environ.get("DSN_SWEEP_WORKER"):
        print("\n" + format_summary(res))
        if res.registered:
            print(f"Registered the best trial's model as '{a.register}' version {res.registered}")
        if res.exported:
            print(f"wrote {res.exported}")
    return 0


def _config(argv: list[str]) -> int:
    from dsn.workflows.configs import main, render

    print(render(main(argv)))
    return 0


def _cv(argv: list[str]) -> int:
    from dsn.workflows.cv import format_fold, format_missing, format_summary, main

    summary = main(argv)
    if not summary:  # (a DDP rank other than 0 has nothing to show)
        return 0
    if "stages" not in summary:  # --fold K: one fold trained, nothing pooled
        print("\n" + format_fold(summary))
        return 0
    print("\n" + format_summary(summary))
    if summary.get("written"):
        print(f"\nwrote {summary['written']}")
    if summary.get("missing_folds"):  # --collect before every fold finished
        print(format_missing(summary), file=sys.stderr)
        return 1
    return 0


def _predict(argv: list[str]) -> int:
    p = command_parser("predict")
    p.add_argument("recordings", nargs="+", type=str, help="PSG EDF file(s) to score (no hypnogram needed).")
    p.add_argument("--model", type=str, default="models:/deepsleepnet@champion", help=REF_HELP)
    p.add_argument("--out", type=str, required=True,
                   help="Output folder (CSV, EDF+ hypnogram, PNG, summary JSON per recording).")
    p.add_argument("--channel", type=list[str] | None, default=None,
                   help="A channel of the file to read in place of the model's (repeat once per model channel, in its "
                        "order; null: the model's channels, found by name or alias).")
    p.add_argument("--hypnogram", type=list[str] | None, default=None,
                   help="Expert hypnogram(s) of the recording(s), in the same order (repeat the flag): report agreement.")
    p.add_argument("--no_calibration", type=bool, default=False,
                   help="Write the network's raw softmax instead of the probabilities calibrated on validation subjects.")
    p.add_argument("--low_confidence", type=float | None, default=None,
                   help="Flag epochs whose top-class probability is below this (null: the model's threshold, chosen on its "
                        "validation subjects; 0.5 for a model without one or with --no_calibration).")
    p.add_argument("--force", type=bool, default=False,
                   help="Score a night whose signal is impossible (a flat, saturated or not-a-number channel) instead "
                        "of refusing it; every output is then flagged (all epochs low-confidence, signal_problems).")
    p.add_argument("--norms", type=str | None, default=None,
                   help="A YAML file overriding the plausibility ranges of dsn/trust/norms.yaml (see docs/trust.md).")
    p.add_argument("--age", type=float | None, default=None,
                   help="The subject's age in years: age-aware plausibility ranges where the sources give them.")
    p.add_argument("--strict", type=bool, default=False,
                   help="Exit with status 3 when a night's verdict is 'do not use' (outputs are still written).")
    tracking_options(p, experiment_help="none needed")
    argv = [x for a in argv for x in ((a, "true") if a in ("--no_calibration", "--force", "--strict") else (a,))]  # bare flags
    a = parse_command(p, argv, appends=("--hypnogram", "--channel"))
    from dsn.workflows.predict import main

    check_out_folder(a.out)
    results = main(a)
    bad = [s["name"] for s in results if s.get("trust", {}).get("verdict") == "do not use"]
    if a.strict and bad:
        print(f"dsn predict: --strict: verdict 'do not use' for {', '.join(bad)} (reasons above and in the summary JSON)",
              file=sys.stderr)
        return 3
    return 0


REF_HELP = "Model reference: models:/NAME@ALIAS, models:/NAME/VERSION, runs:/ID/model, a model folder or a checkpoint path."


def registry_parser():
    """``dsn registry ACTION``: one sub-parser per action (each made with :func:`command_parser`)."""
    p = command_parser("registry")
    sub = p.add_subcommands(dest="action", required=True)
    ls = command_parser("registry list", "Registered models, versions, aliases and key metrics.")
    pr = command_parser("registry promote", "Set an alias (e.g. champion) on a model version.")
    pr.add_argument("name", type=str, help="Registered model name.")
    pr.add_argument("version", type=str, help="Model version.")
    pr.add_argument("--alias", type=str, default="champion", help="Alias to set.")
    sh = command_parser("registry show", "What a model reference resolves to.")
    sh.add_argument("ref", type=str, help=REF_HELP)
    up = command_parser("registry upgrade", "Rewrite a pickled model of an older dsn in the current format, as a new "
                        "version with the same tags and aliases (unpickles it once: upgrade only models you trust).")
    up.add_argument("ref", type=str, help="models:/NAME/VERSION or models:/NAME@ALIAS.")
    for name, q in (("list", ls), ("promote", pr), ("show", sh), ("upgrade", up)):
        tracking_options(q, experiment_help="none needed")
        sub.add_subcommand(name, q, help=q.description)
    return p


def _registry(argv: list[str]) -> int:
    ns = registry_parser().parse_args(list(argv))
    a = argparse.Namespace(action=ns.action, **vars(_flat(getattr(ns, ns.action))))
    import json

    from dsn.workflows import registry

    uri = _uri(a, write=a.action in ("promote", "upgrade"))
    if a.action == "list":
        rows = registry.list_models(uri)
        print(registry.format_table(rows, ["name", "version", "aliases", "stage", "dataset", "channel", "f1_macro", "kappa", "run_id"]))
    elif a.action == "promote":
        registry.promote(uri, a.name, a.version, a.alias)
        print(f"models:/{a.name}@{a.alias} -> version {a.version}")
    elif a.action == "upgrade":
        r = registry.upgrade(uri, a.ref)
        moved = f"; aliases {', '.join(r['aliases'])} moved to it" if r["aliases"] else ""
        print(f"models:/{r['name']}/{r['old_version']} (pickled) -> models:/{r['name']}/{r['new_version']} "
              f"(format {_spec_format()}){moved}")
    else:
        print(json.dumps(registry.show(uri, a.ref), indent=2, default=str))
    return 0


def _spec_format() -> str:
    from dsn.models.scoring import SPEC_FORMAT

    return SPEC_FORMAT


def _export(argv: list[str]) -> int:
    p = command_parser("export")
    p.add_argument("ref", type=str, help=REF_HELP)
    p.add_argument("--format", type=Literal["onnx", "torchscript"] | None, default=None,
                   help="File format (null: from --out's extension, .onnx or .pt/.pth/.ts; onnx for any other).")
    p.add_argument("--out", type=str, required=True, help="File to write (e.g. model.onnx, model.pt).")
    tracking_options(p, experiment_help="none needed")
    a = parse_command(p, argv)
    from dsn import tracking
    from dsn.workflows.export import main, resolve_format

    fmt = resolve_format(a.format, a.out)
    check_out_file(a.out, example="model.onnx" if fmt == "onnx" else "model.pt")
    remote = "://" in a.ref or a.ref.startswith(("models:/", "runs:/"))
    uri = tracking.reading_uri(a.tracking_uri, a.tracking_home) if remote else None
    out = main(a.ref, fmt, a.out, uri)
    print(f"wrote {out} ({fmt}, {out.stat().st_size / 1e6:.2f} MB) from {a.ref}")
    return 0


def _ui(argv: list[str]) -> int:
    p = command_parser("ui")
    p.add_argument("--port", type=int, default=5000, help="Port to serve on.")
    p.add_argument("--host", type=str, default="127.0.0.1", help="Interface to serve on (default: loopback only).")
    p.add_argument("--study", type=str | None, default=None,
                   help="Also print the link that opens this sweep study's complete trials side by side.")
    tracking_options(p, experiment_help="the experiment used last")
    a = parse_command(p, argv)
    from dsn import tracking

    uri = tracking.tracking_uri(a.tracking_uri, a.tracking_home)
    compare = None
    if a.study:  # before the server starts: a wrong name is one line
        from dsn.workflows.sweep import study_compare_url

        compare = study_compare_url(uri, a.study, a.tracking_experiment, f"http://{a.host}:{a.port}/")
    exp = tracking.recent_experiment_id(uri, a.tracking_experiment)  # the named experiment, else the one used last
    print(f"MLflow UI for {uri}\n  open {tracking.ui_url(a.port, exp, a.host)}")
    if compare:
        print(f"  study '{a.study}', its trials side by side:\n  {compare}")
    print("  (Ctrl-C to stop)")
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", a.host, "--port", str(a.port)]
    return serve(cmd)


def _descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (children first), read from ``/proc``; empty where there is none (not Linux)."""
    children: dict[int, list[int]] = {}
    with contextlib.suppress(OSError):
        for d in os.listdir("/proc"):
            if d.isdigit():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    with open(f"/proc/{d}/stat") as f:
                        ppid = int(f.read().rpartition(")")[2].split()[1])
                    children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(0), [])
        out += kids
        todo += kids
    return out


def serve(cmd: list[str], grace: float = 10.0) -> int:
    """Run a server command until it ends. SIGTERM and SIGINT are forwarded to the server and every process it
    started (its workers), then it is waited for; what is left of them ``grace`` seconds after the server ends is
    killed, and a second signal kills them at once. 0 when stopped by a signal, else the server's exit code."""
    import signal
    import subprocess
    import time

    seen: list[int] = []

    def forward(signum, frame) -> None:
        sig = signal.SIGKILL if seen else signum
        seen.extend(p for p in _descendants(os.getpid()) if p not in seen)
        for pid in seen:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = subprocess.call(cmd)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    deadline = time.monotonic() + grace
    while seen and time.monotonic() < deadline and any(_alive(p) for p in seen):
        time.sleep(0.1)
    for pid in seen:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return 0 if seen else code


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    with contextlib.suppress(OSError):  # a zombie (exited, not yet reaped) is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    return True


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


#: name -> (one-line description, handler, whether it can be resumed)
COMMANDS: dict[str, tuple[str, Callable[[list[str]], int], bool]] = {
    "synth": ("write a synthetic Sleep-EDF-shaped data set (EDF files) for demos and tests", _synth, False),
    "data": ("list what dsn fit would use from a data folder: pairs, subjects, channels, stages, problems", _data, False),
    "fit": ("train DeepSleepNet (pretrain + fine-tune) from a YAML config, tracked in MLflow", _fit, True),
    "sweep": ("run an Optuna study over config keys (sweeps/<name>.yaml), one tracked fit per trial", _sweep, False),
    "cv": ("subject-wise k-fold cross-validation with pooled test figures (the paper's evaluation)", _cv, True),
    "predict": ("score PSG recordings with a trained model: hypnogram CSV / EDF+ / PNG and night statistics", _predict, False),
    "evaluate": ("score every labelled recording of a data set with a model: pooled and per-recording figures", _evaluate, False),
    "registry": ("list, show, promote and upgrade models in the MLflow Model Registry", _registry, False),
    "export": ("write a model's networks as ONNX or TorchScript (LSTM state as explicit input/output)", _export, False),
    "ui": ("open the MLflow UI on the project's tracking store", _ui, False),
    "config": ("list the built-in recipes, data-set profiles and sweeps; print one to copy and edit", _config, False),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: dsn <command> [options]\n\ncommands:")
        for name, (text, _, _) in COMMANDS.items():
            print(f"  {name:<9} {text}")
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
    _, handler, resumable = COMMANDS[cmd]
    from dsn.errors import DsnError
    from dsn.tracking import Terminated

    hint = RESUME_HINT if resumable else ""
    setup_logging(quiet_lightning=cmd == "sweep")
    try:
        return handler(rest)
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
