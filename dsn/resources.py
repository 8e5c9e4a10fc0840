"""Where dsn's shipped files live: recipes, data-set profiles, sweep specs and the SLURM script.

The repository keeps them at its top (``conf/*.yaml``, ``conf/datasets/*.yaml``, ``conf/models/*.yaml``, ``conf/slurm/*.sh``,
``sweeps/*.yaml``); the wheel carries the same files as package data inside ``dsn`` (``dsn/conf/...``,
``dsn/sweeps/...``: the ``package-dir`` mapping in ``pyproject.toml``). This module is the only place that
knows both places:

- run from a checkout (``PYTHONPATH=.``, ``pip install -e .``), the files are the checkout's own
  (``dsn/`` beside ``pyproject.toml``, ``conf/`` and ``sweeps/``), so an edit is seen at once;
- installed from a wheel, they are read with :mod:`importlib.resources` from the installed package.

Every function returns a file-system :class:`~pathlib.Path` (what jsonargparse and the YAML readers take).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from dsn.errors import ConfigError

__all__ = ["KINDS", "find", "list_models", "list_profiles", "list_recipes", "list_slurm", "list_sweeps", "names",
           "profile_path", "recipe_path", "resolve_recipe", "resolve_sweep", "root", "slurm_path", "sweep_path"]

#: kind -> (folder inside the checkout / the package, file suffix)
KINDS: dict[str, tuple[str, str]] = {
    "recipe": ("conf", ".yaml"),
    "profile": ("conf/datasets", ".yaml"),
    "model": ("conf/models", ".yaml"),
    "sweep": ("sweeps", ".yaml"),
    "slurm": ("conf/slurm", ".sh"),
}

_PACKAGE = Path(__file__).resolve().parent


def root() -> Path:
    """The folder holding ``conf/`` and ``sweeps/``: the checkout when dsn runs from one, else the installed package."""
    checkout = _PACKAGE.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "conf").is_dir():
        return checkout
    return Path(str(resources.files("dsn")))


def names(kind: str) -> list[str]:
    """Names of the built-in files of ``kind`` (a key of :data:`KINDS`), sorted."""
    folder, suffix = KINDS[kind]
    return sorted(p.stem for p in (root() / folder).glob(f"*{suffix}") if p.is_file())


def list_recipes() -> list[str]:
    """Names of the built-in recipes (``conf/*.yaml``: ``demo``, ``paper``, ``recommended``, ...)."""
    return names("recipe")


def list_profiles() -> list[str]:
    """Names of the built-in data-set profiles (``conf/datasets/*.yaml``)."""
    return names("profile")


def list_models() -> list[str]:
    """Names of the built-in network overlays (``conf/models/*.yaml``: ``tinysleepnet``, ``usleep``, ...)."""
    return names("model")


def list_sweeps() -> list[str]:
    """Names of the built-in sweep specs (``sweeps/*.yaml``)."""
    return names("sweep")


def list_slurm() -> list[str]:
    """Names of the shipped SLURM scripts (``conf/slurm/*.sh``)."""
    return names("slurm")


def find(kind: str, name: str) -> Path | None:
    """The built-in file ``name`` of ``kind`` (``recipe``, ``profile``, ``sweep``, ``slurm``), or None.

    ``name`` may carry the suffix (``demo.yaml``); a path with folders is never a built-in name.
    """
    folder, suffix = KINDS[kind]
    if not name or "/" in name or "\\" in name:
        return None
    path = root() / folder / (name if name.endswith(suffix) else name + suffix)
    return path if path.is_file() else None


def _path(kind: str, name: str) -> Path:
    path = find(kind, name)
    if path is None:
        raise ConfigError(f"{name!r}: no built-in {kind} of that name. Built-in: {names(kind)} "
                          f"(`dsn config list` shows them all).")
    return path


def recipe_path(name: str) -> Path:
    """The built-in recipe ``name`` (``ConfigError`` naming the built-ins when there is none)."""
    return _path("recipe", name)


def profile_path(name: str) -> Path:
    """The built-in data-set profile ``name`` (``ConfigError`` naming the built-ins when there is none)."""
    return _path("profile", name)


def sweep_path(name: str) -> Path:
    """The built-in sweep spec ``name`` (``ConfigError`` naming the built-ins when there is none)."""
    return _path("sweep", name)


def slurm_path(name: str = "cv-array") -> Path:
    """The shipped SLURM script ``name`` (``ConfigError`` naming the shipped ones when there is none)."""
    return _path("slurm", name)


def _builtin_name(ref: str, kind: str) -> str | None:
    """``demo`` for ``demo``, ``demo.yaml`` and the checkout-relative ``conf/demo.yaml`` / ``sweeps/x.yaml``."""
    folder = KINDS[kind][0]
    parent, _, base = ref.replace("\\", "/").rpartition("/")
    if parent in ("", folder, f"./{folder}"):
        return base
    return None


def resolve_recipe(ref: str) -> str:
    """What ``--config REF`` reads: an existing file wins; else the built-in recipe of that name (``demo``,
    ``demo.yaml``, or ``conf/demo.yaml`` run outside the checkout); else ``ref`` unchanged, for the parser's own
    "file does not exist" line."""
    if Path(ref).is_file():
        return ref
    name = _builtin_name(ref, "recipe")
    path = find("recipe", name) if name else None
    if path is None and _builtin_name(ref, "model"):  # a network overlay: conf/models/NAME.yaml
        path = find("model", _builtin_name(ref, "model"))
    return str(path) if path else ref


def resolve_sweep(ref: str) -> Path:
    """The sweep spec ``dsn sweep REF`` reads: an existing file wins, else the built-in sweep of that name
    (``kernels``, ``kernels.yaml``, ``sweeps/kernels.yaml``); else ``Path(ref)`` for the loader's own error."""
    if Path(ref).is_file():
        return Path(ref)
    name = _builtin_name(ref, "sweep")
    return (find("sweep", name) if name else None) or Path(ref)
