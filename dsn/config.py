"""One configuration system for every command (``dsn fit``, ``dsn sweep``, ``dsn cv``).

LightningCLI-style YAML parsed by jsonargparse from the signatures of the classes it configures:
``--config`` files stack (later overrides earlier), any key can be set in dotted form
(``--pretrain.trainer.max_epochs 5``), and ``--print_config`` shows the resolved configuration.
``data.sfreq`` is linked to ``net.sfreq`` (the network is always built for the data's rate) and the number of
``data.channels`` to ``net.n_chans``. ``net.class_path`` / ``finetune.net.class_path`` (with ``init_args``) name
another epoch encoder or sequence model than DeepSleepNet's, whose keys stay flat beside them
(:mod:`dsn.models.networks`).

Library functions never exit: a bad value raises :class:`~dsn.errors.ConfigError` naming the dotted
key, the value and what is allowed.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from dsn.errors import ConfigError
from dsn.utils import flatten

TRAINER_SKIP = {"logger", "callbacks", "enable_checkpointing", "default_root_dir", "plugins", "profiler", "use_distributed_sampler"}
#: The training stages of a fit, in order (not the sleep stages: :data:`dsn.data.labels.STAGES`).
TRAINING_STAGES = ("pretrain", "finetune")
#: Keys of a fit config that are command flags, not part of what is trained (never logged as params).
NON_TRAINING_KEYS = ("config", "__path__", "resume", "allow_config_change", "print_config")
#: Keys (``fnmatch`` patterns) that cannot change the trained weights: where a run is tracked, how the data
#: is loaded, what is shown. A resumed fit or a rerun cv may differ in them (:func:`identity_items`).
#: Every ``tracking.*`` key but the experiment is one of them.
NON_WEIGHT_KEYS = (
    "tracking.uri", "tracking.home", "tracking.run_name", "tracking.log_model", "tracking.register", "tracking.register_alias",
    "data.num_workers", "data.pin_memory", "data.persistent_workers", "data.progress", "data.cache_dir", "data.use_cache",
    "data.download", "calibration.*", "*.trainer.log_every_n_steps", "*.trainer.enable_progress_bar", "*.trainer.enable_model_summary",
)  # fmt: skip


#: The ``data`` keys of a fit on several data sets (:mod:`dsn.data.sources`); left out of :func:`training_items`
#: when not set.
SOURCE_KEYS = ("sources", "test_sources", "balance_sources")


def add_training_arguments(p) -> None:
    """Add every key of a two-stage training config to a jsonargparse parser."""
    from lightning import Trainer

    from dsn.data.datamodule import SleepEDFDataModule
    from dsn.models import DeepFeatureNet, DeepSleepNet
    from dsn.systems.finetune import FinetuneSystem
    from dsn.systems.pretrain import PretrainSystem

    p.add_argument("--seed_everything", type=int, default=0, help="Seed of torch, numpy and python (reproducible runs).")
    p.add_argument("--stages", type=list[Literal["pretrain", "finetune"]], default=list(TRAINING_STAGES), help="Stages to run, in order.")
    p.add_argument("--selection", type=Literal["best", "last"], default="best",
                   help="Model kept from each stage: best validation macro-F1, or the last epoch (the paper).")
    p.add_argument("--test", type=bool, default=True, help="Evaluate the selected model on the test subjects.")
    p.add_argument("--init", type=str | None, default=None,
                   help="Start both stages from this model's weights instead of random ones (adapting a model to a new "
                        "site): models:/NAME@ALIAS, models:/NAME/VERSION, runs:/ID/model, a model folder or a "
                        "selected.ckpt. Its channels, data.sfreq and net.* / finetune.net.* keys must match the config's "
                        "(drop_prob and bn_momentum may differ); null: random weights.")
    p.add_argument("--calibration.low_confidence", type=float | None, default=None,
                   help="Low-confidence threshold stored in the model (epochs whose calibrated top-class probability is "
                        "below it are flagged); null: chosen on the validation subjects (README: Trustworthy scores).")
    add_tracking_arguments(p)
    p.add_argument("--tracking.run_name", type=str | None, default=None, help="Name of the top-level run.")
    p.add_argument("--tracking.log_model", type=bool, default=True, help="Log each stage's final model as an MLflow model.")
    p.add_argument("--tracking.register", type=str | None, default=None,
                   help="Register the final model under this registered-model name (e.g. deepsleepnet); null: do not.")
    p.add_argument("--tracking.register_alias", type=str | None, default=None,
                   help="Also point this alias (e.g. champion) at the newly registered version.")
    p.add_class_arguments(SleepEDFDataModule, "data", skip={"mode", "batch_size", "seq_len"})
    p.add_class_arguments(DeepFeatureNet, "net")
    _add_class_path(p, "net", "DeepFeatureNet",
                    "The epoch encoder: DeepFeatureNet (DeepSleepNet's CNN, whose keys are net.*), TinySleepNetEncoder, a "
                    "braindecode model (SleepStagerChambon2018 = braindecode.models.SleepStagerChambon2018) or your "
                    "package.module.Class with braindecode's signature (n_chans, n_times, sfreq, n_outputs).")
    p.link_arguments("data.sfreq", "net.sfreq")
    p.link_arguments(("data.channels", "data.channel"), "net.n_chans", compute_fn=n_chans_of)
    p.add_class_arguments(PretrainSystem, "pretrain.system", skip={"net"})
    p.add_argument("--pretrain.batch_size", type=int, default=100, help="Epochs per batch.")
    _add_stage_extras(p, "pretrain")
    p.add_class_arguments(Trainer, "pretrain.trainer", skip=TRAINER_SKIP)
    p.add_class_arguments(DeepSleepNet, "finetune.net", skip={"feature_net"})
    _add_class_path(p, "finetune.net", "bilstm",
                    "The sequence model: bilstm (DeepSleepNet's BiLSTM + shortcut, whose keys are finetune.net.*), lstm "
                    "(TinySleepNet's), transformer, or none (a linear head on each epoch's features).")
    p.add_class_arguments(FinetuneSystem, "finetune.system", skip={"net"})
    p.add_argument("--finetune.batch_size", type=int, default=10, help="Sequences (parallel streams) per batch.")
    p.add_argument("--finetune.seq_len", type=int, default=25, help="Epochs per sequence.")
    p.add_argument("--finetune.n_offsets", type=int, default=1,
                   help="Chunk-offset averaging when the selected model scores a night: stream it this many times with "
                        "the chunk boundaries shifted by seq_len / n_offsets and average the probabilities "
                        "(1: one streaming, the official test procedure).")
    _add_stage_extras(p, "finetune")
    p.add_class_arguments(Trainer, "finetune.trainer", skip=TRAINER_SKIP)


def _add_class_path(p, section: str, default: str, help: str) -> None:
    """``--SECTION.class_path`` and ``--SECTION.init_args`` (LightningCLI's subclass form; :mod:`dsn.models.networks`)."""
    p.add_argument(f"--{section}.class_path", type=str, default=default, help=help)
    p.add_argument(f"--{section}.init_args", type=dict[str, Any], default={},
                   help=f"Constructor arguments of {section}.class_path (the data-linked ones excluded).")


def n_chans_of(channels, channel=None) -> int:
    """``net.n_chans`` of a config: the number of ``data.channels`` (1 with the deprecated ``data.channel``)."""
    return 1 if channel is not None else max(1, len(channels or []))


def _add_stage_extras(p, stage: str) -> None:
    p.add_argument(f"--{stage}.early_stopping_patience", type=int | None, default=None,
                   help="Stop when validation macro-F1 has not improved for this many epochs (null: never; the paper).")
    p.add_argument(f"--{stage}.ema_decay", type=float | None, default=None,
                   help="Exponential moving average of the weights used for evaluation and selection (null: off; the paper).")


def add_tracking_arguments(p) -> None:
    """``--tracking.uri``, ``--tracking.home``, ``--tracking.experiment``: spelt the same by every command."""
    p.add_argument("--tracking.uri", type=str | None, default=None,
                   help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else sqlite:///<home>/mlflow.db).")
    p.add_argument("--tracking.home", type=str, default="mlruns", help="Local tracking home (database, artifacts, checkpoints).")
    p.add_argument("--tracking.experiment", type=str, default="dsn", help="MLflow experiment name.")


def build_parser(prog: str = "dsn fit", description: str | None = None, fit_flags: bool = True):
    """The training-config parser (jsonargparse; raises instead of exiting when used from the library).

    ``fit_flags`` adds ``dsn fit``'s own flags (``--resume``, ``--allow_config_change``).
    """
    from jsonargparse import ActionConfigFile, ArgumentParser

    p = ArgumentParser(prog=prog, description=description or "Train DeepSleepNet: pretraining then sequence fine-tuning.",
                       exit_on_error=False)
    p.add_argument("--config", action=ActionConfigFile,
                   help="YAML config file, or a built-in recipe's name (demo, recommended, ...: dsn config list); "
                        "repeat to stack overlays.")
    add_training_arguments(p)
    if fit_flags:
        p.add_argument("--resume", type=str | None, default=None,
                       help="Continue an interrupted fit: 'last' (most recent fit run) or a run id.")
        p.add_argument("--allow_config_change", type=bool, default=False,
                       help="With --resume: continue even if the config differs from the interrupted run's.")
    return p


def fix_resume_flag(argv: Sequence[str]) -> list[str]:
    """Allow a bare ``--resume`` (meaning ``--resume last``)."""
    out = list(argv)
    for i, a in enumerate(out):
        if a == "--resume" and (i + 1 == len(out) or out[i + 1].startswith("--")):
            out.insert(i + 1, "last")
            break
    return out


_PARSER_CACHE: dict[str, Any] = {}


def default_parser():
    """A shared training-config parser (building one takes about a second)."""
    if "p" not in _PARSER_CACHE:
        _PARSER_CACHE["p"] = build_parser()
    return _PARSER_CACHE["p"]


def parse(argv: Sequence[str], parser=None):
    """Parse command-line style arguments into a validated config (``ConfigError`` on a bad value)."""
    from dsn import overlays

    parser = parser or default_parser()
    argv = named_configs(argv)
    try:
        cfg = parser.parse_args(argv)
    except SystemExit:  # --help / --print_config: only reached from the command line
        raise
    except Exception as e:
        raise ConfigError(_short(e)) from None
    overlays.drop_stale(cfg, overlays.stale_keys(overlays._argv_sources(argv)), parser)  # a new class_path
    normalize(cfg)
    check(cfg)
    return cfg


def named_configs(argv: Sequence[str]) -> list[str]:
    """``argv`` with each ``--config NAME`` of a built-in recipe (``demo``, ``conf/demo.yaml`` outside the checkout)
    replaced by its file (:func:`dsn.resources.resolve_recipe`); an existing path wins."""
    from dsn.resources import resolve_recipe

    out = list(argv)
    for i, a in enumerate(out):
        if a == "--config" and i + 1 < len(out):
            out[i + 1] = resolve_recipe(out[i + 1])
        elif a.startswith("--config="):
            out[i] = "--config=" + resolve_recipe(a[len("--config="):])
    return out


def load_config(configs: Sequence[str], overrides: Mapping[str, Any] | None = None, parser=None):
    """Resolve stacked config files plus ``{dotted key: value}`` overrides (validated)."""
    argv: list[str] = []
    for c in configs:
        argv += ["--config", str(c)]
    cfg = parse(argv, parser)
    return set_keys(cfg, overrides, parser) if overrides else cfg


def set_key(cfg, key: str, value: Any, parser=None):
    """A copy of ``cfg`` with the dotted ``key`` set to ``value``, re-validated (links re-applied).

    Raises
    ------
    ConfigError
        If ``key`` is not a config key or ``value`` is not valid for it.
    """
    return set_keys(cfg, {key: value}, parser)


def set_keys(cfg, values: Mapping[str, Any], parser=None):
    """A copy of ``cfg`` with every dotted ``key: value`` of ``values`` set, re-validated once.

    ``config: FILE`` among ``values`` stacks that config file first (a sweep's choice of recipe overlay); a
    ``net.class_path`` / ``finetune.net.class_path`` of another class drops that section's other keys
    (:mod:`dsn.overlays`)."""
    from dsn import overlays

    parser = parser or default_parser()
    d, given = to_dict(cfg), values
    if "config" in values:  # null: no overlay
        over = overlays.overlay_values(values["config"]) if values["config"] is not None else {}
        values = {**over, **{k: v for k, v in values.items() if k != "config"}}
    for key in values:
        check_key(key, parser)
    overlays.apply_values(d, values, parser.get_defaults())
    d.get("net", {}).pop("sfreq", None)
    d.get("net", {}).pop("n_chans", None)
    if values.get("data.channel") is not None and "data.channels" not in values:  # the old key given anew
        d["data"].pop("channels", None)
    shown = ", ".join(f"{k}={v!r}" for k, v in given.items())
    try:
        new = parser.parse_object(d)
    except Exception as e:
        raise ConfigError(f"{shown}: {_short(e)}") from None
    normalize(new)
    check(new)
    return new


def normalize(cfg):
    """Bring a parsed config to its one form, in place (:func:`parse` and :func:`set_keys` call it): the
    deprecated ``data.channel: X`` becomes ``data.channels: [X]`` (``data.channel`` then null), and every entry
    of ``data.channels`` is spelt as :class:`~dsn.data.channels.ChannelSpec` writes it (a derivation as
    ``NAME=PLUS - MINUS``), so later code reads ``data.channels`` alone and
    :func:`~dsn.data.channels.channel_names` of it. ``data.sources`` (several data sets) is checked here, once,
    and written in its one form (every key of every entry given, each montage channel mapped:
    :mod:`dsn.data.sources`). Returns ``cfg``.

    Raises
    ------
    ConfigError
        When both keys are given and disagree, or a channel is malformed (naming ``data.channels``), or a source
        is (naming ``data.sources[i]``).
    """
    data = normalized_data(to_dict(cfg.data))
    if cfg.data.channel is not None:
        logging.getLogger(__name__).warning("data.channel is deprecated: use data.channels: [%s]", cfg.data.channel)
    cfg.data.channels, cfg.data.channel = data["channels"], None
    if "sources" in data:
        cfg.data.sources = data["sources"]
    return cfg


def normalized_data(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of a config's ``data`` section with its channels in the one form :func:`normalize` describes
    (also how :func:`training_items` reads a config logged before that form)."""
    from dsn.data.channels import parse_channel, pick_channels

    try:
        channels = [str(parse_channel(c)) for c in pick_channels(data.get("channels"), data.get("channel"))]
    except ValueError as e:
        raise ConfigError(f"data.{e}") from None
    out = {**data, "channels": channels, "channel": None}
    if data.get("sources") or data.get("test_sources") or data.get("balance_sources"):
        out["sources"] = _normalized_sources(data, channels)
    return out


def _normalized_sources(data: dict[str, Any], channels: list[str]) -> list[dict[str, Any]]:
    """``data.sources`` in its one form (:func:`dsn.data.sources.source_list`: every entry checked, each montage
    channel mapped), as ``ConfigError("data.sources[i] (name) ...")``."""
    from dsn.data.sources import source_list

    try:
        sources = source_list(data.get("sources"), channels, data.get("test_sources"))
    except ValueError as e:
        raise ConfigError(f"data.{e}") from None
    if data.get("balance_sources") and not sources:
        raise ConfigError("data.balance_sources: true needs data.sources (the sources to balance over).")
    return [s.as_dict(channels) for s in sources]


def config_keys(parser=None) -> set[str]:
    """Every dotted key a training config accepts."""
    parser = parser or default_parser()
    return {a.dest for a in parser._actions if a.dest not in ("help", "config")}


def check_key(key: str, parser=None) -> None:
    """Raise ``ConfigError`` (with close matches) when ``key`` is not a config key."""
    known = config_keys(parser)
    if key == "net.sfreq":
        raise ConfigError("net.sfreq follows data.sfreq: set data.sfreq instead.")
    if key == "net.n_chans":
        raise ConfigError("net.n_chans follows the number of data.channels: set data.channels instead.")
    if key in known or any(k.startswith(key + ".") for k in known):
        return
    import difflib

    close = difflib.get_close_matches(key, sorted(known), n=3, cutoff=0.6)
    raise ConfigError(f"{key}: not a config key" + (f" (did you mean {', '.join(close)}?)" if close else "") +
                      ". `dsn fit --help` lists them all.")


def to_dict(cfg) -> dict[str, Any]:
    """The config as a plain nested dict (without ``config``/``__path__`` entries)."""
    d = cfg.as_dict() if hasattr(cfg, "as_dict") else dict(cfg)
    for k in ("config", "__path__"):
        d.pop(k, None)
    return d


def dump(cfg, parser=None) -> str:
    """The resolved config as YAML (what ``--print_config`` shows)."""
    return (parser or default_parser()).dump(cfg)


def training_items(cfg) -> dict[str, Any]:
    """Flattened ``{dotted key: value}`` of what determines training (for comparing two configs)."""
    d = to_dict(cfg)
    if "data" in d:  # a config logged before the one form (parsed from its YAML) compares as today's
        d["data"] = normalized_data(d["data"])
        for key in SOURCE_KEYS:  # a fit on one data set: its params and cv key as before data.sources existed
            if not d["data"].get(key):
                d["data"].pop(key, None)
    return {k: v for k, v in flatten(d).items() if k.split(".")[0] not in NON_TRAINING_KEYS}


def identity_items(cfg) -> dict[str, Any]:
    """:func:`training_items` without the keys that cannot change the trained weights (:data:`NON_WEIGHT_KEYS`):
    what a resumed fit and a rerun cv are compared on. The accelerator, devices and precision stay in."""
    from fnmatch import fnmatchcase

    return {k: v for k, v in training_items(cfg).items() if not any(fnmatchcase(k, p) for p in NON_WEIGHT_KEYS)}


def _short(e: Exception) -> str:
    msg = str(e).strip().splitlines()
    return " ".join(line.strip() for line in msg[:3])[:400] if msg else type(e).__name__


def check(cfg) -> None:
    """Build the networks and systems a config describes, so that every bad value is reported now,
    as ``ConfigError("<section>.<key> ...")``, before any data is read or run opened."""
    from dsn.models.networks import build_encoder, build_sequence_net
    from dsn.systems.base import l2_weights
    from dsn.systems.finetune import FinetuneSystem
    from dsn.systems.pretrain import PretrainSystem

    d = to_dict(cfg)

    def build(section: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ValueError, TypeError) as e:
            msg = str(e)
            m = re.match(r"^(\w+)\b", msg)
            if msg.startswith(section + "."):
                raise ConfigError(msg) from None
            if m and (m.group(1) in kwargs or f"{section}.{m.group(1)}" in flatten(d)):
                raise ConfigError(f"{section}.{msg}") from None
            raise ConfigError(f"{section}: {msg}") from None

    _check_channels(d["data"])
    fnet = build("net", build_encoder, d["net"], d["pretrain"]["system"]["n_outputs"])
    if "pretrain" in d["stages"]:
        build("pretrain.system", PretrainSystem, fnet, **d["pretrain"]["system"])
        build("pretrain.system", l2_weights, fnet, d["pretrain"]["system"]["l2_layers"], "pretrain.system.l2_layers")
    if "finetune" in d["stages"]:
        ft = dict(d["finetune"]["system"], pretrained=None)
        net = build("finetune.net", build_sequence_net, d["finetune"]["net"], fnet)
        build("finetune.system", FinetuneSystem, net, **ft)
        build("finetune.system", l2_weights, fnet, ft["l2_layers"], "finetune.system.l2_layers")
    for stage in TRAINING_STAGES:
        s = d[stage]
        if s["batch_size"] < 1:
            raise ConfigError(f"{stage}.batch_size={s['batch_size']}: must be at least 1.")
        if s.get("ema_decay") is not None and not 0.0 < s["ema_decay"] < 1.0:
            raise ConfigError(f"{stage}.ema_decay={s['ema_decay']}: must be in (0, 1), e.g. 0.999.")
        if s.get("early_stopping_patience") is not None and s["early_stopping_patience"] < 1:
            raise ConfigError(f"{stage}.early_stopping_patience={s['early_stopping_patience']}: must be at least 1.")
    if d["finetune"]["seq_len"] < 1:
        raise ConfigError(f"finetune.seq_len={d['finetune']['seq_len']}: must be at least 1.")
    if not 1 <= d["finetune"]["n_offsets"] <= d["finetune"]["seq_len"]:
        raise ConfigError(f"finetune.n_offsets={d['finetune']['n_offsets']}: must be between 1 and "
                          f"finetune.seq_len={d['finetune']['seq_len']} (1: no averaging).")
    if not d["stages"]:
        raise ConfigError("stages is empty: give at least one of [pretrain, finetune].")
    low = (d.get("calibration") or {}).get("low_confidence")
    if low is not None and not 0.0 < low < 1.0:
        raise ConfigError(f"calibration.low_confidence={low}: must be in (0, 1), e.g. 0.5 (null: chosen on validation).")
    _check_run_options(d)


def _check_channels(data: dict) -> None:
    """``data.channels`` well formed (:func:`normalized_data`), each channel named once, as ``ConfigError("data.channels ...")``."""
    from dsn.data.channels import channel_names

    names = channel_names(normalized_data(data)["channels"])
    if not names:
        raise ConfigError("data.channels is empty: give at least one channel, e.g. [EEG Fpz-Cz].")
    if len(set(names)) != len(names):
        raise ConfigError(f"data.channels={names}: a channel is named twice.")


def _check_run_options(d: dict[str, Any]) -> None:
    """The tracking and split keys that would only fail after training started."""
    tr, data = d.get("tracking", {}), d.get("data", {})
    if tr.get("register") and not tr.get("log_model"):
        raise ConfigError(f"tracking.register={tr['register']!r} needs tracking.log_model: true (the registry stores the "
                          "logged model).")
    fixed = any(data.get(f"{split}_subjects") for split in ("train", "val", "test"))
    if not fixed and data.get("n_val_subjects", 1) < 1:
        raise ConfigError(f"data.n_val_subjects={data['n_val_subjects']}: must be at least 1 (the selected epoch and "
                          "early stopping are judged on the validation subjects).")
