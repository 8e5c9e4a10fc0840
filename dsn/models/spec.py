"""A model's spec across dsn versions: the compatibility rule and rebuilding a scorer from a spec.

:meth:`SleepScorer.spec <dsn.models.scoring.SleepScorer.spec>` writes the current layout
(:data:`~dsn.models.scoring.SPEC_FORMAT`); :func:`upgrade_spec` reads any older one (defaults for the keys it
lacks, a newer major version refused), :func:`build_scorer` rebuilds the networks from a spec and its weights,
and :func:`scorer_from_legacy` turns an unpickled scorer of an older dsn into a current one.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor, nn

from dsn.data.labels import STAGES
from dsn.errors import ModelError
from dsn.models.deepsleepnet import DeepSleepNet, FeatureClassifierNet
from dsn.models.networks import build_encoder, build_sequence_net, is_default
from dsn.models.scoring import _SPEC_KEYS, SPEC_FORMAT, SleepScorer
from dsn.models.sequence import EncoderSequenceNet

__all__ = ["SPEC_FORMAT", "build_scorer", "scorer_from_legacy", "upgrade_spec"]


def _major(version: str, source: str) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        raise ModelError(f"{source}: model format version {version!r} is not MAJOR.MINOR; the spec is damaged.") from None


def upgrade_spec(spec: dict[str, Any], source: str = "model") -> dict[str, Any]:
    """A spec of any format version in the current layout (a new dict; ``spec`` is not modified).

    The compatibility rule: a spec of an older format version (or none: specs written before versioning,
    format ``0``) gets the defaults of the keys it lacks: ``preprocessing.normalize: "none"``,
    ``preprocessing.channels: [channel]``, ``class_names`` the five AASM stages, ``seq_len: 25``,
    ``carry_state: true``, ``n_offsets: 1``. A spec of a newer minor version loads (its unknown keys are
    kept in ``extra``); a newer major version is refused.

    Raises
    ------
    ModelError
        For a newer major format version (naming both versions) or a spec without ``kind``/``config``.
    """
    version = str(spec.get("format_version", "0"))
    if _major(version, source) > _major(SPEC_FORMAT, source):
        raise ModelError(f"{source}: model format version {version} is newer than this dsn reads "
                         f"({SPEC_FORMAT}); upgrade dsn to load it.")
    missing = [k for k in ("kind", "config", "preprocessing") if k not in spec]
    if missing or spec["kind"] not in ("epoch", "sequence"):
        raise ModelError(f"{source}: not a dsn model spec (missing {', '.join(missing) or 'a valid kind'}).")
    out = dict(spec)
    prep = dict(out["preprocessing"])
    prep.setdefault("normalize", "none")
    if "channels" not in prep and "channel" in prep:
        prep["channels"] = [prep["channel"]]
    out["preprocessing"] = prep
    out["config"] = {k: dict(v) for k, v in out["config"].items()}
    out["class_names"] = list(out.get("class_names") or STAGES)
    out.setdefault("seq_len", 25)
    out.setdefault("carry_state", True)
    out.setdefault("n_offsets", 1)
    out["format_version"] = version
    return out


def build_scorer(spec: dict[str, Any], state_dict: dict[str, Tensor] | None = None, source: str = "model",
                 assign: bool = False) -> SleepScorer:
    """Rebuild a :class:`SleepScorer` from its :meth:`SleepScorer.spec` (and load ``state_dict``).

    The spec may be of any older format version (see :func:`upgrade_spec`; ``source`` names the model
    in its errors). ``assign``: the networks take the tensors of ``state_dict`` themselves instead of copies
    (for a freshly loaded ``state_dict``; the networks are then built without initialising their weights,
    which is most of the time a load takes).

    ``state_dict`` may be the scorer's own (``net.`` keys) or a training system's (``model.`` keys for
    the pretraining system, ``net.`` for fine-tuning).
    """
    spec = upgrade_spec(spec, source)
    cfg = spec["config"]
    n_outputs = len(spec["class_names"])
    own = is_default(cfg["net"]) and (spec["kind"] == "epoch" or is_default({}, cfg.get("finetune_net", {})))
    # meta: DeepSleepNet's networks are built without initialising weights; another network is built for real (an
    # external module's dry run needs real tensors)
    with torch.device("meta") if assign and state_dict is not None and own else contextlib.nullcontext():
        try:
            feature_net = build_encoder(cfg["net"], n_outputs, "config.net")
            if spec["kind"] == "sequence":
                net: nn.Module = build_sequence_net(cfg.get("finetune_net", {}), feature_net, n_outputs, "config.finetune_net")
            else:
                net = FeatureClassifierNet(feature_net, n_outputs)
        except ModelError as e:
            raise ModelError(f"{source}: {e}") from None
    scorer = SleepScorer(
        net, spec["preprocessing"], cfg, spec["class_names"], spec["seq_len"], spec["carry_state"],
        spec["n_offsets"], {k: v for k, v in spec.items() if k not in _SPEC_KEYS},
    )
    if state_dict is not None:
        for prefix in ("net.", "model."):
            sub = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
            if sub:
                net.load_state_dict(sub, assign=assign)
                break
        else:
            net.load_state_dict(state_dict, assign=assign)
    return scorer.eval()


def scorer_from_legacy(obj: nn.Module, source: str = "model") -> SleepScorer:
    """A current :class:`SleepScorer` rebuilt from an unpickled one of an older dsn.

    Unpickling restores an object's attributes without running ``__init__``, so an old scorer lacks the
    attributes added since (``n_offsets``, ``extra``...) and may carry its own ``spec`` method. Only its
    data is read here (the attributes that make up a spec, and the network's ``state_dict``); the spec then
    gets the defaults of what it lacks (:func:`upgrade_spec`), and the networks are rebuilt from it.

    Raises
    ------
    ModelError
        If ``obj`` has no network or no configuration (not a dsn scorer).
    """
    d = getattr(obj, "__dict__", {})
    net = (d.get("_modules") or {}).get("net")
    if not isinstance(net, nn.Module) or not isinstance(d.get("config"), dict):
        raise ModelError(f"{source}: a {type(obj).__name__} without a network and its config: not a dsn scorer.")
    seq = isinstance(net, (DeepSleepNet, EncoderSequenceNet))
    spec: dict[str, Any] = {"kind": "sequence" if seq else "epoch", "format_version": "0"}
    for key in ("preprocessing", "config", "class_names", "seq_len", "carry_state", "n_offsets"):
        if d.get(key) is not None:
            spec[key] = d[key]
    spec.update({k: v for k, v in (d.get("extra") or {}).items() if k not in spec})
    return build_scorer(spec, net.state_dict(), source)
