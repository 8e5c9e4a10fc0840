"""Model references and the checkpoint registry (MLflow Model Registry).

Wherever a model is needed, any reference works:

- ``models:/deepsleepnet@champion`` (an alias), ``models:/deepsleepnet/3`` (a version),
  ``models:/deepsleepnet`` (the latest version);
- ``runs:/<run id>/model`` (the model logged by a stage run), ``models:/m-<id>`` (a logged model);
- a model folder (:mod:`dsn.artifact`: ``dsn_model.json`` + ``weights.pt``), e.g. one ``dsn registry upgrade
  --out`` wrote;
- a checkpoint path: the ``selected.ckpt`` that ``dsn fit`` writes (it carries the scorer spec).

Models of an older dsn (pickled ``SleepScorer`` objects) are not loaded, since unpickling runs code from the
file: :func:`upgrade` converts them once (``dsn registry upgrade REF``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dsn.errors import LegacyModelError, ModelError

DEFAULT_NAME = "deepsleepnet"


def load_scorer(ref: str, uri: str | None = None):
    """Load a :class:`~dsn.models.scoring.SleepScorer` from any model reference (see the module doc).

    Nothing is unpickled: logged models and artifact folders are a JSON spec plus weights
    (:mod:`dsn.artifact`), and checkpoint files are read with ``torch.load(weights_only=True)``.

    Raises
    ------
    LegacyModelError
        For a pickled model of an older dsn (the message gives the `dsn registry upgrade` command).
    ModelError
        If the reference does not resolve, or what it names is not a dsn scorer.
    """
    from dsn import tracking
    from dsn.artifact import is_artifact, read_artifact

    ref = str(ref)
    if ref.startswith(("models:/", "runs:/", "mlflow-artifacts:/", "file:")) or "://" in ref:
        try:
            model = tracking.load_model(ref, uri)
        except ModelError:
            raise
        except Exception as e:
            raise ModelError(
                f"model {ref}: cannot be loaded from {tracking.tracking_uri(uri)} ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:200]}). `dsn registry list` shows the registered models; check the "
                "name, version or alias and the tracking store (--tracking.uri)."
            ) from None
    else:
        path = Path(ref).expanduser()
        if path.is_dir():
            if not is_artifact(path):
                raise ModelError(f"{path}: a folder without dsn_model.json: not a dsn model folder.")
            return read_artifact(path)
        if not path.is_file():
            raise ModelError(f"{path}: model file not found. Give a registry reference (models:/deepsleepnet@champion), "
                             "runs:/<run id>/model, a model folder, or the path of a selected.ckpt written by `dsn fit`.")
        model = _load_checkpoint(path)
    return model.eval()


def _load_checkpoint(path: Path):
    """A scorer from a checkpoint file with a ``dsn_scorer`` spec (``selected.ckpt``), read with weights_only."""
    import pickle

    import torch

    from dsn.models.spec import build_scorer

    with open(path, "rb") as f:
        head = f.read(4)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # a zip (torch.save) or a pickle (older torch)
        raise ModelError(f"{path}: not a model file (a PyTorch checkpoint is a zip or pickle file; this one starts "
                         f"with {head!r}). Give the selected.ckpt a `dsn fit` stage wrote, a model folder "
                         "(dsn_model.json + weights.pt), or a registry reference (models:/deepsleepnet@champion).")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise LegacyModelError(
            f"{path}: a pickled model or checkpoint holding objects other than weights, which dsn no longer "
            "loads (unpickling runs code from the file); if an older dsn wrote it, save it from there as a model "
            "folder (`dsn.artifact.write_artifact(scorer, FOLDER)`) or register it and run `dsn registry upgrade REF`."
        ) from None
    except Exception as e:
        raise ModelError(f"{path}: not a PyTorch checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]}).") from None
    if not (isinstance(obj, dict) and "dsn_scorer" in obj and "state_dict" in obj):
        raise ModelError(f"{path}: this checkpoint does not describe a dsn model (no scorer spec). Use the "
                         "selected.ckpt of a `dsn fit` stage, a model folder, or a registry/run reference.")
    return build_scorer(obj["dsn_scorer"], obj["state_dict"], str(path), assign=True)


def parse_ref(ref: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME@ALIAS`` / ``models:/NAME/VERSION`` / ``NAME`` -> (name, version, alias)."""
    body = ref[len("models:/"):] if ref.startswith("models:/") else ref
    if "@" in body:
        name, alias = body.split("@", 1)
        return name, None, alias
    if "/" in body:
        name, version = body.split("/", 1)
        return name, version, None
    return body, None, None


def list_models(uri: str) -> list[dict[str, Any]]:
    """One row per registered model version: name, version, aliases, stage run, key metrics, created."""
    from dsn import tracking

    rows = []
    for rm in tracking.registered_models(uri):
        aliases: dict[str, list[str]] = {}
        for alias, version in (getattr(rm, "aliases", None) or {}).items():
            aliases.setdefault(str(version), []).append(alias)
        for mv in tracking.model_versions(uri, rm.name):
            t = mv.tags or {}
            rows.append({
                "name": rm.name, "version": str(mv.version), "aliases": ",".join(sorted(aliases.get(str(mv.version), []))),
                "dataset": t.get("dataset", ""), "channel": t.get("channel", ""), "stage": t.get("stage", ""),
                "f1_macro": t.get("test/f1_macro", t.get("val/f1_macro", "")),
                "kappa": t.get("test/kappa", t.get("val/kappa", "")), "run_id": mv.run_id or "",
            })  # fmt: skip
    return rows


def promote(uri: str, name: str, version: str, alias: str = "champion") -> None:
    from dsn import tracking

    try:
        tracking.model_version(uri, name, version)
    except Exception as e:
        raise ModelError(f"model '{name}' has no version {version} in {uri} ({str(e).splitlines()[0][:160]}): "
                         "`dsn registry list` shows what exists.") from None
    tracking.set_alias(uri, name, version, alias)


def show(uri: str, ref: str) -> dict[str, Any]:
    """What a reference resolves to: registry fields (for models:/ references) and the scorer's spec."""

    info: dict[str, Any] = {"reference": ref}
    if ref.startswith("models:/"):
        mv = _version(uri, ref)
        info.update(name=mv.name, version=str(mv.version), aliases=list(getattr(mv, "aliases", []) or []),
                    run_id=mv.run_id, source=mv.source, tags=dict(mv.tags or {}))
    scorer = load_scorer(ref, uri)
    info["scorer"] = scorer.spec()
    info["n_parameters"] = sum(p.numel() for p in scorer.parameters())
    return info


def upgrade(uri: str, ref: str) -> dict[str, Any]:
    """Rewrite a pickled model of an older dsn (``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``) in the
    current format, as a new version of the same registered model with the same tags and aliases.

    The old model is unpickled once, here, on the user's request (this runs code stored in it: upgrade only
    models you trust); its data becomes a spec and weights (:func:`~dsn.models.scoring.scorer_from_legacy`),
    logged with :func:`dsn.tracking.log_model` into the old version's run. The aliases that pointed at the old
    version move to the new one; the old version stays as it was. Returns ``name``, ``old_version``,
    ``new_version``, ``aliases`` and ``model_uri``.

    Raises
    ------
    ModelError
        If the reference is not a registry reference, does not resolve, or is already in the current format.
    """
    import numpy as np

    from dsn import tracking
    from dsn.models.spec import scorer_from_legacy
    from dsn.tags import UPGRADED_FROM_TAG

    if not ref.startswith("models:/"):
        raise ModelError(f"{ref}: `dsn registry upgrade` takes a registry reference (models:/NAME/VERSION or "
                         "models:/NAME@ALIAS); register the model first.")
    mv = _version(uri, ref)
    src = f"models:/{mv.name}/{mv.version}"
    try:
        tracking.load_model(src, uri)
    except LegacyModelError:
        pass
    else:
        raise ModelError(f"{ref}: version {mv.version} of '{mv.name}' is already in the current format; nothing to upgrade.")
    try:
        old = tracking.load_pickled_model(src, uri)
    except Exception as e:
        raise ModelError(f"{ref}: the pickled model cannot be loaded ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                         "it needs the dsn version that logged it.") from None
    scorer = scorer_from_legacy(old, ref)
    fn = scorer.feature_net
    example = (np.random.default_rng(0).standard_normal((2, fn.n_chans, fn.n_times)) * 20.0).astype(np.float32)
    run_id = mv.run_id or None
    if run_id:
        try:
            tracking.get_run(uri, run_id)
        except Exception:
            run_id = None
    model_uri = tracking.log_model(uri, run_id, scorer, example)
    tags = {**(mv.tags or {}), UPGRADED_FROM_TAG: str(mv.version)}
    new_version = tracking.register_model(uri, model_uri, mv.name, tags=tags)
    aliases = sorted(a for a, v in _aliases(uri, mv.name).items() if str(v) == str(mv.version))
    for alias in aliases:
        tracking.set_alias(uri, mv.name, new_version, alias)
    return {"name": mv.name, "old_version": str(mv.version), "new_version": str(new_version), "aliases": aliases,
            "model_uri": model_uri}


def _version(uri: str, ref: str):
    """The model version a ``models:/`` reference names (the latest one for a bare name)."""
    from dsn import tracking

    name, version, alias = parse_ref(ref)
    try:
        return tracking.model_version(uri, name, version, alias) if (version or alias) else tracking.model_versions(uri, name)[-1]
    except Exception:
        raise ModelError(f"{ref}: not in the registry of {uri}. `dsn registry list` shows what exists.") from None


def _aliases(uri: str, name: str) -> dict[str, str]:
    from dsn import tracking

    for rm in tracking.registered_models(uri):
        if rm.name == name:
            return {str(a): str(v) for a, v in (getattr(rm, "aliases", None) or {}).items()}
    return {}


def format_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """A plain fixed-width text table."""
    if not rows:
        return "(none)"
    columns = columns or list(rows[0])
    width = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    lines = ["  ".join(f"{c:<{width[c]}}" for c in columns), "  ".join("-" * width[c] for c in columns)]
    lines += ["  ".join(f"{str(r.get(c, '')):<{width[c]}}" for c in columns) for r in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the `dsn registry ACTION` command
LIST_COLUMNS = ["name", "version", "aliases", "stage", "dataset", "channel", "f1_macro", "kappa", "run_id"]


def build_parser():
    """``dsn registry ACTION``: one sub-parser per action (each made with ``command_parser``)."""
    from dsn.workflows.cli_args import REF_HELP, command_parser, tracking_options

    p = command_parser("registry")
    sub = p.add_subcommands(dest="action", required=True)
    ls = command_parser("registry list", "Registered models, versions, aliases and key metrics.")
    pr = command_parser("registry promote", "Set an alias (e.g. champion) on a model version.")
    pr.add_argument("name", type=str, help="Registered model name.")
    pr.add_argument("version", type=str, help="Model version.")
    pr.add_argument("--alias", type=str, default="champion", help="Alias to set.")
    sh = command_parser("registry show", "What a model reference resolves to.")
    sh.add_argument("ref", type=str, help=REF_HELP)
    up = command_parser("registry upgrade", "Rewrite a pickled model of an older dsn in the current format, as a new "
                        "version with the same tags and aliases (unpickles it once: upgrade only models you trust).")
    up.add_argument("ref", type=str, help="models:/NAME/VERSION or models:/NAME@ALIAS.")
    for name, q in (("list", ls), ("promote", pr), ("show", sh), ("upgrade", up)):
        tracking_options(q, experiment_help="none needed")
        sub.add_subcommand(name, q, help=q.description)
    return p


def parse(argv):
    """The action and its options, as one flat namespace (``a.action``, ``a.tracking_home``, ...)."""
    import argparse

    from dsn.workflows.cli_args import flat

    ns = build_parser().parse_args(list(argv))
    return argparse.Namespace(action=ns.action, **vars(flat(getattr(ns, ns.action))))


def run(a) -> dict[str, Any]:
    """The action done: ``{"action": ..., "rows" | "promoted" | "upgraded" | "shown": ...}``."""
    from dsn.workflows.cli_args import checked_uri

    uri = checked_uri(a, write=a.action in ("promote", "upgrade"))
    if a.action == "list":
        return {"action": "list", "rows": list_models(uri)}
    if a.action == "promote":
        promote(uri, a.name, a.version, a.alias)
        return {"action": "promote", "promoted": {"name": a.name, "version": a.version, "alias": a.alias}}
    if a.action == "upgrade":
        from dsn.models.scoring import SPEC_FORMAT

        return {"action": "upgrade", "upgraded": upgrade(uri, a.ref), "format": SPEC_FORMAT}
    return {"action": "show", "shown": show(uri, a.ref)}


def render(r: dict[str, Any]) -> str:
    import json

    if r["action"] == "list":
        return format_table(r["rows"], LIST_COLUMNS)
    if r["action"] == "promote":
        p = r["promoted"]
        return f"models:/{p['name']}@{p['alias']} -> version {p['version']}"
    if r["action"] == "upgrade":
        u = r["upgraded"]
        moved = f"; aliases {', '.join(u['aliases'])} moved to it" if u["aliases"] else ""
        return (f"models:/{u['name']}/{u['old_version']} (pickled) -> models:/{u['name']}/{u['new_version']} "
                f"(format {r['format']}){moved}")
    return json.dumps(r["shown"], indent=2, default=str)
