"""Data-set profiles: what reading hypnograms through a profile costs, against the Sleep-EDF-only path.

    python benchmarks/bench_profiles.py            # 4 recordings x 6 h (Sleep-EDF layout) + 2 x 6 h NSRR layout
    python benchmarks/bench_profiles.py --full     # the Sleep-EDF-20 shape of bench_data.py --full: 39 x 22 h

For every recording, in the same run and interleaved, the preprocessing before the cache write is timed twice:
"before" is the pre-profile code path (``read_eeg`` -> the EDF+ annotations -> ``epoch_labels`` with the R&K
map -> ``trim_and_clean``, what preprocessing did before data-set profiles), "after" is the public
``dsn.data.recording.preprocess`` as it is now (the hypnogram read through the ``sleep-edf`` profile, with the
start-time, grid and overrun rules; both copy the kept epochs). Both give the same epochs and labels (checked). Discovery (``find_recordings``) is timed on its own. The NSRR-layout rows
show the cost of another data set's usual file (125 Hz EEG resampled to 100 Hz, XML hypnogram) per recording.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import NOISE_NOTE, best_median, default_data_dir, ensure_dataset, machine_lines, print_table, timed  # noqa: E402


def before(files, prep):
    """The preprocessing of ``dsn.data.recording.preprocess`` before data-set profiles (Sleep-EDF only)."""
    from dsn.data.edf import read_eeg
    from dsn.data.hypnograms import UNANNOTATED, epoch_labels, read_edf_annotations, trim_and_clean
    from dsn.data.labels import IGNORE_INDEX, RK_TO_AASM

    signal, _ = read_eeg(files.psg, prep.channels[0], prep.sfreq)
    n_epochs = len(signal) // prep.n_times
    hyp = read_edf_annotations(files.hypnogram)
    y = epoch_labels(hyp.onsets, hyp.durations, hyp.labels, n_epochs, prep.epoch_sec, RK_TO_AASM,
                     prep.length_mismatch, str(files.hypnogram))
    keep = trim_and_clean(y, prep.trim_minutes, prep.epoch_sec, prep.unscored, source=str(files.hypnogram))
    y = y[keep]
    y[y == UNANNOTATED] = IGNORE_INDEX
    return np.ascontiguousarray(signal[: n_epochs * prep.n_times].reshape(n_epochs, 1, prep.n_times)[keep]), y


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--full", action="store_true", help="39 recordings x 22 h (the shape of bench_data.py --full)")
    p.add_argument("--recordings", type=int, default=None, help="Sleep-EDF-layout recordings (default 4; --full 39)")
    p.add_argument("--hours", type=float, default=None, help="hours per recording (default 6; --full 22)")
    p.add_argument("--repeats", type=int, default=None, help="timed passes (default 5)")
    p.add_argument("--data", type=Path, default=None, help="folder for the synthetic data sets (written once, reused)")
    p.add_argument("--smoke", action="store_true", help="a tiny run (1 recording x 30 min) that checks the script works")
    a = p.parse_args(argv)
    n_rec = a.recordings or (39 if a.full else 1 if a.smoke else 4)
    hours = a.hours or (22.0 if a.full else 0.5 if a.smoke else 6.0)
    repeats = a.repeats or (1 if a.smoke else 5)

    from dsn.data.datasets import find_recordings
    from dsn.data.recording import Preprocessing, preprocess
    from dsn.data.synth_layouts import write_layout

    print("bench_profiles: hypnograms through data-set profiles vs the Sleep-EDF-only path")
    for line in machine_lines():
        print("  " + line)
    root = a.data or Path(tempfile.gettempdir()) / "dsn-bench"
    data_dir = root / f"sleep-edf20-{n_rec}x{hours:g}h" if a.data else default_data_dir(f"sleep-edf20-{n_rec}x{hours:g}h")
    data_dir.mkdir(parents=True, exist_ok=True)
    files, _ = ensure_dataset(data_dir, n_rec, hours)
    nsrr_dir = root / f"nsrr-2x{hours:g}h"
    if not any(nsrr_dir.rglob("*.xml")):
        write_layout(nsrr_dir, "nsrr", subjects=2, hours=hours, progress=False)
    nsrr = find_recordings(nsrr_dir, "nsrr")
    prep = Preprocessing()
    for f in files[:1]:  # first-call costs (imports, profile parsing) outside the timings
        before(f, prep)
        preprocess(f, prep)
    preprocess(nsrr[0], Preprocessing(channels=("EEG",)))

    t_before, t_after, t_find, t_nsrr = [], [], [], []
    for _ in range(repeats):
        t_find.append(timed(lambda: find_recordings(data_dir))[0])
        tb = ta = 0.0
        for f in files:
            dt, old = timed(lambda f=f: before(f, prep))
            tb += dt
            dt, new = timed(lambda f=f: preprocess(f, prep))
            ta += dt
            assert all(np.array_equal(o, n) for o, n in zip(old, new, strict=True))
        t_before.append(tb / len(files))
        t_after.append(ta / len(files))
        t_nsrr.append(sum(timed(lambda f=f: preprocess(f, Preprocessing(channels=("EEG",))))[0] for f in nsrr) / len(nsrr))

    (bb, bm), (ab, am) = best_median(t_before), best_median(t_after)
    rows = [
        ["before profiles (Sleep-EDF path)", f"{bb:.4f}", f"{bm:.4f}", "1.00"],
        ["through the sleep-edf profile", f"{ab:.4f}", f"{am:.4f}", f"{ab / bb:.2f}"],
        ["NSRR layout (125 Hz -> 100 Hz, XML)", *(f"{v:.4f}" for v in best_median(t_nsrr)), f"{min(t_nsrr) / bb:.2f}"],
    ]
    print_table(["per recording, s", "best", "median", "x before"], rows,
                f"{len(files)} Sleep-EDF-layout recordings x {hours:g} h, {repeats} passes (same epochs and labels)")
    print(f"\nfind_recordings over {len(files)} recordings: best {min(t_find) * 1e3:.1f} ms")
    print(f"\n{NOISE_NOTE}")


if __name__ == "__main__":
    main()
