"""Whole-sequence networks: a window of consecutive epochs in, one class per epoch out (braindecode's ``USleep``).

A whole-sequence network reads the raw signal of several consecutive 30-s epochs at once (``USleep``, Perslev et
al. 2021: a U-Net over the signal, one score per epoch), so it is neither an epoch encoder nor a sequence model
over features. dsn trains it as one stage on the streamed sequences the fine-tuning stage draws, by putting it
behind the sequence contract of :mod:`dsn.models.sequence`:

- :class:`RawEpochs` is the "encoder": each epoch's samples flattened, ``(batch, n_chans, n_times) ->
  (batch, n_chans * n_times)``, no parameters;
- :class:`WholeSequenceNet` is the "sequence model": it puts the ``seq_len`` epochs of a chunk back end to end,
  ``(batch, n_chans, seq_len * n_times)``, runs the wrapped network and returns ``(batch, seq_len, n_outputs)``.

so :class:`~dsn.models.EncoderSequenceNet` joins them, the fine-tuning system trains it, and
:class:`~dsn.models.scoring.SleepScorer` scores a night in chunks of ``seq_len`` epochs (stateless, as the
Transformer; ``finetune.n_offsets`` averages shifted chunkings). Config: ``net.class_path: RawEpochs``,
``finetune.net.class_path: USleep`` (``braindecode.models.USleep``, or a user's ``package.module.Class``),
``stages: [finetune]`` (``conf/models/usleep.yaml``).

Implementation Differences
--------------------------
1. **Window length.** The USleep paper scores 35-epoch windows (17.5 min) and averages overlapping windows at test
   time; here the window is ``finetune.seq_len`` epochs and a night is scored in consecutive chunks of that length
   (the last one shorter), ``finetune.n_offsets`` shifted chunkings averaged.
2. **Constructor.** The wrapped class is built with ``n_times`` = one epoch's samples (braindecode's USleep then
   gives one score per ``n_times`` samples of a longer input), ``n_chans``, ``sfreq`` and ``n_outputs`` linked from
   the data; its own arguments (``depth``, ``complexity_factor``, ...) go in ``init_args``.
3. **Input scaling.** USleep's paper scales each channel of each recording robustly (median / IQR); here the
   data module's ``data.normalize`` applies, as for every network.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from dsn.errors import ModelError
from dsn.models.deepsleepnet import LSTMState
from dsn.models.external import _constructor_args, _first_line, _package_of, resolve_class
from dsn.models.sequence import SequenceNet

__all__ = ["RawEpochs", "WholeSequenceNet"]


class RawEpochs(nn.Module):
    """The raw samples of each epoch as its features: ``(batch, n_chans, n_times) -> (batch, n_chans * n_times)``.

    The encoder in front of a :class:`WholeSequenceNet`; it has no parameters.

    Parameters
    ----------
    n_chans : int, default 1
        Input channels (linked from ``data.channels``).
    n_times : int, optional
        Samples per epoch (default: 30 s at ``sfreq``).
    sfreq : float, default 100
        Sampling rate in Hz (linked from ``data.sfreq``).
    """

    def __init__(self, n_chans: int = 1, n_times: int | None = None, sfreq: float = 100.0) -> None:
        super().__init__()
        self.n_chans, self.sfreq = int(n_chans), float(sfreq)
        self.n_times = int(n_times) if n_times else int(round(30 * self.sfreq))
        self.n_features = self.n_chans * self.n_times

    def forward(self, x: Tensor) -> Tensor:
        """The epochs ``(batch, n_chans, n_times)`` flattened to ``(batch, n_chans * n_times)``."""
        if x.ndim != 3 or x.shape[1:] != (self.n_chans, self.n_times):
            raise ModelError(f"RawEpochs was built for (batch, n_chans={self.n_chans}, n_times={self.n_times}), got "
                             f"shape {tuple(x.shape)}; check the channels and the epoch length")
        return x.flatten(1)

    def first_conv_weights(self, which: str = "none") -> list[nn.Parameter]:
        """No weights: ``[]`` (``l2_layers`` of a whole-sequence network: use ``all``, or ``none``)."""
        return []

    def extra_repr(self) -> str:
        """Describe the module in ``repr``."""
        return f"n_chans={self.n_chans}, n_times={self.n_times}"


class WholeSequenceNet(SequenceNet):
    """A whole-sequence network (braindecode's ``USleep``, or a user's module) behind the sequence contract.

    Parameters
    ----------
    class_path : str
        ``package.module.Class``; a bare name means ``braindecode.models.NAME``. Imported here, not before.
    n_chans, n_times : int
        Channels and samples of one epoch (the :class:`RawEpochs` in front).
    sfreq : float
        Sampling rate in Hz.
    n_outputs : int, default 5
        Number of classes.
    **init_args
        Other constructor arguments of the class.

    Attributes
    ----------
    module : nn.Module
        The wrapped network: ``(batch, n_chans, k * n_times) -> (batch, n_outputs, k)`` for any ``k >= 1``
        (``(batch, n_outputs)`` for ``k = 1`` is accepted too).
    class_path, init_args, package, package_version
        What the artifact spec records to rebuild it.

    Notes
    -----
    Shapes: ``forward(features, state=None, return_state=False)`` maps ``(batch, seq_len, n_chans * n_times)``
    (a :class:`RawEpochs`' output) to logits ``(batch, seq_len, n_outputs)``; the state is always ``None``.
    """

    stateful = False

    def __init__(self, class_path: str, n_chans: int, n_times: int, sfreq: float, n_outputs: int = 5,
                 **init_args: Any) -> None:
        super().__init__(int(n_chans) * int(n_times), n_outputs)
        cls = resolve_class(class_path)
        linked = {"n_chans": int(n_chans), "n_times": int(n_times), "sfreq": float(sfreq), "n_outputs": n_outputs}
        kwargs = _constructor_args(cls, class_path, linked, dict(init_args))
        kwargs.pop("return_feats", None)
        try:
            self.module = cls(**kwargs)
        except Exception as e:  # noqa: BLE001 - any constructor failure becomes one line naming the class
            raise ModelError(f"{class_path}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}): "
                             f"{_first_line(e)}") from None
        self.class_path = f"{cls.__module__}.{cls.__qualname__}"
        self.init_args = dict(init_args)
        self.n_chans, self.n_times, self.sfreq = int(n_chans), int(n_times), float(sfreq)
        self.package, self.package_version = _package_of(cls)

    def score(self, features: Tensor, state: LSTMState | None) -> tuple[Tensor, None]:
        """Logits ``(batch, seq_len, n_outputs)`` of the chunk's epochs read end to end."""
        b, seq_len = features.shape[:2]
        x = features.reshape(b, seq_len, self.n_chans, self.n_times).permute(0, 2, 1, 3)
        out = self.module(x.reshape(b, self.n_chans, seq_len * self.n_times))
        if out.ndim == 2 and seq_len == 1:
            out = out[:, :, None]
        if out.shape != (b, self.n_outputs, seq_len):
            raise ModelError(f"{self.class_path} returns {tuple(out.shape)} for {seq_len} epochs of shape "
                             f"({b}, {self.n_chans}, {self.n_times}); a whole-sequence network returns (batch, "
                             f"n_outputs={self.n_outputs}, {seq_len}): one score per epoch")
        return out.transpose(1, 2), None

    def extra_repr(self) -> str:
        """Describe the module in ``repr``."""
        return f"class_path={self.class_path}, n_chans={self.n_chans}, n_times={self.n_times}"
