"""Small helpers with no dependency on the rest of dsn, shared by modules that must not import each other
(:mod:`dsn.config`, :mod:`dsn.tracking`, :mod:`dsn.artifact`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["flatten", "json_default", "section", "set_dotted"]


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts with dotted keys (lists kept as values)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def section(d: dict[str, Any], dotted: str) -> dict[str, Any]:
    """The nested dict at the dotted path ``dotted`` of ``d``, made (empty) where missing."""
    node = d
    for part in dotted.split("."):
        node = node.setdefault(part, {})
    return node


def set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    """``d[a][b][c] = value`` for ``key = "a.b.c"`` (the inverse of :func:`flatten`), nested dicts made where missing."""
    parent, _, last = key.rpartition(".")
    (section(d, parent) if parent else d)[last] = value


def json_default(o: Any) -> Any:
    """``json.dumps(..., default=json_default)``: numpy scalars and arrays as Python numbers and lists, anything
    else JSON does not know as its ``str``."""
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
