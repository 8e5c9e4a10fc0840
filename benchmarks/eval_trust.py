"""Does dsn say when not to trust a hypnogram? The trust detectors on nights a model scores well and badly (issue 34).

    python benchmarks/eval_trust.py --small        # 2-3 minutes on 2 CPU cores (debug-size fit, 1.5-h nights)
    python benchmarks/eval_trust.py                # full size: conf/demo.yaml fit on 8-h nights (see docs/trust.md)
    python benchmarks/eval_trust.py --size medium  # 4-h nights, 4 + 4 epochs (about 25 min on 2 loaded cores)
    python benchmarks/eval_trust.py --hours 6 --epochs 4 --work /tmp/trust    # other sizes; --work keeps the nights
    python benchmarks/eval_trust.py --size medium --work /tmp/trust --model /tmp/trust/mlruns/checkpoints/RUN/finetune/selected.ckpt
                                                   # re-judge with the model of an earlier run (no training)

1. A model trained on one synthetic site: ``dsn synth`` nights (site A), ``conf/demo.yaml`` (``--small``: with
   ``conf/debug.yaml``), explicit train / validation / test subjects.
2. Nights it is applied to: (a) its own held-out test nights; (b) ``dsn synth --site B`` nights (another
   seed: other people; the model's EEG Fpz-Cz read from the site's ``EEG C4-A1``); (c) nights of
   ``benchmarks/othergen.py``, a generator the model never saw; (d) the test nights of (a) altered: amplitude
   x5 and x0.2, 50 Hz mains (20 uV) and added white noise with the night's own standard deviation.
3. Each night is scored as ``dsn predict`` scores it (:func:`dsn.workflows.predict.scaled_proba`: the model's
   normalisation, calibrated probabilities); its macro-F1 against the true hypnogram, and per detector a level
   and a score:

   * ``plausibility``: :func:`dsn.trust.check_night` on the predicted hypnogram (score: 1 per ``check`` rule,
     2 per ``do_not_use`` rule);
   * ``prediction_shift``: :func:`dsn.trust.check_shift` of the scored period's predicted stages, with the
     reference the fit stored in the model (``calibration["shift"]``: a chi-square test against the validation
     nights' confusion-corrected expectation, false-alarm rate 1 %);
   * ``feature_shift``: :func:`dsn.trust.check_features` on the epoch encoder's features of the scored
     period, with the reference the fit stored (``calibration["features"]``: class Gaussians of the training
     nights' epochs with their true stages, threshold from the validation nights);
   * ``familiarity``: the model's existing familiarity check (:func:`dsn.workflows.predict.night_familiarity`);
   * ``combined``: :func:`dsn.trust.combine` of the three trust detectors; ``combined + familiarity`` adds the
     familiarity check as a fourth finding.

   The features come from :func:`dsn.workflows.trust.epoch_features` on the normalised input that
   ``scaled_proba`` returns, as ``dsn predict`` computes them.
4. The table: per detector, the share of nights warned (``check`` or ``do not use``) among those scored badly
   (macro-F1 < 0.6) and among those scored well (> 0.75), and the AUROC of its score for "scored badly".
   Targets (issue 34): >= 90 % of badly scored nights warned, <= 10 % of well scored ones.

Not a test: the figures depend on the data, the model and the seed. ``--small`` trains a debug-size model,
which scores most nights badly: it checks the plumbing, not the detectors.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_lines, print_table  # noqa: E402
from eval_familiarity import alter  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BAD, GOOD = 0.6, 0.75
ALTERATIONS = ("amplitude x5", "amplitude x0.2", "50 Hz mains", "added noise")
DETECTORS = ("plausibility", "prediction_shift", "feature_shift", "familiarity", "combined", "combined + familiarity")
SIZES = {  # hours per night; site-A train / val / test subjects; site-B and othergen nights; configs
    "full": {"hours": 8.0, "train": 6, "val": 2, "test": 4, "site_b": 6, "other": 6, "configs": ["demo.yaml"]},
    "medium": {"hours": 4.0, "train": 4, "val": 1, "test": 2, "site_b": 3, "other": 3, "configs": ["demo.yaml"],
               "epochs": {"pretrain.trainer.max_epochs": 4, "finetune.trainer.max_epochs": 4}},
    "small": {"hours": 1.5, "train": 3, "val": 1, "test": 1, "site_b": 1, "other": 1,
              "configs": ["demo.yaml", "debug.yaml"]},
}


def train_site_a(work: Path, size: dict, seed: int, model: str | None = None):
    """Write site A and fit a model on it (or load ``model``, fitted on it by an earlier run with the same
    ``--work``, size and seed); (scorer, {split: [(psg, hypnogram)]})."""
    from dsn import config
    from dsn.data.synth import write_dataset
    from dsn.workflows.run import run_fit

    n = size["train"] + size["val"] + size["test"]
    pairs = _written(work / "siteA", n) or write_dataset(work / "siteA", subjects=n, hours=size["hours"], seed=seed,
                                                         progress=False)
    ids = [f"SC4{s:02d}" for s in range(n)]
    split = {"train": ids[: size["train"]], "val": ids[size["train"]: size["train"] + size["val"]],
             "test": ids[size["train"] + size["val"]:]}
    splits = {k: [p for p in pairs if p[0].name[:5] in v] for k, v in split.items()}
    if model:
        from dsn.workflows.registry import load_scorer

        return load_scorer(model), splits
    quiet = {f"{s}.trainer.{k}": False for s in ("pretrain", "finetune") for k in ("enable_progress_bar", "enable_model_summary")}
    cfg = config.load_config([str(ROOT / "conf" / c) for c in size["configs"]], {
        **quiet, "data.progress": False, "data.data_dir": str(work / "siteA"), "data.cache_dir": str(work / "cache"),
        "tracking.home": str(work / "mlruns"), "tracking.experiment": "eval-trust", "tracking.log_model": False,
        "data.train_subjects": split["train"], "data.val_subjects": split["val"], "data.test_subjects": split["test"],
        "test": False, "seed_everything": seed, **size.get("epochs", {})})  # fmt: skip
    scorer = run_fit(cfg, verbose=False).final.scorer
    return scorer, splits


def _written(folder: Path, n: int) -> list | None:
    """The (psg, hypnogram) pairs of a folder written by an earlier run with ``--work`` (None unless all ``n``)."""
    from dsn.data.datasets import find_recordings

    if not folder.is_dir():
        return None
    pairs = [(r.psg, r.hypnogram) for r in find_recordings(folder)]
    return pairs if len(pairs) == n else None


def other_nights(work: Path, size: dict, seed: int) -> tuple[list, list, str]:
    """(site-B pairs, othergen pairs, the site-B label of the model's EEG)."""
    import othergen

    from dsn.data.synth import site_shift, write_dataset

    site = site_shift("B")
    b = _written(work / "siteB", size["site_b"]) or write_dataset(
        work / "siteB", subjects=size["site_b"], hours=size["hours"], seed=seed + 1, site=site, progress=False)
    other = _written(work / "othergen", size["other"]) or othergen.write_nights(
        work / "othergen", size["other"], size["hours"], seed=seed + 2)
    return b, other, site.label("EEG Fpz-Cz")


def score_night(scorer, x: np.ndarray, source: str) -> dict:
    """Probabilities, stages, epoch-encoder features of the scored period and the normalised input of a night."""
    from dsn.workflows.predict import scaled_proba
    from dsn.workflows.trust import epoch_features

    proba, x_in, period = scaled_proba(scorer, x, source, return_input=True)
    feats = epoch_features(scorer, x_in[period])
    return {"proba": proba, "stages": proba.argmax(-1), "x_in": x_in, "period": period, "feats": feats}


def read_night(scorer, psg: Path, hyp: Path, label: str | None = None):
    """(raw epochs, true stages) of a night; ``label`` reads another channel in place of the model's one."""
    from dsn.data.datasets import expert_labels
    from dsn.data.psg import read_epochs

    prep = scorer.preprocessing
    chans = [label] if label else scorer.channels
    inp = read_epochs(psg, chans, scorer.sfreq, 30.0, prep.get("channel_aliases"), prep.get("source_sfreq"))
    return inp.x, expert_labels(hyp, psg, len(inp.x))


def references(scorer) -> tuple[dict, dict]:
    """The prediction-shift and feature-shift references the fit stored in the model's calibration (as
    ``dsn predict`` uses them): fitted by :func:`dsn.workflows.calibration.calibrate_selected` and
    :func:`dsn.workflows.calibration.feature_reference` on the training nights (features) and the validation
    nights (confusion matrix, thresholds)."""
    cal = scorer.calibration
    return cal.get("shift"), cal.get("features")


def judge(scorer, refs: tuple[dict, dict], x: np.ndarray, y: np.ndarray, source: str) -> dict:
    """One night's macro-F1 and every detector's (level, score)."""
    from dsn.hypnogram import agreement
    from dsn.trust import check_features, check_night, check_shift, combine
    from dsn.workflows.predict import night_familiarity

    s = score_night(scorer, x, source)
    stages = s["stages"]
    f1 = agreement(y, stages, scorer.class_names)["f1_macro"]
    rules = check_night(stages)
    shift = check_shift(refs[0], np.bincount(stages[s["period"]], minlength=5))
    feat = check_features(refs[1], s["feats"]) if refs[1] else None
    fam = night_familiarity(scorer, s["x_in"], s["proba"])
    fam_finding = None if fam is None else {
        "name": "familiarity", "level": "ok" if fam["familiar"] else "check", "value": fam["score"],
        "reason": "familiarity: " + ("; ".join(fam["warnings"]) or f"score {fam['score']:.1f}")}
    feats = [feat] if feat else []
    both = combine(rules, shift, *feats)
    every = combine(rules, shift, *feats, *([fam_finding] if fam_finding else []))
    rank = {"ok": 0, "check": 1, "do_not_use": 2}
    out = {
        "f1": float(f1), "verdict": both.verdict, "reasons": list(both.reasons),
        "plausibility": (max(rank[r.level] for r in rules), float(sum(rank[r.level] for r in rules))),
        "prediction_shift": (rank[shift.level], shift.value),
        "combined": (both.code, float(both.code)), "combined + familiarity": (every.code, float(every.code)),
    }  # fmt: skip
    if feat:
        out["feature_shift"] = (rank[feat.level], feat.value)
    if fam_finding:
        out["familiarity"] = (rank[fam_finding["level"]], float(fam["score"]))
    return out


def auroc(scores, positive) -> float:
    """Area under the ROC curve of ``scores`` for ``positive`` (Mann-Whitney, ties counted half); nan if one class."""
    s, p = np.asarray(scores, float), np.asarray(positive, bool)
    if p.all() or not p.any():
        return float("nan")
    ranks = np.empty(len(s))
    order = np.argsort(s, kind="mergesort")
    ranks[order] = np.arange(1, len(s) + 1)
    for v in np.unique(s):  # average ranks of ties
        ranks[s == v] = ranks[s == v].mean()
    n1 = p.sum()
    return float((ranks[p].sum() - n1 * (n1 + 1) / 2) / (n1 * (~p).sum()))


def summary_rows(nights: list[dict]) -> list[list[str]]:
    """Per detector: warned among badly / well scored nights, AUROC for 'scored badly'."""
    f1 = np.array([n["f1"] for n in nights])
    bad, good = f1 < BAD, f1 > GOOD
    rows = []
    for det in DETECTORS:
        have = np.array([det in n for n in nights])
        if not have.any():
            rows.append([det, "n/a", "n/a", "n/a"])
            continue
        warned = np.array([have[i] and nights[i][det][0] > 0 for i in range(len(nights))])
        score = np.array([nights[i][det][1] if have[i] else np.nan for i in range(len(nights))])

        def share(mask, have=have, warned=warned):
            m = mask & have
            return f"{100 * warned[m].mean():.0f} % ({warned[m].sum()}/{m.sum()})" if m.any() else "n/a"

        a = auroc(score[have], bad[have])
        rows.append([det, share(bad), share(good), "n/a" if np.isnan(a) else f"{a:.2f}"])
    return rows


def evaluate_all(scorer, refs, splits, b, other, b_label, seed) -> list[dict]:
    """Every night of (a)-(d), judged."""
    rng = np.random.default_rng(seed)
    sets = [("a: own test", splits["test"], None), ("b: site B", b, b_label), ("c: othergen", other, None)]
    nights = []
    for name, pairs, label in sets:
        for psg, hyp in pairs:
            x, y = read_night(scorer, psg, hyp, label)
            nights.append({"set": name, "night": psg.name[:8], **judge(scorer, refs, x, y, str(psg))})
            _show(nights[-1])
            if name.startswith("a"):
                for kind in ALTERATIONS:
                    xa = (x + rng.standard_normal(x.shape).astype(np.float32) * x.std() if kind == "added noise"
                          else alter(x, kind, rng))
                    nights.append({"set": f"d: {kind}", "night": psg.name[:8], **judge(scorer, refs, xa, y, str(psg))})
                    _show(nights[-1])
    return nights


def _show(n: dict) -> None:
    lv = " ".join(f"{d[:4]}={n[d][0]}" for d in DETECTORS[:4] if d in n)
    print(f"  {n['set']:<20} {n['night']} MF1 {100 * n['f1']:5.1f}  {lv}  -> {n['verdict']}"
          + (f" ({'; '.join(r.split(':')[0] for r in n['reasons'])})" if n["reasons"] else ""), flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--small", action="store_true", help="debug-size fit, 1.5-h nights, one night per set (minutes)")
    p.add_argument("--size", choices=list(SIZES), default=None, help="full (default), medium (4-h nights, 4 + 4 "
                   "epochs, 16 nights judged) or small (= --small)")
    p.add_argument("--seed", type=int, default=0, help="site A seed (site B: seed + 1, othergen: seed + 2)")
    p.add_argument("--work", default=None, help="work folder (data, cache, tracking; nights written there by an "
                   "earlier run with the same size and seed are reused); default a temporary one")
    p.add_argument("--hours", type=float, default=None, help="hours per night (default: the size's)")
    p.add_argument("--model", default=None, help="judge with this model (e.g. the finetune selected.ckpt under "
                   "WORK/mlruns/checkpoints/) instead of fitting one: it must come from a run with the same --work, "
                   "size and seed (the detectors re-judged, no training)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs per stage (default: the configs')")
    a = p.parse_args(argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from dsn.cli import setup_logging

    setup_logging(quiet_lightning=True)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    name = "small" if a.small else a.size or "full"
    size = dict(SIZES[name])
    if a.hours:
        size["hours"] = a.hours
    if a.epochs:
        size["epochs"] = {"pretrain.trainer.max_epochs": a.epochs, "finetune.trainer.max_epochs": a.epochs}
    print("\n".join(machine_lines()))
    print(f"size: {name} {size}")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dsn-trust-") as tmp:
        work = Path(a.work) if a.work else Path(tmp)
        scorer, splits = train_site_a(work, size, a.seed, a.model)
        t_fit = time.perf_counter() - t0
        refs = references(scorer)
        feat = (f"feature-shift threshold {refs[1]['threshold']:.2f} (validation nights "
                f"{[round(v, 2) for v in refs[1]['val_scores']]})" if refs[1] else "no feature-shift reference")
        print(f"model trained in {t_fit:.0f} s; prediction-shift threshold {refs[0]['threshold']:.2f} "
              f"(chi-square, false-alarm rate {100 * refs[0].get('false_alarm', float('nan')):g} %), {feat}")
        b, other, b_label = other_nights(work, size, a.seed)
        nights = evaluate_all(scorer, refs, splits, b, other, b_label, a.seed)
    sets = sorted({n["set"] for n in nights})
    print_table(["set", "nights", "mean MF1 %", "trusted", "check", "do not use"], [
        [s, sum(n["set"] == s for n in nights), f"{100 * np.mean([n['f1'] for n in nights if n['set'] == s]):.1f}",
         *[sum(n["set"] == s and n["verdict"] == v for n in nights) for v in ("trusted", "check", "do not use")]]
        for s in sets], title="Verdicts per set (combined: plausibility + prediction shift + feature shift)")
    f1 = np.array([n["f1"] for n in nights])
    print_table(["detector", f"warned, badly scored (MF1 < {BAD})", f"warned, well scored (MF1 > {GOOD})",
                 "AUROC for badly scored"], summary_rows(nights),
                title=f"{len(nights)} nights: {(f1 < BAD).sum()} badly scored, {(f1 > GOOD).sum()} well scored "
                      f"(targets: >= 90 % and <= 10 % warned); {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
