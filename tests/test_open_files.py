"""Thousands of memory-mapped nights need thousands of open files (issue 33): the soft limit is raised for them."""

from __future__ import annotations

import os
import resource

import numpy as np
import pytest

from dsn.data import cache
from dsn.data.datamodule import SleepEDFDataModule
from dsn.data.errors import DataError


def _open_now() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open files in /proc")
def test_memory_maps_hold_a_file_each_and_the_limit_is_raised_for_them(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    n = 150
    if hard != resource.RLIM_INFINITY and hard < _open_now() + n + cache.SPARE_OPEN_FILES:
        pytest.skip(f"hard limit on open files {hard} too low for the test")
    np.save(tmp_path / "x.npy", np.zeros((4, 2, 30), np.float32))
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (_open_now() + 40, hard))
        maps = []
        with pytest.raises(OSError, match="Too many open files"):  # what a fit over many nights met
            for _ in range(n):
                maps.append(np.load(tmp_path / "x.npy", mmap_mode="r"))
        del maps
        cache.reserve_open_files(n)
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= _open_now() + n
        maps = [np.load(tmp_path / "x.npy", mmap_mode="r") for _ in range(n)]
        assert len(maps) == n
        del maps
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        cache.reserve_open_files(1)  # already enough: unchanged
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == limit
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_hard_limit_too_low_is_named_before_any_night_is_read(synth_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(resource, "getrlimit", lambda what: (64, 64))
    monkeypatch.setattr(resource, "setrlimit", lambda *a: pytest.fail("setrlimit called past the hard limit"))
    dm = SleepEDFDataModule(str(synth_dir), n_folds=3, cache_dir=str(tmp_path), progress=False)
    with pytest.raises(DataError, match=r"6 memory-mapped recordings need about \d+ open files, .* at most 64 .*ulimit -Hn"):
        dm.setup()
    assert not list(tmp_path.iterdir())  # refused before reading anything
    SleepEDFDataModule(str(synth_dir), n_folds=3, use_cache=False, progress=False).setup()  # nothing mapped: no limit
