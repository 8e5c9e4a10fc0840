"""The Lightning callbacks of a stage's Trainer, one class each (imported when a stage is built)."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L

from dsn.errors import DsnError, Pruned

log = logging.getLogger(__name__)

#: The key of a Lightning checkpoint that holds the scorer spec (so the file alone can score).
SCORER_KEY = "dsn_scorer"


class FiniteLoss(L.Callback):
    """Stop a fit whose training loss became NaN or infinite, with a clear error (not a silent NaN model).

    The system counts non-finite training losses on the device (``nonfinite_steps``); the count is read
    once before each validation and at each training epoch end (Lightning runs the epoch's validation
    before ``on_train_epoch_end``), never with a host-device sync per step, so no checkpoint of a
    diverged epoch is saved.
    """

    def __init__(self, stage: str):
        self.stage = stage

    def _check(self, trainer, pl_module) -> None:
        count = getattr(pl_module, "nonfinite_steps", None)
        bad = count() if callable(count) else 0
        if bad:
            raise DsnError(f"[{self.stage}] training diverged: the loss was NaN or infinite in {bad} training step(s) "
                           f"of epoch {trainer.current_epoch}. Lower the learning rate ({self.stage}.system.lr*) "
                           "or enable gradient clipping.")

    def on_validation_start(self, trainer, pl_module) -> None:
        self._check(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._check(trainer, pl_module)


class InterruptedState(L.Callback):
    """``last.ckpt``, written when it can be needed: when a fit is stopped (Ctrl-C, SIGTERM) or fails with an
    error that a rerun may not meet again (out of memory, a lost file system), not after every epoch.

    **Signals.** From the start of training, the first SIGTERM or SIGINT (Ctrl-C) only sets :attr:`requested`;
    the fit stops at the next step boundary -- when the next training batch starts, so the previous batch's
    optimizer step, weight averaging and bookkeeping are complete and the validation that may follow it has
    run -- and writes ``last.ckpt`` from that state before raising :class:`~dsn.tracking.Terminated` (SIGTERM)
    or ``KeyboardInterrupt`` (SIGINT). A second signal raises at once and keeps the previous ``last.ckpt``
    (the state may be half-way through a step). A signal after the last training step lets the fit end; the
    stage then stops (:func:`dsn.workflows.stage.train`). Under DDP, Lightning's own SIGTERM handling stays.

    **Same figures after a resume.** The checkpoint carries, under :data:`RESUME_KEY`, the epoch and the
    number of its batches already trained, the random generators' states as they were when the next batch
    started, and the sequence model's carried LSTM state; a fit resumed from it skips those batches in the
    sampler (:meth:`dsn.data.sampling._Resumable.resume_at`), restores the generators and the LSTM state when
    its first batch starts, and so trains exactly as the uninterrupted fit would have.

    Every state is written through a temporary name and checked (:func:`check_checkpoint`) before it
    replaces the previous one. ``seen`` tells the stage that Lightning's ``sys.exit(1)`` after a Ctrl-C was an
    interrupt. Nothing is written for a :class:`~dsn.errors.DsnError` (a diverged loss: resuming it would
    diverge again), for a pruned trial, for an error under DDP (saving waits for every rank, and the others
    may not have failed), nor before a training step of this fit has completed (the state may be half-restored).
    Not ``OnExceptionCheckpoint`` itself: with one among the callbacks Lightning turns ``fit(ckpt_path=None)``
    into ``ckpt_path="last"`` (a fresh stage would silently resume from whatever ``last.ckpt`` its folder
    holds), it saves on every exception and it deletes its file at teardown.
    """

    def __init__(self, dirpath: str | Path):
        self.dirpath = str(dirpath)  # a DDP rank other than 0 learns rank 0's folder at setup
        self.seen = False
        self.requested: int | None = None  # the signal that asked the fit to stop at the next step boundary
        self._forced = self._saved = self._writing = False
        self._steps = 0  # training steps completed in this fit call
        self._rng: dict[str, Any] | None = None  # the generators' states when the current batch started
        self._restore: dict[str, Any] | None = None  # what a resumed fit restores (from RESUME_KEY)

    @property
    def ckpt_path(self) -> Path:
        return Path(self.dirpath) / "last.ckpt"

    # -- signals
    def _on_signal(self, signum, frame) -> None:
        if self.requested is None:
            self.requested = signum
            return
        self._forced = True
        self.seen = signum == signal.SIGINT
        raise KeyboardInterrupt if signum == signal.SIGINT else _terminated()

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.world_size == 1 and threading.current_thread() is threading.main_thread():
            # after Lightning's own SIGTERM handler (which would stop inside a validation): its teardown restores
            # the handlers that were there before fit
            connector = getattr(trainer, "_signal_connector", None)
            if connector is not None and getattr(connector, "received_sigterm", False):
                connector.received_sigterm, self.requested = False, signal.SIGTERM
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, self._on_signal)
        if self._restore is not None:
            loader = trainer.train_dataloader
            skip_trained_batches(loader, self._restore["epoch"], self._restore["batch"])
            fetcher = getattr(trainer.fit_loop, "_data_fetcher", None)
            if getattr(loader, "num_workers", 0) and fetcher is not None:  # workers took their first keys already
                iter(fetcher)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self._restore is not None:  # the first batch of a resumed fit: as the interrupted fit left it
            restore_rng(self._restore["rng"])
            if self._restore.get("carry") is not None and hasattr(pl_module, "_state"):
                pl_module._state = _to_device(self._restore["carry"], pl_module.device)
            self._restore = None
        self._rng = rng_state()
        if self.requested is None:
            return
        log.warning("[%s] %s received: stopping before training batch %d of epoch %d; the state is saved in %s.",
                    Path(self.dirpath).name, signal.Signals(self.requested).name, batch_idx, trainer.current_epoch,
                    self.ckpt_path)
        try:
            self._save(trainer)
        except Exception as e:  # stop anyway; the previous last.ckpt (if any) stays
            log.warning("could not save the interrupted state to %s: %s", self.ckpt_path, e)
        self._saved, self.seen = True, self.requested == signal.SIGINT
        raise KeyboardInterrupt if self.requested == signal.SIGINT else _terminated()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._steps += 1

    # -- the resume payload
    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if not self._writing or self._rng is None:  # only the interrupted state carries it
            return
        carry = getattr(pl_module, "_state", None)
        checkpoint[RESUME_KEY] = {"epoch": trainer.current_epoch,
                                  "batch": trainer.fit_loop.epoch_loop.batch_progress.current.completed,
                                  "rng": self._rng, "carry": _to_device(carry, "cpu") if carry else None}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn == "fit":
            self._restore = checkpoint.get(RESUME_KEY)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        stopped = isinstance(exception, KeyboardInterrupt) or type(exception).__name__ in ("Terminated", "SIGTERMException")
        self.seen = self.seen or isinstance(exception, KeyboardInterrupt)
        if self._saved or self._forced or not self._steps:
            return
        if not stopped and (not isinstance(exception, Exception) or isinstance(exception, (DsnError, Pruned))
                            or trainer.world_size > 1):
            return
        try:
            self._save(trainer)
        except Exception as e:  # the run is being stopped anyway: report, do not mask the interrupt
            log.warning("could not save the interrupted state to %s: %s", self.ckpt_path, e)

    def _save(self, trainer) -> None:
        self._writing = True  # on_save_checkpoint adds the resume payload
        try:
            write_checked(trainer, self.ckpt_path, last=True)
        finally:
            self._writing = False


class ScorerSpec(L.Callback):
    """Adds the scorer spec to the checkpoints saved while ``spec`` is set (the selected model's)."""

    def __init__(self):
        self.spec: dict[str, Any] | None = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if self.spec is not None:
            checkpoint[SCORER_KEY] = self.spec


class SharedCheckpointDir(L.Callback):
    """Once the process group exists, gives every rank rank 0's run id and checkpoint folder (the other
    ranks cannot know the MLflow run that rank 0 opened before it started them).

    ``ctx`` is the fit's context (its recorder's ``run_id``, ``ckpt_root``); ``checkpoint`` and ``interrupted`` are the
    stage's :class:`~lightning.pytorch.callbacks.ModelCheckpoint` and :class:`InterruptedState`.
    """

    def __init__(self, ctx, checkpoint, interrupted: InterruptedState):
        self.ctx, self.checkpoint, self.interrupted = ctx, checkpoint, interrupted

    def setup(self, trainer, pl_module, stage: str) -> None:
        if trainer.world_size <= 1:
            return
        ctx = self.ctx
        run_id, root, dirpath = trainer.strategy.broadcast((ctx.run_id, str(ctx.ckpt_root), str(self.checkpoint.dirpath)), src=0)
        ctx.recorder.run_id, ctx.ckpt_root = run_id, Path(root)
        self.checkpoint.dirpath = dirpath
        self.interrupted.dirpath = dirpath


def save_selected(trainer, path: Path, spec_callback: ScorerSpec, spec: dict[str, Any]) -> None:
    """Save the selected model's Lightning checkpoint with the scorer spec in it (``ScorerSpec`` adds it).

    Every DDP rank must call it (``trainer.save_checkpoint`` ends with a barrier); only rank 0 writes, through a
    temporary file that replaces ``path`` once it loads back whole (:func:`write_checked`)."""
    spec_callback.spec = spec
    try:
        write_checked(trainer, path, last=False)
    finally:
        spec_callback.spec = None


def write_checked(trainer, path: Path, last: bool) -> None:
    """``trainer.save_checkpoint`` into a temporary file (removed if the save fails) that replaces ``path`` once it
    loads back whole (:func:`replace_checked`; ``last``: an interrupted state). Every DDP rank calls it; only rank 0
    replaces."""
    tmp = path.with_suffix(".tmp")
    try:
        trainer.save_checkpoint(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if trainer.is_global_zero:
        replace_checked(tmp, path, last=last)


# ----------------------------------------------------------------------------- checkpoints
#: What a fit's ``last.ckpt`` needs for Lightning to resume from it (``selected.ckpt``: ``state_dict``).
LAST_KEYS = ("state_dict", "epoch", "global_step", "loops", "optimizer_states", "callbacks")


def check_checkpoint(path: Path, last: bool = True, state_keys=None) -> str | None:
    """What is wrong with the Lightning checkpoint ``path`` (None: nothing found).

    It must load (``torch.load``), hold :data:`LAST_KEYS` (``last=True``; else ``state_dict``), every
    optimizer's per-parameter state must have the same entries for every parameter that has one (a state
    saved inside an optimizer step may lack ``exp_avg_sq`` for some), and with ``state_keys`` (a module's
    ``state_dict().keys()``) its ``state_dict`` must have exactly those keys.
    """
    import torch

    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        return f"it cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})"
    if not isinstance(ck, dict):
        return f"it holds a {type(ck).__name__}, not a checkpoint"
    missing = [k for k in (LAST_KEYS if last else ("state_dict",)) if k not in ck]
    if missing:
        return f"it lacks {', '.join(missing)}"
    for i, opt in enumerate(ck.get("optimizer_states") or []):
        states = (opt or {}).get("state", {})
        entries = {k for st in states.values() for k in st}
        for param, st in states.items():
            if set(st) != entries:
                return f"optimizer {i}'s state of parameter {param} lacks {', '.join(sorted(entries - set(st)))}"
    if state_keys is not None and set(ck["state_dict"]) != set(state_keys):
        diff = sorted(set(state_keys) ^ set(ck["state_dict"]))
        return f"its weights do not match the model ({len(diff)} differing keys, e.g. {diff[0]})"
    return None


def replace_checked(tmp: Path, path: Path, last: bool) -> None:
    """Move the freshly written checkpoint ``tmp`` onto ``path`` once :func:`check_checkpoint` finds it whole;
    otherwise remove it (the previous ``path`` stays) and raise :class:`~dsn.errors.DsnError` naming both."""
    problem = check_checkpoint(tmp, last=last)
    if problem:
        tmp.unlink(missing_ok=True)
        raise DsnError(f"the checkpoint written for {path} is damaged ({problem}); the previous one was kept.")
    tmp.replace(path)


# ----------------------------------------------------------------------------- resuming mid-epoch
#: The key of a ``last.ckpt`` that holds what a resumed fit needs to continue exactly (see InterruptedState).
RESUME_KEY = "dsn_resume"


def rng_state() -> dict[str, Any]:
    """The states of torch's (CPU and CUDA), numpy's and Python's global random generators."""
    import random

    import numpy as np
    import torch

    kind, keys, pos, has_gauss, gauss = np.random.get_state()  # plain types: torch.load(weights_only=True) reads them
    state = {"torch": torch.get_rng_state(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos),
                                                       int(has_gauss), float(gauss)), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Set the generators to ``state`` (:func:`rng_state`)."""
    import random

    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def skip_trained_batches(loader, epoch: int, batches: int) -> bool:
    """Make the training ``loader`` (a DataLoader or :class:`~dsn.data.device_sampling.DeviceBatches` on one of
    dsn's samplers) iterate epoch ``epoch`` without its first ``batches`` batches. False: its sampler cannot."""
    batch_sampler = getattr(loader, "batch_sampler", None)
    if hasattr(batch_sampler, "resume_at"):
        batch_sampler.resume_at(epoch, batches)
        return True
    sampler, size = getattr(loader, "sampler", None), getattr(loader, "batch_size", None)
    if hasattr(sampler, "resume_at") and size:
        sampler.resume_at(epoch, batches * size)
        return True
    if batches:
        log.warning("the training loader's sampler cannot skip the %d batches of epoch %d already trained", batches, epoch)
    return False


def _to_device(carry: dict, device) -> dict:
    return {k: None if v is None else tuple(t.to(device) for t in v) for k, v in carry.items()}


def _terminated() -> BaseException:
    from dsn.tracking import Terminated

    return Terminated()


def usable_last(path: Path, system, stage: str) -> bool:
    """Whether a resumed stage can continue from ``path`` (its ``last.ckpt``). A damaged one
    (:func:`check_checkpoint` against ``system``'s weights) is named in one warning and renamed
    ``last.ckpt.damaged``, so the stage starts anew instead of failing on it again at every resume."""
    if not path.is_file():
        return False
    problem = check_checkpoint(path, last=True, state_keys=system.state_dict().keys())
    if problem is None:
        return True
    aside = path.with_name(path.name + ".damaged")
    with contextlib.suppress(OSError):
        path.replace(aside)
    log.warning("[%s] %s is damaged (%s): restarting the stage from its start (the file is now %s).", stage, path,
                problem, aside.name)
    return False


def stage_rng(ckpt_dir: Path, resume: bool) -> None:
    """The random generators at the start of a stage, kept in ``<ckpt_dir>/rng_start.pt``: a resumed fit that
    restarts the stage (no usable ``last.ckpt``) restores them, so the stage is initialised and trained as the
    first fit did; otherwise they are written there (global rank 0 only; a missing file changes nothing)."""
    import torch

    from dsn.workflows.distributed import is_global_zero

    path = Path(ckpt_dir) / "rng_start.pt"
    if not is_global_zero():
        return
    if resume and path.is_file():
        with contextlib.suppress(Exception):  # an unreadable file: the stage starts from the generators as they are
            restore_rng(torch.load(path, map_location="cpu", weights_only=True))
            return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(rng_state(), tmp)
    tmp.replace(path)


class ReleaseEvalMemory(L.Callback):
    """Gives back the memory a validation or test pass leaves in the process (:func:`dsn.data.recording.release_memory`
    on the recordings of the pass's loaders): every ``every`` batches and at the end of the pass, so a pass over
    many nights holds a few nights' pages at a time and a training epoch after it starts from what it needs.

    Drops only clean pages (read back from the page cache) and freed heap: the figures do not change.
    """

    def __init__(self, every: int = 8):
        self.every = every

    @staticmethod
    def _release(loaders) -> None:
        from dsn.data.recording import release_memory

        for loader in loaders if isinstance(loaders, list | tuple) else [loaders]:
            release_memory(getattr(getattr(loader, "dataset", None), "recordings", []))

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if (batch_idx + 1) % self.every == 0:
            self._release(trainer.val_dataloaders)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if (batch_idx + 1) % self.every == 0:
            self._release(trainer.test_dataloaders)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._release(trainer.val_dataloaders)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._release(trainer.test_dataloaders)
