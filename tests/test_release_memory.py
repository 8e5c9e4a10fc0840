"""Issue 33: the memory an evaluation pass leaves in the process is given back (pages of the evaluated
recordings' memory maps, the freed heap), during and after the pass, and the values read are unchanged."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dsn.data import recording
from dsn.data.normalize import NormalizedEpochs, channel_stats
from dsn.data.recording import malloc_trim, release_memory

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux") or not Path("/proc/self/smaps").is_file(),
                                reason="reads /proc/self/smaps")


def mapped_kb(path: Path) -> int:
    """Resident kB of this process's mappings of ``path`` (``/proc/self/smaps``)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5:  # a mapping's header line
            inside = line.endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(head[1])
    return total


def epochs_file(tmp_path: Path) -> tuple[Path, np.ndarray]:
    x = np.random.default_rng(0).normal(size=(64, 2, 3000)).astype(np.float32)  # 1.5 MB
    path = tmp_path / "x.npy"
    np.save(path, x)
    return path, x


@linux_only
@pytest.mark.parametrize("wrapped", [False, True], ids=["memmap", "normalized"])
def test_release_memory_drops_the_pages_and_keeps_the_values(tmp_path, wrapped):
    path, x = epochs_file(tmp_path)
    mm = np.load(path, mmap_mode="r")
    centers, scales = channel_stats(x, "zscore", 100.0)
    rec = SimpleNamespace(x=NormalizedEpochs(mm, centers, scales) if wrapped else mm)
    before = np.array(rec.x[:])  # reads every page
    assert mapped_kb(path) > 1000
    release_memory([rec])
    assert mapped_kb(path) == 0
    np.testing.assert_array_equal(np.array(rec.x[:]), before)  # read back from the page cache, the same values
    assert mapped_kb(path) > 1000


def test_release_memory_on_arrays_in_memory_and_malloc_trim_run():
    x = np.ones((3, 1, 10), dtype=np.float32)
    release_memory([SimpleNamespace(x=x)])
    malloc_trim()
    assert x.sum() == 30


class _Recs(torch.utils.data.Dataset):
    def __init__(self, recordings):
        self.recordings = recordings

    def __len__(self):
        return 10

    def __getitem__(self, i):
        return torch.ones(2)


def test_release_eval_memory_runs_during_and_after_the_validation_pass(monkeypatch):
    import lightning as L

    from dsn.workflows.callbacks import ReleaseEvalMemory

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 1)

        def validation_step(self, batch, batch_idx):
            return self.lin(batch).sum()

        test_step = validation_step

    calls: list[tuple[str, list]] = []
    stage = {"now": ""}
    monkeypatch.setattr(recording, "release_memory", lambda recs: calls.append((stage["now"], list(recs))))
    recs = [SimpleNamespace(name="a"), SimpleNamespace(name="b")]
    loader = torch.utils.data.DataLoader(_Recs(recs), batch_size=2)  # 5 batches
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[ReleaseEvalMemory(every=2)])
    stage["now"] = "val"
    trainer.validate(Tiny(), dataloaders=loader, verbose=False)
    stage["now"] = "test"
    trainer.test(Tiny(), dataloaders=loader, verbose=False)
    # every 2 batches (after batches 2 and 4) and at the end of each pass, always the pass's recordings
    assert [s for s, _ in calls] == ["val"] * 3 + ["test"] * 3
    assert all(r == recs for _, r in calls)


@linux_only
@pytest.mark.parametrize("release", [False, True], ids=["kept", "released"])
def test_datasets_give_the_pages_of_each_read_back(tmp_path, release):
    """A training or evaluation read of the data module's datasets leaves none of the recording's memory-mapped pages
    in the process (``release=True``; without it every read night stays resident over an epoch), same values."""
    from dsn.data.recording import Recording
    from dsn.data.sampling import EpochDataset, SequenceDataset, read_shifted

    path, x = epochs_file(tmp_path)
    rec = Recording("r", "s", 1, np.load(path, mmap_mode="r"), np.arange(64) % 5, 100.0)
    epochs = EpochDataset([rec], release=release)
    seqs = SequenceDataset([rec], np.array([[0, 0, 16, 1], [0, 16, 16, 0], [0, 32, 32, 0]]), release=release)
    for i in range(64):
        shift = 500 * (i % 2)
        xi, yi = epochs[(i, 0, shift)]
        np.testing.assert_array_equal(xi.numpy(), read_shifted(x, i, 1, shift)[0])  # the in-memory array's values
        assert int(yi) == i % 5
    assert (mapped_kb(path) == 0) == release
    for k in range(3):
        xs, ys, _ = seqs[k]
        np.testing.assert_array_equal(xs.numpy(), x[16 * k : 16 * k + len(xs)])
    assert (mapped_kb(path) == 0) == release
