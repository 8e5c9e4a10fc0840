"""Preprocessed-recording cache: one folder per recording and parameter set, written atomically.

A cache entry is a folder ``<cache_dir>/<recording>-<key>/`` holding ``x.npy`` (epochs, float32,
memory-mappable), ``y.npy`` (labels) and ``meta.json``. The key hashes the source files' identity
(name, size, modification time) and every preprocessing parameter, so a changed file or parameter
never reads a stale entry. Entries are built in a temporary folder and renamed into place, so an
interrupted run leaves nothing half-written under a valid name.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

#: Bump when the preprocessing changes in a way the parameters do not capture.
CACHE_VERSION = 1


def default_cache_dir() -> Path:
    """``$DSN_CACHE_DIR``, else ``~/.cache/dsn``."""
    return Path(os.environ.get("DSN_CACHE_DIR", Path.home() / ".cache" / "dsn"))


def file_identity(path: str | Path) -> dict[str, Any]:
    """Name, size and modification time of a file (no content read)."""
    st = Path(path).stat()
    return {"name": Path(path).name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def cache_key(sources: list[str | Path], params: dict[str, Any]) -> str:
    """Hash of the sources' identity and the preprocessing parameters."""
    payload = {"version": CACHE_VERSION, "sources": [file_identity(s) for s in sources], "params": params}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_entry(folder: Path, mmap: bool = True) -> tuple[np.ndarray, np.ndarray, dict[str, Any]] | None:
    """Read a cache entry; ``None`` if absent or unreadable (it is then rebuilt)."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        x = np.load(folder / "x.npy", mmap_mode="r" if mmap else None)
        y = np.load(folder / "y.npy")
    except (OSError, ValueError):
        return None
    if len(x) != len(y):
        return None
    return x, y, meta


def write_entry(folder: Path, x: np.ndarray, y: np.ndarray, meta: dict[str, Any]) -> None:
    """Write a cache entry atomically (temporary folder + rename)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        np.save(tmp / "x.npy", np.ascontiguousarray(x, dtype=np.float32))
        np.save(tmp / "y.npy", np.asarray(y, dtype=np.int64))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
        if folder.exists() and load_entry(folder) is None:  # a broken entry from an older crash
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process wrote the same entry first: keep theirs
            if load_entry(folder) is None:
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
