"""Preprocessed-recording cache: one folder per recording and parameter set, written atomically.

A cache entry is a folder ``<cache_dir>/<recording>-<key>/`` holding ``x.npy`` (epochs, float32 or, with
``data.cache_dtype: float16``, float16 — the dtype enters the key — memory-mappable), ``y.npy`` (labels) and ``meta.json``. The key hashes the source files' identity
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
#: 2: resampling is polyphase (scipy's resample_poly) instead of MNE's FFT resampling.
CACHE_VERSION = 2


def default_cache_dir() -> Path:
    """``$DSN_CACHE_DIR``, else ``~/.cache/dsn``."""
    return Path(os.environ.get("DSN_CACHE_DIR", Path.home() / ".cache" / "dsn"))


#: Open files kept free beyond the memory maps (loader workers, MLflow's database, checkpoints, logs).
SPARE_OPEN_FILES = 256


def reserve_open_files(n_entries: int) -> None:
    """Let this process hold ``n_entries`` more memory-mapped entries open at once.

    Every memory map keeps a file descriptor (Python's ``mmap`` duplicates it), so a fit over thousands of
    nights holds thousands of open files: past the soft limit (``ulimit -n``, often 1,024) every later open
    fails with "Too many open files". The soft limit is raised towards the hard limit as far as needed
    (open files now + ``n_entries`` + :data:`SPARE_OPEN_FILES`); nothing is done where it already suffices or
    on a system without ``resource`` (Windows).

    Raises
    ------
    OSError
        Where the hard limit is too low, naming the numbers and ``ulimit -Hn``.
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        open_now = len(os.listdir("/proc/self/fd"))
    except OSError:  # no /proc (macOS): count nothing
        open_now = 0
    want = open_now + n_entries + SPARE_OPEN_FILES
    if soft == resource.RLIM_INFINITY or want <= soft:
        return
    if hard != resource.RLIM_INFINITY and want > hard:
        raise OSError(f"{n_entries} memory-mapped recordings need about {want} open files, but this process may "
                      f"open at most {hard} (hard limit): raise it (ulimit -Hn, /etc/security/limits.conf) or fit on fewer nights")
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


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


def write_entry(
    folder: Path, x: np.ndarray, y: np.ndarray, meta: dict[str, Any], rows: np.ndarray | None = None,
    dtype: str = "float32",
) -> None:
    """Write a cache entry atomically (temporary folder + rename).

    ``rows`` (sorted indices into ``x``'s first axis) writes ``x[rows]`` straight from ``x``, one write per
    run of consecutive rows, without building the selection in memory; ``y`` is already the selection.
    ``dtype`` is the stored epochs' (``float32`` or ``float16``).

    Raises
    ------
    OverflowError
        If a sample does not fit ``dtype`` (float16: beyond +/-65504); nothing is written.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        _save_rows(tmp / "x.npy", x, rows, np.dtype(dtype))
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


def _save_rows(path: Path, x: np.ndarray, rows: np.ndarray | None, dtype: np.dtype = np.dtype(np.float32)) -> None:
    """``np.save(path, x[rows].astype(dtype))``, writing contiguous runs of rows directly from ``x`` (from a
    non-contiguous ``x``, e.g. a transposed multi-channel view, or into another dtype, through a small buffer of
    rows at a time). ``OverflowError`` where a finite sample becomes infinite in ``dtype``."""
    x = np.asarray(x)
    if rows is None:
        rows = np.arange(len(x))
    step = len(x) if x.flags.c_contiguous and x.dtype == dtype else max(1, 2**22 // max(1, x[0].nbytes if len(x) else 1))  # ~4 MiB
    rows = np.asarray(rows, dtype=np.int64)
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (len(rows), *x.shape[1:])}
    buf = None
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        for run in np.split(rows, np.flatnonzero(np.diff(rows) != 1) + 1):
            if not len(run):
                continue
            for a in range(int(run[0]), int(run[-1]) + 1, step):
                block = x[a : min(a + step, int(run[-1]) + 1)]
                if not block.flags.c_contiguous or block.dtype != dtype:  # copied into one reused buffer
                    if buf is None:
                        buf = np.empty((step, *x.shape[1:]), dtype=dtype)
                    with np.errstate(over="ignore"):  # an overflow is checked below
                        np.copyto(buf[: len(block)], block, casting="unsafe")
                    if dtype != x.dtype and not np.isfinite(buf[: len(block)]).all() and np.isfinite(block).all():
                        raise OverflowError(f"a sample of {float(np.abs(block).max()):g} does not fit {dtype.name}")
                    block = buf[: len(block)]
                f.write(memoryview(block).cast("B"))


def read_extra(folder: Path, name: str) -> dict[str, Any] | None:
    """A JSON file kept beside a cache entry (figures derived from it, e.g. normalisation statistics); ``None``
    if absent or unreadable."""
    try:
        return json.loads((Path(folder) / name).read_text())
    except (OSError, ValueError):
        return None


def write_extra(folder: Path, name: str, data: dict[str, Any]) -> bool:
    """Write ``data`` as ``folder/name`` atomically (temporary file + rename); False (nothing written) where
    the folder is not writable, e.g. a shared read-only cache: the figures are then recomputed next time."""
    fd, tmp = None, None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=folder)
        with os.fdopen(fd, "w") as f:
            fd = None
            json.dump(data, f)
        os.replace(tmp, Path(folder) / name)
        return True
    except OSError:
        if fd is not None:
            os.close(fd)
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        return False
