"""Adapting a model to a new site: its figures on the site's test nights before and after `dsn fit --init`.

    python benchmarks/eval_adaptation.py --quick          # a few minutes on 2 CPU cores (short nights, fewer epochs)
    python benchmarks/eval_adaptation.py                  # full size (see README, "Adapting a model to a new site")
    python benchmarks/eval_adaptation.py --model models:/deepsleepnet@champion --tracking_home mlruns

1. The model REF: ``--model`` (any model reference, resolved in ``--tracking_home``), else a small one trained
   here with ``conf/demo.yaml`` on ``dsn synth`` data of site A (the generator's site), its fine-tuning model
   logged (``runs:/<id>/model``).
2. The new site: ``dsn synth --site B`` (``--site_*`` to change it) with another seed (other people): a pool
   of labelled nights to adapt on, ``--val`` validation nights and ``--test`` test nights (one night a subject).
3. BEFORE: REF scored on the site's validation and test nights with :func:`dsn.workflows.evaluate.evaluate`
   (what ``dsn evaluate`` computes: pooled acc, macro-F1, kappa); the model's EEG Fpz-Cz is read from the
   site's channel (a cross-montage check).
4. AFTER: for N in ``--nights`` (1, 2, 4) labelled nights and each recipe, ``dsn fit --init REF`` on those N
   nights (the validation nights select the epoch), the adapted model scored the same way. ``scratch`` is the
   baseline: the same config trained from random weights on the same N nights (no ``--init``).
   The recipe for each N is chosen on the VALIDATION nights (macro-F1); the test nights are only reported.

Prints one markdown table (validation MF1, test acc / MF1 / kappa per row; the chosen recipe of each N marked)
and the wall time of each step. Every figure is from one seed: with one validation and a few test nights the
differences between recipes are noisy, the ones between before and after much less so.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_lines, print_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

#: Adaptation recipes: config overrides on conf/demo.yaml (with ``init`` set, except ``scratch``).
RECIPES: dict[str, dict] = {
    # fine-tuning only, the demo's learning rates (CNN 1e-5, new layers 1e-3)
    "finetune": {"stages": ["finetune"]},
    # fine-tuning only, ten times lower learning rates (CNN 1e-6, new layers 1e-4)
    "finetune-low-lr": {"stages": ["finetune"], "finetune.system.lr_pretrained": 1e-6, "finetune.system.lr_new": 1e-4},
    # both stages from the model (pretraining's CNN at a tenth of the demo's rate: 1e-4)
    "both-stages": {"stages": ["pretrain", "finetune"], "pretrain.system.lr": 1e-4},
    # baseline: both stages from random weights on the same nights (the demo's recipe, no init)
    "scratch": {"stages": ["pretrain", "finetune"]},
}
SIZES = {  # hours per night, site A subjects, site A epochs (pretrain, finetune), adaptation epochs
    "full": {"hours": 8.0, "a_subjects": 8, "a_epochs": (8, 8), "epochs": 8},
    "quick": {"hours": 2.0, "a_subjects": 6, "a_epochs": (4, 4), "epochs": 4},
}


def _cfg(overrides: dict):
    from dsn import config

    quiet = {"pretrain.trainer.enable_progress_bar": False, "finetune.trainer.enable_progress_bar": False,
             "pretrain.trainer.enable_model_summary": False, "finetune.trainer.enable_model_summary": False,
             "data.progress": False}
    return config.load_config([str(ROOT / "conf" / "demo.yaml")], {**quiet, **overrides})


def train_site_a(work: Path, size: dict, seed: int) -> tuple[str, str, dict]:
    """A small model trained with conf/demo.yaml on site A; (its fine-tuning model URI, tracking URI, figures)."""
    from dsn.data.synth import write_dataset
    from dsn.workflows.run import run_fit

    data = work / "siteA"
    if not data.exists():
        write_dataset(data, subjects=size["a_subjects"], hours=size["hours"], seed=seed, progress=False)
    pre, ft = size["a_epochs"]
    res = run_fit(_cfg({"data.data_dir": str(data), "data.cache_dir": str(work / "cache"), "tracking.home": str(work / "mlruns"),
                        "tracking.experiment": "adaptation", "tracking.run_name": "site-A", "tracking.log_model": True,
                        "pretrain.trainer.max_epochs": pre, "finetune.trainer.max_epochs": ft}), verbose=False)
    return res.stage("finetune").model_uri, res.tracking_uri, res.stage("finetune").metrics


def write_site_b(work: Path, a, size: dict) -> tuple[Path, list[str], list[str], list[str], str]:
    """The new site's nights: (data folder, train pool, validation and test subject ids, its EEG label)."""
    from dsn.data.synth import site_shift, write_dataset

    site = site_shift(a.site, gain=a.site_gain, noise=a.site_noise, mains=a.site_mains, channel=a.site_channel,
                      mix=a.site_mix)
    n_pool = max(a.nights)
    n = n_pool + a.val + a.test
    data = work / f"site{a.site}"
    if not data.exists():
        write_dataset(data / "all", subjects=n, hours=size["hours"], seed=a.seed + 1, site=site, progress=False)
    ids = [f"SC4{s:02d}" for s in range(n)]
    pool, val, test = ids[:n_pool], ids[n_pool:n_pool + a.val], ids[n_pool + a.val:]
    for split, subs in (("val", val), ("test", test)):  # dsn evaluate scores every recording of a folder
        (data / split).mkdir(exist_ok=True)
        for f in (data / "all").glob("SC4*.edf"):
            if f.name[:5] in subs and not (data / split / f.name).exists():
                (data / split / f.name).symlink_to(f.resolve())
    print(f"site {a.site}: {site.describe()}; {n} subjects x 1 night x {size['hours']:g} h (seed {a.seed + 1})")
    return data, pool, val, test, site.label("EEG Fpz-Cz")


def score(ref: str, folder: Path, label: str, uri: str, cache: Path) -> dict:
    """acc, MF1, kappa of model ``ref`` on every night of ``folder`` (``dsn evaluate``'s pooled figures)."""
    from dsn.workflows.evaluate import evaluate

    pooled = evaluate(ref, folder, channels=[label], cache_dir=str(cache), uri=uri)["pooled"]
    return {k: pooled[k] for k in ("acc", "f1_macro", "kappa")}


def adapt(ref: str, recipe: str, n: int, data: Path, pool, val, test, label: str, work: Path, size: dict, seed: int):
    """``dsn fit --init ref`` (or from scratch) with ``recipe`` on the first ``n`` nights; the selected checkpoint."""
    from dsn.workflows.run import run_fit

    over = dict(RECIPES[recipe])
    if recipe != "scratch":
        over["init"] = ref
    e = size["epochs"]
    over.update({
        "data.data_dir": str(data / "all"), "data.cache_dir": str(work / "cache"), "tracking.home": str(work / "mlruns"),
        "tracking.experiment": "adaptation", "tracking.run_name": f"{recipe}-{n}", "tracking.log_model": False,
        "data.train_subjects": pool[:n], "data.val_subjects": val, "data.test_subjects": test, "test": False,
        "data.channel_aliases": {"EEG Fpz-Cz": [label]}, "seed_everything": seed,
        "pretrain.trainer.max_epochs": e, "finetune.trainer.max_epochs": e,
    })  # fmt: skip
    res = run_fit(_cfg(over), verbose=False)
    return res.stage("finetune").selected_checkpoint


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="2-h nights, 6 site-A subjects, 4 + 4 / 4 epochs (a few minutes)")
    p.add_argument("--model", default=None, help="model REF to adapt (default: train one on site A here)")
    p.add_argument("--tracking_home", default=None, help="tracking home where --model resolves (default: the work folder's)")
    p.add_argument("--nights", type=int, nargs="+", default=[1, 2, 4], help="labelled nights of the new site to adapt on")
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES), help="adaptation recipes")
    p.add_argument("--val", type=int, default=1, help="validation nights (choose the epoch and the recipe)")
    p.add_argument("--test", type=int, default=2, help="test nights (reported)")
    p.add_argument("--site", default="B", help="dsn synth site preset of the new site")
    for k in ("gain", "noise", "mains", "mix"):
        p.add_argument(f"--site_{k}", type=float, default=None, help=f"override the preset's {k}")
    p.add_argument("--site_channel", default=None, help="override the preset's channel label")
    p.add_argument("--seed", type=int, default=0, help="site A generator seed (site B: seed + 1) and training seed")
    p.add_argument("--work", default=None, help="work folder (data, cache, tracking; kept); default a temporary one")
    a = p.parse_args(argv)
    from dsn.cli import setup_logging

    setup_logging(quiet_lightning=True)  # dsn's lines only (each fit runs with verbose=False)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    size = SIZES["quick" if a.quick else "full"]
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="dsn-adapt-"))
    work.mkdir(parents=True, exist_ok=True)
    print("\n".join(machine_lines()))
    print(f"size: {'quick' if a.quick else 'full'} {size}; work folder {work}")
    from dsn import tracking

    t0 = time.perf_counter()
    times: list[tuple[str, float]] = []
    rows: list[list] = []
    if a.model:
        ref, uri = a.model, tracking.tracking_uri(None, Path(a.tracking_home or work / "mlruns"))
    else:
        ref, uri, home = train_site_a(work, size, a.seed)
        times.append(("train the site-A model", time.perf_counter() - t0))
        rows.append(["site A model on site A test nights (its own fit)", "", *_cells(
            {k: home[f"test/{k}"] for k in ("acc", "f1_macro", "kappa")})])
    print(f"model: {ref}")
    t = time.perf_counter()
    data, pool, val, test, label = write_site_b(work, a, size)
    times.append((f"write site {a.site}", time.perf_counter() - t))
    t = time.perf_counter()
    cache = work / "cache"
    before_val, before = score(ref, data / "val", label, uri, cache), score(ref, data / "test", label, uri, cache)
    times.append(("score before", time.perf_counter() - t))
    rows.append([f"BEFORE: the model on site {a.site}", _pct(before_val["f1_macro"]), *_cells(before)])
    print(f"  before: val MF1 {_pct(before_val['f1_macro'])}; test acc {_pct(before['acc'])}, MF1 "
          f"{_pct(before['f1_macro'])}, kappa {before['kappa']:.3f}", flush=True)
    for n in a.nights:
        got = []
        for recipe in a.recipes:
            t = time.perf_counter()
            ckpt = adapt(ref, recipe, n, data, pool, val, test, label, work, size, a.seed)
            v, s = score(ckpt, data / "val", label, uri, cache), score(ckpt, data / "test", label, uri, cache)
            times.append((f"{recipe}, {n} night(s)", time.perf_counter() - t))
            got.append((recipe, v, s))
            print(f"  {n} night(s), {recipe}: val MF1 {_pct(v['f1_macro'])}; test acc {_pct(s['acc'])}, MF1 "
                  f"{_pct(s['f1_macro'])}, kappa {s['kappa']:.3f} ({times[-1][1]:.0f} s)", flush=True)
        best = max((g for g in got if g[0] != "scratch"), key=lambda g: g[1]["f1_macro"], default=None)
        for recipe, v, s in got:
            mark = " (chosen on val)" if best is not None and recipe == best[0] else ""
            rows.append([f"AFTER {n} night(s): {recipe}{mark}", _pct(v["f1_macro"]), *_cells(s)])
    print_table(["", "val MF1", "test acc", "test MF1", "test kappa"], rows,
                title=f"Adapting to site {a.site} ({len(val)} validation, {len(test)} test nights; acc and MF1 in %)")
    print_table(["step", "wall s"], [[k, f"{v:.0f}"] for k, v in times] + [["total", f"{time.perf_counter() - t0:.0f}"]])


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _cells(f: dict) -> list[str]:
    return [_pct(f["acc"]), _pct(f["f1_macro"]), f"{f['kappa']:.3f}"]


if __name__ == "__main__":
    main()
