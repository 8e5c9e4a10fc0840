"""Impossible signals: channels no sleep could have produced, refused before a model scores or learns them.

A channel is impossible when it holds a sample that is not a finite number (NaN, ±Inf: nothing downstream
survives one, the LSTM carries it through the rest of the night), when it is flat (a disconnected electrode,
an all-zero channel: epochs whose standard deviation is under :data:`FLAT_UV` µV, EEG never is) in at least
:data:`FLAT_SHARE` of its epochs, or when it is saturated (a recorder stuck at its rails: at least
:data:`SATURATED_SHARE` of its samples at the channel's lowest or highest value). Real and synthetic
Sleep-EDF nights are far from every limit (no flat epoch; under 0.3 % of their samples at an extreme).

These are absolute checks of the signal in µV, before any normalisation, unlike :mod:`dsn.familiarity`,
which compares a night with the training nights and only warns. numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["FLAT_SHARE", "FLAT_UV", "SATURATED_SHARE", "SignalProblem", "check_signals", "describe_problems"]

#: An epoch whose standard deviation is under this (µV) carries no signal.
FLAT_UV = 0.1
#: A channel is flat when at least this share of its epochs carry no signal.
FLAT_SHARE = 0.5
#: A channel is saturated when at least this share of its samples sit at its lowest or highest value.
SATURATED_SHARE = 0.25
#: "At" the extreme: within this fraction of the channel's range from it.
_RAIL_TOLERANCE = 1e-3


@dataclass(frozen=True)
class SignalProblem:
    """One impossible channel.

    Attributes
    ----------
    channel : the channel's name (as the model knows it)
    kind : ``"nonfinite"``, ``"flat"`` or ``"saturated"``
    share : share of the samples (nonfinite, saturated) or of the epochs (flat) concerned, in [0, 1]
    """

    channel: str
    kind: str
    share: float

    def describe(self) -> str:
        """What is wrong, e.g. ``the signal is flat (standard deviation under 0.1 µV) in 100% of the epochs``."""
        pct = f"{100 * self.share:.3g}%"
        if self.kind == "nonfinite":
            return f"the signal is not a number (NaN or Inf) in {pct} of the samples"
        if self.kind == "flat":
            return f"the signal is flat (standard deviation under {FLAT_UV:g} µV) in {pct} of the epochs"
        return f"the signal is saturated: {pct} of the samples sit at its lowest or highest value"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "message": self.describe()}


def recorded_problems(meta: dict[str, Any], x: np.ndarray, channels: Sequence[str] | None = None) -> list[SignalProblem]:
    """The problems a cache entry's ``meta`` recorded when it was written (``signal_problems``), else (an entry
    written before dsn recorded them) :func:`check_signals` of ``x``, which reads every sample."""
    if "signal_problems" in meta:
        return [SignalProblem(p["channel"], p["kind"], float(p["share"])) for p in meta["signal_problems"]]
    return check_signals(x, channels)


def _channel_problem(x: np.ndarray, name: str) -> SignalProblem | None:
    """The problem of one channel's ``(n_epochs, n_times)`` epochs, or None."""
    if x.size == 0:
        return None
    finite = np.isfinite(x)
    if not finite.all():
        return SignalProblem(name, "nonfinite", float(1.0 - finite.mean()))
    flat = float((x.std(axis=1, dtype=np.float64) < FLAT_UV).mean()) if x.size else 0.0
    if flat >= FLAT_SHARE:
        return SignalProblem(name, "flat", flat)
    lo, hi = float(x.min()), float(x.max())
    tol = _RAIL_TOLERANCE * (hi - lo)
    saturated = float(((x <= lo + tol) | (x >= hi - tol)).mean())
    if saturated >= SATURATED_SHARE:
        return SignalProblem(name, "saturated", saturated)
    return None


def check_signals(x: np.ndarray, channels: Sequence[str] | None = None) -> list[SignalProblem]:
    """The impossible channels of a night (an empty list when every channel is plausible).

    Parameters
    ----------
    x : array-like, shape (n_epochs, n_chans, n_times)
        The night's epochs in µV (before normalisation); any other shape is taken as one channel's samples.
    channels : sequence of str, optional
        The channels' names, in order (default ``channel 1``, ``channel 2``, ...).

    Returns
    -------
    list of SignalProblem
        At most one per channel: not finite, else flat, else saturated.
    """
    x = np.asarray(x)
    if x.ndim != 3:
        x = x.reshape(-1, 1, x.shape[-1] if x.ndim else 1)
    names = list(channels) if channels is not None else []
    names += [f"channel {c + 1}" for c in range(len(names), x.shape[1])]
    found = (_channel_problem(x[:, c], names[c]) for c in range(x.shape[1]))
    return [p for p in found if p is not None]


def describe_problems(problems: Sequence[SignalProblem], source: str) -> str:
    """One line for all problems of ``source`` (a file): ``FILE (EEG Fpz-Cz): the signal is flat (...) in 100%
    of the epochs; FILE (EOG ...): ...``."""
    return "; ".join(f"{source} ({p.channel}): {p.describe()}" for p in problems)
