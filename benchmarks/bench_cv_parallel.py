"""`dsn cv --parallel K` against `--parallel 1` (the folds one after the other) in the same run.

    python benchmarks/bench_cv_parallel.py                                  # 4 subjects, 2 folds, --parallel 1 2
    python benchmarks/bench_cv_parallel.py --subjects 8 --folds 4 --parallel 1 2 4 -- --config conf/gpu.yaml

Writes a small ``dsn synth`` set once (``--data DIR`` keeps it), fills the preprocessing cache once (untimed),
then runs the same ``dsn cv`` (``conf/demo.yaml`` + ``conf/debug.yaml`` unless ``--config`` says otherwise,
arguments after ``--`` appended) for every ``--parallel`` value, each in a fresh tracking home, in that order,
``--repeats`` times interleaved. Prints the wall time of each, its ratio to the first value's, and whether the
pooled figures agree (they are equal for the same torch thread count per fold; another count may round
differently).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_lines, print_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parallel", type=int, nargs="+", default=[1, 2], help="folds at once (default 1 2)")
    ap.add_argument("--subjects", type=int, default=4, help="synthetic subjects (default 4)")
    ap.add_argument("--hours", type=float, default=1.5, help="night length in hours (default 1.5)")
    ap.add_argument("--folds", type=int, default=2, help="folds (default 2)")
    ap.add_argument("--repeats", type=int, default=1, help="runs of every --parallel value, interleaved (default 1)")
    ap.add_argument("--config", nargs="+", default=["conf/demo.yaml", "conf/debug.yaml"])
    ap.add_argument("--data", type=Path, default=None, help="folder for the synthetic data (written once, reused)")
    ap.add_argument("extra", nargs="*", help="more dsn cv arguments after --")
    a = ap.parse_args(argv)
    if any(p < 1 for p in a.parallel) or a.folds < 2 or a.subjects < a.folds:
        ap.error("every --parallel value >= 1, --folds >= 2, --subjects >= --folds")
    for line in machine_lines():
        print(line)
    tmp = Path(tempfile.mkdtemp(prefix="dsn-bench-cv-"))
    data_dir = a.data or tmp / "data"
    from dsn import config
    from dsn.data.datamodule import SleepEDFDataModule
    from dsn.data.synth import write_dataset

    if not (data_dir / "bench-cv-dataset").exists():
        write_dataset(data_dir, subjects=a.subjects, nights=1, hours=a.hours, seed=0, progress=False)
        (data_dir / "bench-cv-dataset").write_text("ok")
    d = config.to_dict(config.load_config(a.config))["data"]
    d.update(data_dir=str(data_dir), cache_dir=str(tmp / "cache"), progress=False, n_folds=a.folds, fold=0)
    t = time.perf_counter()
    SleepEDFDataModule(**d).setup()
    print(f"data: {a.subjects} subjects x {a.hours:g} h, {a.folds} folds, {' + '.join(a.config)}; "
          f"preprocessing cache filled in {time.perf_counter() - t:.1f} s (untimed below)")

    import mlflow

    template = tmp / "template" / "mlflow.db"  # one migrated store copied for every run: its creation is not timed
    template.parent.mkdir()
    mlflow.MlflowClient(f"sqlite:///{template}").search_experiments()
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", PYTHONPATH=os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    walls: dict[int, list[float]] = {k: [] for k in a.parallel}
    pooled: dict[int, str] = {}
    for r in range(a.repeats):
        for k in a.parallel:
            home = tmp / f"run-{r}-parallel-{k}"
            home.mkdir()
            shutil.copy(template, home / "mlflow.db")
            cmd = [sys.executable, "-m", "dsn", "cv", *[x for c in a.config for x in ("--config", c)],
                   "--data.data_dir", str(data_dir), "--data.cache_dir", str(tmp / "cache"), "--data.progress", "false",
                   "--pretrain.trainer.enable_progress_bar", "false", "--finetune.trainer.enable_progress_bar", "false",
                   "--tracking.home", str(home), "--folds", str(a.folds), "--parallel", str(k), "--out", str(home / "out"),
                   *a.extra]  # fmt: skip
            t0 = time.perf_counter()
            with open(home / "cv.log", "w") as f:
                rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
            wall = time.perf_counter() - t0
            if rc != 0:
                raise SystemExit(f"dsn cv --parallel {k} exited with {rc}; see {home / 'cv.log'}")
            walls[k].append(wall)
            s = json.loads((home / "out" / "cv_summary.json").read_text())
            pooled[k] = json.dumps({st: fig["confusion"] for st, fig in s["stages"].items()}, sort_keys=True)
            print(f"  run {r + 1}: --parallel {k}: {wall:.1f} s", flush=True)
    first = statistics.median(walls[a.parallel[0]])
    rows = [[str(k), f"{min(w):.1f}", f"{statistics.median(w):.1f}", f"{statistics.median(w) / first:.2f}"]
            for k, w in walls.items()]
    print_table(["parallel", "best wall s", "median wall s", f"median / --parallel {a.parallel[0]}"], rows,
                title=f"dsn cv, {a.folds} folds, {a.repeats} run(s) each, same data and cache")
    same = len(set(pooled.values())) == 1
    print(f"pooled confusion matrices identical across --parallel values: {'yes' if same else 'no'}"
          + ("" if same else " (the fold processes ran with another torch thread count: rounding may differ)"))


if __name__ == "__main__":
    main()
