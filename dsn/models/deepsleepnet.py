"""DeepSleepNet networks as plain :class:`torch.nn.Module` objects.

This module knows nothing about training: no Lightning, no MLflow, no optimiser. It provides

* TensorFlow ``"SAME"`` padding for 1-D convolution and max-pooling (:class:`Conv1dSame`,
  :class:`MaxPool1dSame`, :func:`same_padding`, :func:`same_output_length`);
* :class:`DeepFeatureNet`, the two-branch CNN of the representation-learning stage;
* :class:`FeatureClassifierNet`, the feature net plus a linear head (the pretraining model);
* :class:`DeepSleepNet`, the sequence-residual model of the fine-tuning stage (shortcut + BiLSTM);
* :func:`l2_penalty`, the ``wd * sum(w**2) / 2`` term for the first-conv weight decay.

Reference: Supratak, Dong, Wu, Guo (2017), "DeepSleepNet: a model for automatic sleep stage scoring
based on raw single-channel EEG", IEEE TNSRE 25(11). The official code is the authors' TensorFlow
repository (github.com/akaraspt/deepsleepnet, ``deepsleep/nn.py`` and ``deepsleep/model.py``); the
details taken from it (padding, batch norm, weight decay, LSTM structure) are listed below.

Implementation Differences
--------------------------
Every departure from the paper and/or the official TensorFlow code, and every place where the two
disagree and a choice had to be made:

1. **No LSTM peepholes.** The official code uses ``LSTMCell(use_peepholes=True)``; PyTorch's
   :class:`torch.nn.LSTM` has no peephole connections (3 x ``hidden_size`` fewer weights per layer
   and direction). PyTorch also keeps two bias vectors (``bias_ih`` and ``bias_hh``) where TF keeps
   one, so the parameter counts differ from the official model in both directions.
2. **Forget-gate bias.** TF's ``LSTMCell`` adds a constant ``forget_bias=1.0`` to the forget gate
   and initialises its trainable bias to zero. Here the LSTM biases are initialised to zero except
   the forget-gate part of ``bias_ih``, which is set to ``lstm_forget_bias`` (1.0): the same function
   at initialisation, and the same model family afterwards (a trainable bias absorbs a constant).
   ``lstm_forget_bias=None`` keeps PyTorch's default bias initialisation instead.
3. **Weight initialisation** of convolutions, linear layers, batch norm and LSTM weights uses PyTorch's
   defaults; the official code's initialisers are not reproduced.
4. **First-conv L2 weight decay** is a training-system choice: the official code penalises only the
   small branch's first conv, the paper says both first convs. :meth:`DeepFeatureNet.first_conv_weights`
   returns the weights for ``"small"`` (code), ``"both"`` (paper) or ``"none"``; :func:`l2_penalty`
   computes the official ``wd * sum(w**2) / 2`` term (equivalently, use a coupled Adam
   ``weight_decay`` on that parameter group).
5. **Batch-norm momentum** defaults to ``0.001`` (TF ``decay=0.999``), as in the official code; the
   running statistics then need thousands of steps to settle, so short runs should pass a faster
   momentum (e.g. PyTorch's ``0.1``). ``eps`` defaults to ``1e-5`` as in the official code.
6. **Bidirectional structure.** ``bidirectional_mode="official"`` (default) reproduces the official
   ``static_bidirectional_rnn`` over two ``MultiRNNCell`` stacks: two independent unidirectional
   ``n_layers`` stacks, the backward one reading the reversed sequence, concatenated only at the
   end. ``"pytorch"`` uses ``nn.LSTM(num_layers=n_layers, bidirectional=True)``, whose upper layers
   read both directions of the layer below (a different, larger network), but which runs as one
   fused (cuDNN) kernel.
7. **Dropout after every LSTM layer** (official ``DropoutWrapper(output_keep_prob=0.5)`` on each
   cell, the last layer included) is reproduced: in ``"official"`` mode each layer is a
   single-layer ``nn.LSTM`` followed by ``nn.Dropout``; in ``"pytorch"`` mode ``nn.LSTM(dropout=p)``
   (between layers) plus one ``nn.Dropout`` on the output (after the last layer).
8. **Sequence length is not fixed.** The official graph is unrolled for 25 epochs; here any
   ``seq_len >= 1`` works, and the state can be carried between chunks (see :class:`DeepSleepNet`).
9. **Default kernel sizes and strides for other sampling rates.** The paper defines them as
   ``Fs/2``, ``Fs/16``, ``4*Fs`` and ``Fs/2``; the official code targets 100 Hz (``Fs/16 = 6.25`` is
   used as 6). Here they are rounded half up and clipped to at least 1 (100 Hz: 50/6, 400/50;
   256 Hz: 128/16, 1024/128), and all of them can be given explicitly.
10. **Strict input checks.** The feature net is built for a fixed ``n_times`` (its feature size
    depends on it) and rejects other lengths, and inputs shorter than a first-conv kernel are
    rejected at construction, where TF's ``"SAME"`` padding would silently pad with zeros; so are
    strides that leave a pooling layer fewer samples than its window (``ValueError`` naming the stride).
11. **Outputs are logits.** No softmax is applied; the loss (e.g. ``cross_entropy``) does it.
12. **Several channels.** The paper and the official code read one EEG channel. Here the first
    convolution of each branch takes all ``n_chans`` channels (``Conv1d(n_chans, 64, kernel)``), so
    EEG and EOG are combined from the first layer on; everything after it is unchanged, and the
    first convs have ``n_chans`` times the weights (``n_chans=1`` is the paper's network exactly).
    braindecode's DeepSleepNet also takes ``n_chans``, but its ``Conv2d(1, 64, (1, kernel))``
    applies the same filters to each channel separately and the channels meet only where the
    features are flattened; mixing them in the first layer lets a filter weigh an eye movement in
    the EOG against the EEG at the same moment.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Conv1dSame",
    "DeepFeatureNet",
    "DeepSleepNet",
    "FeatureClassifierNet",
    "LSTMState",
    "MaxPool1dSame",
    "l2_penalty",
    "same_output_length",
    "same_padding",
]

#: Opaque recurrent state of :class:`DeepSleepNet`: a tuple of tensors of shape
#: ``(n_states, batch, hidden_size)``.
LSTMState = tuple[Tensor, ...]


# --------------------------------------------------------------------------------------------
# TensorFlow "SAME" padding
# --------------------------------------------------------------------------------------------
def _check_positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def same_output_length(n: int, stride: int) -> int:
    """Output length of a TensorFlow ``"SAME"`` convolution or pooling.

    Parameters
    ----------
    n : int
        Input length (``>= 1``).
    stride : int
        Stride (``>= 1``).

    Returns
    -------
    int
        ``ceil(n / stride)``; independent of the kernel size.
    """
    _check_positive_int("n", n)
    _check_positive_int("stride", stride)
    return -(-n // stride)


def same_padding(n: int, kernel_size: int, stride: int) -> tuple[int, int]:
    """Left and right padding of a TensorFlow ``"SAME"`` convolution or pooling.

    Parameters
    ----------
    n : int
        Input length (``>= 1``).
    kernel_size : int
        Kernel (window) size (``>= 1``).
    stride : int
        Stride (``>= 1``).

    Returns
    -------
    tuple of int
        ``(left, right)`` with ``left + right = max((ceil(n/stride) - 1) * stride + kernel_size - n, 0)``
        and ``left = total // 2`` (TensorFlow puts the smaller half on the left).
    """
    _check_positive_int("kernel_size", kernel_size)
    out = same_output_length(n, stride)
    total = max((out - 1) * stride + kernel_size - n, 0)
    left = total // 2
    return left, total - left


class Conv1dSame(nn.Conv1d):
    """1-D convolution with TensorFlow ``"SAME"`` padding (zeros, smaller half on the left).

    The padding is computed from the input length at every call, so any length works.

    Parameters
    ----------
    in_channels, out_channels : int
        Channel counts.
    kernel_size : int
        Kernel size.
    stride : int, default 1
        Stride.
    bias : bool, default False
        Whether to add a bias (DeepSleepNet's convolutions have none; batch norm follows).

    Notes
    -----
    Shapes: ``(batch, in_channels, n) -> (batch, out_channels, ceil(n / stride))``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, bias: bool = False
    ) -> None:
        _check_positive_int("kernel_size", kernel_size)
        _check_positive_int("stride", stride)
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0, bias=bias)

    def output_length(self, n: int) -> int:
        """Output length for an input of length ``n``."""
        return same_output_length(n, self.stride[0])

    def forward(self, x: Tensor) -> Tensor:
        """Convolve ``(batch, in_channels, n)`` into ``(batch, out_channels, ceil(n / stride))``."""
        left, right = same_padding(x.shape[-1], self.kernel_size[0], self.stride[0])
        if left or right:
            x = F.pad(x, (left, right))
        return super().forward(x)


class MaxPool1dSame(nn.Module):
    """1-D max-pooling with TensorFlow ``"SAME"`` padding.

    Padded positions hold ``-inf``, so they never win the max (TensorFlow ignores them); every window
    contains at least one real sample.

    Parameters
    ----------
    kernel_size : int
        Window size.
    stride : int, optional
        Stride; defaults to ``kernel_size``.

    Notes
    -----
    Shapes: ``(batch, channels, n) -> (batch, channels, ceil(n / stride))``.
    """

    def __init__(self, kernel_size: int, stride: int | None = None) -> None:
        super().__init__()
        self.kernel_size = _check_positive_int("kernel_size", kernel_size)
        self.stride = _check_positive_int("stride", kernel_size if stride is None else stride)

    def output_length(self, n: int) -> int:
        """Output length for an input of length ``n``."""
        return same_output_length(n, self.stride)

    def forward(self, x: Tensor) -> Tensor:
        """Pool ``(batch, channels, n)`` into ``(batch, channels, ceil(n / stride))``."""
        left, right = same_padding(x.shape[-1], self.kernel_size, self.stride)
        if left or right:
            x = F.pad(x, (left, right), value=float("-inf"))
        return F.max_pool1d(x, self.kernel_size, self.stride)

    def extra_repr(self) -> str:
        """Describe the module in ``repr``."""
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


def l2_penalty(weights: list[Tensor] | tuple[Tensor, ...], weight_decay: float) -> Tensor:
    """Official-code L2 term ``weight_decay * sum(w**2) / 2`` over ``weights``.

    Adding it to the loss equals a coupled ``torch.optim.Adam(weight_decay=weight_decay)`` on those
    parameters (not AdamW). Typical use: ``l2_penalty(net.first_conv_weights("small"), 1e-3)``.

    Parameters
    ----------
    weights : list of Tensor
        Parameters to penalise (may be empty).
    weight_decay : float
        Coefficient.

    Returns
    -------
    Tensor
        Scalar (0-d) tensor; ``0.`` when ``weights`` is empty.
    """
    if len(weights) == 0:
        return torch.zeros(())
    return weight_decay * torch.stack([w.pow(2).sum() for w in weights]).sum() / 2


# --------------------------------------------------------------------------------------------
# Feature net
# --------------------------------------------------------------------------------------------
def _round_half_up(x: float) -> int:
    return max(1, math.floor(x + 0.5))


class _ConvBNReLU(nn.Sequential):
    """``Conv1dSame(bias=False) -> BatchNorm1d -> ReLU``."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, bn_momentum: float, bn_eps: float) -> None:
        super().__init__(
            OrderedDict(
                conv=Conv1dSame(in_ch, out_ch, kernel, stride, bias=False),
                bn=nn.BatchNorm1d(out_ch, eps=bn_eps, momentum=bn_momentum),
                relu=nn.ReLU(inplace=True),
            )
        )


class DeepFeatureNet(nn.Module):
    """Two-branch CNN of DeepSleepNet's representation-learning stage.

    Small-filter branch (temporal detail)::

        conv(n_filters_first, k=small_kernel, stride=small_stride) -> maxpool(small_pool, small_pool)
        -> dropout -> n_convs x conv(n_filters, k=small_conv_kernel) -> maxpool(small_pool_last, same)

    Large-filter branch (frequency detail): the same with the ``large_*`` arguments. Every conv is
    ``Conv1d(bias=False) -> BatchNorm1d -> ReLU``; convs and pools use TensorFlow ``"SAME"`` padding.
    The branches are flattened (channel-major), concatenated (small first) and passed through dropout.

    Parameters
    ----------
    n_chans : int, default 1
        Input channels (1 in the paper: Fpz-Cz), all taken by each branch's first conv (Implementation
        Differences, 12). In a training config it follows the number of ``data.channels``.
    sfreq : float, default 100.0
        Sampling rate in Hz; sets the default kernels and strides and ``n_times``.
    n_times : int, optional
        Samples per epoch; defaults to ``round(30 * sfreq)``.
    n_filters_first : int, default 64
        Filters of each branch's first conv.
    n_filters : int, default 128
        Filters of the following convs.
    small_kernel, small_stride : int, optional
        First conv of the small branch; default ``sfreq/2`` and ``sfreq/16`` (rounded half up, >= 1).
    small_pool, small_conv_kernel, small_pool_last : int
        First pool size (= stride), kernel of the following convs, last pool size (= stride).
    large_kernel, large_stride : int, optional
        First conv of the large branch; default ``4*sfreq`` and ``sfreq/2`` (rounded half up, >= 1).
    large_pool, large_conv_kernel, large_pool_last : int
        As for the small branch.
    n_convs : int, default 3
        Convs after the first pool in each branch (``>= 0``).
    drop_prob : float, default 0.5
        Dropout probability (after the first pool of each branch and after the concatenation).
    bn_momentum : float, default 0.001
        PyTorch batch-norm momentum (TF ``decay = 1 - momentum``; official 0.999).
    bn_eps : float, default 1e-5
        Batch-norm epsilon.

    Attributes
    ----------
    n_features : int
        Output size, ``channels_last * (small_lengths[-1] + large_lengths[-1])``; 3072 at 100 Hz
        with the defaults, 2944 at 256 Hz.
    small_lengths, large_lengths : tuple of int
        Sequence length after each stage of a branch: ``(input, first conv, first pool, last conv,
        last pool)``. 100 Hz defaults: ``(3000, 500, 63, 63, 16)`` and ``(3000, 60, 15, 15, 8)``.
    small_branch, large_branch : nn.Sequential
        Named stages ``conv1, pool1, drop, conv2 .. conv{n_convs+1}, pool2``.

    Notes
    -----
    Shapes: ``forward`` maps ``(batch, n_chans, n_times) -> (batch, n_features)``.

    See the module docstring ("Implementation Differences") for departures from the paper and the
    official code.
    """

    def __init__(
        self,
        n_chans: int = 1,
        sfreq: float = 100.0,
        n_times: int | None = None,
        n_filters_first: int = 64,
        n_filters: int = 128,
        small_kernel: int | None = None,
        small_stride: int | None = None,
        small_pool: int = 8,
        small_conv_kernel: int = 8,
        small_pool_last: int = 4,
        large_kernel: int | None = None,
        large_stride: int | None = None,
        large_pool: int = 4,
        large_conv_kernel: int = 6,
        large_pool_last: int = 2,
        n_convs: int = 3,
        drop_prob: float = 0.5,
        bn_momentum: float = 0.001,
        bn_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if not (isinstance(sfreq, (int, float)) and sfreq > 0):
            raise ValueError(f"sfreq must be a positive number of Hz, got {sfreq!r}")
        if n_times is None:
            n_times = _round_half_up(30 * sfreq)
        small_kernel = _round_half_up(sfreq / 2) if small_kernel is None else small_kernel
        small_stride = _round_half_up(sfreq / 16) if small_stride is None else small_stride
        large_kernel = _round_half_up(4 * sfreq) if large_kernel is None else large_kernel
        large_stride = _round_half_up(sfreq / 2) if large_stride is None else large_stride
        for name, value in [
            ("n_chans", n_chans), ("n_times", n_times), ("n_filters_first", n_filters_first),
            ("n_filters", n_filters), ("small_kernel", small_kernel), ("small_stride", small_stride),
            ("small_pool", small_pool), ("small_conv_kernel", small_conv_kernel),
            ("small_pool_last", small_pool_last), ("large_kernel", large_kernel),
            ("large_stride", large_stride), ("large_pool", large_pool),
            ("large_conv_kernel", large_conv_kernel), ("large_pool_last", large_pool_last),
        ]:  # fmt: skip
            _check_positive_int(name, value)
        if isinstance(n_convs, bool) or not isinstance(n_convs, int) or n_convs < 0:
            raise ValueError(f"n_convs must be a non-negative integer, got {n_convs!r}")
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob!r}")
        if not 0.0 <= bn_momentum <= 1.0:
            raise ValueError(f"bn_momentum must be in [0, 1] (PyTorch convention, = 1 - TF decay), got {bn_momentum!r}")
        for branch, kernel in (("small", small_kernel), ("large", large_kernel)):
            if n_times < kernel:
                raise ValueError(
                    f"n_times={n_times} is shorter than the {branch} branch's first conv kernel "
                    f"{branch}_kernel={kernel}; use longer epochs (30 s = {_round_half_up(30 * sfreq)} samples "
                    f"at sfreq={sfreq}) or pass a smaller {branch}_kernel"
                )

        for branch, stride, pool, pool_last in (
            ("small", small_stride, small_pool, small_pool_last), ("large", large_stride, large_pool, large_pool_last)
        ):  # fmt: skip
            n1 = same_output_length(n_times, stride)
            n2 = same_output_length(n1, pool)
            if n1 < pool or n2 < pool_last:
                raise ValueError(
                    f"{branch}_stride={stride} leaves too few samples for the {branch} branch's pooling layers "
                    f"({n_times} samples -> {n1} after the first conv, {n2} after the first pooling; "
                    f"{branch}_pool={pool} and {branch}_pool_last={pool_last} need at least that many): "
                    f"use a smaller {branch}_stride or smaller pools"
                )

        self.n_chans = n_chans
        self.sfreq = float(sfreq)
        self.n_times = n_times
        self.n_filters_first = n_filters_first
        self.n_filters = n_filters
        self.n_convs = n_convs
        self.drop_prob = drop_prob
        self.small_kernel, self.small_stride = small_kernel, small_stride
        self.large_kernel, self.large_stride = large_kernel, large_stride

        def branch(kernel: int, stride: int, pool: int, conv_kernel: int, pool_last: int):
            stages: OrderedDict[str, nn.Module] = OrderedDict()
            stages["conv1"] = _ConvBNReLU(n_chans, n_filters_first, kernel, stride, bn_momentum, bn_eps)
            stages["pool1"] = MaxPool1dSame(pool, pool)
            stages["drop"] = nn.Dropout(drop_prob)
            in_ch = n_filters_first
            for i in range(n_convs):
                stages[f"conv{i + 2}"] = _ConvBNReLU(in_ch, n_filters, conv_kernel, 1, bn_momentum, bn_eps)
                in_ch = n_filters
            stages["pool2"] = MaxPool1dSame(pool_last, pool_last)
            n1 = same_output_length(n_times, stride)
            n2 = same_output_length(n1, pool)
            n3 = n2  # stride-1 convs keep the length
            n4 = same_output_length(n3, pool_last)
            return nn.Sequential(stages), (n_times, n1, n2, n3, n4), in_ch

        self.small_branch, self.small_lengths, ch = branch(
            small_kernel, small_stride, small_pool, small_conv_kernel, small_pool_last
        )
        self.large_branch, self.large_lengths, _ = branch(
            large_kernel, large_stride, large_pool, large_conv_kernel, large_pool_last
        )
        self.n_features: int = ch * (self.small_lengths[-1] + self.large_lengths[-1])
        self.dropout = nn.Dropout(drop_prob)

    def check_input(self, x: Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` has shape ``(batch, n_chans, n_times)``."""
        expected = f"(batch, n_chans={self.n_chans}, n_times={self.n_times})"
        if x.ndim != 3:
            raise ValueError(
                f"DeepFeatureNet expects a 3-d input {expected}, got shape {tuple(x.shape)}; "
                "for sequences of epochs use DeepSleepNet, for a single epoch add a batch dimension"
            )
        if x.shape[1] != self.n_chans:
            raise ValueError(
                f"input has n_chans={x.shape[1]} channels but the net was built with n_chans={self.n_chans} "
                f"(expected {expected}, got {tuple(x.shape)}); pick the channels or rebuild with n_chans={x.shape[1]}"
            )
        if x.shape[2] != self.n_times:
            raise ValueError(
                f"input has n_times={x.shape[2]} samples but the net was built with n_times={self.n_times} "
                f"(expected {expected}, got {tuple(x.shape)}); check the epoch length and sfreq="
                f"{self.sfreq:g} Hz, or rebuild with n_times={x.shape[2]}"
            )

    def forward(self, x: Tensor) -> Tensor:
        """Extract epoch features.

        Parameters
        ----------
        x : Tensor
            ``(batch, n_chans, n_times)`` raw signal.

        Returns
        -------
        Tensor
            ``(batch, n_features)`` features (after the final dropout).
        """
        self.check_input(x)
        small = self.small_branch(x).flatten(1)
        large = self.large_branch(x).flatten(1)
        return self.dropout(torch.cat([small, large], dim=1))

    def first_conv_weights(self, which: Literal["small", "both", "none"] = "small") -> list[nn.Parameter]:
        """Weights of the first convs that receive L2 weight decay.

        Parameters
        ----------
        which : {"small", "both", "none"}
            ``"small"``: the small branch's first conv only (official code); ``"both"``: small and
            large first convs (paper); ``"none"``: no weights.

        Returns
        -------
        list of nn.Parameter
            Conv weights of shape ``(n_filters_first, n_chans, kernel)``, small branch first.
        """
        small = self.small_branch.conv1.conv.weight
        large = self.large_branch.conv1.conv.weight
        options = {"small": [small], "both": [small, large], "none": []}
        if which not in options:
            raise ValueError(f"which must be one of {sorted(options)}, got {which!r}")
        return options[which]


class FeatureClassifierNet(nn.Module):
    """Pretraining model: :class:`DeepFeatureNet` followed by a linear head (with bias).

    Parameters
    ----------
    feature_net : DeepFeatureNet
        The feature extractor (its weights are later transferred to :class:`DeepSleepNet`).
    n_outputs : int, default 5
        Number of classes.

    Notes
    -----
    Shapes: ``forward`` maps ``(batch, n_chans, n_times) -> (batch, n_outputs)`` logits.
    """

    def __init__(self, feature_net: DeepFeatureNet, n_outputs: int = 5) -> None:
        super().__init__()
        _check_positive_int("n_outputs", n_outputs)
        self.feature_net = feature_net
        self.n_outputs = n_outputs
        self.classifier = nn.Linear(feature_net.n_features, n_outputs)

    def forward(self, x: Tensor) -> Tensor:
        """Return logits ``(batch, n_outputs)`` for ``x`` of shape ``(batch, n_chans, n_times)``."""
        return self.classifier(self.feature_net(x))


# --------------------------------------------------------------------------------------------
# Sequence net
# --------------------------------------------------------------------------------------------
def _init_lstm_bias(lstm: nn.LSTM, forget_bias: float | None) -> None:
    """Zero the biases and set the forget-gate part of ``bias_ih`` (TF ``forget_bias``)."""
    if forget_bias is None:
        return
    h = lstm.hidden_size
    with torch.no_grad():
        for name, p in lstm.named_parameters():
            if name.startswith("bias_"):
                p.zero_()
                if name.startswith("bias_ih"):
                    p[h : 2 * h].fill_(forget_bias)  # gate order i, f, g, o


class DeepSleepNet(nn.Module):
    """DeepSleepNet sequence-residual model (fine-tuning stage).

    For every epoch of a sequence: ``f = feature_net(epoch)``; ``shortcut = ReLU(BN(Linear(f)))``
    (no bias); a bidirectional LSTM over the sequence of ``f`` gives ``h`` (forward direction's
    ``hidden_size`` units first, then backward); ``logits = Linear(dropout(shortcut + h))``.
    Dropout follows every LSTM layer in both directions, the last one included.

    Parameters
    ----------
    feature_net : DeepFeatureNet
        Feature extractor (pretrained weights are loaded into :attr:`feature_net`).
    n_outputs : int, default 5
        Number of classes.
    hidden_size : int, default 512
        LSTM units per direction.
    n_layers : int, default 2
        LSTM layers per direction.
    shortcut_size : int, default 1024
        Shortcut width; must equal ``2 * hidden_size``.
    drop_prob : float, default 0.5
        Dropout after each LSTM layer and before the output layer.
    bn_momentum : float, default 0.001
        Momentum of the shortcut's batch norm (TF ``decay = 1 - momentum``).
    bidirectional_mode : {"official", "pytorch"}, default "official"
        ``"official"``: two separate unidirectional ``n_layers`` stacks (forward on the sequence,
        backward on the reversed sequence, its output re-reversed), concatenated at the end.
        ``"pytorch"``: ``nn.LSTM(num_layers=n_layers, bidirectional=True)`` (upper layers read both
        directions; more parameters).
    lstm_forget_bias : float or None, default 1.0
        Initial forget-gate bias (TF ``LSTMCell``'s ``forget_bias``; other LSTM biases start at 0).
        ``None`` keeps PyTorch's default bias initialisation.

    Notes
    -----
    Shapes: in ``forward(x, state=None, return_state=False)``, ``x`` is ``(batch, seq_len, n_chans, n_times)``
    with any ``seq_len >= 1``; returns logits ``(batch, seq_len, n_outputs)``, or
    ``(logits, new_state)`` when ``return_state``.

    State: an opaque tuple of tensors, each ``(k, batch, hidden_size)``; ``None`` means zeros.
    ``"official"``: ``(h_fwd, c_fwd, h_bwd, c_bwd)``, each ``(n_layers, batch, hidden_size)``.
    ``"pytorch"``: ``(h, c)``, each ``(2 * n_layers, batch, hidden_size)`` (PyTorch layout).

    The returned state holds both directions' final states, as the official code carries them into
    the next batch: the forward direction's final state is the state after the chunk's last epoch,
    the natural initial state for the next chunk (so the forward direction is chunk-invariant: two
    chunks with the carried state give the same forward outputs as one long sequence). The backward
    direction's final state is the state after reading the chunk backwards down to its *first* epoch;
    it becomes the initial state of the next chunk's backward pass, which starts at that chunk's last
    epoch. This reproduces the official code, but it is not the state a backward pass over the whole
    recording would have, so backward-direction outputs depend on the chunking. In ``"pytorch"`` mode
    with ``n_layers > 1`` even the forward half of the output depends on the chunking, because the
    upper layers' forward direction reads the lower layer's backward output.

    When a stream starts a new recording, zero its rows with :meth:`mask_state`; between training
    batches cut the graph with :meth:`detach_state`.

    See the module docstring ("Implementation Differences") for departures from the paper and the
    official code.
    """

    def __init__(
        self,
        feature_net: DeepFeatureNet,
        n_outputs: int = 5,
        hidden_size: int = 512,
        n_layers: int = 2,
        shortcut_size: int = 1024,
        drop_prob: float = 0.5,
        bn_momentum: float = 0.001,
        bidirectional_mode: Literal["official", "pytorch"] = "official",
        lstm_forget_bias: float | None = 1.0,
    ) -> None:
        super().__init__()
        for name, value in [
            ("n_outputs", n_outputs), ("hidden_size", hidden_size), ("n_layers", n_layers),
            ("shortcut_size", shortcut_size),
        ]:  # fmt: skip
            _check_positive_int(name, value)
        if shortcut_size != 2 * hidden_size:
            raise ValueError(
                f"shortcut_size={shortcut_size} must equal 2 * hidden_size={2 * hidden_size} (the "
                "shortcut is added to the concatenated forward and backward LSTM outputs); "
                f"use shortcut_size={2 * hidden_size} or hidden_size={shortcut_size // 2}"
            )
        if bidirectional_mode not in ("official", "pytorch"):
            raise ValueError(f"bidirectional_mode must be 'official' or 'pytorch', got {bidirectional_mode!r}")
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob!r}")

        self.feature_net = feature_net
        self.n_outputs = n_outputs
        self.hidden_size = hidden_size
        self.n_layers = n_layers
        self.shortcut_size = shortcut_size
        self.bidirectional_mode = bidirectional_mode
        n_features = feature_net.n_features

        self.shortcut = nn.Sequential(
            OrderedDict(
                fc=nn.Linear(n_features, shortcut_size, bias=False),
                bn=nn.BatchNorm1d(shortcut_size, momentum=bn_momentum, eps=1e-5),
                relu=nn.ReLU(inplace=True),
            )
        )
        if bidirectional_mode == "official":
            self.fwd_layers = nn.ModuleList(
                nn.LSTM(n_features if i == 0 else hidden_size, hidden_size, batch_first=True) for i in range(n_layers)
            )
            self.bwd_layers = nn.ModuleList(
                nn.LSTM(n_features if i == 0 else hidden_size, hidden_size, batch_first=True) for i in range(n_layers)
            )
            lstms = [*self.fwd_layers, *self.bwd_layers]
        else:
            self.lstm = nn.LSTM(
                n_features, hidden_size, num_layers=n_layers, batch_first=True, bidirectional=True,
                dropout=drop_prob if n_layers > 1 else 0.0,
            )  # fmt: skip
            lstms = [self.lstm]
        for lstm in lstms:
            _init_lstm_bias(lstm, lstm_forget_bias)
        self.lstm_dropout = nn.Dropout(drop_prob)  # stateless: reused after every layer
        self.dropout = nn.Dropout(drop_prob)
        self.classifier = nn.Linear(shortcut_size, n_outputs)

    # ---- state helpers -------------------------------------------------------------------
    @property
    def state_shapes(self) -> tuple[tuple[int, int], ...]:
        """``(k, hidden_size)`` of each state tensor (the batch dimension goes in the middle)."""
        if self.bidirectional_mode == "official":
            return ((self.n_layers, self.hidden_size),) * 4
        return ((2 * self.n_layers, self.hidden_size),) * 2

    def init_state(
        self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> LSTMState:
        """Zero state for ``batch_size`` streams (what ``state=None`` means)."""
        return tuple(torch.zeros(k, batch_size, h, device=device, dtype=dtype) for k, h in self.state_shapes)

    @staticmethod
    def mask_state(state: LSTMState | None, keep: Tensor) -> LSTMState | None:
        """Zero the state of the batch rows where ``keep`` is False.

        Parameters
        ----------
        state : tuple of Tensor or None
            A state returned by :meth:`forward` (each tensor ``(k, batch, hidden)``). ``None`` is
            returned unchanged (it already means zeros).
        keep : Tensor
            Bool ``(batch,)``; ``False`` marks streams that start a new recording.

        Returns
        -------
        tuple of Tensor or None
            New state (the input is not modified); rows with ``keep=False`` are exactly zero.
        """
        if state is None:
            return None
        keep = torch.as_tensor(keep)
        if keep.ndim != 1:
            raise ValueError(f"keep must be a 1-d bool tensor (batch,), got shape {tuple(keep.shape)}")
        out = []
        for t in state:
            if t.ndim != 3 or t.shape[1] != keep.shape[0]:
                raise ValueError(
                    f"keep has {keep.shape[0]} rows but a state tensor has shape {tuple(t.shape)} "
                    "(expected (k, batch, hidden) with the same batch)"
                )
            m = keep.to(device=t.device, dtype=torch.bool).view(1, -1, 1)
            out.append(torch.where(m, t, torch.zeros((), dtype=t.dtype, device=t.device)))
        return tuple(out)

    @staticmethod
    def detach_state(state: LSTMState | None) -> LSTMState | None:
        """Detach every state tensor from the autograd graph (truncated BPTT between batches)."""
        return None if state is None else tuple(t.detach() for t in state)

    def _check_state(self, state: LSTMState, batch: int) -> None:
        shapes = self.state_shapes
        if not isinstance(state, (tuple, list)) or len(state) != len(shapes):
            raise ValueError(
                f"state must be a tuple of {len(shapes)} tensors for bidirectional_mode="
                f"{self.bidirectional_mode!r}, got {type(state).__name__} of length "
                f"{len(state) if isinstance(state, (tuple, list)) else '?'}; pass None for a zero state"
            )
        for t, (k, h) in zip(state, shapes, strict=True):
            if tuple(t.shape) != (k, batch, h):
                raise ValueError(
                    f"state tensor has shape {tuple(t.shape)}, expected {(k, batch, h)} "
                    "(k, batch, hidden_size); was the state produced with another batch size or model?"
                )

    # ---- forward pieces ------------------------------------------------------------------
    def extract_features(self, x: Tensor) -> Tensor:
        """Per-epoch features: ``(batch, seq_len, n_chans, n_times) -> (batch, seq_len, n_features)``."""
        if x.ndim != 4:
            fn = self.feature_net
            raise ValueError(
                f"DeepSleepNet expects a 4-d input (batch, seq_len, n_chans={fn.n_chans}, "
                f"n_times={fn.n_times}), got shape {tuple(x.shape)}; for single epochs use "
                "FeatureClassifierNet or add a seq_len dimension"
            )
        b, seq_len = x.shape[:2]
        if b < 1 or seq_len < 1:
            raise ValueError(f"batch and seq_len must be >= 1, got shape {tuple(x.shape)}")
        feats = self.feature_net(x.reshape(b * seq_len, *x.shape[2:]))
        return feats.view(b, seq_len, -1)

    def _run_stack(self, layers: nn.ModuleList, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        hs, cs = [], []
        for i, lstm in enumerate(layers):
            x, (hi, ci) = lstm(x, (h[i : i + 1].contiguous(), c[i : i + 1].contiguous()))
            x = self.lstm_dropout(x)
            hs.append(hi)
            cs.append(ci)
        return x, torch.cat(hs, 0), torch.cat(cs, 0)

    def run_lstm(self, features: Tensor, state: LSTMState | None = None) -> tuple[Tensor, LSTMState]:
        """Bidirectional LSTM over a feature sequence.

        Parameters
        ----------
        features : Tensor
            ``(batch, seq_len, n_features)``.
        state : tuple of Tensor, optional
            Initial state (see the class docstring); ``None`` means zeros.

        Returns
        -------
        out : Tensor
            ``(batch, seq_len, 2 * hidden_size)``: forward direction in ``[..., :hidden_size]``,
            backward direction in ``[..., hidden_size:]`` (after the per-layer dropout).
        new_state : tuple of Tensor
            Final states of both directions, same layout as ``state``.
        """
        b = features.shape[0]
        if state is None:
            state = self.init_state(b, device=features.device, dtype=features.dtype)
        else:
            self._check_state(state, b)
        if self.bidirectional_mode == "pytorch":
            h, c = state
            out, (h, c) = self.lstm(features, (h.contiguous(), c.contiguous()))
            return self.lstm_dropout(out), (h, c)
        h_f, c_f, h_b, c_b = state
        out_f, h_f, c_f = self._run_stack(self.fwd_layers, features, h_f, c_f)
        out_b, h_b, c_b = self._run_stack(self.bwd_layers, features.flip(1), h_b, c_b)
        return torch.cat([out_f, out_b.flip(1)], dim=2), (h_f, c_f, h_b, c_b)

    def forward(
        self, x: Tensor, state: LSTMState | None = None, return_state: bool = False
    ) -> Tensor | tuple[Tensor, LSTMState]:
        """Classify every epoch of a batch of sequences.

        Parameters
        ----------
        x : Tensor
            ``(batch, seq_len, n_chans, n_times)`` raw epochs; any ``seq_len >= 1``.
        state : tuple of Tensor, optional
            LSTM state carried from the previous chunk of the same streams; ``None`` means zeros.
        return_state : bool, default False
            Also return the final state.

        Returns
        -------
        Tensor or (Tensor, tuple of Tensor)
            Logits ``(batch, seq_len, n_outputs)``, and the new state when ``return_state``.
        """
        feats = self.extract_features(x)
        b, seq_len, n_feat = feats.shape
        shortcut = self.shortcut(feats.reshape(b * seq_len, n_feat)).view(b, seq_len, -1)
        seq, new_state = self.run_lstm(feats, state)
        logits = self.classifier(self.dropout(shortcut + seq))
        return (logits, new_state) if return_state else logits

    # ---- parameter groups ----------------------------------------------------------------
    def pretrained_parameters(self) -> list[nn.Parameter]:
        """Parameters of :attr:`feature_net` (the pretrained group, official lr 1e-6)."""
        return list(self.feature_net.parameters())

    def new_parameters(self) -> list[nn.Parameter]:
        """All other parameters: shortcut, LSTMs, classifier (the new group, official lr 1e-4)."""
        pretrained = {id(p) for p in self.feature_net.parameters()}
        return [p for p in self.parameters() if id(p) not in pretrained]
