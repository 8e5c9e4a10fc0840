"""The ``dsn`` command: ``dsn synth``, ``dsn fit``, ``dsn ui``.

Heavy libraries (torch, lightning, mlflow, mne) are imported inside the subcommands, so
``dsn --help`` answers at once.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

COMMANDS = {
    "synth": "write a synthetic Sleep-EDF-shaped data set (EDF files) for demos and tests",
    "fit": "train DeepSleepNet (pretrain + fine-tune) from a YAML config, tracked in MLflow",
    "ui": "open the MLflow UI on the project's tracking store",
}


def _synth(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="dsn synth", description=COMMANDS["synth"])
    p.add_argument("out_dir", help="folder to write SC4ssNE0-PSG.edf / SC4ssNEX-Hypnogram.edf pairs into")
    p.add_argument("--subjects", type=int, default=4, help="number of subjects (default 4, at most 100)")
    p.add_argument("--nights", type=int, choices=(1, 2), default=1, help="nights per subject (default 1)")
    p.add_argument("--hours", type=float, default=8.0, help="recording length in hours (default 8)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--sfreq", type=float, default=100.0, help="EEG/EOG sampling rate in Hz (default 100)")
    a = p.parse_args(argv)
    from dsn.data.synth import write_dataset

    pairs = write_dataset(a.out_dir, subjects=a.subjects, nights=a.nights, hours=a.hours, seed=a.seed, sfreq=a.sfreq)
    print(f"wrote {len(pairs)} recordings ({2 * len(pairs)} EDF files) to {a.out_dir}")
    return 0


def _fit(argv: list[str]) -> int:
    from dsn.fit import main

    main(argv)
    return 0


def _ui(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="dsn ui", description=COMMANDS["ui"])
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--host", default="127.0.0.1", help="interface to serve on (default: loopback only)")
    p.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db")
    p.add_argument("--home", default="mlruns", help="local tracking home (default mlruns)")
    p.add_argument("--experiment", default=None, help="experiment to link to (default: the one used last)")
    a = p.parse_args(argv)
    import subprocess

    from dsn import tracking

    uri = tracking.tracking_uri(a.tracking_uri, a.home)
    exp = None
    try:  # link to the named experiment, else to the one used last
        c = tracking.client(uri)
        if a.experiment:
            e = c.get_experiment_by_name(a.experiment)
            exp = e.experiment_id if e else None
        else:
            exps = [e for e in c.search_experiments() if e.experiment_id != "0"]
            exp = max(exps, key=lambda e: e.last_update_time or 0).experiment_id if exps else None
    except Exception:
        pass
    print(f"MLflow UI for {uri}\n  open {tracking.ui_url(a.port, exp, a.host)}\n  (Ctrl-C to stop)")
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", a.host, "--port", str(a.port)]
    try:
        return subprocess.call(cmd)
    except KeyboardInterrupt:
        return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: dsn <command> [options]\n\ncommands:")
        for name, text in COMMANDS.items():
            print(f"  {name:<6} {text}")
        print("\nRun `dsn <command> --help` for a command's options.")
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from dsn import __version__

        print(f"dsn {__version__}")
        return 0
    cmd, rest = argv[0], argv[1:]
    handler = {"synth": _synth, "fit": _fit, "ui": _ui}.get(cmd)
    if handler is None:
        print(f"dsn: unknown command '{cmd}'. Commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    from dsn.data.edf import DataError
    from dsn.tracking import Terminated, TrackingError

    try:
        return handler(rest)
    except (DataError, TrackingError) as e:
        print(f"dsn {cmd}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ndsn {cmd}: interrupted" + (" (continue with `dsn fit ... --resume`)" if cmd == "fit" else ""), file=sys.stderr)
        return 130
    except Terminated:
        print(f"\ndsn {cmd}: terminated" + (" (continue with `dsn fit ... --resume`)" if cmd == "fit" else ""), file=sys.stderr)
        return 143


if __name__ == "__main__":
    sys.exit(main())
