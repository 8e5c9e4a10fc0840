"""``dsn cv``: subject-wise k-fold cross-validation, the paper's evaluation, with pooled figures.

Each fold is :func:`dsn.workflows.run.run_fit` (both stages; validation subjects drawn from the
training side of the fold) nested under one cv parent run. The test predictions of all folds are
pooled into one confusion matrix, from which accuracy, macro-F1, Cohen's kappa and per-class
precision / recall / F1 are computed, for the CNN-only stage and for the full model, beside the
per-fold spread (mean ± sd of the fold figures) and the paper's published row.

Resumable fold by fold: running the same command again finds the cv run by its config, skips the
finished folds (their predictions are read back from disk) and resumes an interrupted one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dsn.data.channels import pick_channels
from dsn.errors import ConfigError

log = logging.getLogger(__name__)

#: DeepSleepNet, Sleep-EDF-20 Fpz-Cz, 20-fold CV (Supratak et al. 2017, Table III/IV).
PAPER_ROW = {"acc": 0.820, "f1_macro": 0.769, "kappa": 0.76, "f1_W": 0.847, "f1_N1": 0.466, "f1_N2": 0.859,
             "f1_N3": 0.848, "f1_REM": 0.824}
CV_KEYS = ("folds", "out", "resume_cv", "register_fold")


def build_parser():
    """``dsn cv``: the training config plus the cv flags."""
    from dsn import config

    p = config.build_parser(prog="dsn cv", description="Subject-wise k-fold cross-validation with pooled test figures.",
                            fit_flags=False)
    p.add_argument("--folds", type=int | None, default=None, help="Number of folds (default: data.n_folds).")
    p.add_argument("--out", type=str | None, default=None, help="Also write cv_summary.json (and the pooled figures) here.")
    p.add_argument("--resume_cv", type=bool, default=True,
                   help="Continue the cv run of the same config if there is one (finished folds are skipped); false: start anew.")
    p.add_argument("--register_fold", type=int | None, default=None,
                   help="Register this fold's final model under tracking.register (default name deepsleepnet).")
    return p


def stage_figures(preds_by_fold: Sequence[Sequence[Any]], class_names: Sequence[str]) -> dict[str, Any]:
    """Pooled and per-fold figures of one stage from its per-fold test predictions.

    Returns a dict with ``pooled`` (acc, f1_macro, kappa, f1_/precision_/recall_<class>), ``confusion``
    (pooled counts, rows true), ``n_epochs``, ``per_fold`` (the same figures per fold), ``mean`` and ``sd``.
    """
    from dsn.evaluation import confusion_of, metrics_from_confusion

    cms = [confusion_of(p, len(class_names)) for p in preds_by_fold]
    pooled_cm = np.sum(cms, axis=0) if cms else np.zeros((len(class_names),) * 2, dtype=np.int64)
    per_fold = [metrics_from_confusion(cm, class_names, precision_recall=True) for cm in cms]
    keys = list(per_fold[0]) if per_fold else []
    mean = {k: float(np.nanmean([f[k] for f in per_fold])) for k in keys}
    sd = {k: float(np.nanstd([f[k] for f in per_fold], ddof=1)) if len(per_fold) > 1 else 0.0 for k in keys}
    return {"pooled": metrics_from_confusion(pooled_cm, class_names, precision_recall=True), "confusion": pooled_cm.tolist(), "n_epochs": int(pooled_cm.sum()),
            "per_fold": per_fold, "mean": mean, "sd": sd}


def summarise(folds: list[dict[str, Any]], stages: Sequence[str], class_names: Sequence[str]) -> dict[str, Any]:
    """``cv_summary.json``: per stage figures; the final stage's also at the top level (``pooled.f1_macro``).

    Each stage's (and each validation block's) ``calibration``: ECE / Brier of the raw and the calibrated
    probabilities (each fold's test epochs calibrated with that fold's own temperature) and the accuracy of
    confident vs flagged epochs (each fold's own threshold) over the pooled epochs
    (:func:`dsn.workflows.calibration.pooled_calibration`).
    """
    from dsn.workflows.calibration import pooled_calibration

    out: dict[str, Any] = {"n_folds": len(folds), "class_names": list(class_names), "paper_sleep_edf20_fpzcz": PAPER_ROW,
                           "folds": [{k: v for k, v in f.items() if k not in ("predictions", "val_predictions")} for f in folds],
                           "stages": {}}
    for stage in stages:
        out["stages"][stage] = stage_figures([f["predictions"][stage] for f in folds], class_names)
        out["stages"][stage]["calibration"] = pooled_calibration(folds, stage)
    # the validation subjects of every fold, pooled the same way: what recipes should be compared on
    out["validation"] = {stage: {k: v for k, v in stage_figures([f.get("val_predictions", {}).get(stage, []) for f in folds],
                                                               class_names).items() if k != "per_fold"}
                         for stage in stages}
    for stage in stages:
        out["validation"][stage]["calibration"] = pooled_calibration(folds, stage, "val_predictions")
    final = out["stages"][stages[-1]]
    out.update({k: final[k] for k in ("pooled", "confusion", "n_epochs", "mean", "sd", "calibration")})
    out["final_stage"] = stages[-1]
    return out


def format_summary(summary: dict[str, Any]) -> str:
    """The paper-style table: pooled figures of each stage, the fold spread, and the paper's row."""
    names = summary["class_names"]
    cols = ["acc", "f1_macro", "kappa", *[f"f1_{c}" for c in names]]
    head = f"{'':<34}" + "".join(f"{c.replace('f1_macro', 'MF1').replace('f1_', 'F1 '):>11}" for c in cols)
    lines = [f"Cross-validation, {summary['n_folds']} folds, {summary['n_epochs']} test epochs pooled", head, "-" * len(head)]

    def row(label: str, values: dict[str, float]) -> str:
        cells = []
        for c in cols:
            v = values.get(c, float("nan"))
            cells.append(f"{'n/a':>11}" if v is None or math.isnan(v) else (f"{v:>11.3f}" if c == "kappa" else f"{100 * v:>11.1f}"))
        return f"{label:<34}" + "".join(cells)

    for stage, fig in summary["stages"].items():
        label = "CNN only (pretrain)" if stage == "pretrain" else "full model (finetune)"
        lines.append(row(f"dsn {label}, pooled", fig["pooled"]))
        val = summary.get("validation", {}).get(stage)
        if val and val.get("n_epochs"):
            lines.append(row("  validation subjects, pooled", val["pooled"]))
        spread = "".join(
            f"{'':>11}" if math.isnan(fig['mean'].get(c, float('nan'))) else
            (f"{fig['mean'][c]:.2f}±{fig['sd'][c]:.2f}".rjust(11) if c == "kappa" else
             f"{100 * fig['mean'][c]:.1f}±{100 * fig['sd'][c]:.1f}".rjust(11))
            for c in cols
        )  # fmt: skip
        lines.append(f"{'  per fold, mean±sd':<34}" + spread)
    lines.append(row("paper: Sleep-EDF-20 Fpz-Cz (2017)", summary["paper_sleep_edf20_fpzcz"]))
    lines.append("(acc, MF1, F1 in %; kappa as a fraction; compare recipes on the validation rows, "
                 "report the test rows)")
    cal = [format_calibration(stage, fig["calibration"]) for stage, fig in summary["stages"].items() if fig.get("calibration")]
    if cal:
        lines += ["Calibration, pooled test epochs (each fold's own temperature and low-confidence threshold):", *cal]
    return "\n".join(lines)


def format_calibration(stage: str, c: dict[str, float]) -> str:
    """One line: pooled ECE and Brier before -> after calibration, accuracy of confident vs flagged epochs."""

    def pct(key: str) -> str:
        v = c.get(key)
        return "n/a" if v is None or math.isnan(v) else f"{100 * v:.1f}%"

    def num(key: str) -> str:
        v = c.get(key)
        return "n/a" if v is None or math.isnan(v) else f"{v:.3f}"

    return (f"  {stage}: ECE {num('ece_raw')} -> {num('ece')}, Brier {num('brier_raw')} -> {num('brier')}; "
            f"accuracy {pct('acc_confident')} on confident vs {pct('acc_flagged')} on low-confidence epochs "
            f"({pct('flagged_frac')} of the epochs flagged)")


def _cv_key(cfg, folds: int) -> str:
    """What identifies a cv run: the keys that can change the trained weights (:func:`dsn.config.identity_items`)
    without the fold, and the number of folds; so a rerun with another loader, progress or tracking overlay
    continues the same cv."""
    from dsn import config

    items = {k: v for k, v in config.identity_items(cfg).items() if k not in ("data.fold", "data.n_folds")}
    items["folds"] = folds
    return hashlib.sha1(json.dumps(items, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _check_args(cfg, folds: int, register_fold: int | None) -> None:
    if folds < 2:
        raise ConfigError(f"--folds {folds}: cross-validation needs at least 2 folds.")
    if register_fold is not None and not 0 <= register_fold < folds:
        raise ConfigError(f"--register_fold {register_fold}: must be in 0..{folds - 1}.")
    if register_fold is not None and not cfg.tracking.log_model:
        raise ConfigError("--register_fold needs tracking.log_model: true (the registry stores the logged model).")


def run_cv(cfg, folds: int | None = None, out: str | None = None, resume: bool = True,
           register_fold: int | None = None, verbose: bool = True) -> dict[str, Any]:
    """Run (or continue) a k-fold cross-validation; returns the cv summary (see :func:`summarise`).

    Progress is logged on this module's logger (INFO; DEBUG when ``verbose`` is false); the CLI renders
    the returned summary (:func:`format_summary`). Under DDP the ranks other than 0 train their share of
    every fold, write nothing and return an empty dict.
    """
    from dsn import config, tracking
    from dsn.data.labels import STAGES
    from dsn.workflows.distributed import is_global_zero

    folds = folds or cfg.data.n_folds
    _check_args(cfg, folds, register_fold)
    base = config.set_keys(cfg, {"data.n_folds": folds, "tracking.register": None})
    uri = tracking.tracking_uri(cfg.tracking.uri, Path(cfg.tracking.home))
    tracking.check_tracking(uri)
    exp_id = tracking.experiment_id(uri, cfg.tracking.experiment, Path(cfg.tracking.home))
    zero = is_global_zero()  # under DDP, the other ranks re-run this command: they train, and write nothing
    say = log.info if verbose and zero else log.debug
    parent = _open_cv_run(cfg, base, uri, exp_id, folds, resume, zero, say)
    results: list[dict[str, Any]] = []
    with tracking.run_guard(uri, [parent]) if zero else contextlib.nullcontext():
        for k in range(folds):
            fold = _run_fold(config.set_key(base, "data.fold", k), k, folds, parent, uri, exp_id, zero, verbose, say)
            results.append(fold)
            if register_fold == k and zero:
                _register_fold(cfg, uri, fold, folds, parent, say)
        if not zero:
            return {}
        summary = summarise(results, list(base.stages), STAGES)
        summary["cv_run_id"] = parent
        _log_summary(uri, parent, summary, folds)
        if out:
            _write_out(Path(out), summary)
            summary["written"] = str(Path(out) / "cv_summary.json")
    return summary


def _open_cv_run(cfg, base, uri: str, exp_id: str, folds: int, resume: bool, zero: bool, say) -> str:
    """The cv parent run: the one of the same identity when resuming (rank > 0: always), else a new one."""
    from dsn import config, tracking

    key = _cv_key(base, folds)
    existing = tracking.find_runs(uri, exp_id, {"dsn.kind": "cv", "dsn.cv_key": key}) if resume or not zero else []
    if not zero:
        if not existing:
            raise ConfigError("dsn cv (rank > 0): the cv run of rank 0 was not found in the tracking store.")
        return existing[0].info.run_id
    if existing:
        parent = existing[0].info.run_id
        tracking.reopen_run(uri, parent)
        say("Continuing cv run %s (same config; finished folds are skipped)", parent)
        return parent
    name = cfg.tracking.run_name or "-".join(["cv", *(Path(str(c)).stem for c in (cfg.get("config") or []))])
    parent = tracking.start_run(uri, exp_id, name, tags={"dsn.kind": "cv", "dsn.cv_key": key, "dsn.folds": str(folds),
                                                         **tracking.environment_tags()})
    tracking.log_text(uri, parent, config.dump(base), "config.yaml")
    tracking.log_params(uri, parent, {**config.training_items(base), "cv.folds": folds})
    return parent


def _run_fold(fcfg, k: int, folds: int, parent: str, uri: str, exp_id: str, zero: bool, verbose: bool, say) -> dict[str, Any]:
    """One fold: read back when it finished earlier (its predictions on disk), else fitted (or resumed)."""
    from dsn import tracking
    from dsn.workflows.run import run_fit

    done = tracking.find_runs(uri, exp_id, {"dsn.kind": "fold", "dsn.fold": str(k)}, parent=parent)
    finished = [r for r in done if r.info.status == "FINISHED"]
    ckpt_root = Path(fcfg.tracking.home) / "checkpoints"
    if finished and all((ckpt_root / finished[0].info.run_id / s / "predictions_test.npz").is_file() for s in fcfg.stages):
        say("\n=== fold %d/%d: finished earlier (run %s), skipped", k + 1, folds, finished[0].info.run_id)
        return _read_fold(finished[0], k, fcfg.stages, ckpt_root / finished[0].info.run_id)
    say("\n=== fold %d/%d%s", k + 1, folds, " (resuming)" if done else "")
    res = run_fit(fcfg, parent_run_id=parent, tags={"dsn.fold": str(k)}, run_name=f"fold-{k}", kind="fold",
                  resume=done[0].info.run_id if done else None, allow_config_change=False, verbose=verbose)
    preds = {s.name: s.predictions.get("test", []) for s in res.stages}
    return {"fold": k, "run_id": res.run_id, "test_subjects": sorted({p.subject for p in preds[fcfg.stages[-1]]}),
            "metrics": {s.name: s.metrics for s in res.stages}, "model_uri": res.final.model_uri, "predictions": preds,
            "val_predictions": {s.name: s.predictions.get("val", []) for s in res.stages}}


def _read_fold(run, k: int, stages, ckpt_dir: Path) -> dict[str, Any]:
    """A finished fold from its run (figures, model URI) and its checkpoint folder (predictions)."""
    from dsn.workflows.recorder import MODEL_URI_TAG
    from dsn.workflows.results import load_predictions

    preds = {s: load_predictions(ckpt_dir / s / "predictions_test.npz") for s in stages}
    val_preds = {s: load_predictions(f) for s in stages if (f := ckpt_dir / s / "predictions_val.npz").is_file()}
    metrics = {s: {m[len(s) + 1:]: v for m, v in run.data.metrics.items() if m.startswith(f"{s}/")} for s in stages}
    return {"fold": k, "run_id": run.info.run_id, "test_subjects": sorted({p.subject for p in preds[stages[-1]]}),
            "metrics": metrics, "model_uri": run.data.tags.get(MODEL_URI_TAG), "predictions": preds,
            "val_predictions": val_preds}


def _register_fold(cfg, uri: str, fold: dict[str, Any], folds: int, parent: str, say) -> None:
    """Register the fold's final model under ``tracking.register`` (default deepsleepnet)."""
    from dsn import tracking

    k = fold["fold"]
    if not fold["model_uri"]:
        raise ConfigError(f"--register_fold {k}: fold {k} (run {fold['run_id']}) has no logged model (it was trained "
                          "with tracking.log_model: false); rerun with --resume_cv false to train the folds anew.")
    name = cfg.tracking.register or "deepsleepnet"
    final = fold["metrics"][cfg.stages[-1]]
    version = tracking.register_model(uri, fold["model_uri"], name, {
        "dataset": Path(str(cfg.data.data_dir)).name, "channel": ", ".join(pick_channels(cfg.data.channels, cfg.data.channel)),
        "sfreq": str(cfg.data.sfreq),
        "fold": f"{k}/{folds}", "cv_run_id": parent, "run_id": fold["run_id"],
        **{f"test/{m}": f"{v:.4f}" for m, v in final.items() if m.startswith("test/") and m[5:] in ("f1_macro", "kappa", "acc")}})  # fmt: skip
    say("Registered fold %d's model as '%s' version %s", k, name, version)


def _log_summary(uri: str, parent: str, summary: dict[str, Any], folds: int) -> None:
    """``cv_summary.json``, the pooled figures as metrics and the pooled confusion figures, on the cv run."""
    from dsn import plots, tracking

    tracking.log_dict(uri, parent, summary, "cv_summary.json")
    flat = {f"pooled/{m}": v for m, v in {**summary["pooled"], **summary.get("calibration", {})}.items() if m != "n_epochs"}
    for stage, fig in summary["stages"].items():
        flat.update({f"{stage}/pooled/{m}": v for m, v in fig["pooled"].items()})
        flat.update({f"{stage}/pooled/{m}": v for m, v in fig.get("calibration", {}).items() if m != "n_epochs"})
        val = summary.get("validation", {}).get(stage, {})
        flat.update({f"{stage}/validation/{m}": v for m, v in val.get("calibration", {}).items() if m != "n_epochs"})
        flat.update({f"{stage}/mean/{m}": v for m, v in fig["mean"].items() if m in ("acc", "f1_macro", "kappa")})
        flat.update({f"{stage}/sd/{m}": v for m, v in fig["sd"].items() if m in ("acc", "f1_macro", "kappa")})
        cm = np.array(fig["confusion"])
        for norm in (False, True):
            title = f"{stage}: pooled test confusion ({folds} folds)" + (", row-normalised" if norm else "")
            tracking.log_figure(uri, parent, plots.confusion_matrix_figure(cm, normalize=norm, title=title),
                                f"pooled/{stage}_confusion{'_normalized' if norm else ''}.png")
    tracking.log_metrics(uri, parent, {k: v for k, v in flat.items() if not (isinstance(v, float) and math.isnan(v))})


def _write_out(folder: Path, summary: dict[str, Any]) -> None:
    from dsn import plots
    from dsn.hypnogram import atomic_write

    folder.mkdir(parents=True, exist_ok=True)
    with atomic_write(folder / "cv_summary.json") as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=2, default=float))
    for stage, fig in summary["stages"].items():
        f = plots.confusion_matrix_figure(np.array(fig["confusion"]), normalize=True, title=f"{stage}: pooled test confusion")
        f.savefig(folder / f"confusion_{stage}.png", dpi=120)


def main(argv: Sequence[str]) -> dict[str, Any]:
    """``dsn cv`` from the command line."""
    from dsn import config

    p = build_parser()
    cfg = config.parse(argv, p)
    extra = {k: cfg.get(k) for k in CV_KEYS}
    d = config.to_dict(cfg)
    for k in CV_KEYS:
        d.pop(k, None)
    d["net"].pop("sfreq", None)  # linked to data.sfreq
    fit_cfg = config.default_parser().parse_object(d)
    fit_cfg.config = cfg.get("config")  # the config file names name the cv run
    return run_cv(fit_cfg, folds=extra["folds"], out=extra["out"], resume=extra["resume_cv"], register_fold=extra["register_fold"])
