"""The paper's evaluation protocol (Sleep-EDF-20 shape, 20 folds, 100 + 200 epochs) as folds run in parallel.

    python benchmarks/bench_protocol.py --device cuda                      # full size, --parallel 1 4 20
    python benchmarks/bench_protocol.py --scale 0.02 --folds 2 --parallel 1 2   # a small fraction, on the CPU

Writes the Sleep-EDF-20 layout with ``dsn synth``'s generator once (20 subjects x 2 nights, subject 13's second
night left out: 39 nights of 22 h; ``--data DIR`` keeps it between runs), then trains folds of the
leave-one-subject-out protocol with ``conf/paper.yaml`` (both stages, the selected model evaluated and logged as
``dsn fit`` does), each fold a separate ``dsn fit --data.fold K`` process, at most ``--parallel`` at once, and
prints the wall time of every fold and of all of them, for each ``--parallel`` value in the same run.

``--scale s`` multiplies the night length and both stages' epochs by ``s`` (at least one epoch each), so a
fraction of the protocol runs on a CPU; the figures it prints are for that fraction, not an estimate of the
full protocol. Several folds on one GPU share it as separate processes (see README, CUDA MPS).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_lines, print_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
N_SUBJECTS, HOURS, EPOCHS = 20, 22.0, (100, 200)


def write_protocol_data(data_dir: Path, hours: float, subjects: int) -> None:
    """The Sleep-EDF-20 layout: ``subjects`` x 2 nights, subject 13's second night removed (as in Sleep-EDF)."""
    from dsn.data.synth import write_dataset

    marker = data_dir / "bench-protocol-dataset"
    if marker.exists():
        return
    print(f"writing {subjects} subjects x 2 nights x {hours:g} h to {data_dir} ...", flush=True)
    write_dataset(data_dir, subjects=subjects, nights=2, hours=hours, seed=0, progress=False)
    for f in data_dir.glob("SC4132*"):
        f.unlink()
    marker.write_text("ok")


def fold_command(fold: int, a, data_dir: Path, work: Path, epochs: tuple[int, int]) -> list[str]:
    accel = "gpu" if a.device == "cuda" else "cpu"
    return [
        sys.executable, "-m", "dsn", "fit", "--config", a.config, *a.extra,
        "--data.data_dir", str(data_dir), "--data.cache_dir", str(work.parent / "cache"), "--data.progress", "false",
        "--data.n_folds", str(a.subjects), "--data.fold", str(fold),
        "--tracking.home", str(work / f"mlruns-{fold}"),  # one store per fold: a new sqlite store is not safe to create from two processes at once
        "--pretrain.trainer.max_epochs", str(epochs[0]), "--finetune.trainer.max_epochs", str(epochs[1]),
        "--pretrain.trainer.accelerator", accel, "--finetune.trainer.accelerator", accel,
        "--pretrain.trainer.enable_progress_bar", "false", "--finetune.trainer.enable_progress_bar", "false",
    ]  # fmt: skip


def run_fold(cmd: list[str], log: Path, env: dict[str, str]) -> float:
    t = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited with {rc}; see {log}")
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parallel", type=int, nargs="+", default=[1, 4, 20], help="folds at once (default 1 4 20)")
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the night length and of the epochs (default 1)")
    ap.add_argument("--subjects", type=int, default=N_SUBJECTS, help="subjects = folds (default 20, Sleep-EDF-20)")
    ap.add_argument("--folds", type=int, default=None, help="run only the first N folds (default all)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--config", default="conf/paper.yaml")
    ap.add_argument("--data", type=Path, default=None, help="folder for the synthetic data (written once, reused)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per fold process (default: cores / parallel)")
    ap.add_argument("extra", nargs="*", help="more dsn fit arguments after -- (e.g. -- --config conf/gpu.yaml), given "
                    "before the benchmark's own")
    a = ap.parse_args(argv)
    if a.scale <= 0 or any(p < 1 for p in a.parallel):
        ap.error("--scale must be > 0 and every --parallel value >= 1")
    hours = HOURS * a.scale
    epochs = (max(1, round(EPOCHS[0] * a.scale)), max(1, round(EPOCHS[1] * a.scale)))
    folds = list(range(min(a.folds or a.subjects, a.subjects)))
    for line in machine_lines(a.device):
        print(line)
    tmp = Path(tempfile.mkdtemp(prefix="dsn-bench-protocol-"))
    data_dir = a.data or tmp / "data"
    write_protocol_data(data_dir, hours, a.subjects)
    print(f"protocol: {a.subjects} subjects (folds), {len(folds)} fold(s) run, {hours:g}-h nights, "
          f"{epochs[0]} + {epochs[1]} epochs, {a.config}, device {a.device}")

    # the preprocessing cache is filled once, untimed, and shared: folds in parallel do not all write it at once
    from dsn import config
    from dsn.data.datamodule import SleepEDFDataModule

    d = config.to_dict(config.load_config([a.config]))["data"]
    d.update(data_dir=str(data_dir), cache_dir=str(tmp / "cache"), progress=False, n_folds=a.subjects, fold=0)
    t = time.perf_counter()
    SleepEDFDataModule(**d).setup()
    print(f"preprocessing cache filled in {time.perf_counter() - t:.1f} s (untimed below)")

    summary = []
    for k in a.parallel:
        work = tmp / f"parallel-{k}"
        work.mkdir()
        env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", PYTHONPATH=os.pathsep.join(
            [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
        threads = a.threads or max(1, (os.cpu_count() or 1) // min(k, len(folds)))
        env["OMP_NUM_THREADS"] = str(threads)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=k) as pool:
            walls = list(pool.map(lambda f, w=work, e=env: run_fold(fold_command(f, a, data_dir, w, epochs), w / f"fold{f}.log", e), folds))
        total = time.perf_counter() - t0
        print_table(["fold", "wall s"], [[str(f), f"{w:.1f}"] for f, w in zip(folds, walls)],
                    title=f"--parallel {k} ({threads} torch thread(s) per process)")
        summary.append([str(k), f"{total:.1f}", f"{sum(walls) / len(walls):.1f}", f"{total / len(folds):.1f}"])
    print_table(["parallel", "all folds wall s", "mean fold wall s", "wall s per fold"], summary,
                title=f"{len(folds)} fold(s) of the protocol at scale {a.scale:g}")


if __name__ == "__main__":
    main()
