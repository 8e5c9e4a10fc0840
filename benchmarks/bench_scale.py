"""How every cost of a fit grows with the number of nights: preparation, cache, memory, sampling, throughput.

    python benchmarks/bench_scale.py                              # 4, 8, 16 nights x 2 h (a few minutes on 2 cores)
    python benchmarks/bench_scale.py --nights 10 30 --hours 8     # a larger run
    python benchmarks/bench_scale.py --nights 10 100 1000 --hours 8 --distinct 100 --val_nights 20 --work DIR   # full (hours)

The nights are ``dsn synth --layout nsrr`` recordings (SHHS-like: EEG C4-A1 and EOG(L) at 125 Hz resampled to
100 Hz, NSRR XML hypnograms), one night per subject. The largest size is written once into ``--work``
(``gen/seed<k>``, 100 subjects per ``dsn synth`` call) and reused between sizes and runs; each size reads a
folder of symlinks to its first ``n`` nights. Generation time is not measured.

Each size runs the recipe ``conf/demo.yaml`` + ``conf/debug.yaml`` with ``data.dataset: nsrr`` and
``data.channels: [C4-A1, EOG(L)]`` (EEG + EOG, as ``conf/recommended-eog.yaml``), an explicit split (20 % of
the nights, at least one, for validation; the rest for training; no test set), and measures, each phase in
a fresh child process whose peak resident set size (``ru_maxrss`` from ``os.wait4``) is its own:

* **prepare**: data-module set-up with an empty cache (``SleepEDFDataModule.setup``: read, resample, label,
  write every night's cache entry): wall seconds per night and cache bytes per night;
* **setup**: the same with the warm cache: wall seconds and the peak RSS of the set-up (and its growth over
  the process after imports);
* **pretrain** / **finetune**: set-up, then the stage's ``train_dataloader()`` and one pass over its sampler
  (sampler set-up: the oversampling index or the stream layout, and one epoch's keys), one training epoch capped at ``--batches`` steps (so its
  cost does not grow with the data; steps/s from the second step on) and one validation pass over the whole
  validation split (its time per 30-s epoch should be flat), peak RSS of the process.

``--distinct K`` writes only ``K`` nights and links them again under other SHHS names up to the largest size (each
recording is still read, cached, indexed and memory-mapped on its own: what this benchmark measures does not
depend on the signals differing; writing 1,000 8-h nights takes hours on 2 cores). The full run uses
``--distinct 100``.

``--val_nights N`` caps the validation split at ``N`` nights (20 % of the nights otherwise). The full run uses
``--val_nights 20``: 200 validation nights of 8 h are hours of CPU time per pass of the sequence model, and the
cap keeps the validation split of 100 and 1,000 nights the same, so that any growth of the memory rows between
them comes from the training nights.

The table has one row per figure, one column per size, and each figure's growth exponent against the
number of nights (least-squares slope of log(figure) on log(nights)), with the issue's target: memory
independent of the nights beyond the label arrays (exponent about 0), preparation and set-up linear (about
1 in total, 0 per night), steps/s flat (0). A figure more than ``--tolerance`` past its target (above it;
below it for steps/s) is flagged.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_lines, print_table, rss_bytes  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHANNELS = ["C4-A1", "EOG(L)"]
PER_SEED = 100  # dsn synth writes at most 100 subjects per call
#: The benchmark's tiny network (``--tiny``: the smoke test), as bench_overhead.py's.
TINY = {"net.small_kernel": 50, "finetune.net.hidden_size": 16, "finetune.net.shortcut_size": 32,
        "finetune.batch_size": 2, "finetune.seq_len": 5}

#: (key, label, target exponent): the rows of the table, in order.
FIGURES = [
    ("prep_s_per_night", "preparation, s per night", 0.0),
    ("prep_s", "preparation, s in all", 1.0),
    ("cache_bytes_per_night", "cache, MB per night", 0.0),
    ("setup_s", "data-module set-up (warm cache), s", 1.0),
    ("setup_peak_mb", "peak RSS, set-up, MB", 0.0),
    ("setup_growth_mb", "RSS growth of set-up over imports, MB", 0.0),
    ("pretrain_sampler_s", "pretrain sampler set-up, s", 1.0),
    ("pretrain_steps_per_s", "pretrain steps/s", 0.0),
    ("pretrain_val_ms_per_epoch", "pretrain validation pass, ms per 30-s epoch", 0.0),
    ("pretrain_peak_mb", "peak RSS, pretrain epoch, MB", 0.0),
    ("finetune_sampler_s", "finetune sampler set-up, s", 1.0),
    ("finetune_steps_per_s", "finetune steps/s", 0.0),
    ("finetune_val_ms_per_epoch", "finetune validation pass, ms per 30-s epoch", 0.0),
    ("finetune_peak_mb", "peak RSS, finetune epoch, MB", 0.0),
]
SCALE = {"cache_bytes_per_night": 1e6}  # shown in MB


# ------------------------------------------------------------------------------------------ the nights
def ensure_nights(work: Path, n: int, hours: float) -> list[tuple[Path, Path]]:
    """The first ``n`` (EDF, XML) pairs of the benchmark's NSRR nights, written once into ``work/gen``.

    ``gen/seed<k>`` holds ``dsn synth --layout nsrr --subjects 100 --seed k`` (fewer in the last folder); a
    marker file records the hours, and a folder of other hours is refused rather than mixed.
    """
    marker = work / "bench-scale.json"
    if marker.exists() and json.loads(marker.read_text()).get("hours") != hours:
        raise SystemExit(f"{work} holds nights of {json.loads(marker.read_text())['hours']} h; pass another --work.")
    work.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"hours": hours}))
    pairs: list[tuple[Path, Path]] = []
    for k in range(math.ceil(n / PER_SEED)):
        want = min(PER_SEED, n - k * PER_SEED)
        folder = work / "gen" / f"seed{k}"
        edfs = sorted(folder.glob("polysomnography/edfs/shhs1/*.edf"))
        if len(edfs) < want:
            shutil.rmtree(folder, ignore_errors=True)
            print(f"  writing {want} synthetic NSRR nights of {hours:g} h (seed {k}) ...", flush=True)
            subprocess.run([sys.executable, "-m", "dsn", "synth", str(folder), "--layout", "nsrr", "--subjects",
                            str(want), "--nights", "1", "--hours", str(hours), "--seed", str(k)],
                           check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            edfs = sorted(folder.glob("polysomnography/edfs/shhs1/*.edf"))
        for edf in edfs[:want]:
            xml = folder / "polysomnography/annotations-events-nsrr/shhs1" / f"{edf.stem}-nsrr.xml"
            pairs.append((edf, xml))
    return pairs


def subset_folder(pairs: list[tuple[Path, Path]], folder: Path) -> list[str]:
    """Symlinks to ``pairs`` in ``folder`` under distinct SHHS names (``shhs1-3<seed><subject>``); their subject ids."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    subjects = []
    for i, (edf, xml) in enumerate(pairs):
        nsrrid = 3000000 + i
        (folder / f"shhs1-{nsrrid}.edf").symlink_to(edf)
        (folder / f"shhs1-{nsrrid}-nsrr.xml").symlink_to(xml)
        subjects.append(f"shhs-{nsrrid}")
    return subjects


# ------------------------------------------------------------------------------------------ one phase (child process)
def _config(spec: dict):
    from dsn import config

    n_val = max(1, round(0.2 * len(spec["subjects"])))
    if spec.get("val_nights"):
        n_val = min(n_val, spec["val_nights"])
    overrides = {
        "data.data_dir": spec["data_dir"], "data.dataset": "nsrr", "data.channels": CHANNELS,
        "data.cache_dir": spec["cache_dir"], "data.progress": False, "data.num_workers": 0,
        "data.train_subjects": spec["subjects"][n_val:], "data.val_subjects": spec["subjects"][:n_val],
        "data.test_subjects": [], "data.normalize": spec["normalize"], **(TINY if spec["tiny"] else {}),
        **({"data.cache_dtype": spec["cache_dtype"]} if spec.get("cache_dtype", "float32") != "float32" else {}),
    }  # fmt: skip
    return config.load_config([ROOT / "conf/demo.yaml", ROOT / "conf/debug.yaml"], overrides)


def _stage(cfg, dm, stage: str, batches: int) -> dict:
    """Sampler set-up, one capped training epoch and one validation pass of ``stage``."""
    import lightning as L

    from dsn.workflows import build
    from dsn.workflows.callbacks import ReleaseEvalMemory

    sdm = build.stage_data(dm, cfg, stage)
    t = time.perf_counter()
    loader = sdm.train_dataloader()  # builds the sampler (oversampling index, stream layout)
    sampler = loader.sampler if loader.batch_sampler is None or loader.batch_sampler.sampler is loader.sampler else loader.batch_sampler
    n_keys = sum(1 for _ in sampler)  # one epoch's keys: what every training epoch draws before its first batch
    sampler_s = time.perf_counter() - t
    system, _ = build.system(stage, cfg, sdm, build.feature_net(cfg))

    class StepTimes(L.Callback):  # the end time of every training step
        ends: list[float] = []

        def on_train_batch_end(self, *args, **kwargs):
            self.ends.append(time.perf_counter())

    steps = StepTimes()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=batches,
                        num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, use_distributed_sampler=False,
                        callbacks=[steps, ReleaseEvalMemory()])  # as a fit's Trainer: the pass gives back its pages
    trainer.fit(system, train_dataloaders=loader)
    ends = steps.ends
    steps_per_s = (len(ends) - 1) / (ends[-1] - ends[0]) if len(ends) > 1 else float("nan")
    val_loader = sdm.val_dataloader()
    t = time.perf_counter()
    trainer.validate(system, dataloaders=val_loader, verbose=False)
    val_s = time.perf_counter() - t
    return {f"{stage}_keys": n_keys, f"{stage}_sampler_s": sampler_s, f"{stage}_steps_per_s": steps_per_s, f"{stage}_val_s": val_s}


def child(spec: dict) -> dict:
    """Run one phase (``prepare``, ``setup``, ``pretrain``, ``finetune``) and return its figures."""
    import torch

    from dsn.workflows import build

    torch.set_num_threads(spec["threads"])
    cfg = _config(spec)
    rss0 = rss_bytes()
    t = time.perf_counter()
    dm = build.data_module(cfg)
    setup_s = time.perf_counter() - t
    out = {"setup_s": setup_s, "setup_growth_mb": (rss_bytes() - rss0) / 2**20,
           "epochs": {k: int(sum(len(r) for r in v)) for k, v in dm.recordings.items()}}
    if spec["phase"] in ("pretrain", "finetune"):
        out.update(_stage(cfg, dm, spec["phase"], spec["batches"]))
    return out


def run_child(spec: dict) -> tuple[dict, float]:
    """(figures, peak RSS in MB) of one phase in a fresh process."""
    cmd = [sys.executable, __file__, "--_child", json.dumps(spec)]
    log = Path(spec["cache_dir"]).parent / f"{spec['phase']}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak (ru_maxrss, KiB on Linux)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"bench_scale phase {spec['phase']} failed:\n{log.read_text()[-3000:]}")
    lines = [ln for ln in log.read_text().splitlines() if ln.startswith("BENCH_SCALE ")]
    return json.loads(lines[-1][len("BENCH_SCALE "):]), usage.ru_maxrss / 1024


# ------------------------------------------------------------------------------------------ one size, the table
def measure_size(n: int, pairs, tmp: Path, a) -> dict:
    """Every figure of one size (``n`` nights)."""
    folder = tmp / f"n{n}"
    subjects = subset_folder(pairs[:n], folder / "data")
    cache = folder / "cache"
    spec = {"data_dir": str(folder / "data"), "cache_dir": str(cache), "subjects": subjects, "tiny": a.tiny,
            "batches": a.batches, "threads": a.threads, "normalize": a.normalize, "cache_dtype": a.cache_dtype,
            "val_nights": a.val_nights}
    prep, _ = run_child({**spec, "phase": "prepare"})
    cache_bytes = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())
    fig = {"prep_s": prep["setup_s"], "prep_s_per_night": prep["setup_s"] / n, "cache_bytes_per_night": cache_bytes / n}
    setup, fig["setup_peak_mb"] = run_child({**spec, "phase": "setup"})
    fig.update(setup_s=setup["setup_s"], setup_growth_mb=max(setup["setup_growth_mb"], 1e-3), epochs=setup["epochs"])
    for stage in a.stages:
        print(f"    {n} nights: {json.dumps(fig)}", flush=True)  # each phase kept should a later one not finish
        res, fig[f"{stage}_peak_mb"] = run_child({**spec, "phase": stage})
        fig.update({k: v for k, v in res.items() if k.startswith(stage)})
        fig[f"{stage}_val_ms_per_epoch"] = 1e3 * res[f"{stage}_val_s"] / max(1, fig["epochs"]["val"])
    if not a.keep:
        shutil.rmtree(folder, ignore_errors=True)
    return fig


def exponent(nights: list[int], values: list[float]) -> float:
    """Least-squares slope of log(value) on log(nights) (nan with fewer than two positive values)."""
    pts = [(math.log(n), math.log(v)) for n, v in zip(nights, values) if v is not None and v > 0 and math.isfinite(v)]
    if len(pts) < 2:
        return float("nan")
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sxx if sxx > 0 else float("nan")


def table_rows(nights: list[int], figs: list[dict], tolerance: float) -> list[list[str]]:
    """One row per figure: its value at each size, its growth exponent, the target and a flag past it."""
    rows = []
    for key, label, target in FIGURES:
        vals = [f.get(key, math.nan) / SCALE.get(key, 1.0) for f in figs]  # a stage not measured: nan
        e = exponent(nights, vals)
        worse = target - e if key.endswith("per_s") else e - target  # throughput: falling is worse
        flag = "PAST TARGET" if math.isfinite(e) and worse > tolerance else ""
        rows.append([label, *(f"{v:.3g}" for v in vals), f"{e:+.2f}", f"{target:g}", flag])
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nights", type=int, nargs="+", default=[4, 8, 16], help="sizes, in nights (default 4 8 16)")
    p.add_argument("--hours", type=float, default=2.0, help="hours per night (default 2; SHHS-like: 8.5)")
    p.add_argument("--batches", type=int, default=10, help="training steps per stage epoch (default 10)")
    p.add_argument("--threads", type=int, default=2, help="torch threads per child process (default 2)")
    p.add_argument("--tolerance", type=float, default=0.25, help="an exponent this far past its target is flagged (default 0.25)")
    p.add_argument("--normalize", choices=["none", "zscore", "robust"], default="none",
                   help="data.normalize (default none, the demo recipe's; conf/recommended.yaml: zscore)")
    p.add_argument("--cache-dtype", choices=["float32", "float16"], default="float32",
                   help="data.cache_dtype (default float32; float16 halves the cache)")
    p.add_argument("--stages", nargs="*", choices=["pretrain", "finetune"], default=["pretrain", "finetune"],
                   help="training stages to measure (default both; none: preparation and set-up only)")
    p.add_argument("--distinct", type=int, default=None,
                   help="write at most this many distinct nights and link them again under other names up to the "
                        "largest size (default: every night distinct)")
    p.add_argument("--val_nights", type=int, default=None,
                   help="at most this many validation nights (default: 20 %% of the nights, uncapped)")
    p.add_argument("--tiny", action="store_true", help="a tiny network (the smoke test): throughput not comparable")
    p.add_argument("--work", type=Path, default=None, help="folder of the generated nights (written once, reused)")
    p.add_argument("--json", type=Path, default=None, help="also write every figure of every size to this file")
    p.add_argument("--keep", action="store_true", help="keep each size's symlinks, cache and logs")
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a._child is not None:
        print("BENCH_SCALE " + json.dumps(child(json.loads(a._child))), flush=True)
        return
    nights = sorted(set(a.nights))
    if nights[0] < 2:
        raise SystemExit("--nights: every size needs at least 2 nights (one to train, one to validate)")
    for line in machine_lines():
        print(line)
    work = a.work or Path(tempfile.gettempdir()) / "dsn-bench" / f"scale-nsrr-{a.hours:g}h"
    t = time.perf_counter()
    pairs = ensure_nights(work, min(nights[-1], a.distinct or nights[-1]), a.hours)
    pairs = [pairs[i % len(pairs)] for i in range(nights[-1])]  # --distinct: the same nights again, other names
    print(f"nights: {len(pairs)} in {work} ({time.perf_counter() - t:.0f} s to find or write; not measured)")
    tmp = Path(tempfile.mkdtemp(prefix="dsn-bench-scale-"))
    figs = []
    for n in nights:
        print(f"  measuring {n} nights ...", flush=True)
        figs.append(measure_size(n, pairs, tmp, a))
        print(f"  {n} nights: {json.dumps(figs[-1])}", flush=True)  # kept should a larger size not finish
    if not a.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    if a.json:
        a.json.write_text(json.dumps({"nights": nights, "hours": a.hours, "tiny": a.tiny, "figures": figs}, indent=1))
    print_table(["figure", *(f"{n} nights" for n in nights), "exponent", "target", ""],
                table_rows(nights, figs, a.tolerance),
                title=f"dsn fit's costs against the number of nights: NSRR layout, {a.hours:g}-h nights, EEG + EOG, "
                      f"{f'{len(set(pairs))} distinct, ' if len(set(pairs)) < len(pairs) else ''}"
                      f"demo + debug recipe, normalize {a.normalize}, cache {a.cache_dtype}{' (tiny network)' if a.tiny else ''}, {a.batches} steps per stage epoch")
    print("\ntraining / validation epochs per size: "
          + ", ".join(f"{n}: {f['epochs']['train']} / {f['epochs']['val']}" for n, f in zip(nights, figs)))
    print("exponent: slope of log(figure) on log(nights); memory rows include the process itself (Python, torch, "
          "Lightning: a few hundred MB). One run per size: on a machine shared with other jobs the timings are noisy; "
          "compare exponents, and rerun before trusting a flag on a timing row.")


if __name__ == "__main__":
    main()
