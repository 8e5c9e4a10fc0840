"""Peak memory of a two-stage `dsn fit` with the paper's batch sizes, against the number of recordings.

    python benchmarks/bench_memory.py                 # 6 and 12 recordings of 22 h (a few minutes)
    python benchmarks/bench_memory.py --full          # 12 and all 39 recordings (the Sleep-EDF-20 shape)

Each fit runs in its own process (`python -m dsn fit --config conf/paper.yaml ...`, both stages with the
paper's batch sizes: 100 epochs per pretraining batch, 10 x 25-epoch sequences per fine-tuning batch),
shortened to a few batches per stage (memory does not grow with the number of steps), with a warm cache.
The peak resident set size (ru_maxrss of the child, what `/usr/bin/time -v` reports as "Maximum resident
set size") is measured per fit. Recordings are memory-mapped from the cache, so the peak should grow far
less than the data size (float32 epochs: 1.2 MB per hour of one channel at 100 Hz).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import default_data_dir, ensure_dataset, machine_lines, print_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def fit_peak_rss(data_dir: Path, n_subjects: int, cache: Path, home: Path, batches: int) -> tuple[float, float]:
    """(peak RSS in MB, wall seconds) of one short two-stage fit in a child process."""
    import time

    folds = n_subjects  # leave one subject out: 1 test, 1 validation, the rest train
    cmd = [sys.executable, "-m", "dsn", "fit", "--config", "conf/paper.yaml", "--data.data_dir", str(data_dir),
           "--data.cache_dir", str(cache), "--data.n_folds", str(folds), "--data.n_val_subjects", "1", "--data.num_workers", "0",
           "--data.progress", "false", "--tracking.home", str(home), "--tracking.log_model", "false", "--tracking.experiment", "bench-memory",
           "--pretrain.trainer.accelerator", "cpu", "--finetune.trainer.accelerator", "cpu"]
    for stage in ("pretrain", "finetune"):
        cmd += [f"--{stage}.trainer.max_epochs", "1", f"--{stage}.trainer.limit_train_batches", str(batches),
                f"--{stage}.trainer.limit_val_batches", "2", f"--{stage}.trainer.num_sanity_val_steps", "0",
                f"--{stage}.trainer.enable_progress_bar", "false", f"--{stage}.trainer.enable_model_summary", "false"]
    log = home.parent / "fit.log"
    t = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak (ru_maxrss, KiB on Linux)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"dsn fit failed:\n{log.read_text()[-3000:]}")
    return usage.ru_maxrss / 1024, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="12 and 39 recordings (the Sleep-EDF-20 shape)")
    ap.add_argument("--hours", type=float, default=22.0)
    ap.add_argument("--batches", type=int, default=5, help="training batches per stage (default 5)")
    ap.add_argument("--data", type=Path, default=None, help="data folder (default: a shared benchmark folder)")
    a = ap.parse_args()
    for line in machine_lines():
        print(line)
    sizes = [12, 39] if a.full else [6, 12]
    folder = a.data or default_data_dir(f"sleep-edf20-{a.hours:g}h")
    folder.mkdir(parents=True, exist_ok=True)
    ensure_dataset(folder, max(sizes), a.hours)
    tmp = Path(tempfile.mkdtemp(prefix="dsn-bench-memory-"))
    rows = []
    from _common import SLEEP_EDF_20

    for n in sizes:
        keep = {f"SC4{s:02d}{night}E0" for s, night in SLEEP_EDF_20[:n]}
        sub = tmp / f"data{n}"
        sub.mkdir()
        for f in folder.glob("*.edf"):  # SC4 + subject (2 digits) + night: the first 6 characters name a recording
            if f.name[:6] in {k[:6] for k in keep}:
                (sub / f.name).symlink_to(f)
        n_subjects = len({k[:5] for k in keep})
        cache = tmp / "cache"
        fit_peak_rss(sub, n_subjects, cache, tmp / "mlruns", 1)  # fills the cache (not measured)
        peak, wall = fit_peak_rss(sub, n_subjects, cache, tmp / "mlruns", a.batches)
        data_mb = sum(p.stat().st_size for p in cache.rglob("x.npy")) / 1e6
        rows.append([n, n_subjects, f"{data_mb:.0f}", f"{peak:.0f}", f"{wall:.1f}"])
    print_table(["recordings", "subjects", "cached epochs (all, MB)", "peak RSS (MB)", "fit wall s"], rows,
                title=f"dsn fit, conf/paper.yaml batch sizes, {a.batches} training batches per stage, {a.hours:g}-h recordings")
    print("\nThe peak includes the Python/torch/MLflow process itself (about 500-700 MB) and the touched pages of the "
          "memory-mapped cache.")


if __name__ == "__main__":
    main()
