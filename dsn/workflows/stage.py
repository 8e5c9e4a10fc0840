"""One stage of a fit: train -> select -> evaluate -> calibrate -> save -> record, each a short function with one job.

Every DDP rank runs the same steps (:func:`run_stages` is the one stage loop); what is written goes
through the fit's :class:`~dsn.workflows.recorder.Recorder`, which is a no-op on ranks other than 0.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dsn.workflows import build
from dsn.workflows.results import Prediction, StageResult, confusion_of, load_predictions

log = logging.getLogger(__name__)

StageCallbacks = Callable[[str], Sequence[Any]]


@dataclass
class FitContext:
    """What every stage of one fit shares (``ckpt_root`` and the recorder's ``run_id`` are rank 0's once
    the process group exists: :class:`~dsn.workflows.callbacks.SharedCheckpointDir`)."""

    cfg: Any  # the parsed, normalised config (dsn.config.parse): the one form every step reads
    recorder: Any  # dsn.workflows.recorder.Recorder
    ckpt_root: Path
    resume: bool
    callbacks: StageCallbacks | None
    verbose: bool

    @property
    def run_id(self) -> str:
        return self.recorder.run_id

    def info(self, msg: str, *args) -> None:
        (log.info if self.verbose else log.debug)(msg, *args)


def run_stages(ctx: FitContext, dm, start=None) -> list[StageResult]:
    """The stage loop: each stage in ``cfg.stages`` in turn, the fine-tuning one on the pretrained feature
    net (this fit's, else ``start``); ``start``: :func:`dsn.workflows.build.start_weights`."""
    results: list[StageResult] = []
    fnet = build.feature_net(ctx.cfg)
    from dsn.workflows.callbacks import stage_rng

    for name in ctx.cfg.stages:
        stage_rng(ctx.ckpt_root / name, ctx.resume)  # a stage restarted on resume starts as it first did
        system, make_scorer = build.system(name, ctx.cfg, dm, fnet, start)
        results.append(run_stage(ctx, name, system, build.stage_data(dm, ctx.cfg, name), make_scorer))
        fnet = system.feature_net
    return results


def run_stage(ctx: FitContext, name: str, system, dm, make_scorer) -> StageResult:
    """Train stage ``name`` (or reload it when a resumed run had finished it), select, evaluate, record."""
    prior = ctx.recorder.find_stage(name) if ctx.resume else None
    if _finished(prior, ctx.ckpt_root / name):
        return reload_finished(ctx, name, system, prior, make_scorer)
    if prior is not None and ctx.recorder.changed:  # its params (immutable) no longer hold: continue in a new run
        ctx.recorder.supersede(prior)
        prior = None
    stage_run = ctx.recorder.open_stage(name, _stage_params(ctx, name), prior)
    trainer, parts = make_trainer(ctx, name, stage_run)
    timings = {"train": train(ctx, name, stage_run, trainer, system, dm, parts)}
    t_eval = time.perf_counter()
    res = select(ctx, name, trainer, parts, system, make_scorer)
    res.run_id, res.timings = stage_run, timings
    evaluate(ctx, name, res, dm, trainer.strategy.root_device)
    calibrate(ctx, name, res, dm)
    save(trainer, parts, res)
    timings["evaluate"] = time.perf_counter() - t_eval
    record(ctx, res, dm, trainer)
    return res


def _finished(prior, ckpt_dir: Path) -> bool:
    return prior is not None and prior.info.status == "FINISHED" and (ckpt_dir / "selected.ckpt").is_file()


def reload_finished(ctx: FitContext, name: str, system, prior, make_scorer) -> StageResult:
    """A stage that a resumed run had finished: its selected weights, figures, predictions and model URI."""
    from dsn.tags import MODEL_URI_TAG
    from dsn.workflows.calibration import restore_trust
    from dsn.workflows.callbacks import SCORER_KEY

    ckpt_dir = ctx.ckpt_root / name
    ctx.info("[%s] already finished in run %s: loading its selected model.", name, prior.info.run_id)
    ck = torch.load(ckpt_dir / "selected.ckpt", map_location="cpu", weights_only=True)
    system.load_state_dict(ck["state_dict"])
    preds = {s: load_predictions(p) for s in ("val", "test") if (p := ckpt_dir / f"predictions_{s}.npz").is_file()}
    metrics = {k[len("selected/"):]: v for k, v in prior.data.metrics.items() if k.startswith("selected/")}
    epoch = metrics.pop("epoch", None)
    scorer = make_scorer(system)
    restore_trust(scorer, ck.get(SCORER_KEY) or {})  # its temperature, threshold and familiarity description
    return StageResult(name, prior.info.run_id, metrics, {s: confusion_of(p) for s, p in preds.items()}, preds,
                       selected_epoch=None if epoch is None else int(epoch), selected_checkpoint=str(ckpt_dir / "selected.ckpt"),
                       model_uri=prior.data.tags.get(MODEL_URI_TAG), scorer=scorer)


def _stage_params(ctx: FitContext, name: str) -> dict[str, Any]:
    from dsn.config import to_dict

    cfg = ctx.cfg
    return {"stage": name, "selection": cfg.selection, "seed_everything": cfg.seed_everything,
            **{f"{name}.{k}": v for k, v in to_dict(cfg[name]).items()}, "net": to_dict(cfg.net), "data": to_dict(cfg.data)}


@dataclass
class _Parts:
    """The stage Trainer's callbacks that the later steps read."""

    checkpoint: Any  # ModelCheckpoint (the best epoch; last.ckpt is InterruptedState's, written when needed)
    interrupted: Any  # callbacks.InterruptedState
    spec: Any  # callbacks.ScorerSpec


def make_trainer(ctx: FitContext, name: str, stage_run: str):
    """The stage's Trainer (its config's options, dsn's callbacks, the recorder's logger) and its parts."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from dsn.config import to_dict
    from dsn.workflows import callbacks as cb

    ckpt_dir = ctx.ckpt_root / name
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, filename="best-{epoch:03d}", monitor="val/f1_macro", mode="max",
                                 save_top_k=1, save_last=False, auto_insert_metric_name=False)
    parts = _Parts(checkpoint, cb.InterruptedState(ckpt_dir), cb.ScorerSpec())
    trainer = L.Trainer(
        **to_dict(ctx.cfg[name].trainer),
        logger=ctx.recorder.logger(stage_run),
        callbacks=[cb.SharedCheckpointDir(ctx, checkpoint, parts.interrupted), *_stage_callbacks(ctx, name, checkpoint),
                   parts.interrupted, parts.spec],
        default_root_dir=str(ckpt_dir),
        enable_checkpointing=True,
        use_distributed_sampler=False,  # dsn's samplers shard across ranks themselves (streams stay contiguous)
    )
    return trainer, parts


def _stage_callbacks(ctx: FitContext, name: str, checkpoint) -> list:
    from lightning.pytorch.callbacks import EarlyStopping

    from dsn.workflows.callbacks import FiniteLoss, ReleaseEvalMemory

    stage_cfg = ctx.cfg[name]
    cbs: list = [checkpoint, FiniteLoss(name), ReleaseEvalMemory()]
    if stage_cfg.ema_decay:
        from dsn.systems.averaging import ema_callback

        cbs.insert(0, ema_callback(stage_cfg.ema_decay))
    if stage_cfg.early_stopping_patience:
        cbs.append(EarlyStopping(monitor="val/f1_macro", mode="max", patience=stage_cfg.early_stopping_patience))
    if ctx.callbacks is not None:
        cbs += list(ctx.callbacks(name))
    return cbs


def train(ctx: FitContext, name: str, stage_run: str, trainer, system, dm, parts: _Parts) -> float:
    """``trainer.fit`` (from ``last.ckpt`` when resuming; a damaged one is set aside and the stage starts anew);
    SIGTERM / Ctrl-C stop it at a step boundary, leave ``last.ckpt`` and raise ``Terminated`` /
    ``KeyboardInterrupt`` (:class:`~dsn.workflows.callbacks.InterruptedState`). Returns the seconds it took."""
    from dsn.tracking import Terminated
    from dsn.workflows.callbacks import usable_last

    last = ctx.ckpt_root / name / "last.ckpt"
    ckpt_path = str(last) if ctx.resume and usable_last(last, system, name) else None
    ctx.info("\n[%s] training (MLflow run %s)%s", name, stage_run,
             f", resuming from {last}" if ckpt_path else "")
    t0 = time.perf_counter()
    try:
        trainer.fit(system, datamodule=dm, ckpt_path=ckpt_path)
    except SystemExit as e:
        if parts.interrupted.seen:  # Lightning turns Ctrl-C into sys.exit(1) after its graceful shutdown
            signal.signal(signal.SIGINT, signal.default_int_handler)
            log.warning("[%s] interrupted: the last state is in %s; continue with `dsn fit ... --resume`.", name,
                        parts.interrupted.ckpt_path)
            raise KeyboardInterrupt from None
        if type(e).__name__ == "SIGTERMException":  # Lightning's own, under DDP
            raise Terminated() from None
        raise
    if parts.interrupted.seen or parts.interrupted.requested == signal.SIGINT:
        raise KeyboardInterrupt
    if parts.interrupted.requested is not None:  # after the last training step: the stage restarts on resume
        raise Terminated()
    return time.perf_counter() - t0


def select(ctx: FitContext, name: str, trainer, parts: _Parts, system, make_scorer) -> StageResult:
    """Keep the best (by val/f1_macro) or the last epoch's weights in ``system`` (``selected.ckpt`` is
    written by :func:`save`, once the scorer is calibrated)."""
    checkpoint = parts.checkpoint
    best = checkpoint.best_model_path or None
    epoch = trainer.current_epoch - 1
    if ctx.cfg.selection == "best" and best and Path(best).is_file():  # (DDP gives rank 0's weights anyway)
        ck = torch.load(best, map_location="cpu", weights_only=True)
        system.load_state_dict(ck["state_dict"])
        epoch = int(ck.get("epoch", epoch))
        ctx.info("[%s] selected the best epoch by val/f1_macro (%.4f): %s", name, checkpoint.best_model_score, Path(best).name)
    else:
        ctx.info("[%s] selected the last epoch", name)
    selected = Path(checkpoint.dirpath) / "selected.ckpt"  # under DDP: rank 0's folder, on every rank
    return StageResult(name, "", selected_epoch=epoch, best_checkpoint=best, selected_checkpoint=str(selected),
                       scorer=make_scorer(system))


def evaluate(ctx: FitContext, name: str, res: StageResult, dm, device) -> None:
    """The selected model over whole recordings (whatever ``limit_*_batches`` said) of val (and test):
    figures, confusion matrices and predictions into ``res``; each split recorded."""
    from dsn.data.recording import release_memory
    from dsn.evaluation import metrics_from_confusion

    scorer = res.scorer.to(device)
    splits = ["val"] + (["test"] if ctx.cfg.test and dm.recordings.get("test") else [])
    for split in splits:  # the raw softmax: calibrate() fits the temperature on it
        preds = [Prediction(r.name, r.subject, np.asarray(r.y), scorer.raw_proba(r.x)) for r in dm.recordings[split]]
        cm = confusion_of(preds, len(scorer.class_names))
        figures = {f"{split}/{k}": v for k, v in metrics_from_confusion(cm, scorer.class_names).items()}
        figures.update(source_figures(split, preds, getattr(dm, "source_of", None), scorer.class_names))
        res.metrics.update(figures)
        res.confusion[split], res.predictions[split] = cm, preds
        ctx.recorder.record_split(res.run_id, split, figures, cm, preds, Path(res.selected_checkpoint).parent)
        ctx.info("[%s] %s (%s): acc %.3f, MF1 %.3f, kappa %.3f", name, split, ", ".join(getattr(dm.split, split)),
                 figures[f"{split}/acc"], figures[f"{split}/f1_macro"], figures[f"{split}/kappa"])
        for source in sorted({k.split("/")[1] for k in figures if k.count("/") == 2}):  # data.sources: each one's
            ctx.info("[%s] %s, source %s: acc %.3f, MF1 %.3f, kappa %.3f", name, split, source,
                     *(figures[f"{split}/{source}/{k}"] for k in SOURCE_FIGURES))
        release_memory(dm.recordings[split])  # the split's pages and the freed heap: not kept past the pass
    scorer.cpu()


#: The figures of each source's recordings (``{split}/<source>/{name}``) beside the pooled ones.
SOURCE_FIGURES = ("acc", "f1_macro", "kappa")


def source_figures(split: str, preds: list[Prediction], source_of: dict[str, str] | None,
                   class_names: Sequence[str]) -> dict[str, float]:
    """``{split}/<source>/acc|f1_macro|kappa`` of each source's recordings in ``preds`` (a fit on several data
    sets, ``data.sources``; ``source_of``: recording name -> source); empty for a fit on one data set."""
    from dsn.evaluation import metrics_from_confusion

    if not source_of:
        return {}
    out: dict[str, float] = {}
    for source in sorted({source_of[p.name] for p in preds}):
        cm = confusion_of([p for p in preds if source_of[p.name] == source], len(class_names))
        figures = metrics_from_confusion(cm, class_names)
        out.update({f"{split}/{source}/{k}": figures[k] for k in SOURCE_FIGURES})
    return out


def calibrate(ctx: FitContext, name: str, res: StageResult, dm) -> None:
    """The selected model's temperature and low-confidence threshold, fitted on the validation subjects'
    predictions only (never the test subjects'), and the description of its training nights: stored in
    its scorer (its spec's ``calibration`` and ``familiarity``); ECE / Brier before and after, the accuracy
    of confident vs flagged epochs per split into ``res.metrics`` (finite figures only) and recorded with a
    reliability diagram per split."""
    from dsn.workflows.calibration import calibrate_selected, describe_nights, feature_reference

    figures, reliability = calibrate_selected(res.scorer, res.predictions, ctx.cfg.calibration.low_confidence)
    features = feature_reference(res.scorer, dm.recordings)
    if features is not None:
        res.scorer.calibration = {**res.scorer.calibration, "features": features}
        figures["calibration/feature_shift_threshold"] = float(features["threshold"])
    res.scorer.familiarity = describe_nights(res.scorer, dm.recordings, res.predictions)
    figures["familiarity/threshold"] = float(res.scorer.familiarity["threshold"])
    res.metrics.update(figures)
    ctx.recorder.record_trust(res.run_id, figures, reliability, res.scorer.familiarity)
    val = {k[4:]: v for k, v in figures.items() if k.startswith("val/")}
    ctx.info("[%s] calibration on the validation subjects: T = %.2f, ECE %.3f -> %.3f; low confidence below %.2f "
             "(%.0f%% of validation epochs)", name, figures["calibration/temperature"], val.get("ece_raw", float("nan")),
             val.get("ece", float("nan")), figures["calibration/threshold"], 100 * val.get("flagged_frac", float("nan")))


def save(trainer, parts: _Parts, res: StageResult) -> None:
    """Write ``selected.ckpt``: the selected weights with the calibrated scorer's spec (every DDP rank calls
    it: the save ends with a barrier; rank 0 writes)."""
    from dsn.workflows.callbacks import save_selected

    save_selected(trainer, Path(res.selected_checkpoint), parts.spec, res.scorer.spec())


def record(ctx: FitContext, res: StageResult, dm, trainer) -> None:
    """Record the selected checkpoint, epoch and model (when ``tracking.log_model``); close the stage run."""
    t0 = time.perf_counter()
    example = None
    if ctx.cfg.tracking.log_model:
        x = dm.recordings["val"][0].x
        example = (x[:2] if res.scorer.kind == "epoch" else x[None, : min(len(x), ctx.cfg.finetune.seq_len)]).astype("float32").copy()
    res.model_uri = ctx.recorder.record_stage(res.run_id, res, example)
    res.timings["log"] = time.perf_counter() - t0
    ctx.recorder.close_stage(res.run_id, trainer, res.timings)
