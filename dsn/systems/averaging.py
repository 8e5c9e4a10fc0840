"""Weight averaging: an exponential moving average (EMA) of a training system's weights.

:func:`ema_callback` returns a Lightning callback built on Lightning's own
:class:`~lightning.pytorch.callbacks.WeightAveraging` (which keeps a
:class:`torch.optim.swa_utils.AveragedModel` of the whole LightningModule), with ``use_buffers=True`` so the
batch-norm running statistics are averaged along with the weights, and a picklable EMA update (Lightning's
``EMAWeightAveraging`` holds a closure that ``strategy="ddp_spawn"`` cannot pickle). Its contract, during
``trainer.fit``:

* after every optimizer step ``average = decay * average + (1 - decay) * weights`` (the first step copies);
* validation (sanity check included) runs on the averaged weights; training continues on the raw weights;
* every checkpoint written during fit (``ModelCheckpoint``'s best and last, ``trainer.save_checkpoint``) holds
  the averaged weights in ``state_dict``, so ``system.load_state_dict(torch.load(ckpt)["state_dict"])``
  gives the averaged model; the raw weights and the averaging state are kept next to it
  (``current_model_state``, ``averaging_state``) so that ``trainer.fit(..., ckpt_path=...)`` resumes both;
* when fit ends the module is left holding the averaged weights (the model of the last epoch, averaged).

After fit (``trainer.validate``/``trainer.test``/``trainer.save_checkpoint`` with the same trainer) the
callback steps aside: the module is evaluated and saved as it is, e.g. the averaged last model, or the best
checkpoint's averaged ``state_dict`` loaded into it; ``trainer.test(ckpt_path=...)`` tests that checkpoint's
averaged weights. Lightning's own callback would swap in its final average again (or reload the raw weights
from a checkpoint), evaluating another model than the one selected.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.trainer.states import TrainerFn

__all__ = ["EMA", "EMAUpdate", "ema_callback"]


class EMAUpdate:
    """``decay * average + (1 - decay) * current``: the ``avg_fn`` of :class:`~torch.optim.swa_utils.AveragedModel`
    (an object, not a closure, so the callback can be pickled)."""

    def __init__(self, decay: float):
        self.decay = decay

    @torch.no_grad()
    def __call__(self, average: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        return self.decay * average + (1 - self.decay) * current


class EMA(WeightAveraging):
    """Exponential moving average of all weights and buffers, used for validation and checkpoints.

    See the module docstring for the contract.

    Parameters
    ----------
    decay : float, default 0.999
        EMA decay per optimizer step, in (0, 1): ``average = decay * average + (1 - decay) * weights``. The
        average spans about ``1 / (1 - decay)`` steps (0.999: a thousand).

    Raises
    ------
    ValueError
        If ``decay`` is outside (0, 1); at the start of fit, if a ``ModelCheckpoint`` has
        ``save_weights_only=True`` (Lightning then skips callback checkpoint hooks, so the checkpoints
        would hold the raw weights).
    """

    def __init__(self, decay: float = 0.999):
        if isinstance(decay, bool) or not isinstance(decay, int | float) or not 0.0 < decay < 1.0:
            raise ValueError(f"decay={decay!r}: the EMA decay must be a number in (0, 1), e.g. 0.999")
        super().__init__(use_buffers=True, avg_fn=EMAUpdate(float(decay)))  # updated after every optimizer step
        self.decay = float(decay)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            for cb in trainer.checkpoint_callbacks:
                if getattr(cb, "save_weights_only", False):
                    raise ValueError(
                        "ModelCheckpoint(save_weights_only=True) with the EMA callback: such checkpoints would hold "
                        "the raw, not the averaged, weights; use save_weights_only=False"
                    )
        super().setup(trainer, pl_module, stage)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # setup() runs before the strategy moves the module to its device: keep the average next to the weights
        if self._average_model is not None and self._device is None:
            self._average_model.to(pl_module.device)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)  # the module now holds the averaged weights
        self._average_model = None  # after fit: evaluate and save the module as it is

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._average_model is not None:
            super().on_save_checkpoint(trainer, pl_module, checkpoint)

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn == TrainerFn.FITTING and self._average_model is not None:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
        # evaluation: the checkpoint's averaged state_dict is already loaded into the module; keep it


def ema_callback(decay: float) -> L.Callback:
    """An :class:`EMA` weight-averaging callback with ``decay`` in (0, 1); add one per training stage (per Trainer).

    Parameters
    ----------
    decay : float
        EMA decay per optimizer step (e.g. 0.999). Not averaging at all (the paper) is no callback.

    Returns
    -------
    lightning.Callback
        Validation and checkpoints use the averaged weights (batch-norm statistics included); see the
        module docstring.
    """
    return EMA(decay)
