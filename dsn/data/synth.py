"""Synthetic, Sleep-EDF-shaped polysomnography written as real EDF files.

The generator produces PSG/Hypnogram pairs that look like the PhysioNet *sleep-cassette*
recordings (``SC4ssNE0-PSG.edf`` + ``SC4ssNEX-Hypnogram.edf``): the same channel names, sampling
rates, units, 30-s data records and R&K annotations. It serves tests, the demo and benchmarks.

Two layers:

* :func:`generate_hypnogram` draws a night of R&K labels from a cycle model (sleep onset via
  N1, ~90-min NREM/REM cycles, slow-wave sleep front-loaded, REM bouts lengthening towards the
  morning, brief awakenings followed by N1, N3 fragmentation, a few movement-time epochs).
  Its stage proportions were calibrated against a real expert-scored hypnogram.
* :func:`generate_signals` (and its single-channel view :func:`generate_eeg`) turns a label
  sequence into continuous EEG/EOG. Every component is generated over the whole night with
  FFT-shaped noise and multiplied by smooth stage envelopes (crossfaded over a few seconds, so
  there is no discontinuity at epoch boundaries); transients (spindles, K-complexes, vertex
  waves, sawtooth waves, blinks, saccades, rapid eye movements, movement artefacts) are drawn
  from non-homogeneous Poisson processes and rendered in one vectorised pass.

A :class:`SiteShift` turns the same generator into a second recording site ("a new site" for adapting a
model): another amplifier gain, added amplifier noise and mains interference, and another EEG derivation under
another label (``dsn synth --site B``, or the ``--site_*`` options one by one).

Stages overlap on purpose: N1 shares alpha with drowsy wake and theta/low amplitude with REM,
every component carries per-epoch and per-subject variability (:class:`SubjectProfile`), so a
classifier trained on some subjects generalises to others but the task is not trivial.

Examples
--------
>>> pairs = write_dataset("data/synth", subjects=2, hours=1.0, progress=False)  # doctest: +SKIP
>>> [p.name for p, _ in pairs]  # doctest: +SKIP
['SC4001E0-PSG.edf', 'SC4011E0-PSG.edf']
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import fft as _fft
from scipy.ndimage import uniform_filter1d

from dsn.data.labels import RK_LABELS, RK_TO_AASM, STAGES, runs

__all__ = [
    "EPOCH_SEC",
    "PSG_CHANNELS",
    "SITE_PRESETS",
    "SiteShift",
    "SubjectProfile",
    "generate_eeg",
    "generate_hypnogram",
    "generate_signals",
    "hypnogram_annotations",
    "psg_filename",
    "site_shift",
    "stage_proportions",
    "write_dataset",
    "write_recording",
]

#: Length of one scoring epoch (and of one EDF data record) in seconds.
EPOCH_SEC = 30.0

#: Signals of a sleep-cassette PSG file: label -> (physical dimension, physical range, fast?).
#: "fast" signals are sampled at ``sfreq``, the others at 1 Hz (as in Sleep-EDF).
PSG_CHANNELS: dict[str, tuple[str, tuple[float, float], bool]] = {
    "EEG Fpz-Cz": ("uV", (-300.0, 300.0), True),
    "EEG Pz-Oz": ("uV", (-300.0, 300.0), True),
    "EOG horizontal": ("uV", (-500.0, 500.0), True),
    "Resp oro-nasal": ("", (-2048.0, 2047.0), False),
    "EMG submental": ("uV", (-5.0, 250.0), False),
    "Temp rectal": ("DegC", (34.0, 40.0), False),
    "Event marker": ("", (-100.0, 1000.0), False),
}

# Integer codes are indices into RK_LABELS:
# W, 1, 2, 3, 4, R, ?, Movement time.
_W, _S1, _S2, _S3, _S4, _R, _UNK, _MT = range(8)
assert RK_LABELS[_S4] == "Sleep stage 4" and RK_LABELS[_MT] == "Movement time"

_CTRL_HZ = 10.0  # rate of the envelope ("control") signals
_CTRL_PER_EPOCH = int(EPOCH_SEC * _CTRL_HZ)

# Aliases accepted by generate_signals besides the R&K descriptions.
_ALIASES: dict[str, int] = {
    "W": _W, "N1": _S1, "N2": _S2, "N3": _S3, "REM": _R, "R": _R, "?": _UNK, "MT": _MT,
    "1": _S1, "2": _S2, "3": _S3, "4": _S4,
}  # fmt: skip


# --------------------------------------------------------------------------------------------
# Subject profile
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SubjectProfile:
    """Per-subject physiology and recording characteristics.

    Parameters
    ----------
    age : int
        Age in years (Sleep-EDF sleep-cassette subjects are 25-101). Drives slow-wave sleep,
        sleep fragmentation, delta power and spindle density in :meth:`random`.
    sex : {"F", "M"}
        Written to the EDF patient field.
    amplitude_scale : float
        Global EEG gain (skull thickness / electrode impedance), multiplies every EEG component.
    noise_level : float
        Gain of the aperiodic background and of muscle noise.
    aperiodic_shift : float
        Added to the 1/f exponents of the background.
    alpha_freq : float
        Posterior-dominant alpha peak frequency in Hz.
    alpha_power, theta_power, delta_power : float
        Gains of the alpha, theta and delta (slow-wave) components.
    spindle_freq : float
        Mean spindle frequency in Fpz-Cz, Hz (Pz-Oz spindles are ~1 Hz faster).
    spindle_density : float
        Spindles per minute of stage 2.
    spindle_amp : float
        Spindle amplitude gain.
    kcomplex_density : float
        K-complexes per minute of stage 2.
    eog_leak : float
        Fraction of the eye-movement potentials that reaches Fpz-Cz.
    eog_scale : float
        Gain of the eye-movement potentials in the EOG channel.
    blink_gain_eog : float
        Fraction of a blink (vertical) that shows in the horizontal EOG (signed).
    line_noise : float
        Amplitude of power-line interference in uV (0: none).
    line_freq : float
        Mains frequency in Hz (aliased if above Nyquist).
    delta_freq, theta_freq : float
        Peak frequencies of the slow-wave (0.5-2 Hz) and theta (4-7 Hz) activity.
    sweat : float
        Amplitude (uV) of slow sweat/electrode drift artefacts (0: none).
    ecg_artifact : float
        Amplitude (uV) of the cardiac artefact picked up by the EEG (0: none).
    heart_rate : float
        Resting heart rate in beats per minute (drives the cardiac artefact).
    sws_drive : float
        Amount of slow-wave sleep in the hypnogram (1 = typical young adult).
    awakenings_per_hour : float
        Rate of brief awakenings during the sleep period.
    """

    age: int = 35
    sex: str = "F"
    amplitude_scale: float = 1.0
    noise_level: float = 1.0
    aperiodic_shift: float = 0.0
    alpha_freq: float = 10.0
    alpha_power: float = 1.0
    theta_power: float = 1.0
    delta_power: float = 1.0
    spindle_freq: float = 12.8
    spindle_density: float = 4.0
    spindle_amp: float = 1.0
    kcomplex_density: float = 1.5
    eog_leak: float = 0.2
    eog_scale: float = 1.0
    blink_gain_eog: float = 0.3
    line_noise: float = 0.0
    line_freq: float = 50.0
    delta_freq: float = 1.0
    theta_freq: float = 5.5
    sweat: float = 0.0
    ecg_artifact: float = 0.0
    heart_rate: float = 62.0
    sws_drive: float = 1.0
    awakenings_per_hour: float = 2.0

    @classmethod
    def random(cls, rng: np.random.Generator) -> SubjectProfile:
        """Draw a plausible subject.

        Parameters
        ----------
        rng : numpy.random.Generator
            Source of randomness.

        Returns
        -------
        SubjectProfile
            A profile whose age-dependent traits (slow-wave sleep, fragmentation, delta power,
            spindle density) follow the usual ageing trends.
        """
        age = int(rng.integers(25, 81))
        a = (age - 25) / 55.0  # 0 (young) .. 1 (old)
        lognorm = lambda s: float(np.exp(rng.normal(0.0, s)))  # noqa: E731
        return cls(
            age=age,
            sex=str(rng.choice(["F", "M"])),
            amplitude_scale=float(np.clip(lognorm(0.15) * (1.05 - 0.15 * a), 0.65, 1.45)),
            noise_level=float(np.clip(lognorm(0.25), 0.6, 1.8)),
            aperiodic_shift=float(rng.normal(0.0, 0.15)),
            alpha_freq=float(np.clip(rng.normal(10.0 - 0.6 * a, 0.7), 8.2, 11.8)),
            alpha_power=float(np.clip(lognorm(0.35), 0.4, 2.5)),
            theta_power=float(np.clip(lognorm(0.2), 0.6, 1.6)),
            delta_power=float(np.clip(lognorm(0.2) * (1.15 - 0.35 * a), 0.45, 1.6)),
            spindle_freq=float(np.clip(rng.normal(12.8, 0.6), 11.5, 14.5)),
            spindle_density=float(np.clip(rng.uniform(2.5, 7.0) * (1.1 - 0.4 * a), 1.0, 8.0)),
            spindle_amp=float(np.clip(lognorm(0.25), 0.5, 2.0)),
            kcomplex_density=float(rng.uniform(0.6, 2.5)),
            eog_leak=float(rng.uniform(0.08, 0.35)),
            eog_scale=float(np.clip(lognorm(0.25), 0.5, 2.0)),
            blink_gain_eog=float(rng.uniform(-0.2, 0.5)),
            line_noise=float(rng.uniform(1.0, 6.0)) if rng.random() < 0.3 else 0.0,
            line_freq=50.0,
            delta_freq=float(rng.uniform(0.75, 1.25)),
            theta_freq=float(rng.uniform(4.8, 6.3)),
            sweat=float(rng.uniform(5.0, 30.0)) if rng.random() < 0.25 else 0.0,
            ecg_artifact=float(rng.uniform(2.0, 12.0)) if rng.random() < 0.4 else 0.0,
            heart_rate=float(rng.uniform(52.0, 75.0)),
            sws_drive=float(np.clip(1.25 - 0.55 * a + rng.normal(0.0, 0.12), 0.5, 1.35)),
            awakenings_per_hour=float(np.clip(1.2 + 2.2 * a + rng.normal(0.0, 0.4), 0.6, 4.5)),
        )

    def for_night(self, rng: np.random.Generator) -> SubjectProfile:
        """Return a slightly perturbed copy for one night (electrode placement, impedance).

        Parameters
        ----------
        rng : numpy.random.Generator
            Source of randomness.

        Returns
        -------
        SubjectProfile
            The same subject with small night-to-night changes of gains.
        """
        j = lambda s: float(np.exp(rng.normal(0.0, s)))  # noqa: E731
        return dataclasses.replace(
            self,
            amplitude_scale=self.amplitude_scale * j(0.07),
            noise_level=self.noise_level * j(0.1),
            eog_scale=self.eog_scale * j(0.1),
            spindle_density=self.spindle_density * j(0.08),
            awakenings_per_hour=self.awakenings_per_hour * j(0.15),
        )


# --------------------------------------------------------------------------------------------
# Hypnogram
# --------------------------------------------------------------------------------------------
def _split_int(total: int, weights: np.ndarray) -> np.ndarray:
    """Split ``total`` into non-negative integers proportional to ``weights`` (exact sum)."""
    w = np.asarray(weights, float)
    edges = np.round(np.cumsum(w) / w.sum() * total).astype(int)
    return np.diff(np.concatenate([[0], edges]))


def _cycle(k: int, n_cycles: int, length: int, rng: np.random.Generator, prof: SubjectProfile) -> list[int]:
    """Macro-structure of NREM/REM cycle ``k``: N1 -> N2 -> N3 -> N2 -> REM."""
    short = n_cycles == 1
    # Transition into the cycle: sleep onset (with possible brief returns to wake) or a short N1.
    if k == 0:
        a = int(rng.integers(2, 10))
        onset = [_S1] * a
        if rng.random() < 0.5 and length > 40:
            onset += [_W] * int(rng.integers(1, 4)) + [_S1] * int(rng.integers(1, 5))
        if short:
            onset = onset[: max(1, length // 10)]
    else:
        onset = [_S1] * int(rng.choice([0, 1, 2, 2, 3, 4]))
    rest = length - len(onset)
    # REM share grows across the night; N3 share shrinks (front-loaded slow-wave sleep).
    if short:
        rem_f = rng.uniform(0.12, 0.2)
        n3_f = rng.uniform(0.18, 0.3) * prof.sws_drive
    else:
        rem_f = rng.uniform(0.08, 0.16) if k == 0 else min(0.45, rng.uniform(0.22, 0.3) + 0.04 * (k - 1))
        base = (0.42, 0.27, 0.1, 0.04)[k] if k < 4 else 0.0
        n3_f = base * prof.sws_drive * rng.uniform(0.7, 1.3)
    n_rem = int(round(rem_f * rest))
    n_n3 = int(round(n3_f * rest))
    if short and rest >= 8:
        n_rem, n_n3 = max(n_rem, 2), max(n_n3, 2)
    n_n2 = rest - n_rem - n_n3
    if n_n2 < 2:  # tiny cycles: keep some N2 between N3 and REM
        cut = 2 - n_n2
        n_n3 = max(0, n_n3 - cut)
        n_n2 = rest - n_rem - n_n3
    n2a = int(round(n_n2 * rng.uniform(0.3, 0.55)))
    # Stage 3/4 split: deepest in the middle of the N3 period, less so in later cycles.
    n3 = []
    if n_n3:
        x = (np.arange(n_n3) + 0.5) / n_n3
        weight = (1.0, 0.8, 0.55, 0.4)[min(k, 3)] * prof.sws_drive
        ar = np.cumsum(rng.normal(0.0, 0.08, n_n3)) * 0.6 + rng.normal(0.0, 0.08, n_n3)
        depth = np.sin(np.pi * x) ** 0.6 * weight + ar
        n3 = np.where(depth > 0.62, _S4, _S3).tolist() if n_n3 >= 3 else [_S3] * n_n3
    return onset + [_S2] * n2a + n3 + [_S2] * (n_n2 - n2a) + [_R] * n_rem


def _sleep_period(n: int, rng: np.random.Generator, prof: SubjectProfile) -> np.ndarray:
    """R&K codes of the sleep period (sleep onset to final awakening), ``n`` epochs."""
    if n < 12:  # too short for any architecture: fall asleep and stay in light sleep
        return np.array(([_S1] * 2 + [_S2] * n)[:n], dtype=np.int8)
    cyc_len = rng.uniform(170, 210)  # epochs (85-105 min)
    n_cycles = max(1, int(round(n / cyc_len)))
    lengths = _split_int(n, np.clip(rng.normal(1.0, 0.12, n_cycles), 0.7, 1.3))
    macro = np.concatenate([_cycle(k, n_cycles, int(L), rng, prof) for k, L in enumerate(lengths)])
    macro = macro.astype(np.int8)
    h = macro.copy()
    # Block lengths in the macro structure: short blocks are never fragmented (short recordings
    # must keep at least a little of every stage).
    block = np.empty(n, int)  # length of the macro block each epoch belongs to
    block_end = np.empty(n, int)  # index one past the end of that block
    for _, s, ln in runs(np.where(macro == _S4, _S3, macro)):
        block[s : s + ln] = ln
        block_end[s : s + ln] = s + ln

    def intrude(mask: np.ndarray, p: float, choices: Sequence[int], probs: Sequence[float], max_len: int) -> None:
        starts = np.flatnonzero(mask & (block >= 8) & (rng.random(n) < p))
        for s in starts:
            ln = int(rng.integers(1, max_len + 1))
            h[s : min(block_end[s], s + ln)] = rng.choice(choices, p=probs)

    # N3 fragmentation by short N2 periods, REM interrupted by N2/N1/W, N2 lightening to N1.
    intrude(np.isin(macro, (_S3, _S4)), 0.035, [_S2], [1.0], 3)
    intrude(macro == _R, 0.03, [_S2, _S1, _W], [0.5, 0.3, 0.2], 2)
    intrude(macro == _S2, 0.03, [_S1], [1.0], 3)

    # Brief awakenings (more in light sleep, after REM and late in the night), followed by N1.
    hours = n / 120.0
    n_wake = rng.poisson(prof.awakenings_per_hour * hours)
    if n_wake:
        w = np.select(
            [macro == _S1, macro == _S2, macro == _S3, macro == _S4, macro == _R], [1.5, 1.0, 0.12, 0.05, 1.0], 0.0
        ) * (0.6 + 0.8 * np.arange(n) / n)
        rem_end = np.flatnonzero((macro[:-1] == _R) & (macro[1:] != _R))
        w[rem_end] *= 6.0
        w[block < 8] = 0.0
        w[: min(n, 10)] = 0.0
        if w.sum() > 0:
            pos = rng.choice(n, size=min(n_wake, int((w > 0).sum())), replace=False, p=w / w.sum())
            for p in np.sort(pos):
                # Awakenings stay inside their macro block, so short blocks survive.
                end = block_end[p]
                ln = int(rng.geometric(0.5)) if rng.random() < 0.85 else int(rng.integers(4, 25))
                ln = min(ln, max(1, int(block[p]) // 3))
                h[p : min(end, p + ln)] = _W
                if rng.random() < 0.2:
                    h[p] = _MT
                m = int(rng.choice([0, 1, 2, 2, 3]))
                h[min(end, p + ln) : min(end, p + ln + m)] = _S1
    return h


def _hypnogram_codes(n_epochs: int, rng: np.random.Generator, subject: SubjectProfile | None = None) -> np.ndarray:
    """R&K codes (indices into ``RK_LABELS``) of a whole recording, ``n_epochs`` long."""
    n = int(n_epochs)
    if n < 1:
        raise ValueError(f"n_epochs must be >= 1, got {n_epochs}")
    prof = subject if subject is not None else SubjectProfile.random(rng)
    scale = min(1.0, n / 960.0)  # 960 epochs = 8 h
    pre = max(1, int(round(rng.uniform(60, 180) * scale)))  # 30-90 min lying awake before sleep onset
    post = max(1, int(round(rng.uniform(20, 120) * scale)))  # 10-60 min after the final awakening
    if pre + post >= n - 2:
        pre, post = max(1, n // 8), max(0, n // 16)
    excess = n - pre - post - int(rng.uniform(7.5, 9.5) * 120)  # long (e.g. 22-h) recordings: awake by day
    if excess > 0:
        extra = int(round(excess * rng.uniform(0.3, 0.7)))
        pre, post = pre + extra, post + excess - extra
    h = np.full(n, _W, dtype=np.int8)
    h[pre : n - post] = _sleep_period(n - pre - post, rng, prof)
    # A little movement time while lying awake, and sometimes dozing (N1) in the morning.
    if pre >= 20 and rng.random() < 0.4:
        h[int(rng.integers(2, pre - 10))] = _MT
    if post >= 10 and rng.random() < 0.3:
        s = n - post + int(rng.integers(3, post - 4))
        h[s : s + int(rng.integers(1, 3))] = _S1
    return h


def generate_hypnogram(n_epochs: int, rng: np.random.Generator, subject: SubjectProfile | None = None) -> list[str]:
    """Draw a realistic night of R&K sleep stages.

    The recording starts and ends awake (30-90 min before sleep onset and 10-60 min after the
    final awakening for an 8-h recording, proportionally less for shorter ones). In between,
    ~90-min NREM/REM cycles: sleep onset through N1 (sometimes with brief returns to wake),
    N2, slow-wave sleep concentrated in the first two cycles (stage 4 in the deepest part),
    N2 again and REM, whose bouts lengthen towards the morning. Micro-structure: N3 broken up
    by short N2 periods, REM interrupted by N2/N1/W, brief awakenings (more after REM and late
    in the night) followed by N1, and a few ``Movement time`` epochs.

    Parameters
    ----------
    n_epochs : int
        Number of 30-s epochs of the whole recording.
    rng : numpy.random.Generator
        Source of randomness.
    subject : SubjectProfile, optional
        Drives the amount of slow-wave sleep and the awakening rate; drawn from ``rng`` if
        omitted.

    Returns
    -------
    list of str
        One R&K description per epoch (values of :data:`dsn.data.labels.RK_LABELS`; the
        unscored label ``Sleep stage ?`` is not used inside the recording).

    Notes
    -----
    Calibrated against a real expert hypnogram. Over many 8-h nights, of the sleep epochs:
    N1 ~8 %, N2 ~50 %, N3 ~20 % (less in older subjects) and REM ~23 %, with ~7 % wake after
    sleep onset; about a quarter of the whole recording is wake. Recordings of 1-2 h still
    contain every stage.
    """
    return [RK_LABELS[c] for c in _hypnogram_codes(n_epochs, rng, subject)]


def hypnogram_annotations(
    stages: Sequence[str],
    rng: np.random.Generator | None = None,
    tail_epochs: int | None = None,
    epoch_sec: float = EPOCH_SEC,
) -> list[tuple[float, float, str]]:
    """Merge per-epoch labels into Sleep-EDF-style annotations.

    Parameters
    ----------
    stages : sequence of str
        R&K description (or AASM name: ``W``, ``N1``, ``N2``, ``N3``, ``REM``, ``?``) per epoch.
    rng : numpy.random.Generator, optional
        Draws the length of the trailing ``Sleep stage ?`` annotation when ``tail_epochs`` is
        not given.
    tail_epochs : int, optional
        Length, in epochs, of the final ``Sleep stage ?`` annotation that starts where the PSG
        ends and extends beyond it (as in the real files). ``0`` writes no such annotation.
    epoch_sec : float, default 30.0
        Epoch length in seconds.

    Returns
    -------
    list of (onset, duration, description)
        Onsets and durations in seconds, both multiples of ``epoch_sec``; runs of equal labels
        are merged into one annotation.
    """
    codes = _stage_codes(stages)
    out = [(s * epoch_sec, ln * epoch_sec, RK_LABELS[c]) for c, s, ln in runs(codes)]
    if tail_epochs is None:
        tail_epochs = int((rng or np.random.default_rng(0)).integers(2, 240))
    if tail_epochs != 0:
        out.append((len(codes) * epoch_sec, max(1, int(tail_epochs)) * epoch_sec, RK_LABELS[_UNK]))
    return out


# --------------------------------------------------------------------------------------------
# Signal building blocks
# --------------------------------------------------------------------------------------------
def _stage_codes(stages: Sequence[str] | np.ndarray) -> np.ndarray:
    """Map R&K descriptions (or AASM names / integer R&K codes) to R&K codes."""
    arr = np.asarray(stages)
    if arr.dtype.kind in "iu":
        if arr.size and (arr.min() < 0 or arr.max() >= len(RK_LABELS)):
            raise ValueError("integer stages must be indices into RK_LABELS")
        return arr.astype(np.int8)
    lookup = {label: i for i, label in enumerate(RK_LABELS)} | _ALIASES
    try:
        return np.array([lookup[str(s)] for s in arr], dtype=np.int8)
    except KeyError as err:
        raise ValueError(f"unknown sleep stage {err.args[0]!r}; expected one of {RK_LABELS} or {STAGES}") from None


def _noise(n: int, fs: float, psd, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance Gaussian noise of length ``n`` with power spectral density shape ``psd(f)``."""
    m = _fft.next_fast_len(n, real=True)
    f = np.fft.rfftfreq(m, 1.0 / fs)
    amp = np.sqrt(np.maximum(psd(f), 0.0))
    amp[0] = 0.0
    spec = rng.standard_normal((2, f.size))
    spec = (spec[0] + 1j * spec[1]) * amp
    x = _fft.irfft(spec, m, workers=-1)[:n]
    sd = x.std()
    return x / sd if sd > 0 else x


def _band(f0: float, bw: float):
    """Gaussian spectral peak at ``f0`` Hz with standard deviation ``bw`` Hz."""
    return lambda f: np.exp(-0.5 * ((f - f0) / bw) ** 2)


def _aperiodic(exponent: float, hp: float = 0.3, lp: float = 40.0):
    """1/f^exponent spectrum, high-passed at ``hp`` Hz and low-passed at ``lp`` Hz."""
    return lambda f: (f**2 / (f**2 + hp**2)) ** 2 / (f + 0.5) ** exponent / (1.0 + (f / lp) ** 8)


def _smooth_ctrl(per_epoch: np.ndarray, width_s: float = 3.0) -> np.ndarray:
    """Expand per-epoch values to the control rate and crossfade them (triangular, ``2*width_s``)."""
    x = np.repeat(np.asarray(per_epoch, float), _CTRL_PER_EPOCH, axis=-1)
    w = max(1, int(width_s * _CTRL_HZ))
    return uniform_filter1d(uniform_filter1d(x, w, axis=-1, mode="nearest"), w, axis=-1, mode="nearest")


def _slow_mod(n_ctrl: int, fc: float, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Log-normal waxing/waning modulation (mean ~1) varying on a ``1/fc`` s time scale."""
    z = _noise(n_ctrl, _CTRL_HZ, lambda f: np.exp(-0.5 * (f / fc) ** 2), rng)
    return np.exp(sigma * z - 0.5 * sigma**2)


def _boxcars(n_ctrl: int, t0: np.ndarray, dur: np.ndarray, height: np.ndarray) -> np.ndarray:
    """Sum of rectangular pulses at the control rate (used for arousals and movements)."""
    a = np.clip(np.round(t0 * _CTRL_HZ).astype(int), 0, n_ctrl)
    b = np.clip(np.round((t0 + dur) * _CTRL_HZ).astype(int), 0, n_ctrl)
    d = np.bincount(a, height, minlength=n_ctrl + 1) - np.bincount(b, height, minlength=n_ctrl + 1)
    return np.cumsum(d)[:n_ctrl]


def _events(rate_per_min: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Event times (s) of a Poisson process whose rate is given at the control rate."""
    counts = rng.poisson(np.maximum(rate_per_min, 0.0) / 60.0 / _CTRL_HZ)
    idx = np.repeat(np.arange(counts.size), counts)
    return np.sort((idx + rng.random(idx.size)) / _CTRL_HZ)


def _render(n: int, fs: float, t0: np.ndarray, length: float, wave) -> np.ndarray:
    """Sum event waveforms into a length-``n`` signal, all events at once.

    ``wave(t)`` receives a ``(1, L)`` row of times since onset (``L`` samples covering
    ``length`` seconds) and returns the ``(k, L)`` waveforms of the ``k`` events, whose
    parameters are ``(k, 1)`` columns closed over by ``wave``.
    """
    if t0.size == 0:
        return np.zeros(n)
    w = np.broadcast_to(wave(np.arange(int(np.ceil(length * fs)))[None, :] / fs), (t0.size, int(np.ceil(length * fs))))
    idx = np.round(t0 * fs).astype(int)[:, None] + np.arange(w.shape[1])[None, :]
    ok = idx < n
    return np.bincount(idx[ok], w[ok], minlength=n)[:n]


def _gauss(t: np.ndarray, mu, sd) -> np.ndarray:
    return np.exp(-0.5 * ((t - mu) / sd) ** 2)


# Per-stage amplitude tables (uV in Fpz-Cz before subject gains), indexed by R&K code:
#                    W     S1    S2    S3    S4    R     ?     MT
_A_FLAT = np.array([5.5, 4.5, 4.0, 4.0, 4.0, 4.5, 5.5, 6.0])  # 1/f background
_A_STEEP = np.array([4.0, 6.5, 9.0, 11.0, 12.0, 6.0, 4.0, 6.0])  # steeper 1/f^2 background
_A_ALPHA = np.array([1.0, 0.0, 0.06, 0.05, 0.05, 0.18, 1.0, 0.5])  # x subject alpha (see code)
_A_THETA = np.array([2.2, 5.5, 4.5, 4.5, 4.0, 4.8, 2.2, 2.0])
_A_BETA = np.array([2.5, 1.3, 0.9, 0.7, 0.6, 1.4, 2.5, 3.0])
_A_DELTA = np.array([2.5, 3.5, 10.0, 30.0, 45.0, 4.0, 2.5, 6.0])
_A_EMG = np.array([2.0, 0.8, 0.5, 0.4, 0.4, 0.25, 2.0, 6.0])
_A_SEM = np.array([12.0, 32.0, 6.0, 2.0, 2.0, 8.0, 12.0, 10.0])  # slow eye movements (EOG uV)
# Event rates per minute.
_R_SPINDLE = np.array([0.0, 0.15, 1.0, 0.35, 0.2, 0.0, 0.0, 0.0])  # x subject spindle density
_R_KC = np.array([0.0, 0.05, 1.0, 0.35, 0.15, 0.0, 0.0, 0.0])  # x subject K-complex density
_R_VERTEX = np.array([0.0, 1.8, 0.35, 0.0, 0.0, 0.1, 0.0, 0.0])
_R_SAW = np.array([0.0, 0.05, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0])
_R_REM = np.array([0.0, 0.4, 0.0, 0.0, 0.0, 9.0, 0.0, 0.0])  # rapid eye movements
_R_AROUSAL = np.array([0.0, 0.25, 0.12, 0.04, 0.02, 0.12, 0.0, 0.0])
_R_MOVE = np.array([0.35, 0.05, 0.01, 0.0, 0.0, 0.02, 0.35, 6.0])
_R_BLINK = np.array([1.0, 0.4, 0.0, 0.0, 0.0, 0.0, 1.0, 4.0])  # plus 14/min x eyes-open in wake
_IS_WAKE = np.array([1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0])


def generate_signals(
    stages: Sequence[str],
    sfreq: float = 100.0,
    rng: np.random.Generator | None = None,
    subject: SubjectProfile | None = None,
) -> dict[str, np.ndarray]:
    """Synthesise EEG Fpz-Cz, EEG Pz-Oz and horizontal EOG for a sequence of stages.

    Parameters
    ----------
    stages : sequence of str
        One label per 30-s epoch: R&K descriptions (``RK_LABELS``) or AASM names (``STAGES``).
        ``Sleep stage ?`` is rendered like wake, ``Movement time`` like wake with large
        movement artefacts.
    sfreq : float
        Sampling frequency in Hz; ``30 * sfreq`` must be an integer.
    rng : numpy.random.Generator, optional
        Source of randomness (a fresh unseeded generator if omitted).
    subject : SubjectProfile, optional
        Subject traits; drawn from ``rng`` if omitted.

    Returns
    -------
    dict of str to numpy.ndarray
        ``{"EEG Fpz-Cz", "EEG Pz-Oz", "EOG horizontal"}`` -> float64 arrays of
        ``len(stages) * 30 * sfreq`` samples in volts, clipped to the physical ranges of
        :data:`PSG_CHANNELS`.

    Notes
    -----
    Stage signatures (Fpz-Cz unless stated): background 1/f noise everywhere, steeper in deep
    sleep; W: waxing/waning alpha (strongest in Pz-Oz, eyes-closed periods), beta, muscle
    noise, blinks, saccades and movement artefacts; N1: alpha dropout, theta, vertex waves,
    slow eye movements; N2: spindles and K-complexes; N3: high-amplitude 0.5-2 Hz delta (more
    sustained in stage 4); REM: low-amplitude mixed frequency, sawtooth waves and rapid eye
    movements leaking from the EOG. Micro-arousals bring alpha/beta bursts into sleep.
    """
    rng = rng if rng is not None else np.random.default_rng()
    prof = subject if subject is not None else SubjectProfile.random(rng)
    codes = _stage_codes(stages)
    spe = 30.0 * sfreq
    if abs(spe - round(spe)) > 1e-9 or sfreq <= 0:
        raise ValueError(f"30 * sfreq must be a positive integer, got sfreq={sfreq}")
    spe = int(round(spe))
    n_ep = codes.size
    n = n_ep * spe
    if n_ep == 0:
        return {k: np.zeros(0) for k in ("EEG Fpz-Cz", "EEG Pz-Oz", "EOG horizontal")}
    n_ctrl = n_ep * _CTRL_PER_EPOCH
    fs = float(sfreq)
    t_ctrl = (np.arange(n_ctrl) + 0.5) / _CTRL_HZ
    t_smp = (np.arange(n) + 0.5) / fs

    def up(x: np.ndarray) -> np.ndarray:  # control rate -> sample rate
        return np.interp(t_smp, t_ctrl, x)

    def jitter(s: float) -> np.ndarray:  # per-epoch log-normal variability
        return np.exp(rng.normal(0.0, s, n_ep) - 0.5 * s**2)

    g = prof.amplitude_scale
    nyq = fs / 2.0
    lp = min(40.0, 0.45 * fs)
    # ---- per-epoch amplitudes ------------------------------------------------------------
    ep_gain = jitter(0.12)  # shared by every component of an epoch
    is_w = np.isin(codes, (_W, _UNK, _MT))
    # Drowsiness: wake epochs in the minutes before falling (back) asleep have less alpha and
    # beta, more theta and slow eye movements, and the eyes mostly closed (W/N1 overlap).
    drowsy = np.zeros(n_ep)
    sleep_idx = np.flatnonzero(~is_w)
    if sleep_idx.size:
        ep = np.arange(n_ep)
        nxt = sleep_idx[np.minimum(np.searchsorted(sleep_idx, ep), sleep_idx.size - 1)]  # next sleep epoch
        dist = np.where(nxt >= ep, nxt - ep, 10**6)
        drowsy = np.where(is_w, np.exp(-(np.maximum(dist, 1) - 1) / 5.0), 0.0)
    eyes_closed = np.where(np.isin(codes, (_W, _UNK)), rng.beta(2.0, 1.4, n_ep), 0.0)
    eyes_closed = eyes_closed + (np.isin(codes, (_W, _UNK)) - eyes_closed) * 0.7 * drowsy
    alpha_amp = np.where(is_w, (3.0 + 11.0 * eyes_closed) * (1.0 - 0.6 * drowsy), _A_ALPHA[codes] * 14.0)
    # N1: alpha dropout is partial and variable (drowsy, alpha < 50 % of the epoch).
    n1 = codes == _S1
    alpha_amp[n1] = 14.0 * rng.uniform(0.0, 0.55, n1.sum()) ** 1.3
    amp = {
        "flat": _A_FLAT[codes] * prof.noise_level * jitter(0.15),
        "steep": _A_STEEP[codes] * jitter(0.2),
        "alpha": alpha_amp * prof.alpha_power * jitter(0.3),
        "theta": _A_THETA[codes] * (1.0 + 1.2 * drowsy) * prof.theta_power * jitter(0.3),
        "beta": _A_BETA[codes] * (1.0 + 0.6 * (1.0 - eyes_closed) * is_w) * (1.0 - 0.4 * drowsy) * jitter(0.3),
        "delta": _A_DELTA[codes] * prof.delta_power * jitter(0.25),
        "emg": _A_EMG[codes] * (1.0 - 0.5 * drowsy) * prof.noise_level * jitter(0.5),
        "sem": _A_SEM[codes] * (1.0 + 1.5 * drowsy) * jitter(0.5),
    }
    env = {k: _smooth_ctrl(v * ep_gain) for k, v in amp.items()}
    ec_ctrl = _smooth_ctrl(eyes_closed)
    # Waxing/waning of the rhythms and micro-arousals (alpha/beta/EMG bursts of 3-15 s).
    env["alpha"] *= _slow_mod(n_ctrl, 0.25, 0.55, rng)
    env["theta"] *= _slow_mod(n_ctrl, 0.3, 0.45, rng)
    env["delta"] *= _slow_mod(n_ctrl, 0.08, 0.4, rng)
    env["beta"] *= _slow_mod(n_ctrl, 0.2, 0.3, rng)
    env["sem"] *= _slow_mod(n_ctrl, 0.05, 0.6, rng)
    rate = lambda table: _smooth_ctrl(table[codes], 1.0)  # noqa: E731
    t_ar = _events(rate(_R_AROUSAL), rng)
    arousal = _boxcars(n_ctrl, t_ar, rng.uniform(3.0, 15.0, t_ar.size), rng.uniform(0.4, 1.0, t_ar.size))
    arousal = uniform_filter1d(arousal, 10, mode="nearest")
    env["alpha"] += arousal * 9.0 * prof.alpha_power
    env["beta"] += arousal * 3.0
    env["emg"] += arousal * 3.0 * prof.noise_level
    t_mv = _events(rate(_R_MOVE), rng)
    move = _boxcars(n_ctrl, t_mv, rng.uniform(1.0, 6.0, t_mv.size), np.exp(rng.normal(0.0, 0.5, t_mv.size)))
    move = uniform_filter1d(move, 5, mode="nearest")
    # ---- continuous components (whole night, FFT-shaped) ---------------------------------
    # Each noise is scaled by its envelope and mixed into the channels right away, so that only
    # a handful of night-long arrays are alive at any time.
    fpz, pz, eog = np.zeros(n), np.zeros(n), np.zeros(n)

    def mix(x: np.ndarray, gains: tuple[float, float, float]) -> None:
        for out, gain in zip((fpz, pz, eog), gains, strict=True):
            if gain:
                out += gain * x

    slope = prof.aperiodic_shift
    e_up = up(env["flat"])  # aperiodic background, partly shared between the EEG derivations
    mix(e_up * _noise(n, fs, _aperiodic(1.0 + slope, lp=lp), rng), (g, 0.35 * g, 0.0))
    mix(e_up * _noise(n, fs, _aperiodic(1.0 + slope, lp=lp), rng), (0.0, 0.8 * g, 0.0))
    e_up = up(env["steep"])
    mix(e_up * _noise(n, fs, _aperiodic(2.2 + slope, lp=lp), rng), (g, 0.3 * g, 0.3 * g))
    mix(e_up * _noise(n, fs, _aperiodic(2.2 + slope, lp=lp), rng), (0.0, 0.6 * g, 0.0))
    # Rhythms: posterior-dominant alpha, theta, beta, frontal-dominant slow waves.
    mix(up(env["alpha"]) * _noise(n, fs, _band(prof.alpha_freq, 0.7), rng), (0.4 * g, g, 0.0))
    mix(up(env["theta"]) * _noise(n, fs, _band(prof.theta_freq, 1.1), rng), (g, 0.75 * g, 0.0))
    beta_psd = lambda f: _band(20.0, 5.0)(f) / (1.0 + (f / lp) ** 8)  # noqa: E731
    mix(up(env["beta"]) * _noise(n, fs, beta_psd, rng), (g, 0.8 * g, 0.0))
    delta_psd = lambda f: _band(prof.delta_freq, 0.45)(f) * (f**2 / (f**2 + 0.3**2)) ** 2  # noqa: E731
    mix(up(env["delta"]) * _noise(n, fs, delta_psd, rng), (g, 0.55 * g, 0.4 * g))
    # Muscle noise (tonic, and bursts during movements), slow eye movements, movement swings.
    emg = _noise(n, fs, lambda f: (f / 25.0) ** 2 / (1.0 + (f / 25.0) ** 2) / (1.0 + (f / nyq) ** 6), rng)
    mv = up(move)
    mix(up(env["emg"]) * emg, (1.0, 0.3, 0.7))
    mix(mv * emg, (12.0, 4.0, 8.0))
    del emg
    sem_psd = lambda f: _band(0.25, 0.15)(f) * (f**2 / (f**2 + 0.05**2))  # noqa: E731
    eye = prof.eog_scale * up(env["sem"]) * _noise(n, fs, sem_psd, rng)  # slow rolling eye movements
    mix(mv * _noise(n, fs, _aperiodic(2.0, hp=0.1, lp=8.0), rng), (35.0, 20.0, 45.0))
    del mv, e_up
    eog += 4.0 * prof.noise_level * _noise(n, fs, _aperiodic(1.2, lp=lp), rng)

    # ---- transients ----------------------------------------------------------------------
    def col(x: np.ndarray) -> np.ndarray:
        return np.asarray(x, float)[:, None]

    # Spindles: waxing-waning 11-16 Hz, 0.5-2 s; some ride on K-complexes.
    t_kc = _events(rate(_R_KC) * prof.kcomplex_density, rng)
    t_sp = _events(rate(_R_SPINDLE) * prof.spindle_density, rng)
    t_sp = np.sort(np.concatenate([t_sp, t_kc[rng.random(t_kc.size) < 0.3] + rng.uniform(0.4, 0.9)]))
    k = t_sp.size
    d_sp = col(np.clip(np.exp(rng.normal(np.log(0.9), 0.35, k)), 0.5, 2.0))
    f_sp = col(np.clip(prof.spindle_freq + rng.normal(0.0, 0.5, k), 11.0, 16.0))
    a_sp = col(np.exp(rng.normal(np.log(22.0), 0.3, k)) * prof.spindle_amp)
    ph = col(rng.uniform(0, 2 * np.pi, k))

    def spindle(t, df=0.0, gain=1.0):
        x = t / d_sp
        return (
            gain
            * a_sp
            * np.where(x < 1, np.sin(np.pi * np.clip(x, 0, 1)) ** 2, 0)
            * np.sin(2 * np.pi * (f_sp + df) * t + ph)
        )

    fpz += g * _render(n, fs, t_sp, 2.0, spindle)
    pz += g * _render(n, fs, t_sp, 2.0, lambda t: spindle(t, 1.0, 0.9))
    # K-complexes: sharp negative then slower positive wave, 0.5-1 s, 75-200 uV peak-to-peak.
    k = t_kc.size
    T = col(rng.uniform(0.5, 1.0, k))
    a_kc = col(np.exp(rng.normal(np.log(70.0), 0.3, k)))

    def kcomplex(t):
        return a_kc * (
            0.15 * _gauss(t, 0.1 * T, 0.05 * T) - _gauss(t, 0.3 * T, 0.1 * T) + 0.7 * _gauss(t, 0.7 * T, 0.2 * T)
        )

    kc = _render(n, fs, t_kc, 1.6, kcomplex)
    fpz += g * kc
    pz += g * 0.4 * kc
    eog += g * 0.35 * kc
    # Vertex sharp waves (drowsiness, N1): maximal at Cz, so positive in Fpz-Cz, negative in Pz-Oz.
    t_v = _events(rate(_R_VERTEX), rng)
    a_v = col(np.exp(rng.normal(np.log(45.0), 0.3, t_v.size)))
    w_v = col(rng.uniform(0.04, 0.07, t_v.size))
    vx = _render(n, fs, t_v, 0.6, lambda t: a_v * (_gauss(t, 0.15, w_v) - 0.35 * _gauss(t, 0.3, 2 * w_v)))
    fpz += g * 0.8 * vx
    pz -= g * 0.4 * vx
    # Sawtooth waves (REM): 2-4 Hz trains of triangular waves, 1.5-5 s, often near eye movements.
    t_s = _events(rate(_R_SAW), rng)
    k = t_s.size
    D = col(rng.uniform(1.5, 5.0, k))
    f_s = col(rng.uniform(2.0, 4.0, k))
    a_s = col(np.exp(rng.normal(np.log(18.0), 0.3, k)))
    ph_s = col(rng.uniform(0, 1, k))

    def sawtooth(t):
        frac = (f_s * t + ph_s) % 1.0
        tri = np.where(frac < 0.25, frac / 0.25, 1.0 - (frac - 0.25) / 0.75) * 2.0 - 1.0
        x = np.clip(t / D, 0, 1)
        return a_s * tri * np.sin(np.pi * x) ** 0.5 * (t < D)

    saw = _render(n, fs, t_s, 5.0, sawtooth)
    fpz += g * saw
    pz += g * 0.4 * saw
    # Rapid eye movements (REM), in phasic bursts; saccades of wake with open eyes.
    burst = _slow_mod(n_ctrl, 0.04, 1.2, rng)
    eyes_open = rate(_IS_WAKE) * (1.0 - ec_ctrl)
    r_rem = rate(_R_REM) * burst + 15.0 * eyes_open
    t_e = _events(r_rem, rng)
    k = t_e.size
    a_e = col(np.exp(rng.normal(np.log(90.0), 0.4, k)) * rng.choice([-1.0, 1.0], k))
    rise = col(rng.uniform(0.03, 0.08, k))
    tau = col(rng.uniform(0.5, 1.5, k))
    eye += prof.eog_scale * _render(n, fs, t_e, 4.0, lambda t: a_e * (1 - np.exp(-t / rise)) * np.exp(-t / tau))
    # Blinks (wake, eyes open): large positive frontal deflections of 0.2-0.45 s.
    t_b = _events(rate(_R_BLINK) + 14.0 * eyes_open, rng)
    k = t_b.size
    a_b = col(np.exp(rng.normal(np.log(110.0), 0.3, k)))
    d_b = col(rng.uniform(0.2, 0.45, k))
    blink = _render(
        n, fs, t_b, 0.5, lambda t: a_b * np.where(t < d_b, np.sin(np.pi * np.clip(t / d_b, 0, 1) ** 0.7) ** 2, 0)
    )
    fpz += blink
    pz += 0.02 * blink
    eog += eye + prof.eog_scale * prof.blink_gain_eog * blink
    fpz += prof.eog_leak * eye
    pz += 0.03 * eye
    # Power-line interference (aliased if above Nyquist), amplitude drifting slowly.
    # Sweat / electrode drift: large, very slow (<0.5 Hz) swings during parts of the night.
    if prof.sweat > 0:
        drift = _noise(n_ctrl, _CTRL_HZ, _aperiodic(2.0, hp=0.05, lp=0.5), rng) * _slow_mod(n_ctrl, 0.002, 1.0, rng)
        drift = prof.sweat * up(drift)
        fpz += drift
        pz += 0.6 * rng.choice([-1.0, 1.0]) * drift
        eog += 0.8 * drift
    # Cardiac artefact: a QRS-like spike per heart beat; heart rate slows in NREM sleep.
    if prof.ecg_artifact > 0:
        hr = prof.heart_rate * _smooth_ctrl(np.array([1.1, 1.02, 0.97, 0.94, 0.93, 1.05, 1.1, 1.2])[codes], 10.0)
        hr = hr * (1.0 + 0.04 * _noise(n_ctrl, _CTRL_HZ, _band(0.25, 0.05), rng))  # respiratory sinus arrhythmia
        phase = np.cumsum(hr / 60.0 / _CTRL_HZ) + rng.random()
        beats = np.flatnonzero(np.diff(np.floor(phase)) > 0) + 1
        t_hb = (beats - (phase[beats] % 1.0) / (hr[beats] / 60.0) * _CTRL_HZ) / _CTRL_HZ
        t_hb = t_hb[t_hb >= 0]
        qrs = _render(
            n,
            fs,
            t_hb,
            0.4,
            lambda t: _gauss(t, 0.1, 0.012) - 0.25 * _gauss(t, 0.14, 0.02) + 0.15 * _gauss(t, 0.33, 0.04),
        )
        fpz += prof.ecg_artifact * qrs
        pz += -0.6 * prof.ecg_artifact * qrs
        eog += 0.8 * prof.ecg_artifact * qrs
    if prof.line_noise > 0:
        drift = up(_slow_mod(n_ctrl, 0.01, 0.3, rng))
        ln = prof.line_noise * drift * np.sin(2 * np.pi * (prof.line_freq + 0.013) * t_smp + rng.uniform(0, 2 * np.pi))
        fpz += ln
        pz += 0.7 * ln
        eog += 1.2 * ln
    out = {}
    for name, x in (("EEG Fpz-Cz", fpz), ("EEG Pz-Oz", pz), ("EOG horizontal", eog)):
        lo, hi = PSG_CHANNELS[name][1]
        out[name] = np.clip(x, lo, hi) * 1e-6
    return out


def generate_eeg(
    stages: Sequence[str], sfreq: float, rng: np.random.Generator, subject: SubjectProfile | None = None
) -> np.ndarray:
    """Synthesise the EEG Fpz-Cz channel for a sequence of stages.

    Parameters
    ----------
    stages : sequence of str
        One R&K description (or AASM name) per 30-s epoch.
    sfreq : float
        Sampling frequency in Hz.
    rng : numpy.random.Generator
        Source of randomness.
    subject : SubjectProfile, optional
        Subject traits; drawn from ``rng`` if omitted.

    Returns
    -------
    numpy.ndarray
        ``(len(stages) * 30 * sfreq,)`` float64 EEG in volts. Identical to the ``EEG Fpz-Cz``
        channel of :func:`generate_signals` for the same generator state.
    """
    return generate_signals(stages, sfreq, rng, subject)["EEG Fpz-Cz"]


def _slow_channels(codes: np.ndarray, rng: np.random.Generator, prof: SubjectProfile) -> dict[str, np.ndarray]:
    """The 1-Hz Sleep-EDF channels (respiration, EMG envelope, rectal temperature, marker)."""
    n_ep = codes.size
    n = n_ep * int(EPOCH_SEC)
    t = np.arange(n, dtype=float)
    # Submental EMG envelope: high awake, lower in NREM, atonia in REM with twitches.
    tone = np.array([9.0, 5.5, 3.8, 3.2, 3.0, 1.3, 9.0, 30.0])[codes] * np.exp(rng.normal(0, 0.25, n_ep))
    level = np.interp(t, np.arange(n_ep) * EPOCH_SEC + 15.0, tone)
    emg = level * np.exp(0.25 * _noise(n, 1.0, lambda f: 1.0 / (1.0 + (f / 0.1) ** 2), rng))
    rem = np.repeat(codes == _R, int(EPOCH_SEC))
    emg += rem * (rng.random(n) < 0.05) * rng.exponential(6.0, n)
    emg *= float(np.exp(rng.normal(0, 0.3)))
    # Oro-nasal airflow (thermistor), regular in deep sleep, irregular awake and in REM.
    irregular = np.repeat(np.array([1.0, 0.6, 0.35, 0.2, 0.2, 0.8, 1.0, 1.5])[codes], int(EPOCH_SEC))
    fine = np.arange(n * 10) / 10.0
    rate = 0.25 + 0.03 * np.interp(fine, t, irregular) * _noise(n * 10, 10.0, lambda f: np.exp(-((f / 0.01) ** 2)), rng)
    phase = 2 * np.pi * np.cumsum(rate) / 10.0
    depth = 350.0 * np.exp(0.3 * np.interp(fine, t, irregular) * _noise(n * 10, 10.0, _band(0.0, 0.02), rng))
    resp = (depth * np.sin(phase))[::10] + 20.0 * rng.standard_normal(n)
    # Rectal temperature: circadian decline of ~0.5-1 degC towards the early morning.
    base = rng.uniform(36.8, 37.3)
    drop = rng.uniform(0.4, 1.0) * np.sin(np.pi * np.clip(t / max(n, 1) * 1.1, 0, 1))
    temp = base - drop + 0.02 * _noise(n, 1.0, lambda f: 1.0 / (1.0 + (f / 0.002) ** 2), rng)
    # Event marker: flat with a few button presses.
    marker = np.zeros(n)
    for s in rng.integers(0, n, size=int(rng.integers(1, 4))):
        marker[s : s + int(rng.integers(1, 4))] = 850.0
    chans = {"Resp oro-nasal": resp, "EMG submental": emg, "Temp rectal": temp, "Event marker": marker}
    return {k: np.clip(v, *PSG_CHANNELS[k][1]) for k, v in chans.items()}


# --------------------------------------------------------------------------------------------
# A second recording site
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SiteShift:
    """How a second recording site's signals differ from the generator's (a synthetic "new site").

    Applied to the EEG/EOG channels after they are generated, with its own random stream, so that the same
    seed gives the same nights (hypnograms, brain signals) at both sites and only the site's traits differ.

    Parameters
    ----------
    gain : float, default 1.0
        Amplitude factor of every EEG/EOG channel (amplifier calibration, electrode impedance, a shorter
        inter-electrode distance), > 0.
    noise : float, default 0.0
        RMS (uV) of white amplifier noise added to every EEG/EOG channel, >= 0.
    mains : float, default 0.0
        Amplitude (uV) of mains interference added to every EEG/EOG channel, >= 0.
    mains_freq : float, default 60.0
        Mains frequency in Hz (aliased when above the Nyquist frequency, as an unfiltered recorder would).
    channel : str, optional
        Label of the first EEG channel (``EEG Fpz-Cz`` at the generator's site), e.g. ``EEG C4-A1``.
    mix : float, default 0.0
        Another derivation for that channel: ``(1 - mix) * Fpz-Cz + mix * Pz-Oz`` (in [0, 1]).
    """

    gain: float = 1.0
    noise: float = 0.0
    mains: float = 0.0
    mains_freq: float = 60.0
    channel: str | None = None
    mix: float = 0.0

    def __post_init__(self) -> None:
        if not self.gain > 0:
            raise ValueError(f"site gain must be positive, got {self.gain}")
        for name in ("noise", "mains"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"site {name} must be >= 0 uV, got {getattr(self, name)}")
        if not self.mains_freq > 0:
            raise ValueError(f"site mains_freq must be a positive number of Hz, got {self.mains_freq}")
        if not 0.0 <= self.mix <= 1.0:
            raise ValueError(f"site mix must be in [0, 1], got {self.mix}")
        if self.channel is not None and (not self.channel.strip() or self.channel in PSG_CHANNELS and self.channel != "EEG Fpz-Cz"):
            raise ValueError(f"site channel {self.channel!r}: give a new label (not empty, not another channel's)")

    def describe(self) -> str:
        """One line: what this site changes (e.g. ``gain 0.6, noise 3 uV, 60-Hz mains 5 uV, EEG C4-A1 = ...``)."""
        parts = [f"gain {self.gain:g}"] if self.gain != 1.0 else []
        parts += [f"noise {self.noise:g} uV"] if self.noise else []
        parts += [f"{self.mains_freq:g}-Hz mains {self.mains:g} uV"] if self.mains else []
        if self.channel or self.mix:
            derivation = f"{1 - self.mix:g} x Fpz-Cz + {self.mix:g} x Pz-Oz" if self.mix else "Fpz-Cz"
            parts.append(f"{self.label('EEG Fpz-Cz')} = {derivation}")
        return ", ".join(parts) or "the generator's site"

    def label(self, name: str) -> str:
        """The label channel ``name`` (a generator label) has at this site."""
        return self.channel if name == "EEG Fpz-Cz" and self.channel else name

    def apply(self, fast: dict[str, np.ndarray], sfreq: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """This site's version of :func:`generate_signals`' output (volts in, volts out, same keys)."""
        out = dict(fast)
        if self.mix:
            out["EEG Fpz-Cz"] = (1.0 - self.mix) * fast["EEG Fpz-Cz"] + self.mix * fast["EEG Pz-Oz"]
        n = len(out["EEG Fpz-Cz"])
        t = np.arange(n) / float(sfreq)
        for name in ("EEG Fpz-Cz", "EEG Pz-Oz", "EOG horizontal"):
            x = self.gain * out[name]
            if self.noise:
                x = x + self.noise * 1e-6 * rng.standard_normal(n)
            if self.mains:
                x = x + self.mains * 1e-6 * np.sin(2 * np.pi * self.mains_freq * t + rng.uniform(0, 2 * np.pi))
            out[name] = x
        return out


#: ``dsn synth --site NAME``: ``A`` is the generator's site; ``B`` a second lab whose recorder reads 0.6 x the
#: amplitude, adds 3 uV of amplifier noise and 5 uV of 60-Hz mains, and whose first EEG channel is a central
#: derivation labelled ``EEG C4-A1`` (half Fpz-Cz, half Pz-Oz).
SITE_PRESETS: dict[str, SiteShift] = {
    "A": SiteShift(),
    "B": SiteShift(gain=0.6, noise=3.0, mains=5.0, mains_freq=60.0, channel="EEG C4-A1", mix=0.5),
}


def site_shift(preset: str = "A", **changes) -> SiteShift:
    """The :data:`SITE_PRESETS` entry ``preset`` with the given fields changed (``None`` values keep the preset's).

    Raises
    ------
    ValueError
        For an unknown preset or a bad value.
    """
    if preset not in SITE_PRESETS:
        raise ValueError(f"site {preset!r}: not a site preset (one of {', '.join(SITE_PRESETS)})")
    return dataclasses.replace(SITE_PRESETS[preset], **{k: v for k, v in changes.items() if v is not None})


# --------------------------------------------------------------------------------------------
# EDF writing
# --------------------------------------------------------------------------------------------
def psg_filename(subject: int, night: int) -> str:
    """Sleep-cassette PSG file name, e.g. ``SC4001E0-PSG.edf`` for subject 0, night 1."""
    _check_ids(subject, night)
    return f"SC4{subject:02d}{night}E0-PSG.edf"


def _check_ids(subject: int, night: int) -> None:
    if not 0 <= int(subject) <= 99:
        raise ValueError(
            f"subject index {subject} out of range: Sleep-EDF names (SC4ssN) have two digits for the "
            "subject, so at most 100 subjects (indices 0-99) can be written"
        )
    if int(night) not in (1, 2):
        raise ValueError(f"night must be 1 or 2 (sleep-cassette subjects have up to two nights), got {night}")


def night_streams(seed: int, subject: int, night: int, hours: float):
    """What every layout of one synthetic night starts from: its number of 30-s epochs, the subject's and the
    night's random streams (seeded by ``(seed, subject)`` and ``(seed, subject, night)``) and the subject's
    profile, drawn first from the subject's stream. Returns ``(n_epochs, subject_rng, night_rng, profile)``."""
    n_ep = int(round(hours * 3600.0 / EPOCH_SEC))
    if n_ep < 1:
        raise ValueError(f"hours must cover at least one 30-s epoch, got {hours}")
    subj_rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(subject)]))
    night_rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(subject), int(night)]))
    return n_ep, subj_rng, night_rng, SubjectProfile.random(subj_rng)


def write_recording(
    out_dir: str | Path, subject: int, night: int, hours: float = 8.0, seed: int = 0, sfreq: float = 100.0,
    site: SiteShift | None = None,
) -> tuple[Path, Path]:
    """Generate one night of one subject and write its PSG/Hypnogram EDF pair.

    The subject's traits depend only on ``(seed, subject)`` and the night only on
    ``(seed, subject, night)``, so a recording does not change when more subjects are written.

    Parameters
    ----------
    out_dir : str or Path
        Destination folder (created if needed).
    subject : int
        Subject index, 0-99.
    night : int
        Night, 1 or 2.
    hours : float
        PSG length in hours (rounded to whole 30-s epochs).
    seed : int
        Non-negative master seed.
    sfreq : float
        Sampling frequency of the EEG/EOG channels in Hz.
    site : SiteShift, optional
        Record the night at another site (its own random stream: the night itself does not change).

    Returns
    -------
    (Path, Path)
        PSG file and hypnogram file.
    """
    from edfio import Edf, EdfAnnotation, EdfSignal, Patient, Recording

    _check_ids(subject, night)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_ep, subj_rng, night_rng, prof = night_streams(seed, subject, night, hours)
    first_night = _dt.date(1989, 1, 1) + _dt.timedelta(days=int(subj_rng.integers(0, 6 * 365)))
    letters = subj_rng.choice(list(string.ascii_uppercase), size=2)
    prof_n = prof.for_night(night_rng)

    codes = _hypnogram_codes(n_ep, night_rng, prof_n)
    stages = [RK_LABELS[c] for c in codes]
    fast = generate_signals(stages, sfreq, night_rng, prof_n)
    slow = _slow_channels(codes, night_rng, prof_n)
    if site is not None:
        fast = site.apply(fast, sfreq, np.random.default_rng(np.random.SeedSequence([int(seed), int(subject), int(night), 5173])))
    start = _dt.datetime.combine(first_night + _dt.timedelta(days=night - 1), _dt.time(21, 30)) + _dt.timedelta(
        seconds=int(night_rng.integers(0, 150 * 60))
    )
    name = f"SC4{subject:02d}{night}"
    patient = Patient(
        code=f"SC4{subject:02d}",
        sex=prof.sex,
        name="X",
        additional=(f"{'Female' if prof.sex == 'F' else 'Male'}_{prof.age}yr",),
    )
    recording = Recording(
        startdate=start.date(),
        hospital_administration_code=f"{name}E0",
        investigator_technician_code="X",
        equipment_code="dsn-synth",
    )
    signals = []
    for label, (unit, rng_phys, is_fast) in PSG_CHANNELS.items():
        if is_fast:
            data, fs_ch = fast[label] * 1e6, sfreq
        else:
            data, fs_ch = slow[label], 1.0
        signals.append(
            EdfSignal(
                np.clip(data, *rng_phys),
                fs_ch,
                label=site.label(label) if site is not None else label,
                transducer_type="Ag-AgCl electrode" if unit == "uV" and is_fast else "",
                physical_dimension=unit,
                physical_range=rng_phys,
            )
        )
    psg = Edf(signals, patient=patient, recording=recording, starttime=start.time(), data_record_duration=EPOCH_SEC)
    psg_path = out_dir / f"{name}E0-PSG.edf"
    psg.write(psg_path)

    anns = [EdfAnnotation(o, d, t) for o, d, t in hypnogram_annotations(stages, night_rng)]
    hyp = Edf([], patient=patient, recording=recording, starttime=start.time(), annotations=anns)
    hyp_path = out_dir / f"{name}E{letters[night - 1]}-Hypnogram.edf"
    for stale in out_dir.glob(f"{name}E?-Hypnogram.edf"):  # pairing is by prefix: keep one per PSG
        if stale.name != hyp_path.name:
            stale.unlink()
    hyp.write(hyp_path)
    return psg_path, hyp_path


def write_dataset(
    out_dir: str | Path,
    subjects: int = 4,
    nights: int = 1,
    hours: float = 8.0,
    seed: int = 0,
    sfreq: float = 100.0,
    progress: bool = True,
    site: SiteShift | None = None,
) -> list[tuple[Path, Path]]:
    """Write ``subjects`` x ``nights`` synthetic sleep-cassette recordings as EDF pairs.

    Parameters
    ----------
    out_dir : str or Path
        Destination folder (created if needed).
    subjects : int
        Number of subjects, 1-100 (indices 0-99 in the file names).
    nights : int
        Nights per subject, 1 or 2.
    hours : float
        PSG length in hours (fractional values allowed; rounded to whole 30-s epochs).
    seed : int
        Non-negative master seed; the same seed gives byte-identical files.
    sfreq : float
        Sampling frequency of the EEG/EOG channels in Hz (the other channels are 1 Hz).
    progress : bool
        Show a tqdm progress bar over recordings.
    site : SiteShift, optional
        Record every night at another site (see :class:`SiteShift`, :data:`SITE_PRESETS`).

    Returns
    -------
    list of (Path, Path)
        ``(psg_path, hypnogram_path)`` per recording, ordered by subject then night. PSG files
        are named ``SC4{ss}{n}E0-PSG.edf``, hypnograms ``SC4{ss}{n}E{X}-Hypnogram.edf``.

    Raises
    ------
    ValueError
        For more than 100 subjects, ``nights`` not in {1, 2}, a non-positive duration, a
        negative seed or a sampling rate without a whole number of samples per 30 s.
    """
    from tqdm.auto import tqdm

    if not 1 <= int(subjects) <= 100:
        raise ValueError(
            "subjects must be between 1 and 100 (Sleep-EDF names SC4ssN have a two-digit subject index), "
            f"got {subjects}"
        )
    if int(nights) not in (1, 2):
        raise ValueError(f"nights must be 1 or 2, got {nights}")
    if not hours > 0:
        raise ValueError(f"hours must be positive, got {hours}")
    if int(seed) < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if sfreq <= 0 or abs(30.0 * sfreq - round(30.0 * sfreq)) > 1e-9:
        raise ValueError(f"30 * sfreq must be a positive integer, got sfreq={sfreq}")
    jobs = [(s, n) for s in range(int(subjects)) for n in range(1, int(nights) + 1)]
    pairs = []
    for s, n in tqdm(jobs, desc="synthetic PSG", unit="rec", disable=not progress):
        pairs.append(write_recording(out_dir, s, n, hours=hours, seed=seed, sfreq=sfreq, site=site))
    return pairs


def stage_proportions(stages: Sequence[str]) -> dict[str, float]:
    """Fraction of each AASM stage among scored epochs (``?`` and movement time excluded).

    Parameters
    ----------
    stages : sequence of str
        R&K descriptions.

    Returns
    -------
    dict of str to float
        ``{"W": ..., "N1": ..., "N2": ..., "N3": ..., "REM": ...}``.
    """
    y = np.array([RK_TO_AASM[s] for s in stages])
    y = y[y >= 0]
    return {name: float((y == i).mean()) if y.size else 0.0 for i, name in enumerate(STAGES)}
