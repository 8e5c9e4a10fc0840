"""Every network recipe under the same protocol: `dsn cv` of each on the same `dsn synth` data, one table.

    python benchmarks/compare_networks.py                                   # site A, 6 subjects x 3 h, 3 folds
    python benchmarks/compare_networks.py --site B --recipes deepsleepnet tinysleepnet usleep
    python benchmarks/compare_networks.py --subjects 4 --hours 1 --folds 2 --epochs 1 --batches 3   # a smoke run

Writes a `dsn synth` data set once (``--site A``: the generator's recording, read as ``EEG Fpz-Cz``; ``--site B``:
another lab, 0.6 x amplitude, noise, 60-Hz mains and a central ``EEG C4-A1`` channel), then runs ``dsn cv``
(all folds, ``--parallel`` of them at once) for each recipe: ``deepsleepnet`` is the base recipe alone (``conf/demo.yaml``,
DeepSleepNet), every other name stacks ``conf/models/NAME.yaml`` on it. Every recipe gets the same data, folds,
seed and training budget (``--epochs`` per stage, ``--batches`` training batches per epoch); each keeps its own
optimiser settings, batch and sequence sizes. Prints one table of the pooled test figures of each recipe's final
stage (accuracy, macro-F1, Cohen's kappa, per-class F1), its parameters and the wall time per fold on this
machine (the cv's wall time x ``--parallel`` / folds, process start and evaluation included), then the MLflow link comparing the cv runs side by side (all in one experiment of ``--home``).

USleep is made CPU-sized (``--usleep_args``; its paper's network is 2.5 M parameters over 35-epoch windows).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_lines, print_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ["deepsleepnet", "tinysleepnet", "deepsleepnet-transformer", "chambon2018", "attnsleep", "usleep"]
#: The EEG channel each synthetic site records (site B relabels and re-derives it).
SITE_CHANNEL = {"A": "EEG Fpz-Cz", "B": "EEG C4-A1"}
CLASSES = ["W", "N1", "N2", "N3", "REM"]


def recipe_configs(name: str, base: str) -> list[str]:
    """The config files of recipe ``name``: the base alone for ``deepsleepnet``, else the base + its overlay."""
    return [base] if name == "deepsleepnet" else [base, f"conf/models/{name}.yaml"]


def budget_overrides(a) -> dict[str, object]:
    """The same training budget and data for every recipe (dotted config keys)."""
    out: dict[str, object] = {"data.channels": [SITE_CHANNEL[a.site]], "data.progress": False, "data.num_workers": 0,
                              "tracking.experiment": f"compare-networks-site-{a.site}", "tracking.log_model": False}
    for stage in ("pretrain", "finetune"):
        out.update({f"{stage}.trainer.max_epochs": a.epochs, f"{stage}.trainer.limit_train_batches": a.batches,
                    f"{stage}.trainer.enable_progress_bar": False, f"{stage}.trainer.enable_model_summary": False,
                    f"{stage}.trainer.accelerator": "cpu"})
    return out


def n_parameters(configs: list[str], overrides: dict[str, object]) -> int:
    """Parameters of the network a recipe's final stage trains (built from its config, random weights)."""
    from dsn import config
    from dsn.models import FeatureClassifierNet
    from dsn.models.networks import build_sequence_net
    from dsn.workflows import build

    cfg = config.load_config(configs, overrides)
    fnet = build.feature_net(cfg)
    if cfg.stages[-1] == "finetune":
        net = build_sequence_net(config.to_dict(cfg.finetune.net), fnet, cfg.pretrain.system.n_outputs)
    else:
        net = FeatureClassifierNet(fnet, cfg.pretrain.system.n_outputs)
    return sum(p.numel() for p in net.parameters())


def _argv(overrides: dict[str, object]) -> list[str]:
    return [x for k, v in overrides.items() for x in (f"--{k}", json.dumps(v) if not isinstance(v, str) else v)]


def run_recipe(name: str, a, data_dir: Path, home: Path, out: Path) -> dict[str, object]:
    """``dsn cv`` of one recipe: its pooled figures (final stage), cv run id, wall time per fold, parameters."""
    overrides = budget_overrides(a)
    overrides["tracking.run_name"] = name
    if name == "usleep":
        overrides["finetune.net.init_args"] = json.loads(a.usleep_args)
    configs = recipe_configs(name, a.base)
    cmd = [sys.executable, "-m", "dsn", "cv", *[x for c in configs for x in ("--config", c)],
           "--data.data_dir", str(data_dir), "--data.cache_dir", str(out / "cache"), "--tracking.home", str(home),
           "--folds", str(a.folds), "--parallel", str(a.parallel), "--out", str(out / name), *_argv(overrides)]
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", PYTHONPATH=os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    t0 = time.perf_counter()
    with open(out / f"{name}.log", "w") as f:
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"{name}: dsn cv exited with {rc}; see {out / f'{name}.log'}")
    summary = json.loads((out / name / "cv_summary.json").read_text())
    stage = list(summary["stages"])[-1]
    return {"name": name, "stage": stage, "pooled": summary["stages"][stage]["pooled"],
            "cv_run_id": summary["cv_run_id"], "wall_per_fold": wall * a.parallel / a.folds,
            "params": n_parameters([str(ROOT / c) for c in configs], {**overrides, "data.data_dir": str(data_dir)})}


def table_rows(results: list[dict[str, object]]) -> list[list[str]]:
    """One row per recipe: acc, MF1, kappa, per-class F1 (percent; kappa as is), parameters, s per fold."""
    rows = []
    for r in results:
        p = r["pooled"]
        rows.append([r["name"], r["stage"], f"{100 * p['acc']:.1f}", f"{100 * p['f1_macro']:.1f}", f"{p['kappa']:.3f}",
                     *[f"{100 * p[f'f1_{c}']:.1f}" for c in CLASSES], f"{r['params']:,}", f"{r['wall_per_fold']:.0f}"])
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", nargs="+", default=RECIPES, choices=RECIPES, help="recipes to compare (default all)")
    ap.add_argument("--site", choices=sorted(SITE_CHANNEL), default="A", help="dsn synth --site (default A)")
    ap.add_argument("--subjects", type=int, default=6, help="synthetic subjects (default 6)")
    ap.add_argument("--hours", type=float, default=3.0, help="night length in hours (default 3)")
    ap.add_argument("--folds", type=int, default=3, help="cv folds, all run (default 3)")
    ap.add_argument("--epochs", type=int, default=2, help="training epochs of every stage (default 2)")
    ap.add_argument("--batches", type=int, default=20, help="training batches per epoch (default 20)")
    ap.add_argument("--parallel", type=int, default=1, help="folds at once (dsn cv --parallel; default 1)")
    ap.add_argument("--base", default="conf/demo.yaml", help="the base recipe every overlay stacks on")
    ap.add_argument("--usleep_args", default='{"depth": 6, "complexity_factor": 0.5}',
                    help="USleep's init_args (JSON; default CPU-sized)")
    ap.add_argument("--work", type=Path, default=None, help="folder for data, tracking home and logs (default: a temp dir)")
    a = ap.parse_args(argv)
    if a.folds < 2 or a.subjects - -(-a.subjects // a.folds) < 2:
        ap.error("--folds >= 2 and enough --subjects for a fold's test subjects, one validation and one training subject")
    work = a.work or Path(tempfile.mkdtemp(prefix="dsn-compare-"))
    work.mkdir(parents=True, exist_ok=True)
    data_dir, home = work / f"synth-site-{a.site}", work / "mlruns"
    for line in machine_lines():
        print(line)
    if not (data_dir / ".complete").exists():
        subprocess.run([sys.executable, "-m", "dsn", "synth", str(data_dir), "--subjects", str(a.subjects), "--hours",
                        str(a.hours), "--seed", "0", "--site", a.site], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        (data_dir / ".complete").write_text("ok")
    print(f"data: dsn synth --site {a.site} ({SITE_CHANNEL[a.site]}), {a.subjects} subjects x {a.hours:g} h; "
          f"{a.folds} folds, {a.parallel} at once; {a.epochs} epoch(s) x {a.batches} batches per stage; base {a.base}; work {work}", flush=True)
    results = []
    for name in a.recipes:
        results.append(run_recipe(name, a, data_dir, home, work))
        print(f"  {name}: {results[-1]['wall_per_fold']:.0f} s per fold", flush=True)
    print_table(["recipe", "stage", "acc", "MF1", "kappa", *[f"F1 {c}" for c in CLASSES], "params", "s/fold"],
                table_rows(results), title=f"dsn cv, {a.folds} folds pooled, synth site {a.site}")
    from dsn import tracking

    uri = tracking.tracking_uri(None, home)
    exp = tracking.find_experiment_id(uri, f"compare-networks-site-{a.site}")
    print(f"MLflow comparison of the cv runs (open `dsn ui --tracking.home {home}` first):")
    print("  " + tracking.compare_url([str(r["cv_run_id"]) for r in results], [exp] * len(results)))


if __name__ == "__main__":
    main()
