"""The training workflow: one fit (pretraining, then fine-tuning) from a resolved config.

:func:`run_fit` serves every command: ``dsn fit`` calls it once, each ``dsn sweep`` trial and each
``dsn cv`` fold calls it with a parent run to nest under, extra callbacks (a pruner) and extra tags.
It validates the config, the tracking store and the data before it opens any MLflow run, so a bad
input never leaves a failed run behind; it raises :class:`~dsn.errors.DsnError` subclasses for user
errors and never exits.

MLflow layout of one fit::

    <fit run>                 tags dsn.kind=<kind>; config.yaml, data_summary.json, summary.json;
    |                         the selected models' figures: {split}/{metric} (final stage) and
    |                         {stage}/{split}/{metric}
    +-- pretrain              per-epoch curves train/loss, val/loss, val/f1_macro, ...; the selected
    +-- finetune              model's selected/{split}/{metric}, confusion matrices, a hypnogram,
                              predictions/{split}.npz, checkpoints, the model (a SleepScorer)

Distributed training (``trainer.strategy: ddp``, ``devices: N``, ``num_nodes``): Lightning's launcher runs
the same command again in every other process. Every rank loads the same data, builds the same systems
and calls ``trainer.fit`` with the same settings (the samplers shard the data themselves); only global
rank 0 (:func:`is_global_zero`) opens MLflow runs, logs, evaluates the selected model, saves
``selected.ckpt``, logs the model and registers it. The other ranks train without a logger and learn the
run's checkpoint folder from rank 0 once the process group exists (:func:`_shared_checkpoint_dir`); their
:class:`FitResult` has empty run ids and no metrics.
"""

from __future__ import annotations

import functools
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dsn.errors import ConfigError

STAGES = ("pretrain", "finetune")


# ----------------------------------------------------------------------------- results
@dataclass
class Prediction:
    """A model's output over one recording.

    Attributes
    ----------
    name : recording name (``SC4001E0``).
    subject : subject id (``SC400``).
    y_true : ndarray (n_epochs,) int64 expert labels (``-1`` masked).
    proba : ndarray (n_epochs, n_classes) float32 class probabilities.
    """

    name: str
    subject: str
    y_true: np.ndarray
    proba: np.ndarray

    @property
    def y_pred(self) -> np.ndarray:
        return self.proba.argmax(-1)


@dataclass
class StageResult:
    """What one stage produced: its run, the selected model's metrics, confusion matrices and predictions."""

    name: str
    run_id: str
    metrics: dict[str, float] = field(default_factory=dict)  # "val/f1_macro", "test/kappa", ...
    confusion: dict[str, np.ndarray] = field(default_factory=dict)  # split -> (C, C) counts
    predictions: dict[str, list[Prediction]] = field(default_factory=dict)  # split -> per recording
    selected_epoch: int | None = None
    best_checkpoint: str | None = None
    selected_checkpoint: str | None = None
    model_uri: str | None = None
    scorer: Any = field(default=None, repr=False)  # the selected model (a SleepScorer), in memory
    timings: dict[str, float] = field(default_factory=dict)  # seconds: train (trainer.fit), evaluate, log


@dataclass
class FitResult:
    """The result of :func:`run_fit`."""

    run_id: str
    experiment_id: str
    tracking_uri: str
    stages: list[StageResult]
    registered: tuple[str, str] | None = None  # (registered-model name, version)
    wall_seconds: float = 0.0  # the whole run_fit call, from config check to the last log

    @property
    def parent_run_id(self) -> str:  # the fit's own top-level run
        return self.run_id

    def stage(self, name: str) -> StageResult:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"no stage {name!r} in this fit (stages run: {[s.name for s in self.stages]})")

    @property
    def final(self) -> StageResult | None:
        return self.stages[-1] if self.stages else None

    @property
    def metrics(self) -> dict[str, float]:
        return dict(self.final.metrics) if self.final else {}


def save_predictions(path: str | Path, preds: Sequence[Prediction]) -> None:
    """Write predictions to one ``.npz`` (atomically: a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {"names": np.array([p.name for p in preds]), "subjects": np.array([p.subject for p in preds])}
    for i, p in enumerate(preds):
        arrays[f"y_{i}"] = np.asarray(p.y_true)
        arrays[f"p_{i}"] = np.asarray(p.proba, dtype=np.float32)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    tmp.replace(path)


def load_predictions(path: str | Path) -> list[Prediction]:
    with np.load(path) as z:
        return [Prediction(str(n), str(s), z[f"y_{i}"], z[f"p_{i}"]) for i, (n, s) in enumerate(zip(z["names"], z["subjects"]))]


def confusion_of(preds: Sequence[Prediction], n_classes: int = 5) -> np.ndarray:
    """``(C, C)`` confusion counts (rows true, columns predicted) over scored epochs of ``preds``."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    for p in preds:
        keep = p.y_true >= 0
        np.add.at(cm, (p.y_true[keep], p.y_pred[keep]), 1)
    return cm


# ----------------------------------------------------------------------------- distributed
def is_global_zero() -> bool:
    """Whether this process is global rank 0 (or not distributed at all), known before any process group exists.

    Read from what the launchers set: ``RANK`` (torchrun), Lightning's own launcher (``LOCAL_RANK`` and
    ``NODE_RANK``, set in the processes it starts), then ``SLURM_PROCID`` / ``JSM_NAMESPACE_RANK`` (SLURM, LSF).
    Lightning's launcher starts the other ranks at the first ``trainer.fit`` by running the same command
    again, so whatever a command does outside ``trainer.fit`` that writes (MLflow runs, files, the registry)
    must be guarded by this.
    """
    env = os.environ
    if env.get("RANK", "").strip():
        return int(env["RANK"]) == 0
    if any(env.get(k, "").strip() for k in ("LOCAL_RANK", "NODE_RANK", "GROUP_RANK")):
        node = env.get("NODE_RANK", "").strip() or env.get("GROUP_RANK", "").strip() or "0"
        return int(env.get("LOCAL_RANK", "").strip() or 0) == 0 and int(node) == 0
    for key in ("SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if env.get(key, "").strip():
            return int(env[key]) == 0
    return True


def _shared_checkpoint_dir(ctx, checkpoint, interrupted):
    """A callback that, once the process group exists, gives every rank rank 0's run id and checkpoint folder
    (the other ranks cannot know the MLflow run that rank 0 opened before it started them)."""
    import lightning as L

    class SharedCheckpointDir(L.Callback):
        def setup(self, trainer, pl_module, stage: str) -> None:
            if trainer.world_size <= 1:
                return
            run_id, root, dirpath = trainer.strategy.broadcast((ctx.run_id, str(ctx.ckpt_root), str(checkpoint.dirpath)), src=0)
            ctx.run_id, ctx.ckpt_root = run_id, Path(root)
            checkpoint.dirpath = dirpath
            interrupted.path = Path(dirpath) / "last.ckpt"

    return SharedCheckpointDir()


# ----------------------------------------------------------------------------- the workflow
StageCallbacks = Callable[[str], Sequence[Any]]

_QUIET = {"done": False}


def _run_fit(
    cfg,
    *,
    parent_run_id: str | None = None,
    callbacks: StageCallbacks | None = None,
    tags: dict[str, str] | None = None,
    run_name: str | None = None,
    kind: str = "fit",
    resume: str | None = None,
    allow_config_change: bool = False,
    verbose: bool = True,
) -> FitResult:
    """Run one fit (the stages in ``cfg.stages``) from a resolved config.

    Parameters
    ----------
    cfg : jsonargparse Namespace
        A resolved training config (:func:`dsn.config.parse` / :func:`dsn.config.load_config`).
    parent_run_id : str, optional
        Nest this fit's run under that MLflow run (a sweep study, a cv run).
    callbacks : callable, optional
        ``callbacks(stage_name) -> list of lightning Callbacks`` added to that stage's Trainer (e.g.
        an Optuna pruning callback).
    tags : dict, optional
        Extra tags of the fit's run (e.g. ``dsn.trial``, ``dsn.fold``).
    run_name : str, optional
        Name of the fit's run (default ``cfg.tracking.run_name``, else ``fit-<config names>``).
    kind : str, default "fit"
        The ``dsn.kind`` tag of the fit's run (``fit``, ``trial``, ``fold``).
    resume : str, optional
        ``"last"`` (the most recent top-level run of this ``kind``) or a run id: continue that fit,
        skipping finished stages and restarting an interrupted one from its last checkpoint.
    allow_config_change : bool, default False
        With ``resume``: continue even if ``cfg`` differs from the interrupted run's config.
    verbose : bool, default True
        Print the data summary and each stage's report.

    Returns
    -------
    FitResult

    Raises
    ------
    dsn.errors.DsnError
        ``ConfigError`` (bad value or resume mismatch), ``DataError`` (missing or bad data),
        ``TrackingError`` (unreachable store) -- all before any run is opened.
    """
    import lightning as L
    import torch

    from dsn import config, tracking
    from dsn.data.datamodule import SleepEDFDataModule

    t_start = time.perf_counter()
    zero = is_global_zero()  # under DDP the other ranks run this too: they train and write nothing
    verbose = verbose and zero
    _quiet_libraries(verbose)
    config.check(cfg)
    L.seed_everything(cfg.seed_everything, workers=True, verbose=False)
    torch.set_float32_matmul_precision("high")
    home = Path(cfg.tracking.home)
    uri = tracking.tracking_uri(cfg.tracking.uri, home)
    if zero or resume:
        tracking.check_tracking(uri)  # before anything slow

    d = config.to_dict(cfg)
    dm = SleepEDFDataModule(**d["data"], mode="pretrain", batch_size=cfg.pretrain.batch_size, seq_len=cfg.finetune.seq_len)
    dm.prepare_data()
    dm.setup()  # data errors surface here, before any run is opened
    summary = dm.summary()
    if verbose:
        _print_summary(summary)

    if not zero:
        return _run_fit_other_rank(cfg, d, dm, uri, home, kind, resume, parent_run_id, allow_config_change, callbacks)
    exp_id = tracking.experiment_id(uri, cfg.tracking.experiment, home)
    changed: list[str] = []
    if resume:
        run_id, changed = _resume_run(uri, exp_id, cfg, resume, kind, parent_run_id, allow_config_change)
        if verbose:
            print(f"Resuming run {run_id}" + (f" with a changed config ({', '.join(changed[:5])})" if changed else ""))
    else:
        name = run_name or cfg.tracking.run_name or "-".join(["fit", *(Path(str(c)).stem for c in (cfg.get("config") or []))])
        run_id = tracking.start_run(uri, exp_id, name, parent=parent_run_id,
                                    tags={"dsn.kind": kind, **tracking.environment_tags(), **(tags or {})})
    run_ids = [run_id]
    ctx = _Context(cfg, d, uri, exp_id, run_id, home / "checkpoints" / run_id, bool(resume), callbacks, verbose, bool(changed),
                   dm=dm)
    results: list[StageResult] = []
    registered = None

    with tracking.run_guard(uri, run_ids):
        if changed:  # MLflow params are immutable: the new config is kept beside the first one
            tracking.log_text(uri, run_id, config.dump(cfg), "config_resumed.yaml")
            tracking.set_tags(uri, run_id, {"dsn.config_changed_on_resume": ", ".join(changed)[:5000]})
        if not resume:
            tracking.log_text(uri, run_id, config.dump(cfg), "config.yaml")
            tracking.log_params(uri, run_id, config.training_items(cfg))
            tracking.log_params(uri, run_id, _summary_params(summary))
        tracking.log_dict(uri, run_id, summary, "data_summary.json")

        feature_net = _feature_net(ctx)
        for stage in cfg.stages:
            system, make_scorer = (_pretrain_system if stage == "pretrain" else _finetune_system)(ctx, feature_net)
            stage_dm = (dm.for_stage("pretrain", cfg.pretrain.batch_size) if stage == "pretrain"
                        else dm.for_stage("finetune", cfg.finetune.batch_size, cfg.finetune.seq_len))
            res = _run_stage(ctx, stage, system, stage_dm, make_scorer, run_ids)
            results.append(res)
            feature_net = system.feature_net

        final = results[-1]
        top = {k: v for k, v in final.metrics.items()}
        for r in results:
            top.update({f"{r.name}/{k}": v for k, v in r.metrics.items()})
        tracking.log_metrics(uri, run_id, top)
        tracking.log_dict(uri, run_id, _fit_summary(results), "summary.json")
        if cfg.tracking.register:
            if not final.model_uri:
                raise ConfigError("tracking.register needs tracking.log_model: true (the registry stores the logged model).")
            version = tracking.register_model(uri, final.model_uri, cfg.tracking.register, _registry_tags(ctx, final, tags))
            registered = (cfg.tracking.register, version)
            if cfg.tracking.register_alias:
                tracking.set_alias(uri, cfg.tracking.register, version, cfg.tracking.register_alias)
            if verbose:
                alias = f", alias @{cfg.tracking.register_alias}" if cfg.tracking.register_alias else ""
                print(f"\nRegistered model '{cfg.tracking.register}' version {version}{alias} (models:/{cfg.tracking.register}/{version})")

    if verbose and parent_run_id is None:
        url = f"run `dsn ui` and open {tracking.ui_url(5000, exp_id)}"
        print(f"\nMLflow: experiment '{cfg.tracking.experiment}' (id {exp_id}), run {run_id}\n  tracking URI {uri}\n  {url}")
    return FitResult(run_id, exp_id, uri, results, registered, time.perf_counter() - t_start)


def _run_fit_other_rank(cfg, d, dm, uri, home, kind, resume, parent_run_id, allow_config_change, callbacks) -> FitResult:
    """A DDP rank other than 0: the same stages and ``trainer.fit`` calls as rank 0, no MLflow writes.

    With ``resume`` the run is looked up (read only) as rank 0 does, so that both skip the same finished
    stages and restart from the same ``last.ckpt``; otherwise the run id and checkpoint folder come from
    rank 0 at the first ``trainer.fit``.
    """
    from dsn import tracking

    exp_id, run_id, changed = "", "", []
    if resume:
        exp = tracking.client(uri).get_experiment_by_name(cfg.tracking.experiment)
        if exp is None:
            raise ConfigError(f"--resume {resume}: experiment '{cfg.tracking.experiment}' does not exist in {uri}.")
        exp_id = exp.experiment_id
        run_id, changed = _resume_run(uri, exp_id, cfg, resume, kind, parent_run_id, allow_config_change, reopen=False)
    root = home / "checkpoints" / (run_id or "pending-rank0")  # replaced by rank 0's folder at the first trainer.fit
    ctx = _Context(cfg, d, uri, exp_id, run_id, root, bool(resume), callbacks, False, bool(changed), zero=False, dm=dm)
    results: list[StageResult] = []
    feature_net = _feature_net(ctx)
    for stage in cfg.stages:
        system, make_scorer = (_pretrain_system if stage == "pretrain" else _finetune_system)(ctx, feature_net)
        stage_dm = (dm.for_stage("pretrain", cfg.pretrain.batch_size) if stage == "pretrain"
                    else dm.for_stage("finetune", cfg.finetune.batch_size, cfg.finetune.seq_len))
        results.append(_run_stage(ctx, stage, system, stage_dm, make_scorer, []))
        feature_net = system.feature_net
    return FitResult("", exp_id, uri, results)


@functools.wraps(_run_fit)
def run_fit(cfg, **kwargs) -> FitResult:
    from dsn import tracking

    with tracking.preserve_global_uri():  # Lightning's MLflow logger changes the process-wide URI
        return _run_fit(cfg, **kwargs)


@dataclass
class _Context:
    cfg: Any
    d: dict
    uri: str
    exp_id: str
    run_id: str
    ckpt_root: Path
    resume: bool
    callbacks: StageCallbacks | None
    verbose: bool
    config_changed: bool = False
    zero: bool = True  # global rank 0: the only rank that writes to MLflow, the registry and the checkpoint folder
    dm: Any = None  # the SleepEDFDataModule: the logged model's preprocessing comes from it


def _resume_run(uri, exp_id, cfg, resume, kind, parent_run_id, allow_change, reopen: bool = True) -> str:
    from dsn import config, tracking

    if resume == "last":
        run = tracking.latest_run(uri, exp_id, kind, parent_run_id)
    else:
        try:
            run = tracking.get_run(uri, resume)
        except Exception:
            run = None
    if run is None:
        raise ConfigError(f"--resume {resume}: no earlier `dsn {kind}` run found in experiment '{cfg.tracking.experiment}'. "
                          "Run without --resume to start a new one.")
    rid = run.info.run_id
    diff: list[str] = []
    old_text = tracking.read_text_artifact(uri, rid, "config_resumed.yaml") or tracking.read_text_artifact(uri, rid, "config.yaml")
    if old_text is not None:
        old = config.training_items(config.default_parser().parse_string(old_text))
        new = config.training_items(cfg)
        diff = sorted(k for k in set(old) | set(new) if str(old.get(k)) != str(new.get(k)))
        if diff and not allow_change:
            shown = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:5])
            raise ConfigError(
                f"--resume {resume}: the config differs from run {rid}'s ({shown}{' ...' if len(diff) > 5 else ''}). "
                "Resume with the same config files and flags, or add `--allow_config_change true`."
            )
    if reopen:
        tracking.reopen_run(uri, rid)
    return rid, diff


def _feature_net(ctx: _Context):
    from dsn.models import DeepFeatureNet

    return DeepFeatureNet(**ctx.d["net"])


def _scorer_config(ctx: _Context) -> dict[str, Any]:
    return {"net": ctx.d["net"], "finetune_net": ctx.d["finetune"]["net"]}


def _preprocessing(ctx: _Context) -> dict[str, Any]:
    return ctx.dm.scorer_preprocessing()


def _pretrain_system(ctx: _Context, feature_net):
    from dsn.models.scoring import SleepScorer
    from dsn.systems.pretrain import PretrainSystem

    system = PretrainSystem(feature_net, **ctx.d["pretrain"]["system"])
    return system, lambda s: SleepScorer(s.model, _preprocessing(ctx), _scorer_config(ctx), seq_len=ctx.cfg.finetune.seq_len)


def _finetune_system(ctx: _Context, feature_net):
    from dsn.models import DeepSleepNet
    from dsn.models.scoring import SleepScorer
    from dsn.systems.finetune import FinetuneSystem, load_pretrained

    ft = dict(ctx.d["finetune"]["system"])
    source = ft.pop("pretrained", None)
    if "pretrain" in ctx.cfg.stages:
        source = None  # the weights are already in feature_net
    elif source is None and ctx.zero:
        print("warning: fine-tuning without pretrained weights (finetune.system.pretrained is not set).")
    if source is not None and ":/" in str(source):  # a model reference, resolved in this fit's tracking store
        from dsn.workflows.registry import load_scorer

        source = load_scorer(source, ctx.uri)
    if source is not None:
        try:
            load_pretrained(feature_net, source)
        except ValueError as e:
            raise ConfigError(f"finetune.system.pretrained: {e}") from None
    system = FinetuneSystem(DeepSleepNet(feature_net, **ctx.d["finetune"]["net"]), **ft)
    carry = bool(ft.get("carry_state", True))
    return system, lambda s: SleepScorer(s.net, _preprocessing(ctx), _scorer_config(ctx), seq_len=ctx.cfg.finetune.seq_len,
                                         carry_state=carry, n_offsets=ctx.cfg.finetune.n_offsets)


def _stage_callbacks(ctx: _Context, name: str, checkpoint) -> list:
    from lightning.pytorch.callbacks import EarlyStopping

    stage_cfg = ctx.d[name]
    cbs: list = [checkpoint, _finite_loss_callback(name)]
    if stage_cfg.get("ema_decay"):
        from dsn.systems.averaging import ema_callback

        cbs.insert(0, ema_callback(stage_cfg["ema_decay"]))
    if stage_cfg.get("early_stopping_patience"):
        cbs.append(EarlyStopping(monitor="val/f1_macro", mode="max", patience=stage_cfg["early_stopping_patience"]))
    if ctx.callbacks is not None:
        cbs += list(ctx.callbacks(name))
    return cbs


def _finite_loss_callback(stage: str):
    """Stop a fit whose training loss became NaN or infinite, with a clear error (not a silent NaN model)."""
    import lightning as L
    import torch

    from dsn.errors import DsnError

    class FiniteLoss(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
            if loss is not None and not bool(torch.isfinite(loss.detach()).all()):
                raise DsnError(f"[{stage}] training diverged: the loss is {float(loss)} at epoch {trainer.current_epoch}, "
                               f"batch {batch_idx}. Lower the learning rate ({stage}.system.lr*) or enable gradient clipping.")

    return FiniteLoss()


def _run_stage(ctx: _Context, name: str, system, dm, make_scorer, run_ids: list[str]) -> StageResult:
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint

    from dsn import tracking

    cfg, uri = ctx.cfg, ctx.uri
    stage_cfg = ctx.d[name]
    ckpt_dir = ctx.ckpt_root / name
    child = tracking.find_child(uri, ctx.run_id, name) if ctx.resume else None
    if child is not None and child.info.status == "FINISHED" and (ckpt_dir / "selected.ckpt").is_file():
        if ctx.verbose:
            print(f"[{name}] already finished in run {child.info.run_id}: loading its selected model.")
        state = torch.load(ckpt_dir / "selected.ckpt", map_location="cpu", weights_only=False)["state_dict"]
        system.load_state_dict(state)
        preds = {s: load_predictions(p) for s in ("val", "test") if (p := ckpt_dir / f"predictions_{s}.npz").is_file()}
        metrics = {k[len("selected/"):]: v for k, v in child.data.metrics.items() if k.startswith("selected/")}
        return StageResult(name, child.info.run_id, metrics, {s: confusion_of(p) for s, p in preds.items()}, preds,
                           selected_checkpoint=str(ckpt_dir / "selected.ckpt"), scorer=make_scorer(system))
    if child is not None and ctx.config_changed:  # its params (immutable) no longer hold: continue in a new run
        if ctx.zero:
            tracking.set_tags(uri, child.info.run_id, {"dsn.superseded": "config changed on resume"})
        child = None
    if not ctx.zero:  # another DDP rank: trains only, rank 0 owns the stage run
        stage_run = ""
    elif child is not None:
        stage_run = child.info.run_id
        tracking.reopen_run(uri, stage_run)
    else:
        stage_run = tracking.start_run(uri, ctx.exp_id, name, parent=ctx.run_id, tags={"dsn.stage": name})
        tracking.log_params(uri, stage_run, {
            "stage": name, "selection": cfg.selection, "seed_everything": cfg.seed_everything,
            **{f"{name}.{k}": v for k, v in stage_cfg.items()}, "net": ctx.d["net"], "data": ctx.d["data"],
        })  # fmt: skip
    if ctx.zero:
        run_ids.append(stage_run)

    checkpoint = ModelCheckpoint(
        dirpath=ckpt_dir, filename="best-{epoch:03d}", monitor="val/f1_macro", mode="max",
        save_top_k=1, save_last=True, auto_insert_metric_name=False,
    )  # fmt: skip
    interrupted = _InterruptFlag(ckpt_dir / "last.ckpt")
    trainer = L.Trainer(
        **{k: v for k, v in stage_cfg["trainer"].items()},
        logger=tracking.lightning_logger(uri, stage_run) if ctx.zero else False,  # other DDP ranks: no run, no logger
        callbacks=[_shared_checkpoint_dir(ctx, checkpoint, interrupted), *_stage_callbacks(ctx, name, checkpoint), interrupted],
        default_root_dir=str(ckpt_dir),
        enable_checkpointing=True,
        use_distributed_sampler=False,  # dsn's samplers shard across ranks themselves (streams stay contiguous)
    )
    last = ckpt_dir / "last.ckpt"
    ckpt_path = str(last) if ctx.resume and last.is_file() else None
    if ctx.verbose:
        print(f"\n[{name}] training (MLflow run {stage_run})" + (f", resuming from {last}" if ckpt_path else ""))
    t_fit = time.perf_counter()
    try:
        trainer.fit(system, datamodule=dm, ckpt_path=ckpt_path)
    except SystemExit:
        if interrupted.seen:  # Lightning turns Ctrl-C into sys.exit(1) after its graceful shutdown
            signal.signal(signal.SIGINT, signal.default_int_handler)
            print(f"[{name}] interrupted: the last state is in {last}; continue with `dsn fit ... --resume`.")
            raise KeyboardInterrupt from None
        raise
    if interrupted.seen:
        raise KeyboardInterrupt
    timings = {"train": time.perf_counter() - t_fit}
    t_eval = time.perf_counter()

    ckpt_dir = Path(checkpoint.dirpath)  # under DDP: rank 0's folder, on every rank
    best = checkpoint.best_model_path or None
    selected_epoch = trainer.current_epoch - 1
    if cfg.selection == "best" and best and (ctx.zero or Path(best).is_file()):  # (DDP gives rank 0's weights anyway)
        ck = torch.load(best, map_location="cpu", weights_only=False)
        system.load_state_dict(ck["state_dict"])
        selected_epoch = int(ck.get("epoch", selected_epoch))
        if ctx.verbose:
            print(f"[{name}] selected the best epoch by val/f1_macro ({checkpoint.best_model_score:.4f}): {Path(best).name}")
    elif ctx.verbose:
        print(f"[{name}] selected the last epoch")
    selected = ckpt_dir / "selected.ckpt"
    if not ctx.zero:  # another DDP rank: take part in the checkpoint's barrier; rank 0 evaluates and logs
        _save_selected(trainer, selected, {})
        return StageResult(name, "", selected_epoch=selected_epoch, best_checkpoint=best,
                           selected_checkpoint=str(selected), timings=timings)
    scorer = make_scorer(system)
    _save_selected(trainer, selected, scorer.spec())

    # the selected model over whole recordings (whatever limit_*_batches said), outside the per-epoch curves
    device = trainer.strategy.root_device
    scorer.to(device)
    splits = ["val"] + (["test"] if cfg.test and dm.recordings.get("test") else [])
    metrics: dict[str, float] = {}
    confusion: dict[str, np.ndarray] = {}
    predictions: dict[str, list[Prediction]] = {}
    from dsn.systems.metrics import format_report, metrics_from_confusion

    for split in splits:
        preds = [Prediction(r.name, r.subject, np.asarray(r.y), scorer.predict_proba(r.x)) for r in dm.recordings[split]]
        cm = confusion_of(preds, len(scorer.class_names))
        split_metrics = {f"{split}/{k}": v for k, v in metrics_from_confusion(cm, scorer.class_names).items()}
        metrics.update(split_metrics)
        confusion[split], predictions[split] = cm, preds
        save_predictions(ckpt_dir / f"predictions_{split}.npz", preds)
        first = preds[0] if preds else None
        tracking.log_evaluation(uri, stage_run, split, {f"selected/{k}": v for k, v in split_metrics.items()}, cm,
                                (first.name, first.y_true, first.y_pred) if first else None)
        tracking.log_file(uri, stage_run, ckpt_dir / f"predictions_{split}.npz", "predictions")
        if ctx.verbose:
            print(f"\n[{name}] {split} subjects {', '.join(getattr(dm.split, split))}")
            print(format_report(split_metrics, split))
    scorer.cpu()
    timings["evaluate"] = time.perf_counter() - t_eval
    t_log = time.perf_counter()
    tracking.log_metrics(uri, stage_run, {"selected/epoch": selected_epoch})
    if best:
        tracking.log_file(uri, stage_run, best, "checkpoints")
    tracking.log_file(uri, stage_run, selected, "checkpoints")

    model_uri = None
    if cfg.tracking.log_model:
        x = dm.recordings["val"][0].x
        example = x[:2] if scorer.kind == "epoch" else x[None, : min(len(x), cfg.finetune.seq_len)]
        model_uri = tracking.log_model(uri, stage_run, scorer, example.astype("float32").copy(), metadata=scorer.spec())
    timings["log"] = time.perf_counter() - t_log
    tracking.log_metrics(uri, stage_run, {f"time/{k}_s": v for k, v in timings.items()})
    trainer.logger.finalize("success")
    tracking.set_terminated(uri, stage_run)
    run_ids.remove(stage_run)
    return StageResult(name, stage_run, metrics, confusion, predictions, selected_epoch, best, str(selected), model_uri,
                       scorer, timings)


def _save_selected(trainer, path: Path, spec: dict) -> None:
    """The selected model's Lightning checkpoint, plus the scorer spec (so the file alone can score).

    Every DDP rank must call it (``trainer.save_checkpoint`` ends with a barrier); only rank 0 writes."""
    import torch

    tmp = path.with_suffix(".tmp")
    trainer.save_checkpoint(tmp)
    if not trainer.is_global_zero:
        return
    ckpt = torch.load(tmp, map_location="cpu", weights_only=False)
    ckpt["dsn_scorer"] = spec
    torch.save(ckpt, tmp)
    tmp.replace(path)


def _registry_tags(ctx: _Context, final: StageResult, extra: dict | None) -> dict[str, str]:
    from dsn import tracking

    data = ctx.d["data"]
    tags = {
        "dataset": Path(str(data["data_dir"])).name, "channel": ", ".join(ctx.dm.prep.channel_names),
        "sfreq": str(data["sfreq"]),
        "fold": f"{data['fold']}/{data['n_folds']}", "stage": final.name, "run_id": ctx.run_id,
    }  # fmt: skip
    split = "test" if "test/f1_macro" in final.metrics else "val"
    for k in ("f1_macro", "kappa", "acc"):
        if f"{split}/{k}" in final.metrics:
            tags[f"{split}/{k}"] = f"{final.metrics[f'{split}/{k}']:.4f}"
    commit = tracking.environment_tags().get("mlflow.source.git.commit")
    if commit:
        tags["git_commit"] = commit
    tags.update({k: str(v) for k, v in (extra or {}).items()})
    return tags


def _fit_summary(results: list[StageResult]) -> dict:
    return {
        r.name: {"run_id": r.run_id, "selected_epoch": r.selected_epoch, "metrics": r.metrics,
                 "confusion": {s: cm.tolist() for s, cm in r.confusion.items()}, "model_uri": r.model_uri}
        for r in results
    }  # fmt: skip


def _quiet_libraries(verbose: bool = True) -> None:
    """Hide library noise that says nothing to a user of dsn (deprecations inside lightning, tips,
    pickle notes). Installed once per process (a sweep runs many fits); ``verbose=False`` also hides
    Lightning's start-up lines (GPU available, ...)."""
    import logging
    import warnings

    for prefix in ("lightning.pytorch", "pytorch_lightning"):
        logging.getLogger(f"{prefix}.utilities.rank_zero").setLevel(logging.INFO if verbose else logging.WARNING)
    if _QUIET["done"]:
        return
    _QUIET["done"] = True
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message=r".*weights_only.*")
    warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")

    class _NoTips(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            msg = record.getMessage()
            return "litlogger" not in msg and "`weights_only` was not set" not in msg

    for prefix in ("lightning.pytorch", "pytorch_lightning"):
        for name in ("utilities.rank_zero", "trainer.connectors.checkpoint_connector"):
            logging.getLogger(f"{prefix}.{name}").addFilter(_NoTips())
        # Lightning prints through the root logger when one is configured first (MLflow's import does):
        # give it its own plain handler, as it has when imported first
        lg = logging.getLogger(prefix)
        if not lg.handlers:
            handler = _StderrHandler()
            handler.addFilter(_NoTips())
            lg.addHandler(handler)
            lg.propagate = False
    logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)


class _StderrHandler:
    """A logging handler writing to whatever ``sys.stderr`` is at the time (not the stream of the moment it
    was made, which a test harness or a redirect may have closed since)."""

    def __new__(cls):
        import logging
        import sys

        class Handler(logging.StreamHandler):
            @property
            def stream(self):
                return sys.stderr

            @stream.setter
            def stream(self, value):
                pass

        return Handler()


def _summary_params(summary: dict) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for split, subs in (summary.get("split") or {}).items():
        out[f"data.n_subjects_{split}"] = len(subs)
        out[f"data.subjects_{split}"] = ",".join(subs)
    for split, counts in summary["class_counts"].items():
        out[f"data.n_epochs_{split}"] = sum(counts.values())
    return out


def _print_summary(summary: dict) -> None:
    from dsn.data.labels import STAGES

    print("Data: subjects and epochs per split")
    print(f"  {'split':<6} {'subjects':>8} {'recs':>5} " + " ".join(f"{s:>6}" for s in STAGES))
    for split, counts in summary["class_counts"].items():
        n_sub = len((summary.get("split") or {}).get(split, []))
        n_rec = len(summary["recordings"][split])
        print(f"  {split:<6} {n_sub:>8} {n_rec:>5} " + " ".join(f"{counts[s]:>6}" for s in STAGES))


class _InterruptFlag:
    """Callback that remembers a Ctrl-C (or SIGTERM) seen by the trainer and saves the state reached."""

    def __new__(cls, path: Path):
        import lightning as L

        class Flag(L.Callback):
            seen = False

            def on_exception(self, trainer, pl_module, exception):
                if isinstance(exception, KeyboardInterrupt) or type(exception).__name__ == "Terminated":
                    self.seen = isinstance(exception, KeyboardInterrupt)
                    try:  # written to a temporary name first: a failure never corrupts the last checkpoint
                        tmp = self.path.with_suffix(".tmp")
                        trainer.save_checkpoint(tmp)
                        if trainer.is_global_zero:  # under DDP only rank 0 writes
                            tmp.replace(self.path)
                    except Exception as e:  # the run is being stopped anyway: report, do not mask the interrupt
                        print(f"could not save the interrupted state to {self.path}: {e}")

        flag = Flag()
        flag.path = Path(path)  # a DDP rank other than 0 learns rank 0's folder at setup
        return flag


def main(argv: Sequence[str]) -> FitResult:
    """``dsn fit``: parse the command line (config files, dotted overrides) and run one fit."""
    from dsn import config

    cfg = config.parse(config.fix_resume_flag(argv), config.build_parser())
    return run_fit(cfg, resume=cfg.resume, allow_config_change=cfg.allow_config_change)
