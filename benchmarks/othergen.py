"""A second synthetic PSG generator, independent of ``dsn synth`` (issue 34): nights from "another lab".

    python benchmarks/othergen.py DIR --nights 4 --seed 0 [--hours 8] [--sfreq 100]

Writes Sleep-EDF-named EDF+ pairs (``SC4ss1G0-PSG.edf`` + ``SC4ss1GH-Hypnogram.edf``, one night per
subject ``ss``), so ``dsn data DIR``, ``dsn evaluate --data.data_dir DIR`` and ``dsn predict ... --hypnogram``
read them with the default ``sleep-edf`` profile; the channels a ``dsn synth`` model reads are there under the
same labels (``EEG Fpz-Cz``, ``EOG horizontal``, 100 Hz), plus a 100-Hz ``EMG submental``. The hypnogram is
written with :func:`dsn.hypnogram.write_edf_hypnogram` (``Sleep stage W/1/2/3/R`` annotations).

Written from scratch for issue 34's benchmark (``benchmarks/eval_trust.py``): nothing is imported from
``dsn/data/synth.py``, and the model of a night differs from it on purpose:

* **hypnogram**: a semi-Markov cycle model of its own: lights-off wake, a gamma-distributed sleep-onset
  latency, then NREM-REM cycles in which every bout has a gamma-distributed length whose mean depends on the
  cycle (N3 shrinking from 30 min to none by the fourth cycle, REM growing from 8 min by 6 min a cycle up to 30), an
  awakening after REM with probability 0.4, brief awakenings in N2 (Poisson, 0.6 an hour) each followed by
  N1, and final wake;
* **spectra**: each stage's background is a sum of eight first-order (AR(1)) processes whose weights give a
  1/f^beta spectrum with a stage-dependent slope (0.9 in W to 2.2 in N3), plus damped two-pole resonators
  at this lab's frequencies: alpha 11.5 Hz, theta 5 Hz (N1) / 7 Hz (REM), spindles 14 Hz, delta 1.6 Hz;
  transients (K-complexes, vertex waves, sawtooth bursts, electrode pops) are templates added at Poisson
  times;
* **channel content**: a frontal-heavy montage: 35 % of the eye signal leaks into Fpz-Cz (blinks and
  saccades in W, slow eye movements in N1, rapid eye movements in REM), 20 % of the EEG into the EOG;
  sweat drift (0.05-0.3 Hz, tens of uV), a per-night amplifier gain around 1.4 and a DC offset on the EEG;
  a fast EMG with muscle atonia in REM.

Stage shares on 8-h nights are adult-like (N1 ~5 %, N2 ~45-55 %, N3 ~12-20 %, REM ~20-28 % of sleep; REM
latency about an hour), so the plausibility rules of :mod:`dsn.trust.plausibility` pass the true hypnograms.
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import numpy as np
from scipy.signal import filtfilt, lfilter

__all__ = ["CHANNELS", "EPOCH_SEC", "STAGE_SPECTRA", "hypnogram", "psg_name", "signals", "write_night", "write_nights"]

EPOCH_SEC = 30.0
W, N1, N2, N3, REM = 0, 1, 2, 3, 4
#: label -> (physical range in uV, what it carries)
CHANNELS = {"EEG Fpz-Cz": (-600.0, 600.0), "EOG horizontal": (-1000.0, 1000.0), "EMG submental": (-400.0, 400.0)}

#: Per stage: background rms (uV) and 1/f slope, and rms (uV) of each resonator of :data:`RESONATORS`.
STAGE_SPECTRA = {
    W: {"bg": 12.0, "slope": 0.9, "alpha": 15.0, "beta": 6.0, "theta": 2.0, "theta_rem": 0.0, "spindle": 0.0, "delta": 0.0},
    N1: {"bg": 15.0, "slope": 1.3, "alpha": 4.0, "beta": 2.0, "theta": 13.0, "theta_rem": 0.0, "spindle": 0.0, "delta": 3.0},
    N2: {"bg": 20.0, "slope": 1.7, "alpha": 1.0, "beta": 1.0, "theta": 6.0, "theta_rem": 0.0, "spindle": 4.0, "delta": 10.0},
    N3: {"bg": 26.0, "slope": 2.2, "alpha": 0.0, "beta": 0.5, "theta": 4.0, "theta_rem": 0.0, "spindle": 1.0, "delta": 55.0},
    REM: {"bg": 12.0, "slope": 1.1, "alpha": 3.0, "beta": 3.0, "theta": 0.0, "theta_rem": 9.0, "spindle": 0.0, "delta": 2.0},
}
#: Resonator name -> (centre Hz, bandwidth Hz).
RESONATORS = {"alpha": (11.5, 1.5), "beta": (21.0, 6.0), "theta": (5.0, 1.5), "theta_rem": (7.0, 2.0),
              "spindle": (14.0, 1.5), "delta": (1.6, 1.0)}
#: Transient events per minute by stage: K-complexes, spindle bursts, vertex waves, sawtooth bursts,
#: saccades, blinks, rapid eye movements, slow eye movements, electrode pops.
RATES = {
    "kcomplex": (0, 0, 1.6, 0.4, 0),
    "spindle": (0, 0, 5.0, 1.0, 0),
    "vertex": (0, 2.5, 0.3, 0, 0),
    "sawtooth": (0, 0, 0, 0, 1.8),
    "saccade": (7.0, 0.5, 0, 0, 0),
    "blink": (9.0, 1.0, 0, 0, 0),
    "rem": (0, 0, 0, 0, 9.0),
    "sem": (0.5, 4.0, 0.3, 0, 0),
    "pop": (0.15, 0.15, 0.15, 0.15, 0.15),
}
#: Mean EMG rms (uV) by stage: atonia in REM.
EMG_RMS = (18.0, 9.0, 6.0, 5.0, 1.5)
CORNERS = (0.3, 0.7, 1.5, 3.0, 6.0, 12.0, 24.0, 40.0)


# --------------------------------------------------------------------------------------------
# The hypnogram: a semi-Markov cycle model
# --------------------------------------------------------------------------------------------
def _bout(rng: np.random.Generator, mean_min: float, shape: float = 6.0) -> int:
    """A gamma-distributed bout length in epochs (0 when ``mean_min`` <= 0, else at least 1)."""
    if mean_min <= 0:
        return 0
    return max(1, int(round(rng.gamma(shape, mean_min / shape) * 60 / EPOCH_SEC)))


def _cycle(c: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """(stage, epochs) bouts of NREM-REM cycle ``c`` (0-based)."""
    bouts = [(N1, _bout(rng, 5.0 if c == 0 else 2.5))]
    n2a = _bout(rng, 18.0 + 3 * c)
    n_wake = rng.poisson(0.6 * n2a * EPOCH_SEC / 3600)  # brief awakenings in N2, each followed by N1
    for i, part in enumerate(np.array_split(np.arange(n2a), n_wake + 1)):
        if i:
            bouts += [(W, _bout(rng, 1.0, 2.0)), (N1, _bout(rng, 1.0, 2.0))]
        bouts.append((N2, len(part)))
    n3 = _bout(rng, 30.0 - 10.0 * c)
    if n3 > 8 and rng.random() < 0.4:  # N3 interrupted by a short N2 stretch
        k = int(rng.integers(2, n3 - 2))
        bouts += [(N3, k), (N2, _bout(rng, 2.0, 2.0)), (N3, n3 - k)]
    else:
        bouts.append((N3, n3))
    bouts += [(N2, _bout(rng, 12.0 + 2 * c)), (REM, _bout(rng, min(8.0 + 6.0 * c, 30.0)))]
    if rng.random() < 0.4:
        bouts += [(W, _bout(rng, 2.0, 2.0)), (N1, _bout(rng, 1.0, 2.0))]
    return bouts


def hypnogram(n_epochs: int, rng: np.random.Generator) -> np.ndarray:
    """``(n_epochs,)`` stages (0 W, 1 N1, 2 N2, 3 N3, 4 REM) of one night from the cycle model."""
    pre = _bout(rng, rng.uniform(10, 40), 8.0) + _bout(rng, 12.0, 2.0)  # lights-off wake + sleep-onset latency
    post = _bout(rng, rng.uniform(8, 25), 4.0)
    budget = max(0, n_epochs - pre - post)
    y = [np.full(pre, W)]
    used, c = 0, 0
    while used < budget:
        for stage, n in _cycle(c, rng):
            n = min(n, budget - used)
            if n > 0:
                y.append(np.full(n, stage))
                used += n
        c += 1
    y.append(np.full(max(0, n_epochs - pre - used), W))
    return np.concatenate(y).astype(np.int64)[:n_epochs]


# --------------------------------------------------------------------------------------------
# Signals
# --------------------------------------------------------------------------------------------
def _resonator(n: int, f0: float, bw: float, fs: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-rms noise through a two-pole resonator at ``f0`` Hz with bandwidth ``bw`` Hz."""
    r = np.exp(-np.pi * bw / fs)
    x = lfilter([1.0], [1.0, -2 * r * np.cos(2 * np.pi * f0 / fs), r * r], rng.standard_normal(n))
    return x / (x.std() + 1e-12)


def _ar1(n: int, corner: float, fs: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-rms first-order low-pass noise with its corner at ``corner`` Hz."""
    a = np.exp(-2 * np.pi * corner / fs)
    x = lfilter([np.sqrt(1 - a * a)], [1.0, -a], rng.standard_normal(n))
    return x / (x.std() + 1e-12)


def _envelope(per_epoch: np.ndarray, spe: int, fs: float) -> np.ndarray:
    """Per-epoch values as a per-sample envelope, smoothed (forward-backward one-pole, 1.5 s) over boundaries."""
    ctrl = np.repeat(per_epoch.astype(np.float64), 30)  # 1 Hz control rate
    if len(ctrl) > 9:
        a = np.exp(-1 / 1.5)
        ctrl = filtfilt([1 - a], [1.0, -a], ctrl, padlen=min(9, len(ctrl) - 1))
    t = (np.arange(len(per_epoch) * spe) + 0.5) / fs
    return np.interp(t, np.arange(len(ctrl)) + 0.5, ctrl)


def _templates(fs: float) -> dict[str, tuple[np.ndarray, str, float]]:
    """name -> (waveform of unit peak, channel it appears in ('eeg'/'eye'), typical peak uV)."""
    def t(sec: float) -> np.ndarray:
        return np.arange(int(sec * fs)) / fs

    tk, ts, tv, tw, te, tp = t(1.6), t(1.2), t(0.5), t(1.5), t(1.0), t(2.0)
    kc = -np.exp(-((tk - 0.35) / 0.09) ** 2) + 0.55 * np.exp(-((tk - 0.85) / 0.22) ** 2)
    sp = np.sin(2 * np.pi * 14.0 * ts) * np.sin(np.pi * ts / ts[-1]) ** 2
    vx = -np.exp(-((tv - 0.2) / 0.06) ** 2) + 0.3 * np.exp(-((tv - 0.35) / 0.06) ** 2)
    saw = np.sign(np.sin(2 * np.pi * 3.0 * tw)) * (np.mod(3.0 * tw, 1.0) - 0.5) * 2 * np.hanning(len(tw))
    sac = (1 / (1 + np.exp(-(te - 0.1) / 0.012))) * np.exp(-np.maximum(te - 0.1, 0) / 0.5)
    blink = np.exp(-((te - 0.2) / 0.07) ** 2)
    sem = np.sin(np.pi * tp / tp[-1]) ** 2
    pop = np.where(te < 0.02, te / 0.02, np.exp(-(te - 0.02) / 0.25))
    return {"kcomplex": (kc, "eeg", 95.0), "spindle": (sp, "eeg", 32.0), "vertex": (vx, "eeg", 60.0),
            "sawtooth": (saw, "eeg", 35.0), "saccade": (sac, "eye", 80.0), "blink": (blink, "eye", 40.0),
            "rem": (sac, "eye", 130.0), "sem": (sem, "eye", 90.0), "pop": (pop, "eeg", 150.0)}


def _add_events(x: np.ndarray, y: np.ndarray, rates: tuple, wave: np.ndarray, peak: float, spe: int,
                rng: np.random.Generator, signed: bool) -> None:
    """Add ``wave`` at Poisson times (``rates`` per minute by stage) with random peaks (and signs)."""
    lam = np.asarray(rates, dtype=np.float64)[y] * EPOCH_SEC / 60.0
    counts = rng.poisson(lam)
    if not counts.sum():
        return
    starts = np.repeat(np.arange(len(y)) * spe, counts) + rng.integers(0, spe, counts.sum())
    amp = peak * rng.lognormal(0.0, 0.3, len(starts)) * (rng.choice([-1.0, 1.0], len(starts)) if signed else 1.0)
    idx = starts[:, None] + np.arange(len(wave))[None, :]
    ok = idx < len(x)
    np.add.at(x, idx[ok], (amp[:, None] * wave[None, :])[ok])


def signals(y: np.ndarray, fs: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """EEG Fpz-Cz, EOG horizontal and EMG submental (uV) for the stages ``y`` (see the module docstring)."""
    spe = int(round(EPOCH_SEC * fs))
    n = len(y) * spe
    jitter = rng.lognormal(0.0, 0.18, len(y))  # per-epoch amplitude variability
    eeg = np.zeros(n)
    for corner in CORNERS:  # 1/f^beta background: AR(1) weights corner^((1 - beta) / 2)
        w = np.array([STAGE_SPECTRA[s]["bg"] * corner ** ((1 - STAGE_SPECTRA[s]["slope"]) / 2) for s in range(5)])
        norm = np.sqrt(np.array([sum(c ** (1 - STAGE_SPECTRA[s]["slope"]) for c in CORNERS) for s in range(5)]))
        eeg += _envelope((w / norm)[y] * jitter, spe, fs) * _ar1(n, corner, fs, rng)
    for name, (f0, bw) in RESONATORS.items():
        amp = np.array([STAGE_SPECTRA[s][name] for s in range(5)])[y]
        if amp.any():
            f = f0 * rng.uniform(0.95, 1.05)  # the night's own peak frequency
            eeg += _envelope(amp * jitter * rng.lognormal(0, 0.25, len(y)), spe, fs) * _resonator(n, f, bw, fs, rng)
    eye = np.zeros(n)
    for name, (wave, where, peak) in _templates(fs).items():
        _add_events(eeg if where == "eeg" else eye, y, RATES[name], wave, peak, spe, rng,
                    signed=name in ("saccade", "rem", "sem", "pop"))
    drift = _resonator(n, 0.15, 0.25, fs, rng) * rng.uniform(8.0, 16.0)  # sweat: 0.05-0.3 Hz
    gain = rng.uniform(1.2, 1.6)  # this lab's amplifier
    emg = _envelope(np.asarray(EMG_RMS)[y] * rng.lognormal(0, 0.3, len(y)), spe, fs)
    emg_noise = lfilter([1.0, -1.0], [1.0, -0.6], rng.standard_normal(n))
    out_eeg = gain * (eeg + 0.35 * eye + drift) + rng.uniform(-20, 20)
    out_eog = gain * (eye + 0.2 * eeg + 0.5 * drift) + 3.0 * rng.standard_normal(n)
    return {"EEG Fpz-Cz": out_eeg, "EOG horizontal": out_eog, "EMG submental": emg * emg_noise / emg_noise.std()}


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------
def psg_name(subject: int, night: int = 1) -> str:
    """``SC4ssNG0-PSG.edf``: Sleep-EDF's pattern with this generator's letter ``G``."""
    return f"SC4{subject:02d}{night}G0-PSG.edf"


def write_night(out_dir: str | Path, subject: int, hours: float = 8.0, seed: int = 0,
                sfreq: float = 100.0) -> tuple[Path, Path]:
    """Write one night (subject ``subject``, night 1): (PSG path, hypnogram path)."""
    from edfio import Edf, EdfSignal, Patient, Recording

    from dsn.hypnogram import write_edf_hypnogram

    if not 0 <= subject <= 99:
        raise ValueError(f"subject {subject}: must be 0-99 (two digits of the Sleep-EDF file name)")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(subject), 7919]))
    n_ep = int(round(hours * 3600 / EPOCH_SEC))
    y = hypnogram(n_ep, rng)
    sig = signals(y, sfreq, rng)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = dt.datetime(2011, 3, 1, 22, 0) + dt.timedelta(days=int(subject), minutes=int(rng.integers(0, 90)))
    edf_signals = [EdfSignal(np.clip(sig[label], lo, hi), sfreq, label=label, physical_dimension="uV",
                             physical_range=(lo, hi), transducer_type="AgCl cup electrode")
                   for label, (lo, hi) in CHANNELS.items()]
    psg = out / psg_name(subject)
    Edf(edf_signals, patient=Patient(code=f"OG{subject:02d}"), recording=Recording(startdate=start.date()),
        starttime=start.time(), data_record_duration=EPOCH_SEC).write(psg)
    hyp = write_edf_hypnogram(out / psg.name.replace("G0-PSG", "GH-Hypnogram"), y, EPOCH_SEC, start)
    return psg, hyp


def write_nights(out_dir: str | Path, nights: int, hours: float = 8.0, seed: int = 0, sfreq: float = 100.0,
                 first_subject: int = 0) -> list[tuple[Path, Path]]:
    """Write ``nights`` nights (subjects ``first_subject`` ..., one night each)."""
    return [write_night(out_dir, s, hours, seed, sfreq) for s in range(first_subject, first_subject + nights)]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir")
    p.add_argument("--nights", type=int, default=4, help="nights to write (one per subject)")
    p.add_argument("--hours", type=float, default=8.0, help="hours per night")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sfreq", type=float, default=100.0)
    a = p.parse_args(argv)
    for psg, hyp in write_nights(a.out_dir, a.nights, a.hours, a.seed, a.sfreq):
        print(f"{psg}  {hyp.name}")


if __name__ == "__main__":
    main()
