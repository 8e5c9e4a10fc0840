"""Command overhead: the fixed cost of one `dsn fit` outside training, and `dsn sweep`'s cost per trial.

    python benchmarks/bench_overhead.py            # tiny configuration (about 2 minutes)
    python benchmarks/bench_overhead.py --trials 6

What is measured (one process, a fresh tracking home, a warm data cache):

- ``dsn fit`` (the debug overlay: a few batches per stage): wall time of ``run_fit`` split into training
  (``trainer.fit``), evaluation of the selected model on whole recordings, logging (figures, checkpoints,
  predictions) and everything else (config check, tracking store, data discovery and loading, runs);
- ``dsn sweep`` (``sweeps/tiny.yaml``): wall time per trial against the training time inside it; the
  difference is the sweep's own overhead (study storage, MLflow child runs, model building, evaluation).

Process start-up (imports) is measured separately as ``python -c 'import dsn.workflows.fit, lightning, mlflow'``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_lines, print_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "data.n_folds": 3, "data.progress": False, "net.small_kernel": 50, "finetune.net.hidden_size": 16,
    "finetune.net.shortcut_size": 32, "finetune.batch_size": 2, "finetune.seq_len": 5,
    "pretrain.trainer.enable_progress_bar": False, "finetune.trainer.enable_progress_bar": False,
    "tracking.log_model": True,
}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=4, help="sweep trials (default 4)")
    ap.add_argument("--subjects", type=int, default=4, help="synthetic subjects (default 4)")
    ap.add_argument("--hours", type=float, default=2.0, help="hours per recording (default 2)")
    a = ap.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.chdir(ROOT)
    for line in machine_lines():
        print(line)

    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import dsn.workflows.fit, lightning, mlflow, mne, optuna"], check=True)
    import_s = time.perf_counter() - t

    from dsn import config
    from dsn.data.synth import write_dataset
    from dsn.workflows import sweep
    from dsn.workflows.fit import run_fit

    tmp = Path(tempfile.mkdtemp(prefix="dsn-bench-overhead-"))
    write_dataset(tmp / "data", subjects=a.subjects, hours=a.hours, seed=0, progress=False)
    common = {**TINY, "data.data_dir": str(tmp / "data"), "data.cache_dir": str(tmp / "cache"), "tracking.home": str(tmp / "mlruns")}
    cfg = config.load_config(["conf/demo.yaml", "conf/debug.yaml"], common)
    run_fit(cfg, verbose=False)  # warm-up: tracking database created, data cached, code paths compiled

    rows = []
    res = run_fit(cfg, verbose=False)
    stage_sum = {k: sum(s.timings.get(k, 0.0) for s in res.stages) for k in ("train", "evaluate", "log")}
    other = res.wall_seconds - sum(stage_sum.values())
    rows.append(["dsn fit (debug overlay, 2 stages)", f"{res.wall_seconds:.2f}", f"{stage_sum['train']:.2f}",
                 f"{stage_sum['evaluate']:.2f}", f"{stage_sum['log']:.2f}", f"{other:.2f}",
                 f"{100 * (1 - stage_sum['train'] / res.wall_seconds):.0f}%"])
    print_table(["what", "wall s", "train s", "evaluate s", "log s", "other s", "overhead"], rows,
                title="Fixed cost of one fit outside training (warm cache, existing tracking store)")

    spec = sweep.load_spec("sweeps/tiny.yaml")
    spec.space.pop("net.large_pool")  # every trial trains (no invalid points)
    overrides = {k: v for k, v in common.items() if not k.startswith("tracking.")}
    t = time.perf_counter()
    result = sweep.run_sweep(spec, n_trials=a.trials, study_name="bench", tracking_home=str(tmp / "mlruns"),
                             overrides=overrides, verbose=False)
    sweep_s = time.perf_counter() - t
    import mlflow

    from dsn import tracking

    uri = tracking.tracking_uri(None, tmp / "mlruns")
    c = mlflow.MlflowClient(uri)
    exp = c.get_experiment_by_name("dsn-sweeps").experiment_id
    stage_runs = c.search_runs([exp], "tags.`dsn.stage` = 'pretrain'")
    train_s = sum(r.data.metrics.get("time/train_s", 0.0) for r in stage_runs)
    per_trial = sweep_s / a.trials
    print_table(
        ["trials", "sweep wall s", "per trial s", "training per trial s", "overhead per trial s", "overhead"],
        [[a.trials, f"{sweep_s:.1f}", f"{per_trial:.2f}", f"{train_s / a.trials:.2f}", f"{per_trial - train_s / a.trials:.2f}",
          f"{100 * (1 - train_s / sweep_s):.0f}%"]],
        title=f"dsn sweep sweeps/tiny.yaml (pretraining stage only), {result.n_trials} trials in the study")
    print(f"\nprocess start-up (imports of dsn, lightning, mlflow, mne, optuna): {import_s:.2f} s")
    print("Overhead = wall time not spent in trainer.fit: config check, data loading from the cache, MLflow runs, "
          "evaluating the selected model on whole recordings, figures, checkpoints, model logging, study storage.")


if __name__ == "__main__":
    main()
