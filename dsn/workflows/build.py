"""What a fit trains: its data module, each stage's system, and how the selected model becomes a scorer."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from dsn.data.edf import DataError
from dsn.errors import ConfigError

log = logging.getLogger(__name__)

#: A model URI has a scheme of two or more characters (``models:/``, ``runs:/``, ``s3://``); ``C:/`` is a path.
MODEL_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")


def is_model_uri(source: Any) -> bool:
    """Whether ``source`` is a model URI (``models:/...``, ``runs:/...``) rather than a file path."""
    return isinstance(source, str) and bool(MODEL_URI.match(source))


def data_module(d: dict, cfg):
    """The fit's data module, set up (data errors surface here, before any run is opened)."""
    from dsn.data.datamodule import SleepEDFDataModule

    dm = SleepEDFDataModule(**d["data"], mode="pretrain", batch_size=cfg.pretrain.batch_size, seq_len=cfg.finetune.seq_len)
    dm.prepare_data()
    dm.setup()
    for split in ("train", "val"):  # what trainer.fit would find missing only after the runs are open
        if not dm.recordings.get(split):
            raise DataError(f"the {split} split has no recordings (subjects: {list(getattr(dm.split, split))}): give "
                            f"data.{split}_subjects, or fewer data.n_folds / data.n_val_subjects so that it keeps one.")
    return dm


def stage_data(dm, cfg, stage: str):
    """The data module as stage ``stage`` reads it (its mode, batch size and sequence length)."""
    if stage == "pretrain":
        return dm.for_stage("pretrain", cfg.pretrain.batch_size)
    return dm.for_stage("finetune", cfg.finetune.batch_size, cfg.finetune.seq_len)


def feature_net(d: dict):
    from dsn.models import DeepFeatureNet

    return DeepFeatureNet(**d["net"])


def _scorer_kwargs(d: dict, dm) -> dict[str, Any]:
    """The scorer's preprocessing (read from the data module: channels, rates) and network config."""
    return {"preprocessing": dm.scorer_preprocessing(), "config": {"net": d["net"], "finetune_net": d["finetune"]["net"]},
            "seq_len": d["finetune"]["seq_len"]}


def pretrained(d: dict, stages, uri: str):
    """The feature net that ``finetune.system.pretrained`` names, loaded now (a bad path or reference is a
    ``ConfigError`` before any run opens); None when the fit pretrains itself or starts from scratch."""
    source = d["finetune"]["system"].get("pretrained")
    if "pretrain" in stages or "finetune" not in stages:
        return None  # the weights come from this fit's own pretraining
    if source is None:
        log.warning("warning: fine-tuning without pretrained weights (finetune.system.pretrained is not set).")
        return None
    from dsn.systems.finetune import load_pretrained

    if is_model_uri(source):  # a model reference, resolved in this fit's tracking store
        from dsn.workflows.registry import load_scorer

        source = load_scorer(source, uri)
    try:
        return load_pretrained(feature_net(d), source)
    except ValueError as e:
        raise ConfigError(f"finetune.system.pretrained: {e}") from None


def system(stage: str, d: dict, dm, fnet, start=None) -> tuple[Any, Callable[[Any], Any]]:
    """Stage ``stage``'s Lightning system around ``fnet`` (fine-tuning: with ``start``'s weights when given,
    see :func:`pretrained`), and ``make_scorer(system) -> SleepScorer`` (preprocessing from ``dm``)."""
    from dsn.models.scoring import SleepScorer

    kw = _scorer_kwargs(d, dm)
    if stage == "pretrain":
        from dsn.systems.pretrain import PretrainSystem

        return PretrainSystem(fnet, **d["pretrain"]["system"]), lambda s: SleepScorer(s.model, **kw)
    from dsn.models import DeepSleepNet
    from dsn.systems.finetune import FinetuneSystem

    if start is not None:
        fnet.load_state_dict(start.state_dict())
    ft = {k: v for k, v in d["finetune"]["system"].items() if k != "pretrained"}
    carry = bool(ft.get("carry_state", True))
    return (FinetuneSystem(DeepSleepNet(fnet, **d["finetune"]["net"]), **ft),
            lambda s: SleepScorer(s.net, **kw, carry_state=carry, n_offsets=d["finetune"]["n_offsets"]))
