"""The model artifact: a folder with the weights and a versioned JSON spec, readable without unpickling.

A scorer is written as two files:

- ``dsn_model.json``: :meth:`~dsn.models.scoring.SleepScorer.spec` (format version, dsn version, networks'
  configuration, preprocessing with the channels, class names, streaming settings, and whatever other keys
  the spec carries, e.g. ``calibration``);
- ``weights.pt``: the networks' ``state_dict`` (tensors only), read back with
  ``torch.load(weights_only=True)``, which refuses anything but tensors and plain containers.

Reading rebuilds the networks from the spec (:func:`~dsn.models.spec.build_scorer`) and loads the
weights, so a model outlives renamed classes and new attributes, and loading it runs no code from the file.
The compatibility rule is :func:`~dsn.models.spec.upgrade_spec`'s. This is what ``dsn fit`` logs as the
MLflow model (inside a pyfunc model, :mod:`dsn.mlflow_model`) and what ``dsn predict --model FOLDER`` reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dsn.errors import ModelError
from dsn.utils import json_default

__all__ = ["MLFLOW_KEY", "SPEC_FILE", "WEIGHTS_FILE", "is_artifact", "read_artifact", "read_spec", "write_artifact"]

#: The artifact folder's name inside a logged MLflow model (``<model>/artifacts/dsn_model/``).
MLFLOW_KEY = "dsn_model"
SPEC_FILE = "dsn_model.json"
WEIGHTS_FILE = "weights.pt"


def write_artifact(scorer, path: str | Path) -> Path:
    """Write ``scorer`` (a :class:`~dsn.models.scoring.SleepScorer`) as an artifact folder ``path``.

    Returns the folder. Files are written under temporary names and renamed, so an interrupted write never
    leaves a folder that looks complete.
    """
    import torch

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in scorer.net.state_dict().items()}
    tmp = out / (WEIGHTS_FILE + ".tmp")
    torch.save(state, tmp)
    tmp.replace(out / WEIGHTS_FILE)
    tmp = out / (SPEC_FILE + ".tmp")
    tmp.write_text(json.dumps(scorer.spec(), indent=2, default=json_default) + "\n")
    tmp.replace(out / SPEC_FILE)
    return out


def is_artifact(path: str | Path) -> bool:
    """Whether ``path`` is an artifact folder (holds a spec file)."""
    return (Path(path) / SPEC_FILE).is_file()


def read_spec(path: str | Path, source: str | None = None) -> dict[str, Any]:
    """The spec of the artifact folder ``path`` in the current layout (see :func:`~dsn.models.spec.upgrade_spec`).

    Raises
    ------
    ModelError
        If the spec is missing, not JSON, or of a newer major format version.
    """
    from dsn.models.spec import upgrade_spec

    f = Path(path) / SPEC_FILE
    source = source or str(path)
    try:
        spec = json.loads(f.read_text())
    except FileNotFoundError:
        raise ModelError(f"{source}: no {SPEC_FILE} in {path}; not a dsn model folder.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{source}: {f} is not valid JSON ({e}); the model folder is damaged.") from None
    if not isinstance(spec, dict):
        raise ModelError(f"{source}: {f} does not hold a JSON object; the model folder is damaged.")
    return upgrade_spec(spec, source)


def read_artifact(path: str | Path, source: str | None = None, map_location: str = "cpu"):
    """Rebuild the :class:`~dsn.models.scoring.SleepScorer` stored in the artifact folder ``path`` (in eval mode).

    Raises
    ------
    ModelError
        If a file is missing or damaged, the spec is of a newer major format version, or the weights do not
        fit the networks the spec describes.
    """
    import torch

    from dsn.models.spec import build_scorer

    source = source or str(path)
    spec = read_spec(path, source)
    w = Path(path) / WEIGHTS_FILE
    try:
        state = torch.load(w, map_location=map_location, weights_only=True, mmap=True)  # pages read on use
    except FileNotFoundError:
        raise ModelError(f"{source}: no {WEIGHTS_FILE} in {path}; the model folder is incomplete.") from None
    except Exception as e:
        raise ModelError(f"{source}: {w} is not a weights file ({type(e).__name__}: {str(e).splitlines()[0][:160]}).") from None
    try:
        return build_scorer(spec, state, source, assign=True)
    except (RuntimeError, TypeError, ValueError) as e:
        if isinstance(e, ModelError):
            raise
        raise ModelError(f"{source}: the weights do not fit the networks of its spec ({str(e).splitlines()[0][:200]}).") from None
