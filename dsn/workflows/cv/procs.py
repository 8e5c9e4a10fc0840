"""Folds of a ``dsn cv`` as separate processes: file locks, fold processes, their threads, GPUs and logs.

:func:`file_lock` serialises what two processes sharing a tracking home must not do at once (create the
store or the cv run, train the same fold). :func:`run_fold_processes` runs ``dsn cv --fold K`` processes,
at most ``parallel`` at once, each with ``threads`` torch threads and, on a GPU machine, its GPU(s)
(``round_robin``: each process sees one visible GPU, the least busy one; ``shared``: every process sees
every visible GPU, so all folds share the first, see README on CUDA MPS). Each process writes its output
to its own log file; a failed one is reported with its log and the others go on; SIGTERM or Ctrl-C in the
calling process stops them all (each closes its fold run as KILLED and keeps its last state for a resume).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: Seconds a fold process is given to close its runs after SIGTERM before it is killed.
STOP_TIMEOUT = 60.0
POLL_S = 0.2


@contextlib.contextmanager
def file_lock(path: str | Path, blocking: bool = True, on_wait=None) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``path`` (created with its folder) inside the block; yields whether
    it is held. ``blocking`` false: yields False at once when another process holds it. ``on_wait()`` is
    called once when the lock is busy and the call is about to wait. Without ``fcntl`` (Windows) it yields
    True and locks nothing. The lock goes with the process: a killed holder never leaves it stale."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX
        yield True
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not blocking:
                yield False
                return
            if on_wait is not None:
                on_wait()
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    with contextlib.suppress(AttributeError, OSError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` entries (empty on a machine without CUDA)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no usable CUDA: no GPU to hand out
        return []


@dataclass
class FoldProcess:
    """A finished (or stopped) fold process: its fold, exit status, log file, GPU and wall time."""

    fold: int
    returncode: int
    log_path: Path
    gpu: str | None
    seconds: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def error_line(self) -> str:
        """The ``dsn cv: error: ...`` line of its log (or its last non-empty line) for the report."""
        try:
            lines = [ln.strip() for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        errors = [ln for ln in lines if ln.startswith("dsn cv: error:")] or [ln for ln in lines if "Error" in ln]
        return (errors or lines or [""])[-1][:300]


def fold_env(threads: int, gpu: str | None, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of one fold process: its thread count, its GPU(s) (``gpu`` None: as inherited)."""
    env = dict(os.environ if base is None else base)
    env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"})
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    return env


def run_fold_processes(commands: dict[int, Sequence[str]], parallel: int, log_dir: Path, threads: int,
                       devices: str = "round_robin", n_folds: int | None = None) -> list[FoldProcess]:
    """Run ``commands`` (fold -> argv), at most ``parallel`` at once, in fold order; returns one
    :class:`FoldProcess` per fold that ran, in the order they ended.

    Each process's stdout and stderr go to ``log_dir/fold-K.log``. ``devices``: ``round_robin`` gives each
    process one of the visible GPUs (the one with the fewest fold processes on it), ``shared`` lets every
    process see every visible GPU. On Ctrl-C or SIGTERM (or any error) here, the running processes get
    SIGTERM, are waited for (killed after :data:`STOP_TIMEOUT` s), and the exception goes on.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    gpus = visible_gpus() if devices == "round_robin" else []
    load = dict.fromkeys(gpus, 0)
    queue = list(sorted(commands))
    running: dict[int, tuple[subprocess.Popen, object, str | None, float]] = {}
    done: list[FoldProcess] = []
    total = n_folds or len(commands)
    try:
        while queue or running:
            while queue and len(running) < parallel:
                k = queue.pop(0)
                gpu = min(gpus, key=lambda g: load[g]) if gpus else None
                if gpu is not None:
                    load[gpu] += 1
                path = log_dir / f"fold-{k}.log"
                fh = open(path, "ab")
                proc = subprocess.Popen(list(commands[k]), stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env=fold_env(threads, gpu), start_new_session=True)
                running[k] = (proc, fh, gpu, time.monotonic())
                log.info("fold %d/%d: started (pid %d, %d thread%s%s), log %s", k + 1, total, proc.pid, threads,
                         "s" if threads > 1 else "", f", GPU {gpu}" if gpu is not None else "", path)
            time.sleep(POLL_S)
            for k in [k for k, (p, *_) in running.items() if p.poll() is not None]:
                proc, fh, gpu, t0 = running.pop(k)
                fh.close()
                if gpu is not None:
                    load[gpu] -= 1
                res = FoldProcess(k, proc.returncode, log_dir / f"fold-{k}.log", gpu, time.monotonic() - t0)
                done.append(res)
                if res.ok:
                    log.info("fold %d/%d: finished in %.1f s", k + 1, total, res.seconds)
                else:
                    log.warning("fold %d/%d: failed (exit %d) after %.1f s, see %s%s", k + 1, total, res.returncode,
                                res.seconds, res.log_path, f": {line}" if (line := res.error_line()) else "")
    except BaseException:
        stop_processes([p for p, *_ in running.values()])
        raise
    finally:
        for _, fh, _, _ in running.values():
            fh.close()
    return done


def stop_processes(procs: list[subprocess.Popen], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM to each process still running (a ``dsn cv --fold`` closes its fold run as KILLED and keeps
    its last state), then wait; one still running after ``timeout`` s is killed (as sweep workers are)."""
    from dsn.workflows.sweep.runner import stop_workers

    stop_workers(procs, timeout)


def fold_command(fold_argv: Sequence[str], fold: int, cv_run_id: str) -> list[str]:
    """``python -m dsn cv <the cv's arguments> --fold K --cv_run_id ID`` (later flags win over the cv's own
    ``--parallel``, ``--out``, ``--register_fold``, ``--resume_cv``: the fold trains into the given cv run)."""
    return [sys.executable, "-m", "dsn", "cv", *fold_argv, "--parallel", "1", "--collect", "false", "--out", "null",
            "--register_fold", "null", "--resume_cv", "true", "--fold", str(fold), "--cv_run_id", cv_run_id]
