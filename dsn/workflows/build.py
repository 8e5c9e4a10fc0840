"""What a fit trains: its data module, each stage's system, and how the selected model becomes a scorer.

Every function reads the fit's config in its one form, the parsed and normalised namespace
(:func:`dsn.config.parse`); a section becomes keyword arguments through :func:`dsn.config.to_dict`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from dsn.config import to_dict
from dsn.data.errors import DataError
from dsn.errors import ConfigError

log = logging.getLogger(__name__)

#: A model URI has a scheme of two or more characters (``models:/``, ``runs:/``, ``s3://``); ``C:/`` is a path.
MODEL_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")


def is_model_uri(source: Any) -> bool:
    """Whether ``source`` is a model URI (``models:/...``, ``runs:/...``) rather than a file path."""
    return isinstance(source, str) and bool(MODEL_URI.match(source))


def data_module(cfg):
    """The fit's data module, set up (data errors surface here, before any run is opened)."""
    from dsn.data.datamodule import SleepEDFDataModule

    dm = SleepEDFDataModule(**to_dict(cfg.data), mode="pretrain", batch_size=cfg.pretrain.batch_size, seq_len=cfg.finetune.seq_len)
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


def feature_net(cfg):
    """The epoch encoder ``net.*`` describes (random weights; :func:`dsn.models.networks.build_encoder`)."""
    from dsn.models.networks import build_encoder

    return build_encoder(to_dict(cfg.net), cfg.pretrain.system.n_outputs)


def _scorer_kwargs(cfg, dm, fnet) -> dict[str, Any]:
    """The scorer's preprocessing (read from the data module: channels, rates) and network config (the spec's
    form, :func:`dsn.models.networks.encoder_config`)."""
    from dsn.models.networks import encoder_config, sequence_config

    config = {"net": encoder_config(to_dict(cfg.net), fnet), "finetune_net": sequence_config(to_dict(cfg.finetune.net))}
    return {"preprocessing": dm.scorer_preprocessing(), "config": config, "seq_len": cfg.finetune.seq_len}


#: Keys of ``net`` / ``finetune.net`` that are training settings, not architecture: an ``init`` model may have
#: been trained with other values.
TRAINING_ONLY_NET_KEYS = ("drop_prob", "bn_momentum")


def load_model(source: str, uri: str, key: str):
    """The :class:`~dsn.models.scoring.SleepScorer` that config key ``key`` names (a registry or run reference,
    a model folder or a ``selected.ckpt``), loaded through :func:`dsn.workflows.registry.load_scorer` (no
    unpickling); a bad reference is a ``ConfigError`` naming ``key``."""
    from dsn.errors import ModelError
    from dsn.workflows.registry import load_scorer

    try:
        return load_scorer(source, uri)
    except ModelError as e:
        raise ConfigError(f"{key}: {e}") from None


def start_weights(cfg, uri: str):
    """The weights the fit starts from instead of random ones, loaded now (a bad path, reference or
    architecture is a ``ConfigError`` before any run opens); None: random weights (or this fit's own pretraining).

    - ``init`` (a model reference, see :func:`load_model`): a :class:`~dsn.models.scoring.SleepScorer` whose
      networks start both stages (:func:`system`); its architecture must match the config (:func:`check_init`);
    - else ``finetune.system.pretrained`` for a fine-tuning-only fit: the feature net it names.
    """
    init, stages = cfg.init, cfg.stages
    source = cfg.finetune.system.pretrained
    if init is not None:
        if source is not None:
            raise ConfigError(f"init={init!r} and finetune.system.pretrained={source!r} both name starting weights: "
                              "give one (init starts both stages, the whole sequence net included).")
        scorer = load_model(init, uri, "init")
        check_init(scorer, cfg, init)
        return scorer
    if "pretrain" in stages or "finetune" not in stages:
        return None  # the weights come from this fit's own pretraining
    if source is None:
        log.warning("warning: fine-tuning without pretrained weights (finetune.system.pretrained is not set).")
        return None
    from dsn.systems.finetune import load_pretrained

    if is_model_uri(source):  # a model reference, resolved in this fit's tracking store
        source = load_model(source, uri, "finetune.system.pretrained")
    try:
        return load_pretrained(feature_net(cfg), source)
    except ValueError as e:
        raise ConfigError(f"finetune.system.pretrained: {e}") from None


def check_init(scorer, cfg, source: str) -> None:
    """Raise ``ConfigError`` (one line: the key, both values, the fix) when the ``init`` model's spec and the
    config disagree on the architecture: the channels (names and number), ``data.sfreq``, the ``net.*`` keys
    and, when fine-tuning starts from a sequence model, the ``finetune.net.*`` keys and the number of classes.
    ``drop_prob`` and ``bn_momentum`` (:data:`TRAINING_ONLY_NET_KEYS`) may differ."""
    from dsn.data.channels import channel_names
    from dsn.models.networks import is_default, sequence_config

    prep, spec_cfg, data = scorer.preprocessing, scorer.config, cfg.data
    model_ch, ours = channel_names(scorer.channels), channel_names(data.channels)
    head = f"init={source}:"
    if ours != model_ch:
        raise ConfigError(f"{head} data.channels is {ours} but the model reads {model_ch}; give --data.channels "
                          f"'{model_ch}' (map this site's labels to them with data.channel_aliases, e.g. "
                          f"{{{model_ch[0]}: [LABEL]}}) or train without --init.")
    if float(prep["sfreq"]) != float(data.sfreq):
        raise ConfigError(f"{head} data.sfreq is {data.sfreq} but the model was trained at {prep['sfreq']} Hz; "
                          f"give --data.sfreq {prep['sfreq']} (the recordings are resampled) or train without --init.")
    checks = [("net", *_net_pair(cfg, scorer))]
    if "finetune" in cfg.stages and scorer.kind == "sequence":
        ft_net = to_dict(cfg.finetune.net)
        theirs = spec_cfg.get("finetune_net") or {}
        if not (is_default({}, ft_net) and is_default({}, theirs)):
            ft_net = sequence_config(ft_net)
        checks.append(("finetune.net", ft_net, theirs))
        n_model, n_ours = len(scorer.class_names), ft_net.get("n_outputs", len(scorer.class_names))
        if n_model != n_ours:
            raise ConfigError(f"{head} finetune.net.n_outputs is {n_ours} but the model has {n_model} classes "
                              f"({scorer.class_names}); give --finetune.net.n_outputs {n_model} or train without --init.")
    for section, mine, theirs in checks:
        ours, model = _architecture_items(mine), _architecture_items(theirs)
        if "class_path" in theirs:  # another network: an init_args key given on one side only differs too
            model.update({k: "its default" for k in ours if k.startswith("init_args.") and k not in model})
        for k, v in model.items():
            if k in ("sfreq", "n_chans", "n_outputs") or k not in ours or ours[k] == v:
                continue
            fix = f"remove {section}.{k}" if v == "its default" else f"give --{section}.{k} {v} (the model's value)"
            raise ConfigError(f"{head} {section}.{k} is {ours[k]!r} but the model was built with {v!r}; {fix} or "
                              "train without --init.")
    if prep.get("normalize", "none") != data.normalize:
        log.warning("warning: init=%s was trained with data.normalize=%s, this fit uses %s: its first layers see "
                    "inputs of another scale.", source, prep.get("normalize", "none"), data.normalize)


def _architecture_items(section: dict[str, Any]) -> dict[str, Any]:
    """A network section's keys that fix its architecture, ``init_args`` spelt out (``init_args.KEY``), without
    :data:`TRAINING_ONLY_NET_KEYS`."""
    out = {k: v for k, v in section.items() if k != "init_args" and k not in TRAINING_ONLY_NET_KEYS}
    args = section.get("init_args") or {}
    out.update({f"init_args.{k}": v for k, v in args.items() if k not in TRAINING_ONLY_NET_KEYS})
    return out


def _net_pair(cfg, scorer) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``net`` section of the config and of the ``init`` model, comparable key by key: DeepFeatureNet's keys
    with the values a None stands for (kernel sizes, strides, n_times follow sfreq); another encoder's spec form
    (:func:`dsn.models.networks.encoder_config`)."""
    import torch

    from dsn.models.networks import encoder_config, is_default

    mine, theirs = to_dict(cfg.net), dict(scorer.config.get("net") or {})
    if not (is_default(mine) and is_default(theirs)):  # the class first, then its arguments
        named = lambda d: {"class_path": "dsn.models.DeepFeatureNet", **{k: v for k, v in d.items()  # noqa: E731
                                                                          if k not in ("package", "package_version")}}
        return named(encoder_config(mine)), named(theirs)
    with torch.device("meta"):
        mine_net = feature_net(cfg)
    resolved = lambda net, raw: {k: getattr(net, k, v) for k, v in raw.items()}  # noqa: E731
    return resolved(mine_net, mine), resolved(scorer.net.feature_net, theirs)


def _load_init(stage: str, cfg, init, target) -> None:
    """Copy the ``init`` model's weights into ``target`` (stage ``stage``'s network), in place: pretraining's
    ``FeatureClassifierNet`` gets the feature net (and the classifier of an epoch model), fine-tuning's
    ``DeepSleepNet`` (or ``EncoderSequenceNet``) the whole sequence net of a sequence model (its feature net only when the fit did not
    pretrain), else the feature net of an epoch model (when the fit did not pretrain)."""
    own = init.net.state_dict()
    pretrained_here = "pretrain" in cfg.stages
    if stage == "pretrain":
        keys = [k for k in target.state_dict() if k in own and (k.startswith("feature_net.") or init.kind == "epoch")]
    elif init.kind == "sequence":
        keys = [k for k in target.state_dict() if k in own and not (pretrained_here and k.startswith("feature_net."))]
    else:
        keys = [] if pretrained_here else [k for k in target.state_dict() if k.startswith("feature_net.") and k in own]
    target.load_state_dict({k: own[k] for k in keys}, strict=False)
    log.debug("[%s] %d tensors from the init model", stage, len(keys))


def system(stage: str, cfg, dm, fnet, start=None) -> tuple[Any, Callable[[Any], Any]]:
    """Stage ``stage``'s Lightning system around ``fnet`` and ``make_scorer(system) -> SleepScorer`` (preprocessing
    from ``dm``). ``start`` (:func:`start_weights`): an ``init`` model whose weights the stage's network starts
    from, or a pretrained feature net that fine-tuning starts from."""
    from dsn.models.scoring import SleepScorer

    init = start if isinstance(start, SleepScorer) else None

    kw = _scorer_kwargs(cfg, dm, fnet)
    if stage == "pretrain":
        from dsn.systems.pretrain import PretrainSystem

        pre = PretrainSystem(fnet, **to_dict(cfg.pretrain.system))
        if init is not None:
            _load_init(stage, cfg, init, pre.model)
        return pre, lambda s: SleepScorer(s.model, **kw)
    from dsn.models.networks import build_sequence_net
    from dsn.systems.finetune import FinetuneSystem

    if start is not None and init is None:
        fnet.load_state_dict(start.state_dict())
    ft = {k: v for k, v in to_dict(cfg.finetune.system).items() if k != "pretrained"}
    carry, n_offsets = bool(ft.get("carry_state", True)), cfg.finetune.n_offsets
    net = build_sequence_net(to_dict(cfg.finetune.net), fnet)
    if init is not None:
        _load_init(stage, cfg, init, net)
    return FinetuneSystem(net, **ft), lambda s: SleepScorer(s.net, **kw, carry_state=carry, n_offsets=n_offsets)
