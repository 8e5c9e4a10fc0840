"""The networks a config names: ``net`` (the epoch encoder) and ``finetune.net`` (the sequence model).

Each section is a ``class_path`` and ``init_args``, LightningCLI's subclass form, beside the keys of the
default network written flat as before (``net.small_kernel``, ``finetune.net.hidden_size``), so that
DeepSleepNet's configs keep working unchanged:

- ``net.class_path``: ``DeepFeatureNet`` (default) or ``TinySleepNetEncoder`` (dsn's own, also as
  ``dsn.models.NAME``), a bare braindecode name (``SleepStagerChambon2018`` means
  ``braindecode.models.SleepStagerChambon2018``) or any ``package.module.Class`` with braindecode's constructor
  signature (:class:`~dsn.models.external.ExternalEncoder`).
- ``finetune.net.class_path``: ``bilstm`` (default: DeepSleepNet's BiLSTM + shortcut, :class:`~dsn.models.DeepSleepNet`),
  ``lstm``, ``transformer`` or ``none`` (:data:`~dsn.models.sequence.SEQUENCE_NETS`; their class names too).

The data-linked arguments (:data:`ENCODER_LINKED`, :data:`SEQUENCE_LINKED`) never go in ``init_args``. A flat key
of the default network that is set (differs from its default) with another class is passed to that class when
its constructor takes the same argument (``drop_prob``, ``bn_momentum``, ``hidden_size``...); otherwise it is an
error naming the key (``small_kernel`` means nothing to TinySleepNetEncoder).

The artifact spec's ``config`` keeps the default networks' flat form (artifacts as before); another network is
recorded as ``{"class_path", "init_args", <linked values>}`` plus ``package`` and ``package_version`` for an
external module (:func:`encoder_config`, :func:`sequence_config`), and :func:`build_encoder` /
:func:`build_sequence_net` rebuild either form.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from dsn.errors import ModelError
from dsn.models.deepsleepnet import DeepFeatureNet, DeepSleepNet, _round_half_up
from dsn.models.external import WHOLE_SEQUENCE, ExternalEncoder, _package_of, resolve_class
from dsn.models.sequence import SEQUENCE_NETS, EncoderSequenceNet, make_sequence_net
from dsn.models.tinysleepnet import TinySleepNetEncoder
from dsn.models.wholeseq import RawEpochs, WholeSequenceNet

__all__ = [
    "ENCODER_DEFAULT", "ENCODER_LINKED", "SEQUENCE_DEFAULT", "SEQUENCE_LINKED", "build_encoder", "build_sequence_net",
    "encoder_config", "encoder_name", "is_default", "sequence_config", "sequence_name",
]  # fmt: skip

ENCODER_DEFAULT = "DeepFeatureNet"
SEQUENCE_DEFAULT = "bilstm"
#: What each data-linked argument follows (never given in ``init_args``).
ENCODER_LINKED = {"n_chans": "the number of data.channels", "sfreq": "data.sfreq",
                  "n_times": "the epoch length and data.sfreq", "n_outputs": "the number of classes"}
SEQUENCE_LINKED = {"n_features": "the encoder's output size", "n_outputs": "the number of classes"}
#: dsn's own epoch encoders by short name.
DSN_ENCODERS: dict[str, type[nn.Module]] = {"DeepFeatureNet": DeepFeatureNet, "TinySleepNetEncoder": TinySleepNetEncoder,
                                            "RawEpochs": RawEpochs}
#: The short name of a whole-sequence network in ``finetune.net`` (:mod:`dsn.models.wholeseq`).
WHOLE = "whole-sequence"
#: The sequence models' short names, the default's first.
SEQUENCE_NAMES = (SEQUENCE_DEFAULT, *SEQUENCE_NETS)


def _defaults(cls: type) -> dict[str, Any]:
    return {n: p.default for n, p in inspect.signature(cls).parameters.items() if p.default is not inspect.Parameter.empty}


ENCODER_DEFAULTS = _defaults(DeepFeatureNet)
SEQUENCE_DEFAULTS = _defaults(DeepSleepNet)


def encoder_name(class_path: str | None) -> str | None:
    """dsn's own encoder's short name for ``class_path`` (``DeepFeatureNet``, ``dsn.models.DeepFeatureNet``,
    ``dsn.models.deepsleepnet.DeepFeatureNet``; ``None``: the default), else ``None`` (an external class)."""
    class_path = class_path or ENCODER_DEFAULT
    module, _, name = class_path.rpartition(".")
    if name in DSN_ENCODERS and module in ("", "dsn.models", DSN_ENCODERS[name].__module__):
        return name
    return None


def sequence_name(class_path: str | None, section: str = "finetune.net") -> str:
    """The short name (``bilstm``, ``lstm``, ``transformer``, ``none``) of a sequence model's ``class_path``
    (its class name, with or without ``dsn.models.``, also works).

    Raises
    ------
    ModelError
        For a name that is none of them (listing them).
    """
    class_path = SEQUENCE_DEFAULT if class_path is None else str(class_path)
    name = class_path.rpartition(".")[2] if class_path.startswith("dsn.models.") else class_path
    by_class = {cls.__name__: short for short, cls in SEQUENCE_NETS.items()} | {"DeepSleepNet": SEQUENCE_DEFAULT}
    name = by_class.get(name, name.lower())
    if name in SEQUENCE_NAMES:
        return name
    dotted = "." in class_path and not class_path.startswith("dsn.models.")
    if dotted or class_path in WHOLE_SEQUENCE:  # braindecode's USleep, a user's package.module.Class
        return WHOLE
    raise ModelError(f"{section}.class_path={class_path!r}: not a sequence model; use one of "
                     f"{', '.join(SEQUENCE_NAMES)}, or a whole-sequence network ({', '.join(WHOLE_SEQUENCE)}, "
                     "package.module.Class)")


def is_default(net: dict[str, Any], ft: dict[str, Any] | None = None) -> bool:
    """Whether the ``net`` (and ``finetune.net``) sections name DeepSleepNet's own networks."""
    seq_ok = ft is None or sequence_name(ft.get("class_path")) == SEQUENCE_DEFAULT
    return encoder_name(net.get("class_path")) == ENCODER_DEFAULT and seq_ok


def _init_args(section: str, d: dict[str, Any], linked: dict[str, str]) -> dict[str, Any]:
    args = dict(d.get("init_args") or {})
    for k in args:
        if k in linked:
            raise ModelError(f"{section}.init_args.{k}: {k} follows {linked[k]}; remove it from init_args")
    return args


def _set_flat(section: str, flat: dict[str, Any], defaults: dict[str, Any], cls: type, class_path: str,
              skip: tuple[str, ...]) -> dict[str, Any]:
    owner = "DeepSleepNet (bilstm)" if "finetune" in section else "DeepFeatureNet"
    """The flat keys of the default network that are set, for another class ``cls`` (one-line error for a key
    ``cls`` does not take)."""
    params = inspect.signature(cls).parameters
    out = {}
    for k, v in flat.items():
        if k in skip or k not in defaults or v == defaults[k]:
            continue
        if k not in params:
            raise ModelError(f"{section}.{k}={v!r} is a key of {owner} only; {class_path} does not take "
                             f"{k}: remove it (give {class_path}'s own arguments in {section}.init_args)")
        out[k] = v
    return out


def _flat(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in ("class_path", "init_args", "package", "package_version")}


def encoder_kwargs(net: dict[str, Any], section: str = "net") -> tuple[str, type | None, dict[str, Any]]:
    """``(class_path, class or None for an external one not imported yet, keyword arguments)`` of a ``net``
    section: the flat keys, ``class_path`` and ``init_args`` (:func:`build_encoder`)."""
    class_path = net.get("class_path") or ENCODER_DEFAULT
    args, flat = _init_args(section, net, ENCODER_LINKED), _flat(net)
    name = encoder_name(class_path)
    if name == ENCODER_DEFAULT:
        return name, DeepFeatureNet, {**flat, **args}
    linked = {"n_chans": flat.get("n_chans", 1), "sfreq": flat.get("sfreq", 100.0)}
    linked["n_times"] = flat.get("n_times") or _round_half_up(30 * float(linked["sfreq"]))
    cls = DSN_ENCODERS[name] if name else _resolve(net, class_path)
    shown = name or class_path
    args = {**_set_flat(section, flat, ENCODER_DEFAULTS, cls, shown, tuple(ENCODER_LINKED)), **args}
    return (name or class_path), (cls if name else None), {**linked, **args}


def _resolve(net: dict[str, Any], class_path: str) -> type:
    """Import an external encoder; a spec that records its package names the exact ``pip install`` line."""
    try:
        return resolve_class(class_path)
    except ModelError as e:
        version = net.get("package_version")
        if version and "cannot import" in str(e):
            pkg = net.get("package") or class_path.split(".")[0]
            raise ModelError(f"{class_path}: the model needs {pkg} {version}, which is not installed; "
                             f"pip install {pkg}=={version}") from None
        raise


def build_encoder(net: dict[str, Any], n_outputs: int = 5, section: str = "net") -> nn.Module:
    """The epoch encoder a ``net`` section (or a spec's ``config.net``) describes, random weights.

    Raises
    ------
    ModelError
        One line naming the key: a data-linked key in ``init_args``, a key of DeepFeatureNet's set with another
        encoder, an unknown or uninstalled class (``pip install``), a bad argument.
    """
    class_path, cls, kwargs = encoder_kwargs(net, section)
    if cls is not None:
        return cls(**kwargs)
    n_chans, n_times, sfreq = kwargs.pop("n_chans"), kwargs.pop("n_times"), kwargs.pop("sfreq")
    _resolve(net, class_path)
    return ExternalEncoder(class_path, n_chans, n_times, sfreq, n_outputs, **kwargs)


def encoder_config(net: dict[str, Any], encoder: nn.Module | None = None) -> dict[str, Any]:
    """What the artifact spec records of ``net`` (built as ``encoder``): DeepFeatureNet's flat keys as before;
    otherwise ``class_path``, ``init_args`` and the linked values, plus ``package`` and ``package_version`` of an
    external module."""
    if encoder_name(net.get("class_path")):
        class_path, cls, kwargs = encoder_kwargs(net)
        if cls is DeepFeatureNet:
            return dict(kwargs)
        linked = {k: kwargs.pop(k) for k in ("n_chans", "sfreq", "n_times")}
        return {"class_path": f"dsn.models.{class_path}", "init_args": kwargs, **linked}
    class_path, flat = net["class_path"], _flat(net)
    out = {"class_path": getattr(encoder, "class_path", class_path), "init_args": dict(net.get("init_args") or {}),
           "n_chans": flat.get("n_chans", 1), "sfreq": flat.get("sfreq", 100.0)}
    out["n_times"] = getattr(encoder, "n_times", None) or flat.get("n_times") or _round_half_up(30 * float(out["sfreq"]))
    if encoder is not None:
        out["init_args"].update(_set_flat("net", flat, ENCODER_DEFAULTS, type(encoder.module), out["class_path"],
                                          tuple(ENCODER_LINKED)))
        out.update(package=encoder.package, package_version=encoder.package_version)
    return out


def _sequence_kwargs(ft: dict[str, Any], section: str) -> tuple[str, dict[str, Any]]:
    name = sequence_name(ft.get("class_path"), section)
    args, flat = _init_args(section, ft, {**SEQUENCE_LINKED, **ENCODER_LINKED}), _flat(ft)
    if name == SEQUENCE_DEFAULT:
        return name, {**flat, **args}
    cls = _resolve(ft, ft["class_path"]) if name == WHOLE else SEQUENCE_NETS[name]
    shown = ft["class_path"] if name == WHOLE else name
    return name, {**_set_flat(section, flat, SEQUENCE_DEFAULTS, cls, shown, tuple(SEQUENCE_LINKED)), **args}


def build_sequence_net(ft: dict[str, Any], feature_net: nn.Module, n_outputs: int = 5,
                       section: str = "finetune.net") -> nn.Module:
    """The whole sequence network a ``finetune.net`` section describes around ``feature_net``:
    :class:`~dsn.models.DeepSleepNet` for ``bilstm`` (as before), else an
    :class:`~dsn.models.EncoderSequenceNet` of ``feature_net`` and the named sequence model.

    ``n_outputs``: the number of classes where the section does not give ``n_outputs`` (a spec's, or the flat key).
    """
    name, kwargs = _sequence_kwargs(ft, section)
    n = ft.get("n_outputs") or n_outputs
    if name == SEQUENCE_DEFAULT:
        return DeepSleepNet(feature_net, **{"n_outputs": n_outputs, **kwargs})
    if name == WHOLE:
        if not isinstance(feature_net, RawEpochs):
            raise ModelError(f"{section}.class_path={ft['class_path']!r} is a whole-sequence network (the raw signal of "
                             f"consecutive epochs in, one score per epoch out): set net.class_path: RawEpochs (not "
                             f"{type(feature_net).__name__}) and stages: [finetune], as conf/models/usleep.yaml does")
        fn = feature_net
        return EncoderSequenceNet(fn, WholeSequenceNet(ft["class_path"], fn.n_chans, fn.n_times, fn.sfreq, n, **kwargs))
    return EncoderSequenceNet(feature_net, make_sequence_net(name, feature_net.n_features, n, **kwargs))


def sequence_config(ft: dict[str, Any]) -> dict[str, Any]:
    """What the artifact spec records of ``finetune.net``: DeepSleepNet's flat keys as before; otherwise the short
    ``class_path``, ``init_args`` and ``n_outputs``."""
    name, kwargs = _sequence_kwargs(ft, "finetune.net")
    if name == SEQUENCE_DEFAULT:
        return kwargs
    out = {"class_path": name, "init_args": kwargs}
    if name == WHOLE:
        cls = _resolve(ft, ft["class_path"])
        package, version = _package_of(cls)
        out.update(class_path=f"{cls.__module__}.{cls.__qualname__}", package=package, package_version=version)
    if ft.get("n_outputs") is not None:
        out["n_outputs"] = ft["n_outputs"]
    return out
