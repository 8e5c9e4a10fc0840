"""Model references and the checkpoint registry (MLflow Model Registry).

Wherever a model is needed, any reference works:

- ``models:/deepsleepnet@champion`` (an alias), ``models:/deepsleepnet/3`` (a version),
  ``models:/deepsleepnet`` (the latest version);
- ``runs:/<run id>/model`` (the model logged by a stage run), ``models:/m-<id>`` (a logged model);
- a checkpoint path: the ``selected.ckpt`` that ``dsn fit`` writes (it carries the scorer spec), or a
  ``.pt`` file holding a pickled :class:`~dsn.models.scoring.SleepScorer`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dsn.errors import ModelError

DEFAULT_NAME = "deepsleepnet"


def load_scorer(ref: str, uri: str | None = None):
    """Load a :class:`~dsn.models.scoring.SleepScorer` from any model reference (see the module doc).

    Raises
    ------
    ModelError
        If the reference does not resolve, or what it names is not a dsn scorer.
    """
    import torch

    from dsn import tracking
    from dsn.models.scoring import SleepScorer, build_scorer

    ref = str(ref)
    if ref.startswith(("models:/", "runs:/", "mlflow-artifacts:/", "file:")) or "://" in ref:
        try:
            model = tracking.load_model(ref, uri)
        except Exception as e:
            raise ModelError(
                f"model {ref}: cannot be loaded from {tracking.tracking_uri(uri)} ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:200]}). `dsn registry list` shows the registered models; check the "
                "name, version or alias and the tracking store (--tracking.uri)."
            ) from None
    else:
        path = Path(ref).expanduser()
        if not path.is_file():
            raise ModelError(f"{path}: model file not found. Give a registry reference (models:/deepsleepnet@champion), "
                             "runs:/<run id>/model, or the path of a selected.ckpt written by `dsn fit`.")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:
            raise ModelError(f"{path}: not a PyTorch checkpoint ({type(e).__name__}: {e}).") from None
        if isinstance(obj, SleepScorer):
            model = obj
        elif isinstance(obj, dict) and "dsn_scorer" in obj:
            model = build_scorer(obj["dsn_scorer"], obj["state_dict"])
        else:
            raise ModelError(f"{path}: this checkpoint does not describe a dsn model (no scorer spec). Use the "
                             "selected.ckpt of a `dsn fit` stage, or a registry/run reference.")
    if not isinstance(model, SleepScorer):
        raise ModelError(f"model {ref}: a {type(model).__name__}, not a dsn SleepScorer (logged by an older dsn?). "
                         "Re-train with `dsn fit` or point at a newer model.")
    return model.eval()


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
    from dsn import tracking

    info: dict[str, Any] = {"reference": ref}
    if ref.startswith("models:/"):
        name, version, alias = parse_ref(ref)
        try:
            mv = tracking.model_version(uri, name, version, alias) if (version or alias) else tracking.model_versions(uri, name)[-1]
        except Exception:
            raise ModelError(f"{ref}: not in the registry of {uri}. `dsn registry list` shows what exists.") from None
        info.update(name=mv.name, version=str(mv.version), aliases=list(getattr(mv, "aliases", []) or []),
                    run_id=mv.run_id, source=mv.source, tags=dict(mv.tags or {}))
    scorer = load_scorer(ref, uri)
    info["scorer"] = scorer.spec()
    info["n_parameters"] = sum(p.numel() for p in scorer.parameters())
    return info


def format_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """A plain fixed-width text table."""
    if not rows:
        return "(none)"
    columns = columns or list(rows[0])
    width = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    lines = ["  ".join(f"{c:<{width[c]}}" for c in columns), "  ".join("-" * width[c] for c in columns)]
    lines += ["  ".join(f"{str(r.get(c, '')):<{width[c]}}" for c in columns) for r in rows]
    return "\n".join(lines)
