"""Benchmark: reading recordings from EDF vs from the preprocessed cache, and model throughput.

    python benchmarks/bench_loading.py [--subjects 4] [--hours 8]

Prints a table: seconds per recording from EDF (first run), from the cache (second run, memory-mapped),
the speed-up ratio, resident memory of the loaded data set, and training throughput (epochs/s) of both
networks on this machine's CPU (or GPU when available).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--subjects", type=int, default=4)
    p.add_argument("--hours", type=float, default=8.0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args()

    from dsn.data.edf import find_recordings
    from dsn.data.recording import Preprocessing, load_recording
    from dsn.data.synth import write_dataset
    from dsn.models import DeepFeatureNet, DeepSleepNet, FeatureClassifierNet

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        write_dataset(tmp / "data", subjects=a.subjects, hours=a.hours, progress=False)
        t_synth = time.perf_counter() - t
        files = find_recordings(tmp / "data")
        prep = Preprocessing()
        t = time.perf_counter()
        recs = [load_recording(f, prep, tmp / "cache") for f in files]
        t_edf = time.perf_counter() - t
        t = time.perf_counter()
        recs = [load_recording(f, prep, tmp / "cache") for f in files]
        t_cache = time.perf_counter() - t
        n_epochs = sum(len(r) for r in recs)
        data_mb = sum(r.x.nbytes for r in recs) / 2**20
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    dev = torch.device(a.device)
    fnet = FeatureClassifierNet(DeepFeatureNet()).to(dev)
    seq = DeepSleepNet(DeepFeatureNet()).to(dev)
    opt1 = torch.optim.Adam(fnet.parameters())
    opt2 = torch.optim.Adam(seq.parameters())

    def rate(step, n_items, reps=5):
        step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(reps):
            step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return n_items * reps / (time.perf_counter() - t)

    x1, y1 = torch.randn(100, 1, 3000, device=dev), torch.randint(0, 5, (100,), device=dev)
    x2, y2 = torch.randn(10, 25, 1, 3000, device=dev), torch.randint(0, 5, (10, 25), device=dev)

    def pre_step():
        opt1.zero_grad()
        torch.nn.functional.cross_entropy(fnet(x1), y1).backward()
        opt1.step()

    def ft_step():
        opt2.zero_grad()
        torch.nn.functional.cross_entropy(seq(x2).reshape(-1, 5), y2.reshape(-1)).backward()
        opt2.step()

    r_pre, r_ft = rate(pre_step, 100), rate(ft_step, 250)
    rows = [
        ("synthetic data written", f"{a.subjects} x {a.hours} h", f"{t_synth:.1f} s"),
        ("recordings / epochs", f"{len(files)} / {n_epochs}", ""),
        ("load from EDF (first run)", f"{t_edf / len(files):.3f} s/rec", ""),
        ("load from cache (memory-mapped)", f"{t_cache / len(files):.4f} s/rec", f"x{t_edf / max(t_cache, 1e-9):.0f} faster"),
        ("data set size on disk / peak RSS", f"{data_mb:.0f} MiB", f"{rss_mb:.0f} MiB"),
        (f"pretrain train step ({dev.type})", f"{r_pre:.0f} epochs/s", "batch 100"),
        (f"finetune train step ({dev.type})", f"{r_ft:.0f} epochs/s", "batch 10 x 25"),
    ]
    w = max(len(r[0]) for r in rows)
    for r in rows:
        print(f"{r[0]:<{w}}  {r[1]:>20}  {r[2]}")


if __name__ == "__main__":
    main()
