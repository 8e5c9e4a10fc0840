"""Shared helpers of the benchmark scripts: machine description, timing, memory, tables, the data set."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

#: Sleep-EDF-20 (sleep-cassette subjects 0-19): two nights each, except subject 13 (one night): 39 recordings.
SLEEP_EDF_20 = [(s, n) for s in range(20) for n in (1, 2) if (s, n) != (13, 2)]

NOISE_NOTE = (
    "Timings are the best (and median) of repeated runs; on a machine shared with other jobs they are "
    "noisy - compare ratios measured in the same run, not absolute figures across runs."
)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_lines(torch_device: str | None = None) -> list[str]:
    """Which machine ran the benchmark: CPU model, cores, torch threads, GPU when CUDA is used, versions."""
    import numpy

    lines = [f"CPU: {cpu_model()}, {os.cpu_count()} logical cores"]
    try:
        import torch

        lines[0] += f", torch threads {torch.get_num_threads()}"
        versions = f"python {platform.python_version()}, numpy {numpy.__version__}, torch {torch.__version__}"
        if torch_device is not None and torch_device.startswith("cuda"):
            lines.append(f"GPU: {torch.cuda.get_device_name(torch.device(torch_device))}")
    except ImportError:
        versions = f"python {platform.python_version()}, numpy {numpy.__version__}"
    try:
        load = os.getloadavg()
        lines.append(f"load average at start: {load[0]:.2f} (1 min) - other jobs on the machine skew timings")
    except OSError:
        pass
    lines.append(versions + f", {platform.system()} {platform.release()}")
    return lines


def rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc; peak RSS elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def best_median(values: Sequence[float]) -> tuple[float, float]:
    return min(values), statistics.median(values)


def print_table(header: Sequence[str], rows: Sequence[Sequence[object]], title: str | None = None) -> None:
    """A plain-text table (Markdown-compatible), columns right-aligned except the first."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}" if title else "")

    def fmt(r: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) + " |"

    print(fmt(cells[0]))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells[1:]:
        print(fmt(r))


def default_data_dir(name: str) -> Path:
    return Path(tempfile.gettempdir()) / "dsn-bench" / name


def ensure_dataset(folder: Path, n_recordings: int, hours: float, seed: int = 0) -> tuple[list, float]:
    """Write (once) the first ``n_recordings`` of the Sleep-EDF-20 layout with ``dsn synth``'s generator.

    A marker file records the shape; a folder written with another shape is refused rather than mixed.
    Returns the recordings (:func:`dsn.data.datasets.find_recordings`) and the seconds spent writing (0 if reused).
    """
    from dsn.data.datasets import find_recordings
    from dsn.data.synth import write_recording

    if not 1 <= n_recordings <= len(SLEEP_EDF_20):
        raise SystemExit(f"--recordings must be 1..{len(SLEEP_EDF_20)} (Sleep-EDF-20 has 39), got {n_recordings}")
    marker = folder / "bench-dataset.json"
    want = {"hours": hours, "seed": seed, "sfreq": 100.0}
    if marker.exists():
        have = json.loads(marker.read_text())
        if {k: have.get(k) for k in want} != want:
            raise SystemExit(f"{folder} holds a benchmark data set of another shape ({have}); pass another --data.")
    else:
        have = {**want, "recordings": []}
    done = {tuple(r) for r in have["recordings"]}
    todo = [sn for sn in SLEEP_EDF_20[:n_recordings] if sn not in done]
    t = time.perf_counter()
    for i, (s, n) in enumerate(todo):
        print(f"  writing synthetic recording {i + 1}/{len(todo)} (subject {s}, night {n}, {hours:g} h) ...", flush=True)
        write_recording(folder, s, n, hours=hours, seed=seed)
        have["recordings"] = sorted(done | {(s, n)})
        done.add((s, n))
        marker.write_text(json.dumps(have))
    t_write = time.perf_counter() - t if todo else 0.0
    wanted = {f"SC4{s:02d}{n}E0" for s, n in SLEEP_EDF_20[:n_recordings]}
    return [f for f in find_recordings(folder) if f.name in wanted], t_write
