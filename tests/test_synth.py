"""Tests of the synthetic Sleep-EDF generator (``dsn.data.synth``)."""

from __future__ import annotations

import re

import mne
import numpy as np
import pytest
from scipy.signal import welch

from dsn.data.labels import RK_LABELS, RK_TO_AASM, STAGES
from dsn.data.synth import (
    PSG_CHANNELS,
    SubjectProfile,
    generate_eeg,
    generate_hypnogram,
    generate_signals,
    stage_proportions,
    write_dataset,
)

HOURS = 1.0
FS = 100.0
EPOCH = 30.0


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    pairs = write_dataset(out, subjects=2, nights=2, hours=HOURS, seed=3, progress=False)
    return out, pairs


def _aasm(stages) -> np.ndarray:
    return np.array([RK_TO_AASM[s] for s in stages])


# ------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------
def test_files_named_and_paired(dataset):
    out, pairs = dataset
    assert len(pairs) == 4
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted([p.name for pair in pairs for p in pair])
    expected = [(s, n) for s in range(2) for n in (1, 2)]
    for (psg, hyp), (s, n) in zip(pairs, expected, strict=True):
        assert psg.name == f"SC4{s:02d}{n}E0-PSG.edf"
        assert re.fullmatch(rf"SC4{s:02d}{n}E[A-Z]-Hypnogram\.edf", hyp.name)
        assert psg.name[:7] == hyp.name[:7]  # Sleep-EDF pairs files by their first 7 characters
        assert psg.parent == hyp.parent == out


def test_psg_reads_back_with_mne(dataset):
    psg = dataset[1][0][0]
    raw = mne.io.read_raw_edf(psg, preload=True, verbose="error")
    assert raw.ch_names == list(PSG_CHANNELS)
    assert raw.info["sfreq"] == FS
    assert raw.n_times == int(HOURS * 3600 * FS)
    assert raw.n_times / raw.info["sfreq"] == pytest.approx(HOURS * 3600)
    assert raw.info["meas_date"] is not None
    assert raw.info["subject_info"]["his_id"] == "SC400"
    eeg = raw.get_data(picks=["EEG Fpz-Cz", "EEG Pz-Oz", "EOG horizontal"])
    # MNE converts uV to volts: tens of microvolts, within the +-300/500 uV physical range.
    sd = eeg.std(axis=1)
    assert np.all((sd > 3e-6) & (sd < 1e-4)), sd
    assert np.abs(eeg[:2]).max() <= 300e-6 + 1e-8
    assert np.abs(eeg[2]).max() <= 500e-6 + 1e-8
    temp = raw.get_data(picks=["Temp rectal"])
    assert 34.0 < np.median(temp) < 40.0  # degC, not scaled


def test_psg_header_rates_and_units(dataset):
    from edfio import read_edf

    psg = read_edf(dataset[1][0][0])
    assert psg.data_record_duration == EPOCH
    assert psg.num_data_records == int(HOURS * 3600 / EPOCH)
    rates = {s.label: s.sampling_frequency for s in psg.signals}
    units = {s.label: s.physical_dimension for s in psg.signals}
    for label, (unit, _, fast) in PSG_CHANNELS.items():
        assert rates[label] == (FS if fast else 1.0)
        assert units[label] == unit
    assert units["EEG Fpz-Cz"] == units["EOG horizontal"] == "uV"
    assert psg.patient.code == "SC400"
    assert psg.recording.startdate == psg.startdate


def test_annotations_round_trip(dataset):
    for psg, hyp in dataset[1]:
        ann = mne.read_annotations(hyp)
        desc, onset, dur = list(ann.description), ann.onset, ann.duration
        assert set(desc) <= set(RK_LABELS)
        assert onset[0] == 0.0
        np.testing.assert_allclose(onset[1:], onset[:-1] + dur[:-1])  # contiguous
        assert np.all(dur > 0) and np.allclose(dur % EPOCH, 0) and np.allclose(onset % EPOCH, 0)
        assert all(a != b for a, b in zip(desc[:-1], desc[1:], strict=True))  # runs are merged
        # Trailing unscored annotation starts at the PSG end and extends beyond it.
        assert desc[-1] == "Sleep stage ?" and "Sleep stage ?" not in desc[:-1]
        assert onset[-1] == pytest.approx(HOURS * 3600) and onset[-1] + dur[-1] > HOURS * 3600
        assert desc[0] == desc[-2] == "Sleep stage W"  # awake before and after the night
        # A 1-h recording still contains every AASM stage.
        scored = {RK_TO_AASM[d] for d in desc}
        assert set(range(len(STAGES))) <= scored
        # Annotations line up with the PSG when attached to it.
        raw = mne.io.read_raw_edf(psg, verbose="error")
        raw.set_annotations(ann, emit_warning=False)
        assert raw.annotations.onset[-1] == pytest.approx(HOURS * 3600)


def test_deterministic_per_seed(tmp_path, dataset):
    a = write_dataset(tmp_path / "a", subjects=1, hours=HOURS, seed=3, progress=False)
    b = write_dataset(tmp_path / "b", subjects=1, hours=HOURS, seed=4, progress=False)
    ref = dataset[1][0]
    assert a[0][0].read_bytes() == ref[0].read_bytes()
    assert a[0][1].name == ref[1].name and a[0][1].read_bytes() == ref[1].read_bytes()
    assert b[0][0].read_bytes() != ref[0].read_bytes()
    rng1, rng2 = np.random.default_rng(7), np.random.default_rng(7)
    assert generate_hypnogram(240, rng1) == generate_hypnogram(240, rng2)
    np.testing.assert_array_equal(generate_eeg(["W", "N2"], FS, rng1), generate_eeg(["W", "N2"], FS, rng2))


def test_invalid_arguments(tmp_path):
    with pytest.raises(ValueError, match="100"):
        write_dataset(tmp_path, subjects=101, hours=0.5, progress=False)
    with pytest.raises(ValueError, match="nights"):
        write_dataset(tmp_path, subjects=1, nights=3, hours=0.5, progress=False)
    with pytest.raises(ValueError, match="hours"):
        write_dataset(tmp_path, subjects=1, hours=0, progress=False)
    with pytest.raises(ValueError, match="unknown sleep stage"):
        generate_eeg(["Sleep stage 5"], FS, np.random.default_rng(0))
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------
# Hypnogram architecture
# ------------------------------------------------------------------------------------------
def test_hypnogram_statistics():
    props, first_n3_before_rem, rem_later, movement = [], 0, 0, []
    n_nights = 12
    for seed in range(n_nights):
        stages = generate_hypnogram(960, np.random.default_rng(seed))
        assert len(stages) == 960 and set(stages) <= set(RK_LABELS)
        assert "Sleep stage ?" not in stages
        assert stages[0] == stages[-1] == "Sleep stage W"
        movement.append(stages.count("Movement time"))
        y = _aasm(stages)
        asleep = np.flatnonzero(y > 0)
        sp = y[asleep[0] : asleep[-1] + 1]  # sleep period
        assert y[asleep[0]] == 1  # sleep onset through N1
        assert 20 <= asleep[0] <= 200  # 10-100 min awake in bed before sleep onset
        sleep = sp[sp > 0]
        props.append([(sleep == k).mean() for k in range(1, 5)] + [(sp == 0).mean()])
        first_n3_before_rem += np.argmax(sp == 3) < np.argmax(sp == 4)
        half = sp.size // 2
        rem_later += (sp[half:] == 4).sum() > (sp[:half] == 4).sum()
        # Stage 3/4 split of N3, N3 concentrated in the first half of the night.
        assert {"Sleep stage 3", "Sleep stage 4"} <= set(stages)
        assert (sp[:half] == 3).sum() > (sp[half:] == 3).sum()
    props = np.array(props)
    n1, n2, n3, rem, waso = props.mean(axis=0)
    assert 0.04 <= n1 <= 0.12, n1
    assert 0.40 <= n2 <= 0.58, n2
    assert 0.10 <= n3 <= 0.24, n3
    assert 0.15 <= rem <= 0.27, rem
    assert 0.02 <= waso <= 0.15, waso
    assert np.all(props[:, :4] > 0.02) and np.all(props[:, 1] < 0.7)
    assert 0 < sum(movement) and max(movement) <= 15  # a few, short
    assert first_n3_before_rem == n_nights
    assert rem_later >= n_nights - 1


@pytest.mark.parametrize("hours", [1.0, 1.5, 2.0])
def test_short_recordings_contain_every_stage(hours):
    n = int(hours * 120)
    for seed in range(10):
        y = _aasm(generate_hypnogram(n, np.random.default_rng(seed)))
        assert len(y) == n
        assert set(range(len(STAGES))) <= set(y.tolist()), (hours, seed)


def test_stage_proportions_helper():
    props = stage_proportions(["Sleep stage W", "Sleep stage 3", "Sleep stage 4", "Sleep stage ?", "Movement time"])
    assert props == {"W": pytest.approx(1 / 3), "N1": 0.0, "N2": 0.0, "N3": pytest.approx(2 / 3), "REM": 0.0}


# ------------------------------------------------------------------------------------------
# Signals
# ------------------------------------------------------------------------------------------
def test_eeg_shape_units_and_continuity():
    rng = np.random.default_rng(1)
    stages = generate_hypnogram(120, rng)
    x = generate_eeg(stages, FS, rng, SubjectProfile())
    assert x.shape == (120 * 3000,) and x.dtype == np.float64
    assert 3e-6 < x.std() < 1e-4  # volts
    # No discontinuities at epoch boundaries: jumps there look like jumps anywhere else.
    d = np.abs(np.diff(x))
    at_boundary = d[2999::3000]
    assert at_boundary.mean() < 1.5 * d.mean()
    assert np.quantile(at_boundary, 0.95) < np.quantile(d, 0.999)
    # AASM names are accepted too, and other sampling rates work.
    y = generate_eeg(["W", "N1", "N2", "N3", "REM"], 128.0, rng)
    assert y.shape == (5 * 30 * 128,)


def test_stage_signatures():
    """Physiological hallmarks: alpha in wake (Pz-Oz), spindles in N2, >75 uV delta in N3."""
    rng = np.random.default_rng(2)
    prof = SubjectProfile()
    stages = generate_hypnogram(480, rng, prof)
    sig = generate_signals(stages, FS, rng, prof)
    y = _aasm(stages)
    epochs = {ch: x.reshape(len(stages), -1) * 1e6 for ch, x in sig.items()}
    f, p_fpz = welch(epochs["EEG Fpz-Cz"], fs=FS, nperseg=400)
    _, p_pz = welch(epochs["EEG Pz-Oz"], fs=FS, nperseg=400)

    def band(p, lo, hi, k):
        return np.median(p[y == k][:, (f >= lo) & (f < hi)].sum(axis=1))

    assert band(p_pz, 8, 12, 0) > 3 * band(p_pz, 8, 12, 2)  # alpha: W >> N2
    assert band(p_pz, 8, 12, 0) > band(p_pz, 8, 12, 1)  # alpha dropout in N1
    assert band(p_fpz, 11, 16, 2) > 1.5 * band(p_fpz, 11, 16, 4)  # spindles: N2 >> REM
    assert band(p_fpz, 0.5, 2, 3) > 3 * band(p_fpz, 0.5, 2, 2)  # slow waves: N3 >> N2
    assert band(p_fpz, 4, 8, 1) > band(p_fpz, 4, 8, 0)  # theta: N1 > W
    # Slow waves of N3 exceed 75 uV peak-to-peak; REM is low amplitude.
    ptp_n3 = np.ptp(epochs["EEG Fpz-Cz"][y == 3], axis=1)
    assert np.median(ptp_n3) > 75
    assert np.median(epochs["EEG Fpz-Cz"][y == 4].std(axis=1)) < np.median(epochs["EEG Fpz-Cz"][y == 2].std(axis=1))
    # Eye movements: the EOG carries rapid (REM) and slow (N1) eye movements, little in N2.
    eog_sd = epochs["EOG horizontal"].std(axis=1)
    assert np.median(eog_sd[y == 4]) > 1.5 * np.median(eog_sd[y == 2])
    assert np.median(eog_sd[y == 1]) > 1.5 * np.median(eog_sd[y == 2])


# ------------------------------------------------------------------------------------------
# Learnability
# ------------------------------------------------------------------------------------------
BANDS = ((0.5, 2.0), (2.0, 4.0), (4.0, 8.0), (8.0, 12.0), (12.0, 16.0), (16.0, 30.0))


def _features(x: np.ndarray, n_epochs: int) -> np.ndarray:
    """Absolute and relative log band powers per epoch, centred per recording."""
    f, p = welch(x.reshape(n_epochs, -1), fs=FS, nperseg=200)
    bp = np.log(np.stack([p[:, (f >= lo) & (f < hi)].mean(axis=1) for lo, hi in BANDS], axis=1))
    total = np.log(p[:, (f >= 0.5) & (f < 30.0)].mean(axis=1))[:, None]
    feats = np.concatenate([bp, bp - total], axis=1)
    return feats - np.median(feats, axis=0)


def test_learnable_but_not_trivial():
    """Leave-one-subject-out logistic regression on band powers: well above chance, N1 the
    hardest class, and clearly not perfect."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n_subjects, n_epochs = 4, 360  # 4 subjects x 3 h
    xs, ys = [], []
    for s in range(n_subjects):
        rng = np.random.default_rng(1000 + s)
        prof = SubjectProfile.random(rng)
        stages = generate_hypnogram(n_epochs, rng, prof)
        x = generate_eeg(stages, FS, rng, prof)
        y = _aasm(stages)
        keep = y >= 0
        xs.append(_features(x, n_epochs)[keep])
        ys.append(y[keep])
    f1s, accs = [], []
    for test in range(n_subjects):
        train = [i for i in range(n_subjects) if i != test]
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced"))
        clf.fit(np.concatenate([xs[i] for i in train]), np.concatenate([ys[i] for i in train]))
        pred = clf.predict(xs[test])
        f1s.append(f1_score(ys[test], pred, average=None, labels=range(len(STAGES)), zero_division=0))
        accs.append(accuracy_score(ys[test], pred))
    per_class = np.mean(f1s, axis=0)
    macro = per_class.mean()
    assert macro > 0.55, per_class
    assert np.argmin(per_class) == STAGES.index("N1"), per_class
    assert np.mean(accs) < 0.95 and max(accs) < 0.97, accs
    assert per_class.max() < 0.99, per_class
