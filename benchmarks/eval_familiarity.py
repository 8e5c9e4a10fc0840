"""The familiarity check as a detector: false alarms on test nights, detection rate on the same nights altered.

    python benchmarks/eval_familiarity.py                      # synthesise 12 subjects, fit a demo model, evaluate
    python benchmarks/eval_familiarity.py --config conf/demo.yaml conf/debug.yaml --hours 2   # minutes, not hours
    python benchmarks/eval_familiarity.py --model PATH --recordings a-PSG.edf b-PSG.edf   # a trained model

With a fit of its own it first prints the fitted model's calibration figures (what ``dsn fit`` logs: the
temperature and low-confidence threshold chosen on the validation subjects, ECE and Brier before -> after
and the accuracy of confident vs flagged epochs on validation and test subjects).

Each test night is scored as ``dsn predict`` scores it (the model's normalisation, calibrated probabilities)
and compared with the model's stored description of its training nights (:func:`dsn.familiarity.check`),
unaltered (a warning is a false alarm) and altered on the raw signal in known ways: amplitude x0.2 and x5,
50 Hz mains (20 uV; at 100 Hz sampling it is the Nyquist frequency), a flat channel, clipping at the 97th
percentile of |x|, inverted polarity, the EOG channel read as EEG, and white noise with the night's
standard deviation. Prints the detection rate per alteration and the reason most often given. Not a test:
the figures depend on the data and the model.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ALTERATIONS = ("none", "amplitude x0.2", "amplitude x5", "50 Hz mains", "flat channel", "clipping",
               "inverted polarity", "EOG read as EEG", "white noise")


def alter(x, kind: str, rng, eog=None):
    """``x`` (n_epochs, n_chans, n_times) raw microvolts altered as named (a new array)."""
    import numpy as np

    x = np.array(x, dtype=np.float32)
    if kind == "amplitude x0.2":
        return x * 0.2
    if kind == "amplitude x5":
        return x * 5.0
    if kind == "50 Hz mains":
        n = np.arange(x.shape[0] * x.shape[-1]).reshape(x.shape[0], 1, x.shape[-1])
        return x + 20.0 * np.cos(np.pi * n + rng.uniform(0, 0.5)).astype(np.float32)  # 50 Hz at 100 Hz sampling
    if kind == "flat channel":  # the first channel
        x[:, 0] = 0.0
        return x
    if kind == "clipping":
        lim = np.quantile(np.abs(x), 0.97)
        return np.clip(x, -lim, lim)
    if kind == "inverted polarity":
        return -x
    if kind == "EOG read as EEG":
        return np.array(eog, dtype=np.float32)
    if kind == "white noise":
        return (rng.standard_normal(x.shape) * x.std()).astype(np.float32)
    return x


def fit_small_model(work: Path, subjects: int, epochs: int | None, seed: int, configs, hours: float):
    """Synthesise a data set and fit a model with ``configs``; returns (scorer, test PSG paths, final-stage figures)."""
    from dsn import config
    from dsn.data.synth import write_dataset
    from dsn.workflows.run import run_fit

    data = work / "data"
    write_dataset(data, subjects=subjects, nights=1, hours=hours, seed=seed, progress=False)
    epochs = {"pretrain.trainer.max_epochs": epochs, "finetune.trainer.max_epochs": epochs} if epochs else {}
    cfg = config.load_config(list(configs), {
        "data.data_dir": str(data), "data.cache_dir": str(work / "cache"), "data.n_folds": 3, "data.progress": False,
        "pretrain.trainer.enable_progress_bar": False, "finetune.trainer.enable_progress_bar": False,
        "tracking.home": str(work / "mlruns"), "tracking.log_model": False, **epochs})  # fmt: skip
    res = run_fit(cfg, verbose=False)
    names = [p.name for p in res.final.predictions["test"]]
    return res.final.scorer, [data / f"{n}-PSG.edf" for n in names], res.final.metrics


def print_calibration(metrics: dict) -> None:
    """The fitted model's calibration figures per split (what ``dsn fit`` logs as ``selected/...``)."""
    def cell(key: str, pct: bool = False) -> str:
        v = metrics.get(key)
        return "n/a" if v is None else (f"{100 * v:.1f}%" if pct else f"{v:.3f}")

    rows = [[split, f"{cell(f'{split}/ece_raw')} -> {cell(f'{split}/ece')}",
             f"{cell(f'{split}/brier_raw')} -> {cell(f'{split}/brier')}", cell(f"{split}/flagged_frac", True),
             cell(f"{split}/acc_confident", True), cell(f"{split}/acc_flagged", True)]
            for split in ("val", "test") if f"{split}/ece" in metrics]
    print_table(["subjects", "ECE raw -> calibrated", "Brier raw -> calibrated", "flagged", "acc confident", "acc flagged"],
                rows, title=f"calibration (T = {metrics.get('calibration/temperature', 1.0):.2f} and low-confidence "
                            f"threshold {metrics.get('calibration/threshold', float('nan')):.2f}, both chosen on validation)")
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model reference (default: fit a small model on synthetic data)")
    ap.add_argument("--recordings", nargs="*", default=None, help="test nights (PSG EDF) when --model is given")
    ap.add_argument("--eog_channel", default="EOG horizontal", help="channel read for 'EOG read as EEG'")
    ap.add_argument("--subjects", type=int, default=12, help="synthetic subjects (default 12: 4 test nights)")
    ap.add_argument("--epochs", type=int, default=None, help="training epochs per stage (default: the config's)")
    ap.add_argument("--config", nargs="+", default=["conf/demo.yaml"], help="fit configs (default conf/demo.yaml)")
    ap.add_argument("--hours", type=float, default=4.0, help="hours per synthetic night (default 4)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.chdir(ROOT)
    import numpy as np

    from dsn.data.psg import read_epochs
    from dsn.workflows.predict import night_familiarity, scaled_proba

    with tempfile.TemporaryDirectory() as tmp:
        if a.model:
            from dsn.workflows.registry import load_scorer

            scorer, paths = load_scorer(a.model), [Path(p) for p in a.recordings or []]
        else:
            scorer, paths, metrics = fit_small_model(Path(tmp), a.subjects, a.epochs, a.seed, a.config, a.hours)
            print_calibration(metrics)
        if not scorer.familiarity:
            raise SystemExit(f"{a.model}: this model was saved without a description of its training nights")
        rng = np.random.default_rng(a.seed)
        prep = scorer.preprocessing
        channels = scorer.channels
        rows, reasons = [], {}
        results = collections.defaultdict(list)
        for path in paths:
            inp = read_epochs(path, channels, scorer.sfreq, 30.0, prep.get("channel_aliases"), prep.get("source_sfreq"))
            eog = inp.x.copy()  # the first channel replaced by the EOG channel
            eog[:, 0] = read_epochs(path, [a.eog_channel], scorer.sfreq).x[:, 0]
            for kind in ALTERATIONS:
                proba, x_in, _ = scaled_proba(scorer, alter(inp.x, kind, rng, eog), str(path), return_input=True)
                fam = night_familiarity(scorer, x_in, proba)
                results[kind].append(not fam["familiar"])
                reasons.setdefault(kind, collections.Counter()).update(w.split(":")[0] for w in fam["warnings"])
                print(f"{path.name} {kind:<18} score {fam['score']:6.1f} / {fam['threshold']:.1f}  "
                      + "; ".join(fam["warnings"]), flush=True)
        for kind in ALTERATIONS:
            hits = results[kind]
            common = reasons[kind].most_common(1)
            label = "false alarms (unaltered)" if kind == "none" else kind
            rows.append([label, len(hits), sum(hits), f"{100 * np.mean(hits):.0f}%", common[0][0] if common else "-"])
        print()
        print_table(["alteration", "nights", "flagged", "rate", "most frequent reason"], rows,
                    title=f"familiarity check, threshold {scorer.familiarity['threshold']:.1f} "
                          f"(training nights {scorer.familiarity['n_nights']})")


if __name__ == "__main__":
    main()
