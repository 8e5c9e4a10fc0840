"""The Lightning callbacks of a stage's Trainer, one class each (imported when a stage is built)."""

from __future__ import annotations

import logging
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

    The state reached is written to ``<dirpath>/last.ckpt`` (through a temporary name, so a failure never
    corrupts the previous one), where ``--resume`` restarts from; ``seen`` tells the stage that Lightning's
    ``sys.exit(1)`` after a Ctrl-C was an interrupt. Nothing is written for a :class:`~dsn.errors.DsnError`
    (a diverged loss: resuming it would diverge again), for a pruned trial, or for an error under DDP (saving
    waits for every rank, and the others may not have failed). Not ``OnExceptionCheckpoint`` itself: with one
    among the callbacks Lightning turns ``fit(ckpt_path=None)`` into ``ckpt_path="last"`` (a fresh stage
    would silently resume from whatever ``last.ckpt`` its folder holds), it saves on every exception and it
    deletes its file at teardown.
    """

    def __init__(self, dirpath: str | Path):
        self.dirpath = str(dirpath)  # a DDP rank other than 0 learns rank 0's folder at setup
        self.seen = False

    @property
    def ckpt_path(self) -> Path:
        return Path(self.dirpath) / "last.ckpt"

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        stopped = isinstance(exception, KeyboardInterrupt) or type(exception).__name__ == "Terminated"
        if not stopped and (not isinstance(exception, Exception) or isinstance(exception, (DsnError, Pruned))
                            or trainer.world_size > 1):
            return
        self.seen = isinstance(exception, KeyboardInterrupt)
        tmp = self.ckpt_path.with_suffix(".tmp")
        try:
            trainer.save_checkpoint(tmp)
            if trainer.is_global_zero:  # under DDP only rank 0 writes
                tmp.replace(self.ckpt_path)
        except Exception as e:  # the run is being stopped anyway: report, do not mask the interrupt
            log.warning("could not save the interrupted state to %s: %s", self.ckpt_path, e)


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

    Every DDP rank must call it (``trainer.save_checkpoint`` ends with a barrier); only rank 0 writes."""
    tmp = path.with_suffix(".tmp")
    spec_callback.spec = spec
    try:
        trainer.save_checkpoint(tmp)
    finally:
        spec_callback.spec = None
    if trainer.is_global_zero:
        tmp.replace(path)
