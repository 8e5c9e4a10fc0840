"""Benchmark: Sleep-EDF recordings -> ready-to-train cache, against the MNE recipe and the I/O limit.

    python benchmarks/bench_data.py                 # 4 recordings x 6 h (a minute or two)
    python benchmarks/bench_data.py --full          # Sleep-EDF-20 shape: 39 recordings x 22 h
    python benchmarks/bench_data.py --data DIR      # write the synthetic data set once into DIR, reuse it

The data set has the Sleep-EDF-20 layout (subjects 0-19, two nights each but subject 13's second,
7 signals: 3 at 100 Hz, 4 at 1 Hz, 30-s records), written by ``dsn synth``'s generator. Measured in
the same run, on the same files (in the OS page cache: this is not a cold-disk benchmark):

* **dsn cold**: ``dsn.data.recording.load_recording`` with an empty cache folder (read the EEG channel,
  the hypnogram, label and trim the epochs, write the memory-mappable cache entry);
* **MNE recipe**: the common tutorial pipeline (``read_raw_edf(preload=True)`` of all channels,
  hypnogram annotations cropped to 30 min around sleep, ``events_from_annotations(chunk_duration=30)``,
  ``mne.Epochs``, ``get_data``);
* **I/O limit**: read the file's bytes and decode one channel's int16 samples to float32, nothing else;
* **warm start**: a fresh process loads every recording from the cache: time and resident-memory growth.

Targets (issue 14): dsn cold >= 5x faster than the MNE recipe and within 3x of the I/O limit; warm start
well under a second with memory that does not grow with the number of recordings.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    NOISE_NOTE,
    best_median,
    default_data_dir,
    ensure_dataset,
    machine_lines,
    print_table,
    rss_bytes,
    timed,
)

CHANNEL = "EEG Fpz-Cz"
TWO_CHANNELS = (CHANNEL, "EOG horizontal")


# ------------------------------------------------------------------------------------------ the three paths
def io_limit(path: Path, channel: str = CHANNEL) -> np.ndarray:
    """Read every byte of the file and decode one channel's int16 samples to float32 (physical units)."""
    raw = np.fromfile(path, dtype=np.uint8)
    n = int(raw[252:256].tobytes())
    hdr = raw[256 : 256 * (n + 1)].tobytes()

    def field(offset: int, width: int, i: int) -> str:
        return hdr[offset * n + width * i : offset * n + width * (i + 1)].decode("latin-1").strip()

    labels = [field(0, 16, i) for i in range(n)]
    n_samples = [int(field(16 + 80 + 8 + 8 + 8 + 8 + 8 + 80, 8, i)) for i in range(n)]
    i = labels.index(channel)
    pmin, pmax, dmin, dmax = (float(field(16 + 80 + 8 + 8 * k, 8, i)) for k in range(4))
    scale = (pmax - pmin) / (dmax - dmin)
    records = raw[256 * (n + 1) :].view("<i2").reshape(-1, sum(n_samples))
    start = sum(n_samples[:i])
    out = np.multiply(records[:, start : start + n_samples[i]], np.float32(scale), dtype=np.float32)
    out += np.float32(pmin - dmin * scale)
    return out.reshape(-1)


#: Sleep-EDF descriptions -> AASM event ids, as in MNE's sleep-staging tutorial (S3 and S4 merged).
MNE_EVENT_IDS = {
    "Sleep stage W": 1, "Sleep stage 1": 2, "Sleep stage 2": 3, "Sleep stage 3": 4, "Sleep stage 4": 4, "Sleep stage R": 5,
}  # fmt: skip


def mne_recipe(files, channel: str = CHANNEL) -> tuple[np.ndarray, np.ndarray]:
    """The common MNE recipe (the sleep-staging tutorial): epochs (n, 1, n_times) in volts and their event ids."""
    import mne

    raw = mne.io.read_raw_edf(files.psg, preload=True, verbose="error")
    ann = mne.read_annotations(files.hypnogram)
    ann.crop(ann[1]["onset"] - 30 * 60, ann[-2]["onset"] + 30 * 60, verbose="error")  # 30 min of wake around sleep
    raw.set_annotations(ann, emit_warning=False, verbose="error")
    events, _ = mne.events_from_annotations(raw, event_id=MNE_EVENT_IDS, chunk_duration=30.0, verbose="error")
    event_id = {"W": 1, "N1": 2, "N2": 3, "N3": 4, "REM": 5}
    present = {k: v for k, v in event_id.items() if v in set(events[:, 2])}
    tmax = 30.0 - 1.0 / raw.info["sfreq"]
    epochs = mne.Epochs(raw, events, present, tmin=0.0, tmax=tmax, baseline=None, verbose="error")
    return epochs.get_data(picks=channel, verbose="error"), epochs.events[:, 2]


def dsn_cold(files, cache_dir: Path, channels: tuple[str, ...] = (CHANNEL,)):
    from dsn.data.recording import Preprocessing, load_recording

    return load_recording(files, Preprocessing(channels=channels), cache_dir)


# ------------------------------------------------------------------------------------------ warm start (subprocess)
def warm_start(data_dir: Path, names: list[str], cache_dir: Path) -> dict:
    """Run in a fresh process: load every recording from the cache; time and RSS growth."""
    from dsn.data.datasets import find_recordings
    from dsn.data.recording import Preprocessing, load_recording

    files = [f for f in find_recordings(data_dir) if f.name in set(names)]
    prep = Preprocessing(channels=(CHANNEL,))
    rss0 = rss_bytes()
    t0 = time.perf_counter()
    recs, rss_after = [], []
    for f in files:
        recs.append(load_recording(f, prep, cache_dir))
        rss_after.append(rss_bytes() - rss0)
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "n": len(recs),
        "rss_growth": rss_after[-1],
        "rss_growth_half": rss_after[len(recs) // 2 - 1] if len(recs) > 1 else rss_after[-1],
        "data_bytes": int(sum(r.x.nbytes for r in recs)),
        "memmapped": all(isinstance(r.x, np.memmap) for r in recs),
        "epochs": int(sum(len(r) for r in recs)),
    }


def run_warm(data_dir: Path, names: list[str], cache_dir: Path) -> dict:
    cmd = [sys.executable, __file__, "--_warm", json.dumps([str(data_dir), names, str(cache_dir)])]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=None, help="folder for the synthetic data set (written once, reused)")
    p.add_argument("--recordings", type=int, default=None, help="number of recordings (default 4; --full: 39)")
    p.add_argument("--hours", type=float, default=None, help="hours per recording (default 6; --full: 22)")
    p.add_argument("--full", action="store_true", help="the Sleep-EDF-20 shape: 39 recordings x 22 h")
    p.add_argument("--smoke", action="store_true", help="a tiny run (2 recordings x 15 min) that checks the script works")
    p.add_argument("--repeats", type=int, default=None, help="timed passes over the data set (default 5)")
    p.add_argument("--mne-repeats", type=int, default=None, help="passes of the (slow) MNE recipe (default 2; --full: 1)")
    p.add_argument("--cache-root", type=Path, default=None, help="where the fresh cache folders go (default: temp dir)")
    p.add_argument("--_warm", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a._warm is not None:
        data_dir, names, cache_dir = json.loads(a._warm)
        print(json.dumps(warm_start(Path(data_dir), names, Path(cache_dir))))
        return

    n_rec = a.recordings or (39 if a.full else 2 if a.smoke else 4)
    hours = a.hours or (22.0 if a.full else 0.25 if a.smoke else 6.0)
    repeats = a.repeats or (1 if a.smoke else 5)
    mne_repeats = a.mne_repeats or (1 if (a.full or a.smoke) else min(2, repeats))
    tmp_data = None
    if a.data is None and a.smoke:
        data_dir = tmp_data = Path(tempfile.mkdtemp(prefix="dsn-bench-smoke-"))
    else:
        data_dir = a.data or default_data_dir(f"sleep-edf20-{n_rec}x{hours:g}h")
    data_dir.mkdir(parents=True, exist_ok=True)
    cache_root = Path(tempfile.mkdtemp(prefix="dsn-bench-cache-", dir=a.cache_root))

    print("bench_data: EDF -> ready-to-train cache")
    for line in machine_lines():
        print("  " + line)
    print(f"  data: {data_dir}")
    try:
        files, t_write = ensure_dataset(data_dir, n_rec, hours)
        n = len(files)
        edf_mb = sum(f.psg.stat().st_size for f in files) / 2**20
        print(
            f"  {n} recordings x {hours:g} h (Sleep-EDF-20 layout, 7 signals), {edf_mb:.0f} MiB of PSG EDF"
            + (f" (written in {t_write:.0f} s)" if t_write else " (reused)")
        )

        # Imports and first-call costs are paid once, outside the timings.
        import mne  # noqa: F401

        from dsn.data import cache as cache_mod
        from dsn.data import recording as recording_mod
        from dsn.data.edf import read_channels
        from dsn.data.recording import Preprocessing

        warm_dir = cache_root / "warmup"
        io_limit(files[0].psg)
        dsn_cold(files[0], warm_dir)
        dsn_cold(files[0], warm_dir, TWO_CHANNELS)
        mne_recipe(files[0])
        shutil.rmtree(warm_dir)

        times: dict[str, list[float]] = {"io": [], "dsn": [], "dsn2": [], "mne": []}
        last_cache = None
        for rep in range(repeats):
            times["io"].append(sum(timed(lambda f=f: io_limit(f.psg))[0] for f in files))
            if last_cache is not None:
                shutil.rmtree(last_cache)
            last_cache = cache_root / f"cold-{rep}"
            times["dsn"].append(sum(timed(lambda f=f, c=last_cache: dsn_cold(f, c))[0] for f in files))
            two = cache_root / f"cold2-{rep}"
            times["dsn2"].append(sum(timed(lambda f=f, c=two: dsn_cold(f, c, TWO_CHANNELS))[0] for f in files))
            shutil.rmtree(two)
            if rep < mne_repeats:
                times["mne"].append(sum(timed(lambda f=f: mne_recipe(f))[0] for f in files))

        # What the cold path spends its time on (one more pass, each step alone).
        prep = Preprocessing(channels=(CHANNEL,))
        t_read = t_rest = t_cache = 0.0
        cache_bytes = 0
        for k, f in enumerate(files):
            dt, sig = timed(lambda f=f: read_channels(f.psg, prep.channels, prep.sfreq))
            t_read += dt
            recording_mod.read_channels = lambda *args, s=sig, **kw: s  # the rest of the preparation alone
            try:
                dt, (epochs, keep, y, _) = timed(lambda f=f: recording_mod._prepare(f, prep))
            finally:
                recording_mod.read_channels = read_channels
            t_rest += dt
            cache_bytes += epochs[0].nbytes * len(keep)
            folder = cache_root / "parts" / str(k)
            t_cache += timed(lambda e=epochs, y=y, r=keep, d=folder: cache_mod.write_entry(d, e, y, {}, rows=r))[0]
        shutil.rmtree(cache_root / "parts")

        warm = [run_warm(data_dir, [f.name for f in files], last_cache) for _ in range(1 if a.smoke else 3)]
    finally:
        shutil.rmtree(cache_root, ignore_errors=True)
        if tmp_data is not None:
            shutil.rmtree(tmp_data, ignore_errors=True)

    io_b, io_m = best_median(times["io"])
    dsn_b, dsn_m = best_median(times["dsn"])
    two_b, two_m = best_median(times["dsn2"])
    mne_b, mne_m = best_median(times["mne"])
    print(f"\n{NOISE_NOTE}")
    print_table(
        ["path (cold: no dsn cache)", "s / recording (best)", "median", "runs"],
        [
            ["I/O limit: read the bytes, decode one channel", f"{io_b / n:.4f}", f"{io_m / n:.4f}", repeats],
            ["dsn: EDF -> cache (load_recording)", f"{dsn_b / n:.4f}", f"{dsn_m / n:.4f}", repeats],
            ["dsn, 2 channels (EEG Fpz-Cz + EOG horizontal)", f"{two_b / n:.4f}", f"{two_m / n:.4f}", repeats],
            ["MNE recipe: read all, events, Epochs", f"{mne_b / n:.3f}", f"{mne_m / n:.3f}", mne_repeats],
        ],
        title=f"Cold: {n} recordings x {hours:g} h",
    )
    print_table(
        ["ratio (same run)", "best", "median", "target", "met"],
        [
            ["MNE recipe / dsn (x faster)", f"{mne_b / dsn_b:.1f}", f"{mne_m / dsn_m:.1f}", ">= 5", "yes" if mne_b / dsn_b >= 5 else "NO"],
            ["dsn / I/O limit", f"{dsn_b / io_b:.2f}", f"{dsn_m / io_m:.2f}", "<= 3", "yes" if dsn_b / io_b <= 3 else "NO"],
            ["dsn 2 channels / 1 channel (cost of the 2nd)", f"{two_b / dsn_b:.2f}", f"{two_m / dsn_m:.2f}", "report", ""],
        ],
    )
    total = t_read + t_rest + t_cache
    print_table(
        ["dsn cold, step by step (one pass)", "s / recording", "share"],
        [
            ["read the EEG channel (read_channels)", f"{t_read / n:.4f}", f"{t_read / total:.0%}"],
            ["hypnogram, labels, trim (which epochs to keep)", f"{t_rest / n:.4f}", f"{t_rest / total:.0%}"],
            [
                f"write the cache entry ({cache_bytes / n / 2**20:.1f} MiB/rec, {cache_bytes / 2**20 / max(t_cache, 1e-9):.0f} MiB/s)",
                f"{t_cache / n:.4f}",
                f"{t_cache / total:.0%}",
            ],
        ],
    )
    w = min(warm, key=lambda r: r["seconds"])
    half = w["n"] // 2
    marginal = min((r["rss_growth"] - r["rss_growth_half"]) / max(w["n"] - half, 1) for r in warm)
    print_table(
        ["warm start (fresh process, cache present)", "value"],
        [
            [f"load all {w['n']} recordings ({w['epochs']} epochs)", f"{w['seconds']:.3f} s (best of {len(warm)})"],
            ["per recording", f"{w['seconds'] / w['n'] * 1e3:.2f} ms"],
            ["RSS growth after half / all recordings", f"{w['rss_growth_half'] / 2**20:.2f} / {w['rss_growth'] / 2**20:.2f} MiB"],
            ["RSS growth per extra recording (second half)", f"{marginal / 2**10:.0f} KiB"],
            ["cached data (memory-mapped, not resident)", f"{w['data_bytes'] / 2**20:.0f} MiB, memmap: {w['memmapped']}"],
        ],
    )


if __name__ == "__main__":
    main()
