"""TinySleepNet (Supratak & Guo 2020) as plain :class:`torch.nn.Module` objects.

Reference: Supratak, Guo (2020), "TinySleepNet: An Efficient Deep Learning Model for Sleep Stage Scoring based on
Raw Single-Channel EEG", 42nd IEEE EMBC, pp. 641-644, doi:10.1109/EMBC44109.2020.9176741. Official code: the
authors' TensorFlow repository (github.com/akaraspt/tinysleepnet, ``model.py``, ``nn.py``,
``config/sleepedf.py``). The paper reports 85.4 % accuracy and 80.5 macro-F1 on Sleep-EDF-20 (Fpz-Cz, 20-fold
cross-validation): the reference figures for this network, not a claim about what dsn's implementation reaches.

* :class:`TinySleepNetEncoder`: the epoch encoder (representation learning), one CNN branch::

      conv(128, k=Fs/2, stride) -> maxpool(8, 8) -> dropout(0.5) -> 3 x conv(128, k=8, stride 1)
      -> maxpool(4, 4) -> flatten -> dropout(0.5)

  every conv ``Conv1d(bias=False) -> BatchNorm1d -> ReLU`` with TensorFlow ``"SAME"`` padding.
* :class:`TinySleepNet`: the whole network, the encoder followed by
  :class:`~dsn.models.sequence.LstmSequenceNet` (one unidirectional LSTM of 128 units, dropout 0.5, a linear
  classifier), its state carried from one sequence of a recording to the next as in the official code.

The official training recipe (``config/sleepedf.py``, ``train.py``, ``minibatching.py``), for the recipe keys
that are not part of the network: trained end to end in one stage (no separate pretraining); Adam 1e-4
(betas 0.9/0.999, eps 1e-8), gradients clipped at global norm 5; L2 1e-3 on the four conv kernels
(:meth:`TinySleepNetEncoder.conv_weights`); batches of 15 sequences of 20 epochs; weighted cross-entropy with N1
weighted 1.5; sequence augmentation (each recording's sequences start 0-4 epochs later in each training epoch)
and signal augmentation (a random shift of the whole signal); 200 epochs with early stopping after 50 without
improvement.

Implementation Differences
--------------------------
1. **First-conv stride.** The paper's figure gives the first conv a stride of ``Fs/4``; the official code uses
   ``int(Fs/16)`` (6 at 100 Hz), and the paper's results come from it. ``first_stride`` defaults to the code's
   ``Fs/16`` (rounded half up, at least 1); ``first_stride=25`` at 100 Hz is the figure's network (512 features
   instead of 2048, about half the parameters).
2. **Parameter count.** At 100 Hz with one channel: 1,516,421 parameters (encoder 400,640 with batch norm,
   LSTM 1,115,136, classifier 645); the official LSTM has peepholes (+384) and one bias vector (-512), 1,516,293
   in all. The paper speaks of about 1.3 M. With the figure's ``first_stride=25``: 729,989.
3. **LSTM**: see :mod:`dsn.models.sequence` (no peepholes, forget-gate bias 1.0 at initialisation, PyTorch's
   weight initialisation). The official code masks the padded end of a recording's last sequence; here the
   data module decides what a chunk holds.
4. **Batch norm** defaults to the official ``tf.layers.batch_normalization`` settings: ``momentum=0.99`` (PyTorch
   ``bn_momentum=0.01``) and ``epsilon=0.001`` (DeepSleepNet's code used 0.999 and 1e-5).
5. **Weight initialisation** uses PyTorch's defaults (the official code: variance scaling, fan-in, normal), except
   the classifier's bias, initialised to zero as in the official ``fc(..., bias=0.0)``.
6. **Several channels**: the first conv takes all ``n_chans`` channels (``Conv1d(n_chans, 128, kernel)``), as in
   :class:`~dsn.models.DeepFeatureNet`; ``n_chans=1`` is the paper's network.
7. **Kernel and stride for other sampling rates** are rounded half up (the official code truncates: ``int``); at
   100 Hz both give 50 and 6.
8. **Strict input checks** as :class:`~dsn.models.DeepFeatureNet`: built for one ``n_times``; an epoch shorter
   than the first kernel, or a stride that leaves a pooling layer too few samples, is refused at construction.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

from torch import Tensor, nn

from dsn.errors import ModelError
from dsn.models.deepsleepnet import MaxPool1dSame, _ConvBNReLU, _round_half_up, same_output_length
from dsn.models.sequence import EncoderSequenceNet, LstmSequenceNet

__all__ = ["TinySleepNet", "TinySleepNetEncoder"]


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelError(f"{name} must be a positive integer, got {value!r}")
    return value


class TinySleepNetEncoder(nn.Module):
    """TinySleepNet's epoch encoder: one CNN branch, ``(batch, n_chans, n_times) -> (batch, n_features)``.

    Parameters
    ----------
    n_chans : int, default 1
        Input channels (1 in the paper: Fpz-Cz), all read by the first conv.
    n_times : int, optional
        Samples per epoch; defaults to ``round(30 * sfreq)``.
    sfreq : float, default 100.0
        Sampling rate in Hz; sets the default first kernel and stride.
    drop_prob : float, default 0.5
        Dropout after the first pooling and after flattening.
    n_filters : int, default 128
        Filters of every conv.
    first_kernel : int, optional
        First conv's kernel; ``sfreq / 2`` by default.
    first_stride : int, optional
        First conv's stride; ``sfreq / 16`` by default (official code; the paper's figure: ``sfreq / 4``).
    pool : int, default 8
        First max-pooling window (= stride).
    conv_kernel : int, default 8
        Kernel of the following convs.
    n_convs : int, default 3
        Convs after the first pooling (``>= 0``).
    pool_last : int, default 4
        Last max-pooling window (= stride).
    bn_momentum : float, default 0.01
        PyTorch batch-norm momentum (official TF ``momentum=0.99``).
    bn_eps : float, default 1e-3
        Batch-norm epsilon (official 0.001).

    Attributes
    ----------
    n_features : int
        Output size, ``n_filters * lengths[-1]``: 2048 at 100 Hz with the defaults.
    lengths : tuple of int
        Length after each stage: ``(input, first conv, first pool, last pool)``; ``(3000, 500, 63, 16)`` at 100 Hz.
    cnn : nn.Sequential
        Stages ``conv1, pool1, drop1, conv2 .. conv{n_convs+1}, pool2, flatten, drop2``.

    Notes
    -----
    Shapes: ``forward`` maps ``(batch, n_chans, n_times) -> (batch, n_features)``. See the module docstring
    ("Implementation Differences") for departures from the paper and the official code.
    """

    def __init__(
        self,
        n_chans: int = 1,
        n_times: int | None = None,
        sfreq: float = 100.0,
        drop_prob: float = 0.5,
        n_filters: int = 128,
        first_kernel: int | None = None,
        first_stride: int | None = None,
        pool: int = 8,
        conv_kernel: int = 8,
        n_convs: int = 3,
        pool_last: int = 4,
        bn_momentum: float = 0.01,
        bn_eps: float = 1e-3,
    ) -> None:
        super().__init__()
        if isinstance(sfreq, bool) or not isinstance(sfreq, (int, float)) or sfreq <= 0:
            raise ModelError(f"sfreq must be a positive number of Hz, got {sfreq!r}")
        n_times = _round_half_up(30 * sfreq) if n_times is None else n_times
        first_kernel = _round_half_up(sfreq / 2) if first_kernel is None else first_kernel
        first_stride = _round_half_up(sfreq / 16) if first_stride is None else first_stride
        for name, value in (
            ("n_chans", n_chans), ("n_times", n_times), ("n_filters", n_filters), ("first_kernel", first_kernel),
            ("first_stride", first_stride), ("pool", pool), ("conv_kernel", conv_kernel), ("pool_last", pool_last),
        ):  # fmt: skip
            _positive_int(name, value)
        if isinstance(n_convs, bool) or not isinstance(n_convs, int) or n_convs < 0:
            raise ModelError(f"n_convs must be a non-negative integer, got {n_convs!r}")
        if not 0.0 <= drop_prob < 1.0:
            raise ModelError(f"drop_prob must be in [0, 1), got {drop_prob!r}")
        if n_times < first_kernel:
            raise ModelError(
                f"n_times={n_times} is shorter than the first conv kernel first_kernel={first_kernel}; use longer "
                f"epochs (30 s = {_round_half_up(30 * sfreq)} samples at sfreq={sfreq}) or a smaller first_kernel"
            )
        n1 = same_output_length(n_times, first_stride)
        n2 = same_output_length(n1, pool)
        if n1 < pool or n2 < pool_last:
            raise ModelError(
                f"first_stride={first_stride} leaves too few samples for the pooling layers ({n_times} samples -> "
                f"{n1} after the first conv, {n2} after the first pooling; pool={pool} and pool_last={pool_last} "
                "need at least that many): use a smaller first_stride or smaller pools"
            )
        self.n_chans, self.n_times, self.sfreq = n_chans, n_times, float(sfreq)
        self.first_kernel, self.first_stride, self.drop_prob = first_kernel, first_stride, drop_prob
        stages: OrderedDict[str, nn.Module] = OrderedDict()
        stages["conv1"] = _ConvBNReLU(n_chans, n_filters, first_kernel, first_stride, bn_momentum, bn_eps)
        stages["pool1"] = MaxPool1dSame(pool, pool)
        stages["drop1"] = nn.Dropout(drop_prob)
        for i in range(n_convs):
            stages[f"conv{i + 2}"] = _ConvBNReLU(n_filters, n_filters, conv_kernel, 1, bn_momentum, bn_eps)
        stages["pool2"] = MaxPool1dSame(pool_last, pool_last)
        stages["flatten"] = nn.Flatten(1)
        stages["drop2"] = nn.Dropout(drop_prob)
        self.cnn = nn.Sequential(stages)
        self.lengths = (n_times, n1, n2, same_output_length(n2, pool_last))
        self.n_features: int = n_filters * self.lengths[-1]

    def check_input(self, x: Tensor) -> None:
        """Raise :class:`~dsn.errors.ModelError` unless ``x`` has shape ``(batch, n_chans, n_times)``."""
        if x.ndim != 3 or x.shape[1] != self.n_chans or x.shape[2] != self.n_times:
            raise ModelError(
                f"TinySleepNetEncoder expects (batch, n_chans={self.n_chans}, n_times={self.n_times}), got shape "
                f"{tuple(x.shape)}; check the channels and the epoch length at sfreq={self.sfreq:g} Hz, or rebuild "
                "the encoder for this input"
            )

    def forward(self, x: Tensor) -> Tensor:
        """Features ``(batch, n_features)`` of raw epochs ``(batch, n_chans, n_times)`` (after the last dropout)."""
        self.check_input(x)
        return self.cnn(x)

    def conv_weights(self) -> list[nn.Parameter]:
        """Kernels of every conv, first one first: the official code's L2 weight decay applies to all of them."""
        return [m.conv.weight for m in self.cnn if isinstance(m, _ConvBNReLU)]

    def first_conv_weights(self, which: Literal["small", "both", "none"] = "small") -> list[nn.Parameter]:
        """The first conv's kernel for ``"small"`` and ``"both"`` (one branch: one first conv), none for ``"none"``.

        Keeps the ``l2_layers`` option of :class:`~dsn.models.DeepFeatureNet` meaningful; the official TinySleepNet
        L2 covers every conv (:meth:`conv_weights`).
        """
        options = {"small": [self.cnn.conv1.conv.weight], "both": [self.cnn.conv1.conv.weight], "none": []}
        if which not in options:
            raise ModelError(f"which must be one of {sorted(options)}, got {which!r}")
        return options[which]


class TinySleepNet(EncoderSequenceNet):
    """TinySleepNet: :class:`TinySleepNetEncoder` followed by one unidirectional LSTM and a linear classifier.

    Parameters
    ----------
    n_chans : int, default 1
        Input channels.
    n_times : int, optional
        Samples per epoch; ``round(30 * sfreq)`` by default.
    sfreq : float, default 100.0
        Sampling rate in Hz.
    n_outputs : int, default 5
        Number of classes.
    drop_prob : float, default 0.5
        Dropout of the encoder and after the LSTM.
    hidden_size : int, default 128
        LSTM units.
    n_layers : int, default 1
        LSTM layers.
    **encoder_args
        Other :class:`TinySleepNetEncoder` arguments (``first_stride``, ``bn_momentum``, ...).

    Notes
    -----
    Shapes: ``forward(x, state=None, return_state=False)`` maps ``(batch, seq_len, n_chans, n_times)`` to logits
    ``(batch, seq_len, n_outputs)``; the state is the LSTM's ``(h, c)``, each ``(n_layers, batch, hidden_size)``
    (see :class:`~dsn.models.sequence.LstmSequenceNet`). :attr:`feature_net` is the encoder,
    :attr:`sequence_net` the LSTM and classifier.
    """

    def __init__(
        self,
        n_chans: int = 1,
        n_times: int | None = None,
        sfreq: float = 100.0,
        n_outputs: int = 5,
        drop_prob: float = 0.5,
        hidden_size: int = 128,
        n_layers: int = 1,
        **encoder_args,
    ) -> None:
        encoder = TinySleepNetEncoder(n_chans, n_times, sfreq, drop_prob, **encoder_args)
        super().__init__(encoder, LstmSequenceNet(encoder.n_features, n_outputs, hidden_size, n_layers, drop_prob))
