"""``dsn fit``: the two-stage DeepSleepNet recipe (pretrain, then fine-tune), tracked in MLflow.

Configuration is LightningCLI-style YAML parsed by jsonargparse: ``--config`` files stack (later
overrides earlier), any key can be set on the command line in dotted form
(``--pretrain.trainer.max_epochs 5``), and ``--print_config`` shows the resolved configuration.
"""

from __future__ import annotations

import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

TRAINER_SKIP = {"logger", "callbacks", "enable_checkpointing", "default_root_dir", "plugins", "profiler"}
STAGES = ("pretrain", "finetune")


def build_parser():
    """The ``dsn fit`` argument parser (jsonargparse, signatures of the classes it configures)."""
    from jsonargparse import ActionConfigFile, ArgumentParser
    from lightning import Trainer

    from dsn.data.datamodule import SleepEDFDataModule
    from dsn.models import DeepFeatureNet, DeepSleepNet
    from dsn.systems.finetune import FinetuneSystem
    from dsn.systems.pretrain import PretrainSystem

    p = ArgumentParser(prog="dsn fit", description="Train DeepSleepNet: pretraining then sequence fine-tuning.")
    p.add_argument("--config", action=ActionConfigFile, help="YAML config; repeat to stack overlays.")
    p.add_argument("--seed_everything", type=int, default=0, help="Seed of torch, numpy and python (reproducible runs).")
    p.add_argument("--stages", type=list[Literal["pretrain", "finetune"]], default=list(STAGES), help="Stages to run, in order.")
    p.add_argument("--selection", type=Literal["best", "last"], default="best",
                   help="Model kept from each stage: best validation macro-F1, or the last epoch (the paper).")
    p.add_argument("--test", type=bool, default=True, help="Evaluate the selected model on the test subjects.")
    p.add_argument("--resume", type=str | None, default=None,
                   help="Continue an interrupted fit: 'last' (most recent fit run) or a parent run id.")
    p.add_argument("--tracking.uri", type=str | None, default=None,
                   help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else sqlite:///<home>/mlflow.db).")
    p.add_argument("--tracking.home", type=str, default="mlruns", help="Local tracking home (database, artifacts, checkpoints).")
    p.add_argument("--tracking.experiment", type=str, default="dsn", help="MLflow experiment name.")
    p.add_argument("--tracking.run_name", type=str | None, default=None, help="Name of the parent run.")
    p.add_argument("--tracking.log_model", type=bool, default=True, help="Log each stage's final model as an MLflow model.")
    p.add_class_arguments(SleepEDFDataModule, "data", skip={"mode", "batch_size", "seq_len"})
    p.add_class_arguments(DeepFeatureNet, "net")
    p.add_class_arguments(PretrainSystem, "pretrain.system", skip={"net"})
    p.add_argument("--pretrain.batch_size", type=int, default=100, help="Epochs per batch.")
    p.add_class_arguments(Trainer, "pretrain.trainer", skip=TRAINER_SKIP)
    p.add_class_arguments(DeepSleepNet, "finetune.net", skip={"feature_net"})
    p.add_class_arguments(FinetuneSystem, "finetune.system", skip={"net"})
    p.add_argument("--finetune.batch_size", type=int, default=10, help="Sequences (parallel streams) per batch.")
    p.add_argument("--finetune.seq_len", type=int, default=25, help="Epochs per sequence.")
    p.add_class_arguments(Trainer, "finetune.trainer", skip=TRAINER_SKIP)
    return p


def _fix_resume_flag(argv: list[str]) -> list[str]:
    """Allow a bare ``--resume`` (meaning ``--resume last``)."""
    out = list(argv)
    for i, a in enumerate(out):
        if a == "--resume" and (i + 1 == len(out) or out[i + 1].startswith("--")):
            out.insert(i + 1, "last")
            break
    return out


@dataclass
class StageResult:
    name: str
    run_id: str
    metrics: dict[str, float] = field(default_factory=dict)
    best_checkpoint: str | None = None
    model_uri: str | None = None


@dataclass
class FitResult:
    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    stages: list[StageResult]


def main(argv: list[str] | None = None) -> FitResult:
    parser = build_parser()
    cfg = parser.parse_args(_fix_resume_flag(sys.argv[1:] if argv is None else argv))
    return run(cfg, parser)


def _trainer_kwargs(cfg_trainer) -> dict[str, Any]:
    return {k: v for k, v in dict(cfg_trainer).items() if k not in TRAINER_SKIP}


def run(cfg, parser) -> FitResult:
    """Run ``dsn fit`` for a parsed configuration."""
    import lightning as L
    import torch

    from dsn import tracking
    from dsn.data.datamodule import SleepEDFDataModule
    from dsn.models import DeepFeatureNet, DeepSleepNet
    from dsn.systems.finetune import FinetuneSystem
    from dsn.systems.pretrain import PretrainSystem

    _quiet_libraries()
    L.seed_everything(cfg.seed_everything, workers=True, verbose=False)
    torch.set_float32_matmul_precision("high")
    home = Path(cfg.tracking.home)
    uri = tracking.tracking_uri(cfg.tracking.uri, home)
    tracking.check_tracking(uri)  # before anything slow
    exp_id = tracking.experiment_id(uri, cfg.tracking.experiment, home)

    resume = cfg.resume
    if resume:
        parent_run = tracking.latest_parent(uri, exp_id) if resume == "last" else tracking.get_run(uri, resume)
        if parent_run is None:
            raise SystemExit(f"--resume {resume}: no earlier `dsn fit` run in experiment '{cfg.tracking.experiment}'.")
        parent = parent_run.info.run_id
        tracking.reopen_run(uri, parent)
        print(f"Resuming fit run {parent}")
    else:
        tags = {"dsn.kind": "fit", **tracking.environment_tags()}
        run_name = cfg.tracking.run_name or "fit-" + "+".join(Path(str(c)).stem for c in (cfg.get("config") or [])) or "fit"
        parent = tracking.start_run(uri, exp_id, run_name.rstrip("-"), tags=tags)
    run_ids = [parent]
    ckpt_root = home / "checkpoints" / parent
    results: list[StageResult] = []

    with tracking.run_guard(uri, run_ids):
        if not resume:
            tracking.log_text(uri, parent, parser.dump(cfg), "config.yaml")
            params = {k: v for k, v in cfg.as_dict().items() if k not in ("config", "__path__")}
            tracking.log_params(uri, parent, params)
        dm = SleepEDFDataModule(**cfg.data.as_dict(), mode="pretrain", batch_size=cfg.pretrain.batch_size, seq_len=cfg.finetune.seq_len)
        dm.prepare_data()
        dm.setup()
        summary = dm.summary()
        _print_summary(summary)
        tracking.log_dict(uri, parent, summary, "data_summary.json")
        if not resume:
            tracking.log_params(uri, parent, _summary_params(summary))

        net_kwargs = cfg.net.as_dict()
        if abs(float(net_kwargs.get("sfreq", dm.prep.sfreq)) - dm.prep.sfreq) > 1e-6:
            raise SystemExit(
                f"net.sfreq={net_kwargs['sfreq']} but data.sfreq={dm.prep.sfreq}: set both to the same rate."
            )
        feature_net = DeepFeatureNet(**net_kwargs)

        if "pretrain" in cfg.stages:
            system = PretrainSystem(feature_net, **cfg.pretrain.system.as_dict())
            dm.mode, dm.batch_size = "pretrain", cfg.pretrain.batch_size
            res = _run_stage("pretrain", system, dm, cfg, cfg.pretrain, uri, exp_id, parent, run_ids, ckpt_root, resume)
            results.append(res)
            feature_net = system.feature_net

        if "finetune" in cfg.stages:
            ft = cfg.finetune.system.as_dict()
            if "pretrain" in cfg.stages:
                ft["pretrained"] = None  # weights already in feature_net
            elif ft.get("pretrained") is None:
                print("warning: fine-tuning without pretrained weights (finetune.system.pretrained is not set).")
            elif str(ft["pretrained"]).startswith(("runs:/", "models:/")):  # from this fit's tracking store
                from dsn.systems.finetune import load_pretrained

                load_pretrained(feature_net, tracking.load_model(ft.pop("pretrained"), uri))
            net = DeepSleepNet(feature_net, **cfg.finetune.net.as_dict())
            system = FinetuneSystem(net, **ft)
            dm.mode, dm.batch_size, dm.seq_len = "finetune", cfg.finetune.batch_size, cfg.finetune.seq_len
            res = _run_stage("finetune", system, dm, cfg, cfg.finetune, uri, exp_id, parent, run_ids, ckpt_root, resume)
            results.append(res)

        final = results[-1].metrics if results else {}
        tracking.log_metrics(uri, parent, {k: v for k, v in final.items() if k.startswith(("val/", "test/"))})

    url = f"run `dsn ui` and open {tracking.ui_url(5000, exp_id)}"
    print(f"\nMLflow: experiment '{cfg.tracking.experiment}' (id {exp_id}), parent run {parent}\n  tracking URI {uri}\n  {url}")
    return FitResult(parent, exp_id, uri, results)


def _quiet_libraries() -> None:
    """Hide library noise that says nothing to a user of dsn (deprecations inside lightning, tips, pickle notes)."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message=r".*weights_only.*")
    warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")

    class _NoTips(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            msg = record.getMessage()
            return "litlogger" not in msg and "`weights_only` was not set" not in msg

    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoTips())
    logging.getLogger("lightning.pytorch.trainer.connectors.checkpoint_connector").addFilter(_NoTips())
    logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)


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


def _run_stage(name, system, dm, cfg, stage_cfg, uri, exp_id, parent, run_ids, ckpt_root, resume) -> StageResult:
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint

    from dsn import tracking
    from dsn.systems.metrics import format_report

    ckpt_dir = ckpt_root / name
    child = tracking.find_child(uri, parent, name) if resume else None
    if child is not None and child.info.status == "FINISHED" and (ckpt_dir / "selected.ckpt").is_file():
        print(f"[{name}] already finished in run {child.info.run_id}: loading its selected model.")
        state = torch.load(ckpt_dir / "selected.ckpt", map_location="cpu", weights_only=False)["state_dict"]
        system.load_state_dict(state)
        return StageResult(name, child.info.run_id, {k: v for k, v in child.data.metrics.items()})
    if child is not None:
        run_id = child.info.run_id
        tracking.reopen_run(uri, run_id)
    else:
        run_id = tracking.start_run(uri, exp_id, name, parent=parent, tags={"dsn.stage": name})
        stage_params = {"stage": name, "selection": cfg.selection, "seed_everything": cfg.seed_everything,
                        **{f"{name}.{k}": v for k, v in stage_cfg.as_dict().items()},
                        "net": cfg.net.as_dict(), "data": cfg.data.as_dict()}
        tracking.log_params(uri, run_id, stage_params)
    run_ids.append(run_id)

    checkpoint = ModelCheckpoint(
        dirpath=ckpt_dir, filename="best-{epoch:03d}", monitor="val/f1_macro", mode="max",
        save_top_k=1, save_last=True, auto_insert_metric_name=False,
    )
    interrupted = _InterruptFlag(ckpt_dir / "last.ckpt")
    trainer = L.Trainer(
        **_trainer_kwargs(stage_cfg.trainer),
        logger=tracking.lightning_logger(uri, run_id),
        callbacks=[checkpoint, interrupted],
        default_root_dir=str(ckpt_dir),
        enable_checkpointing=True,
    )
    last = ckpt_dir / "last.ckpt"
    ckpt_path = str(last) if resume and last.is_file() else None
    print(f"\n[{name}] training (MLflow run {run_id})" + (f", resuming from {last}" if ckpt_path else ""))
    try:
        trainer.fit(system, datamodule=dm, ckpt_path=ckpt_path)
    except SystemExit:
        if interrupted.seen:  # Lightning turns Ctrl-C into sys.exit(1) after its graceful shutdown
            signal.signal(signal.SIGINT, signal.default_int_handler)
            print(f"[{name}] interrupted: the last state is in {last}; continue with `dsn fit ... --resume`.")
            raise KeyboardInterrupt from None
        raise

    best = checkpoint.best_model_path or None
    if cfg.selection == "best" and best:
        state = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
        system.load_state_dict(state)
        print(f"[{name}] selected the best epoch by val/f1_macro ({checkpoint.best_model_score:.4f}): {Path(best).name}")
    else:
        print(f"[{name}] selected the last epoch")
    trainer.save_checkpoint(ckpt_dir / "selected.ckpt")
    if best:
        tracking.log_file(uri, run_id, best, "checkpoints")
    tracking.log_file(uri, run_id, ckpt_dir / "selected.ckpt", "checkpoints")

    metrics: dict[str, float] = {}
    splits = ["val"] + (["test"] if cfg.test and dm.recordings.get("test") else [])
    for split in splits:
        getattr(trainer, "validate" if split == "val" else "test")(system, datamodule=dm, verbose=False)
        split_metrics = {k: v for k, v in system.last_metrics.items() if k.startswith(f"{split}/")}
        metrics.update(split_metrics)
        tracking.log_evaluation(uri, run_id, split, split_metrics, system.confusion.get(split),
                                _first_hypnogram(dm, system, split), step=trainer.global_step)
        print(f"\n[{name}] {split} subjects {', '.join(getattr(dm.split, split))}")
        print(format_report({k.split("/", 1)[1]: v for k, v in split_metrics.items()}, split))

    model_uri = None
    if cfg.tracking.log_model:
        model = system.model if name == "pretrain" else system.net
        x = dm.recordings["val"][0].x
        example = x[:2] if name == "pretrain" else x[None, : min(len(x), dm.seq_len)]
        model_uri = tracking.log_model(uri, run_id, model, example.astype("float32").copy())
    trainer.logger.finalize("success")
    tracking.set_terminated(uri, run_id)
    run_ids.remove(run_id)
    return StageResult(name, run_id, metrics, best, model_uri)


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
                        tmp = path.with_suffix(".tmp")
                        trainer.save_checkpoint(tmp)
                        tmp.replace(path)
                    except Exception as e:  # the run is being stopped anyway: report, do not mask the interrupt
                        print(f"could not save the interrupted state to {path}: {e}")

        return Flag()


def _first_hypnogram(dm, system, split):
    """(name, y_true, y_pred) of the first recording of ``split``, from the last evaluation's outputs."""
    out = system.eval_outputs.get(split)
    recs = dm.recordings.get(split) or []
    if out is None or not recs:
        return None
    rec = recs[0]
    y_true, y_pred = out
    if dm.mode == "pretrain":
        n = int((rec.y >= 0).sum())
        mask = rec.y >= 0
        t = rec.y.copy()
        p = t.copy()
        p[mask] = y_pred[:n]
        p[~mask] = -1
        return rec.name, t, p
    n = len(rec)
    return rec.name, y_true[:n], y_pred[:n]
