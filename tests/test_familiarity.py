"""Tests of dsn.familiarity: a night like the training nights passes, altered nights are flagged with their reason."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import lfilter

from dsn import familiarity

SFREQ = 100.0


def _night(seed: int, n_epochs: int = 120) -> np.ndarray:
    """A made-up EEG-like night (n_epochs, 1, 3000): 1/f-ish noise, alpha bursts and negative-going slow waves."""
    rng = np.random.default_rng(seed)
    n = n_epochs * 3000
    x = lfilter([1.0], [1.0, -0.97], rng.standard_normal(n))  # AR(1): most power at low frequencies
    x = x / x.std() * 20.0
    t = np.arange(n) / SFREQ
    x += 8.0 * np.sin(2 * np.pi * 10 * t) * (np.sin(2 * np.pi * t / 300) > 0.3)
    waves = rng.random(n) < 0.002
    x -= 60.0 * np.convolve(waves, np.hanning(80), "same")  # skewed: a sign that flips with polarity
    x *= rng.uniform(0.85, 1.15)
    return x.reshape(n_epochs, 1, 3000).astype(np.float32)


@pytest.fixture(scope="module")
def description():
    train = [familiarity.night_features(_night(s), SFREQ) for s in range(6)]
    val = [familiarity.night_features(_night(s), SFREQ, mean_confidence=0.8 + 0.01 * s) for s in (10, 11)]
    return familiarity.describe(train, val, ["EEG Fpz-Cz"])


def _check(x, description, conf=0.8):
    return familiarity.check(familiarity.night_features(x, SFREQ, conf), description)


def test_ordinary_nights_pass(description):
    assert description["threshold"] >= familiarity.MIN_THRESHOLD
    assert max(description["val_scores"]) * familiarity.MARGIN <= description["threshold"]
    for seed in (20, 21, 22):
        out = _check(_night(seed), description)
        assert out["familiar"], out["warnings"]
        assert out["score"] < out["threshold"]


@pytest.mark.parametrize("alteration, words", [
    ("x0.2", "amplitude"), ("x5", "amplitude"), ("mains", "mains noise"), ("flat", "flat channel"),
    ("clip", "clipped channel"), ("invert", "inverted polarity"), ("white", "unusual spectrum"), ("lowconf", "confidence"),
])
def test_altered_nights_are_flagged_with_their_reason(description, alteration, words):
    x = _night(30).astype(np.float64)
    conf = 0.8
    n = np.arange(x.shape[0] * x.shape[2]).reshape(x.shape[0], 1, x.shape[2])
    if alteration == "x0.2":
        x *= 0.2
    elif alteration == "x5":
        x *= 5
    elif alteration == "mains":  # 50 Hz sampled at 100 Hz: the Nyquist frequency, 10 uV
        x += 10.0 * np.cos(np.pi * n + 0.3)
    elif alteration == "flat":
        x[:] = 0.0
    elif alteration == "clip":
        lim = np.quantile(np.abs(x), 0.97)
        x = np.clip(x, -lim, lim)
    elif alteration == "invert":
        x = -x
    elif alteration == "white":
        x = np.random.default_rng(0).standard_normal(x.shape) * x.std()
    elif alteration == "lowconf":
        conf = 0.35
    out = _check(x, description, conf)
    assert not out["familiar"]
    assert any(words in w for w in out["warnings"]), out["warnings"]
    if alteration in ("x0.2", "x5", "mains", "white", "lowconf"):
        assert out["score"] > out["threshold"]


def test_clipping_is_judged_against_the_training_nights():
    """Nights of a recorder that saturates (a share of samples at the extreme value) train a description that
    accepts a night clipped the same way, and still warns on one clipped far more."""

    def clipped(seed: int, share: float) -> np.ndarray:
        x = _night(seed).astype(np.float64)
        peak = np.quantile(np.abs(x), 1.0 - share)
        return np.clip(x, -peak, peak).astype(np.float32)

    train = [familiarity.night_features(clipped(s, 0.004), SFREQ) for s in range(6)]
    val = [familiarity.night_features(clipped(s, 0.004), SFREQ, mean_confidence=0.8) for s in (10, 11)]
    desc = familiarity.describe(train, val, ["EEG Fpz-Cz"])
    assert 0.002 < desc["clip_max"][0] < 0.01
    same = familiarity.check(familiarity.night_features(clipped(20, 0.004), SFREQ, 0.8), desc)
    assert not any("clipped" in w for w in same["warnings"]), same["warnings"]
    worse = familiarity.check(familiarity.night_features(clipped(21, 0.05), SFREQ, 0.8), desc)
    assert any("clipped channel EEG Fpz-Cz" in w for w in worse["warnings"]), worse["warnings"]
