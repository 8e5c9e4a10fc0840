"""A user's own sleep-staging network, importable by class path (``fake_nets.TinyStager``), with braindecode's
constructor signature: what ``net.class_path`` accepts from a user's package (tests/test_networks_fit.py)."""

from __future__ import annotations

from torch import Tensor, nn


class TinyStager(nn.Module):
    """A two-conv epoch classifier in braindecode's style.

    Parameters
    ----------
    n_chans, n_times : int
        Input channels and samples per epoch (linked from the data by dsn).
    sfreq : float
        Sampling rate in Hz (unused but taken, as braindecode's models do).
    n_outputs : int, default 5
        Number of classes.
    n_filters : int, default 8
        Filters per conv.
    drop_prob : float, default 0.25
        Dropout before the head.
    return_feats : bool, default False
        Return the features ``(batch, 2 * n_filters)`` instead of the class scores.
    """

    def __init__(self, n_chans: int, n_times: int, sfreq: float, n_outputs: int = 5, n_filters: int = 8,
                 drop_prob: float = 0.25, return_feats: bool = False) -> None:
        super().__init__()
        self.return_feats = return_feats
        self.features = nn.Sequential(
            nn.Conv1d(n_chans, n_filters, 50, stride=6), nn.ReLU(), nn.MaxPool1d(8),
            nn.Conv1d(n_filters, n_filters, 8), nn.ReLU(), nn.AdaptiveMaxPool1d(2), nn.Flatten(1), nn.Dropout(drop_prob),
        )
        self.head = nn.Linear(2 * n_filters, n_outputs)

    def forward(self, x: Tensor) -> Tensor:
        """``(batch, n_chans, n_times)`` -> features ``(batch, 2 * n_filters)`` or scores ``(batch, n_outputs)``."""
        feats = self.features(x)
        return feats if self.return_feats else self.head(feats)


class ChambonLike(TinyStager):
    """braindecode's ``SleepStagerChambon2018`` constructor signature (the config path of ``conf/chambon.yaml``
    without braindecode installed): ``n_chans, sfreq, n_conv_chs, time_conv_size_s, max_pool_size_s, pad_size_s,
    input_window_seconds, n_outputs, n_times, drop_prob, apply_batch_norm, return_feats``."""

    def __init__(self, n_chans=None, sfreq=None, n_conv_chs=8, time_conv_size_s=0.5, max_pool_size_s=0.125,
                 pad_size_s=0.25, activation=None, input_window_seconds=None, n_outputs=5, drop_prob=0.25,
                 apply_batch_norm=False, return_feats=False, chs_info=None, n_times=None) -> None:
        super().__init__(n_chans, n_times, sfreq, n_outputs, n_conv_chs, drop_prob, return_feats)
