"""``dsn ui``: the MLflow UI on the project's tracking store, as a command (its parser, :func:`run`,
:func:`render`), and :func:`serve`, which runs a server until a signal stops it and its workers.

Unlike the other commands, ``run`` blocks while the server runs: the links to open are logged (the
``dsn.workflows.ui`` logger, shown by the CLI on stdout) before it starts, and its result is the exit status.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Sequence

from dsn.workflows.cli_args import Output, command_parser, parse_command, tracking_options

log = logging.getLogger(__name__)


def build_parser():
    p = command_parser("ui")
    p.add_argument("--port", type=int, default=5000, help="Port to serve on.")
    p.add_argument("--host", type=str, default="127.0.0.1", help="Interface to serve on (default: loopback only).")
    p.add_argument("--study", type=str | None, default=None,
                   help="Also print the link that opens this sweep study's complete trials side by side.")
    tracking_options(p, experiment_help="the experiment used last")
    return p


def parse(argv: Sequence[str]) -> argparse.Namespace:
    return parse_command(build_parser(), argv)


def run(a) -> int:
    """The store's links logged (a wrong ``--study`` is one error line before the server starts), then the
    server run until it ends or is stopped; its exit status."""
    from dsn import tracking

    uri = tracking.tracking_uri(a.tracking_uri, a.tracking_home)
    compare = None
    if a.study:  # before the server starts: a wrong name is one line
        from dsn.workflows.sweep import study_compare_url

        compare = study_compare_url(uri, a.study, a.tracking_experiment, f"http://{a.host}:{a.port}/")
    exp = tracking.recent_experiment_id(uri, a.tracking_experiment)  # the named experiment, else the one used last
    log.info(f"MLflow UI for {uri}\n  open {tracking.ui_url(a.port, exp, a.host)}")
    if compare:
        log.info(f"  study '{a.study}', its trials side by side:\n  {compare}")
    log.info("  (Ctrl-C to stop)")
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", a.host, "--port", str(a.port)]
    return serve(cmd)


def render(code: int) -> Output:
    """Nothing more to print (the links were logged before the server started); the server's exit status."""
    return Output(code=code)


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
