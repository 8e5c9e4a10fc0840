"""Data-set profiles, hypnogram readers, label maps and the pairing rules (``dsn.data.datasets`` / ``hypnograms``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import SLEEP_EDF, needs_shared

from dsn.data import hypnograms
from dsn.data.datasets import builtin_profiles, describe_name, find_recordings, load_profile, scan
from dsn.data.errors import DataError
from dsn.data.hypnograms import UNANNOTATED, epoch_labels
from dsn.data.labels import IGNORE_INDEX, RK_TO_AASM, map_labels, resolve_label_map
from dsn.data.recording import Preprocessing, load_recording
from dsn.data.synth_layouts import write_layout

CH = {"nsrr": "EEG", "bids": "Fpz-Cz", "generic": "Fpz-Cz"}


@pytest.fixture(scope="session")
def layouts(tmp_path_factory) -> dict[str, Path]:
    """Small synthetic data sets in the nsrr (2 subjects x 2 visits), bids and generic (3 x 1) layouts."""
    root = tmp_path_factory.mktemp("layouts")
    write_layout(root / "nsrr", "nsrr", subjects=2, nights=2, hours=1.0, progress=False)
    for name in ("bids", "generic"):
        write_layout(root / name, name, subjects=3, nights=1, hours=1.0, progress=False)
    return {name: root / name for name in ("nsrr", "bids", "generic")}


def _copy(layouts, name, tmp_path) -> Path:
    dst = tmp_path / name
    shutil.copytree(layouts[name], dst)
    return dst


# ------------------------------------------------------------------------------------------ profiles
def test_builtin_profiles_load_with_their_label_maps_and_aliases():
    assert {"sleep-edf", "nsrr", "bids", "generic"} <= set(builtin_profiles())
    nsrr = load_profile("nsrr")
    assert nsrr.hypnogram_format == "nsrr-xml" and "EEG" in nsrr.channel_aliases["C4-A1"]
    assert load_profile(None).is_default and load_profile("sleep-edf").label_map == resolve_label_map("rk")


def test_unknown_profile_and_bad_profile_files_are_one_line(tmp_path):
    with pytest.raises(DataError, match=r"data.dataset='shhs': no such data-set profile. Built-in: .*nsrr"):
        load_profile("shhs")
    bad = tmp_path / "mine.yaml"
    bad.write_text("extends: generic\nlabel_mapp: aasm\n")
    with pytest.raises(DataError, match=r"mine.yaml: unknown profile key\(s\) \['label_mapp'\]"):
        load_profile(bad)
    bad.write_text("extends: generic\nlabel_map: {Stage X: N5}\n")
    with pytest.raises(DataError, match=r"mine.yaml: .*'Stage X' -> 'N5'.*must be one of"):
        load_profile(bad)


def test_own_profile_extends_a_builtin_one(layouts, tmp_path):
    data = _copy(layouts, "generic", tmp_path)
    for p in data.glob("*_night1.*"):  # lab names: P_01.edf + P_01-hypnogram.csv
        p.rename(p.with_name(p.name.replace("s0", "P_0").replace("_night1.csv", "-hypnogram.csv").replace("_night1", "")))
    mine = tmp_path / "lab.yaml"
    mine.write_text("extends: generic\nchannel_aliases: {Fpz-Cz: [EEG1]}\n")
    prof = load_profile(mine)
    assert prof.name == "lab" and prof.channel_aliases == {"Fpz-Cz": ["EEG1"]}
    recs = find_recordings(data, mine)
    assert [(r.name, r.subject, r.night, r.hypnogram.name) for r in recs] == [
        (f"P_0{i}", f"P_0{i}", 1, f"P_0{i}-hypnogram.csv") for i in (1, 2, 3)
    ]


# ------------------------------------------------------------------------------------------ discovery
def test_nsrr_same_nsrrid_in_two_visits_is_one_subject(layouts):
    recs = find_recordings(layouts["nsrr"], "nsrr")
    assert [(r.name, r.subject, r.night) for r in recs] == [
        ("shhs1-200001", "shhs-200001", 1), ("shhs1-200002", "shhs-200002", 1),
        ("shhs2-200001", "shhs-200001", 2), ("shhs2-200002", "shhs-200002", 2),
    ]
    assert all(r.hypnogram.name == f"{r.name}-nsrr.xml" for r in recs)  # found in another folder
    assert describe_name("mros-visit2-aa0042.edf", load_profile("nsrr"))["subject"] == "mros-aa0042"
    assert describe_name("mros-visit2-aa0042.edf", load_profile("nsrr"))["night"] == 2


def test_bids_subject_and_session(layouts):
    recs = find_recordings(layouts["bids"], "bids")
    assert [(r.subject, r.night, r.hypnogram.name) for r in recs] == [
        (f"sub-0{i}", 1, f"sub-0{i}_ses-01_task-sleep_events.tsv") for i in (1, 2, 3)
    ]
    info = describe_name("sub-07/eeg/sub-07_task-sleep_run-2_eeg.edf", load_profile("bids"))
    assert (info["subject"], info["night"], info["kind"]) == ("sub-07", 1, "recording")


def test_pairing_problems_are_one_line_each(layouts, tmp_path):
    data = _copy(layouts, "bids", tmp_path)
    (data / "sub-01/ses-01/eeg/sub-01_ses-01_task-sleep_events.tsv").unlink()
    extra = data / "sub-09/ses-01/eeg"
    extra.mkdir(parents=True)
    (extra / "sub-09_ses-01_task-sleep_events.tsv").write_text("onset\tduration\ttrial_type\n")
    found = scan(data, "bids")
    assert len(found.problems) == 1 and "sub-01_ses-01_task-sleep_eeg.edf: no hypnogram found" in found.problems[0]
    assert len(found.notes) == 1 and "sub-09_ses-01_task-sleep_events.tsv: hypnogram without a recording" in found.notes[0]
    assert [r.subject for r in found.recordings] == ["sub-02", "sub-03"]
    with pytest.raises(DataError, match="no hypnogram found"):
        find_recordings(data, "bids")


def test_sleep_edf_stays_the_default_profile(synth_dir):
    recs = find_recordings(synth_dir)
    assert recs == find_recordings(synth_dir, "sleep-edf") and all(r.profile.is_default for r in recs)
    assert [r.name for r in recs][:2] == ["SC4001E0", "SC4011E0"]


# ------------------------------------------------------------------------------------------ label maps
@pytest.mark.parametrize(("label", "stage"), [
    ("Sleep stage 2", 2), ("Stage 2 sleep|2", 2), ("N2", 2), ("NREM2", 2), ("nrem 2", 2), ("W", 0), ("Wake", 0),
    ("R", 4), ("REM", 4), ("Sleep stage 4", 3), ("S3", 3), ("Stage 4 sleep|4", 3), ("Movement time", IGNORE_INDEX),
    ("Artefact", IGNORE_INDEX), ("Unscored|9", IGNORE_INDEX),
])
def test_label_spellings(label, stage):
    lm = resolve_label_map(["nsrr", "aasm"])
    assert map_labels([label], lm, "f") == [stage]


def test_integer_maps_are_stated_not_guessed():
    assert list(map_labels(["0", "4", "5"], resolve_label_map("int-rk"), "f")) == [0, 3, 4]
    assert list(map_labels(["0", "4"], resolve_label_map("int-aasm"), "f")) == [0, 4]
    with pytest.raises(ValueError, match=r"f.csv: unknown sleep-stage label\(s\) \['2', '4'\]. Extend .*my map"):
        map_labels(["2", "4"], resolve_label_map("aasm"), "f.csv", "my map")


# ------------------------------------------------------------------------------------------ readers
def _xml(path, events, clock="00.00.00 22.00.00"):
    body = "".join(
        f"<ScoredEvent><EventType>{t}</EventType><EventConcept>{c}</EventConcept><Start>{s}</Start>"
        f"<Duration>{d}</Duration></ScoredEvent>" for t, c, s, d in events
    )
    head = (f"<ScoredEvent><EventType/><EventConcept>Recording Start Time</EventConcept><Start>0</Start>"
            f"<Duration>0</Duration><ClockTime>{clock}</ClockTime></ScoredEvent>") if clock else ""
    path.write_text(f"<PSGAnnotation><EpochLength>30</EpochLength><ScoredEvents>{head}{body}</ScoredEvents></PSGAnnotation>")
    return path


def test_nsrr_xml_reads_stages_only(tmp_path):
    path = _xml(tmp_path / "a-nsrr.xml", [("Stages|Stages", "Wake|0", 0, 60), ("Arousals|Arousals", "Arousal ()", 40, 5),
                                          ("Stages|Stages", "Stage 2 sleep|2", 60, 90)])
    hyp = hypnograms.read_nsrr_xml(path)
    assert hyp.labels == ["Wake|0", "Stage 2 sleep|2"] and list(hyp.onsets) == [0, 60] and list(hyp.durations) == [60, 90]
    assert hyp.clock_only and hyp.start.time().hour == 22


def test_bids_events_column_is_configurable(tmp_path):
    path = tmp_path / "x_events.tsv"
    path.write_text("onset\tduration\tstage\ttrial_type\n0\t30\tW\tsleep\n30\tn/a\tN1\tsleep\n40\t3\t\tarousal\n"
                    "60\t30\tn/a\tsleep\n")
    hyp = hypnograms.read_bids_events(path, {"column": "stage"})
    assert hyp.labels == ["W", "N1", "n/a"] and list(hyp.durations) == [30, 30, 30]  # n/a duration: one epoch
    assert list(map_labels(hyp.labels, resolve_label_map("aasm"), "x")) == [0, 1, IGNORE_INDEX]  # n/a stage: unscored
    assert hypnograms.read_bids_events(path, {"skip": ["arousal"]}).labels == ["sleep", "sleep", "sleep"]
    with pytest.raises(DataError, match=r"x_events.tsv: events file without column\(s\) \['sleep_stage'\].*column: NAME"):
        hypnograms.read_bids_events(path, {"column": "sleep_stage"})


@pytest.mark.parametrize(("text", "suffix"), [
    ("W\nN1\nN2\nN2\n", ".txt"),
    ("stage\nW\nN1\nN2\nN2\n", ".csv"),
    ("epoch,stage\n1,W\n2,N1\n3,N2\n4,N2\n", ".csv"),
    ("onset\tduration\tstage\n0\t30\tW\n30\t30\tN1\n60\t60\tN2\n", ".tsv"),
])
def test_table_forms(tmp_path, text, suffix):
    path = tmp_path / f"h{suffix}"
    path.write_text(text)
    hyp = hypnograms.read_table(path)
    codes = map_labels(hyp.labels, resolve_label_map("aasm"), str(path))
    y = hypnograms.place(hyp, codes, 4)
    assert list(y) == [0, 1, 2, 2]


def test_table_without_header_of_several_columns_is_refused(tmp_path):
    path = tmp_path / "h.csv"
    path.write_text("1,W\n2,N1\n")
    with pytest.raises(DataError, match=r"h.csv: 2 columns without a header"):
        hypnograms.read_table(path)


def test_table_stray_row_shows_its_content_and_the_fix(tmp_path):
    """Issue 30: a stray line was "row 151 has no column 2": the message now quotes it and says what to do."""
    path = tmp_path / "h.csv"
    path.write_text("epoch,stage\n" + "".join(f"{i},N2\n" for i in range(149)) + "149\n")
    with pytest.raises(DataError, match=r"h\.csv: line 151 '149' has 1 column\(s\) but the header 'epoch,stage' has 2 "
                       r"\(column 2 is missing\): complete that line or delete it\.$"):
        hypnograms.read_table(path)
    path.write_text("onset,duration,stage\n0,30,W\n30,30\n")
    with pytest.raises(DataError, match=r"h\.csv: line 3 '30,30' has 2 column\(s\) but the header 'onset,duration,stage' "
                       r"has 3 \(column 3 is missing\)"):
        hypnograms.read_table(path)


# ------------------------------------------------------------------------------------------ epoch rules
def _hyp(onsets, durations, labels, **kw):
    return hypnograms.Hypnogram(np.array(onsets, float), np.array(durations, float), labels, "h.tsv", **kw)


def _codes(labels):
    return map_labels(labels, resolve_label_map("aasm"), "h.tsv")


def test_hypnogram_starting_later_leaves_the_first_epochs_unscored():
    hyp = _hyp([60, 90], [30, 30], ["N1", "N2"])
    assert list(hypnograms.place(hyp, _codes(hyp.labels), 4)) == [UNANNOTATED, UNANNOTATED, 1, 2]
    import datetime as dt

    t0 = dt.datetime(2020, 1, 1, 22, 0, 0)
    later = _hyp([0, 30], [30, 30], ["N1", "N2"], start=t0 + dt.timedelta(seconds=60))  # placed by its start time
    assert list(hypnograms.place(later, _codes(later.labels), 4, psg_start=t0)) == [UNANNOTATED, UNANNOTATED, 1, 2]


def test_off_grid_offset_and_20s_epochs_are_refused():
    import datetime as dt

    t0 = dt.datetime(2020, 1, 1, 22, 0, 0)
    off = _hyp([0, 30], [30, 30], ["N1", "N2"], start=t0 + dt.timedelta(seconds=10))
    with pytest.raises(DataError, match=r"h.tsv: a scored stage starts at 10 s .* not on its 30-s epoch grid \(hypnogram offset \+10 s\)"):
        hypnograms.place(off, _codes(off.labels), 4, psg_start=t0)
    mass = _hyp([0, 20, 40, 60], [20] * 4, ["W", "N1", "N2", "N2"])
    with pytest.raises(DataError, match=r"scored in 20-s epochs .* set data.epoch_sec: 20"):
        hypnograms.place(mass, _codes(mass.labels), 4)
    assert list(hypnograms.place(mass, _codes(mass.labels), 4, epoch_sec=20.0)) == [0, 1, 2, 2]
    per_epoch = _hyp([0, 20], [20, 20], ["W", "N1"], per_epoch=True)
    with pytest.raises(DataError, match=r"scored in 20-s epochs \(the profile's epoch_sec\)"):
        hypnograms.place(per_epoch, _codes(per_epoch.labels), 2, hyp_epoch_sec=20.0)


def test_overrun_raises_naming_seconds_or_crops():
    hyp = _hyp([0, 30, 60], [30, 30, 120], ["W", "N1", "N2"])
    with pytest.raises(DataError, match=r"h.tsv: hypnogram longer than the signal: scored stages run to 180 s .*\(90 s\)"):
        hypnograms.place(hyp, _codes(hyp.labels), 3)
    assert list(hypnograms.place(hyp, _codes(hyp.labels), 3, length_mismatch="crop")) == [0, 1, 2]
    early = _hyp([-60, 0], [60, 90], ["W", "N1"])
    with pytest.raises(DataError, match=r"scored stages begin 60 s before the recording starts"):
        hypnograms.place(early, _codes(early.labels), 3)
    assert list(hypnograms.place(early, _codes(early.labels), 3, length_mismatch="crop")) == [1, 1, 1]


# ------------------------------------------------------------------------------------------ whole recordings
@pytest.mark.parametrize("layout", ["nsrr", "bids", "generic"])
def test_each_layout_loads_the_same_stages_as_it_was_written(layouts, layout, tmp_path):
    files = find_recordings(layouts[layout], layout)[0]
    rec = load_recording(files, Preprocessing(channels=(CH[layout],), trim_minutes=None, unscored="mask"), tmp_path)
    assert rec.x.shape == (120, 1, 3000) and rec.sfreq == 100.0
    # the generator's stages of subject 0 night 1, written in every layout's own spelling
    ref = find_recordings(layouts["generic"], "generic")[0]
    y_ref = hypnograms.stage_labels(ref, 120)
    y_ref[y_ref == UNANNOTATED] = IGNORE_INDEX
    np.testing.assert_array_equal(rec.y, y_ref)
    assert {0, 1, 2, 3, 4} <= set(rec.y.tolist())


def test_unknown_label_stops_loading_and_leaves_no_cache_entry(layouts, tmp_path):
    data = _copy(layouts, "nsrr", tmp_path)
    xml = next(data.rglob("shhs1-200001-nsrr.xml"))
    xml.write_text(xml.read_text().replace("Stage 2 sleep|2", "Stage N2 sleep|2", 1))
    files = find_recordings(data, "nsrr")[0]
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=r"shhs1-200001-nsrr.xml: unknown sleep-stage label\(s\) \['Stage N2 sleep\|2'\]"
                                        r".*label_map of the 'nsrr' profile"):
        load_recording(files, Preprocessing(channels=("EEG",)), cache)
    assert not cache.exists() or not any(cache.iterdir())


def test_renamed_hypnogram_of_another_night_is_refused(synth_dir, tmp_path):
    from dsn.data.synth import write_recording

    write_recording(tmp_path, 0, 1, hours=1.0)
    _, other = write_recording(tmp_path / "n2", 0, 2, hours=1.0)  # the next night of the same subject
    mine = next(tmp_path.glob("*-Hypnogram.edf"))
    shutil.copy(other, mine)
    files = find_recordings(tmp_path)[0]
    with pytest.raises(DataError, match=r"Hypnogram.edf: its scored stages .* do not overlap .*PSG.edf.*\+\d+ s from the "
                                        r"recording's start.*another night's hypnogram"):
        load_recording(files, Preprocessing(), tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_cache_key_follows_the_profile_reading(layouts, tmp_path):
    files = find_recordings(layouts["generic"], "generic")[0]
    a = load_recording(files, Preprocessing(channels=("Fpz-Cz",)), tmp_path)
    mine = tmp_path / "int.yaml"
    mine.write_text("extends: generic\nlabel_map: [aasm, int-aasm, {N1: N2}]\n")
    b = load_recording(find_recordings(layouts["generic"], mine)[0], Preprocessing(channels=("Fpz-Cz",)), tmp_path)
    assert len(list(tmp_path.glob("s01_night1-*"))) == 2  # another label map is another entry
    assert (a.y == 1).any() and not (b.y == 1).any()


@needs_shared(SLEEP_EDF)
def test_real_sleep_edf_labels_through_the_profile_equal_the_direct_reading(tmp_path):
    (tmp_path / "SC4001E0-PSG.edf").symlink_to(SLEEP_EDF / "SC4001E0-PSG-first300s.edf")
    (tmp_path / "SC4001EC-Hypnogram.edf").symlink_to(SLEEP_EDF / "SC4001EC-Hypnogram.edf")
    files = find_recordings(tmp_path)[0]
    y = hypnograms.stage_labels(files, 10, length_mismatch="crop")
    hyp = hypnograms.read_edf_annotations(files.hypnogram)
    on, du, lab = hyp.onsets, hyp.durations, hyp.labels
    np.testing.assert_array_equal(y, epoch_labels(on, du, lab, 10, 30.0, RK_TO_AASM, "crop"))


# ------------------------------------------------------------------------------------------ training
def _fit_argv(data, layout, home, tmp_path, *extra):
    return ["fit", "--config", "conf/demo.yaml", "--config", "conf/debug.yaml", "--data.dataset", layout,
            "--data.data_dir", str(data), "--data.channels", f"[{CH[layout]}]", "--data.cache_dir", str(tmp_path / "cache"),
            "--data.n_folds", "3", "--data.progress", "false", "--net.small_kernel", "50",
            "--finetune.net.hidden_size", "16", "--finetune.net.shortcut_size", "32", "--finetune.batch_size", "2",
            "--finetune.seq_len", "5", "--tracking.home", str(home), *extra]


def _runs(home):
    import mlflow

    from dsn import tracking

    c = mlflow.MlflowClient(tracking.tracking_uri(None, home))
    exp = c.get_experiment_by_name("dsn-debug")
    return [] if exp is None else c.search_runs([exp.experiment_id])


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["bids", "generic"])
def test_layout_trains_both_stages(layouts, layout, tracking_home, tmp_path, monkeypatch):
    from dsn.cli import main as cli_main

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    assert cli_main(_fit_argv(layouts[layout], layout, tracking_home, tmp_path)) == 0
    runs = _runs(tracking_home)
    assert runs and all(r.info.status == "FINISHED" for r in runs)
    assert any("test/f1_macro" in r.data.metrics for r in runs)


def test_bad_label_in_fit_is_one_line_and_leaves_no_run_no_cache(layouts, tracking_home, tmp_path, monkeypatch, capsys):
    from dsn.cli import main as cli_main

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    data = _copy(layouts, "bids", tmp_path)
    events = data / "sub-02/ses-01/eeg/sub-02_ses-01_task-sleep_events.tsv"
    events.write_text(events.read_text().replace("\tN3\n", "\tSWS4\n", 1))
    assert cli_main(_fit_argv(data, "bids", tracking_home, tmp_path)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sub-02_ses-01_task-sleep_events.tsv: unknown sleep-stage label(s) ['SWS4']" in err[0]
    assert _runs(tracking_home) == []
    cache = tmp_path / "cache"
    assert not any(p.name.startswith("sub-02") for p in cache.iterdir()) if cache.exists() else True


# ------------------------------------------------------------------------------------------ dsn data
def test_dsn_data_lists_recordings_channels_and_stages(layouts, capsys):
    from dsn.cli import main as cli_main

    assert cli_main(["data", str(layouts["nsrr"]), "--dataset", "nsrr", "--channels", "[C4-A1, EOG(L)]"]) == 0
    out = capsys.readouterr().out
    assert "4 recordings, 2 subjects, 4.0 h" in out and "no problems" in out
    row = next(ln for ln in out.splitlines() if ln.startswith("shhs2-200001"))
    assert "shhs-200001" in row and "EEG 125 Hz, EOG(L) 50 Hz" in row  # C4-A1 found as EEG by the profile's alias
    y = hypnograms.stage_labels(find_recordings(layouts["nsrr"], "nsrr")[2], 120)
    assert row.split()[4:9] == [str(int((y == i).sum())) for i in range(5)]


def test_dsn_data_lists_every_problem_and_exits_non_zero(layouts, tmp_path, capsys):
    from dsn.cli import main as cli_main

    data = _copy(layouts, "generic", tmp_path)
    (data / "s01_night1.csv").unlink()
    (data / "s02_night1.csv").write_text((data / "s02_night1.csv").read_text().replace(",N2\n", ",Stage Two\n", 1))
    rc = cli_main(["data", str(data), "--dataset", "generic", "--channels", "[Fpz-Cz, EMG]"])
    out, err = capsys.readouterr()
    problems = [ln.strip() for ln in out.split("problem(s) that would stop dsn fit:")[1].splitlines() if ln.strip()]
    assert rc == 1 and "4 problem(s) would stop dsn fit" in err
    assert len(problems) == 4  # no hypnogram, unknown label, and EMG missing in the two recordings left
    assert any("s01_night1.edf: no hypnogram found" in p for p in problems)
    assert any("s02_night1.csv: unknown sleep-stage label(s) ['Stage Two']" in p for p in problems)
    assert sum("channel 'EMG' not found" in p for p in problems) == 2


# ------------------------------------------------------------------------------------------ dsn evaluate
@pytest.fixture
def model_ckpt(tmp_path) -> Path:
    """A small untrained sequence model saved as dsn fit saves selected.ckpt (enough to test the plumbing)."""
    import torch

    from dsn.models import DeepFeatureNet, DeepSleepNet
    from dsn.models.scoring import SleepScorer

    torch.manual_seed(0)
    net_cfg = {"n_filters_first": 8, "n_filters": 8}
    ft_cfg = {"hidden_size": 8, "shortcut_size": 16}
    pre = {"channel": "EEG Fpz-Cz", "sfreq": 100.0, "epoch_sec": 30.0, "trim_minutes": 30.0, "unscored": "drop",
           "normalize": "zscore"}
    scorer = SleepScorer(DeepSleepNet(DeepFeatureNet(**net_cfg), **ft_cfg), pre, {"net": net_cfg, "finetune_net": ft_cfg},
                         seq_len=5)
    path = tmp_path / "selected.ckpt"
    torch.save({"dsn_scorer": scorer.spec(), "state_dict": scorer.state_dict()}, path)
    return path


def test_evaluate_pools_recordings_and_names_a_cross_montage_check(layouts, model_ckpt, tracking_home, tmp_path, capsys):
    import json

    from dsn.cli import main as cli_main

    out = tmp_path / "out"
    argv = ["evaluate", "--model", str(model_ckpt), "--data.data_dir", str(layouts["nsrr"]), "--data.dataset", "nsrr",
            "--data.cache_dir", str(tmp_path / "c"), "--out", str(out), "--tracking.home", str(tracking_home)]
    assert cli_main(argv) == 1  # Fpz-Cz is not in an NSRR file: one line naming the file and the fix
    err = capsys.readouterr().err
    assert "channel 'EEG Fpz-Cz' not found" in err and "(for the model's EEG Fpz-Cz)" in err and "--data.channels" in err
    assert not (tmp_path / "c").exists()
    assert cli_main([*argv, "--data.channels", "[EEG]"]) == 0
    printed = capsys.readouterr().out
    assert "cross-montage check: the model's EEG Fpz-Cz read from EEG (C4-A1)" in printed
    s = json.loads((out / "evaluate_summary.json").read_text())
    assert s["cross_montage"] and s["n_recordings"] == 4 and s["n_subjects"] == 2
    pooled, per = s["pooled"], s["per_recording"]
    np.testing.assert_array_equal(np.sum([r["confusion"] for r in per], axis=0), pooled["confusion"])
    cm = np.array(pooled["confusion"])
    assert pooled["n_epochs"] == cm.sum() and pooled["acc"] == pytest.approx(np.trace(cm) / cm.sum())
    import mlflow

    from dsn import tracking

    c = mlflow.MlflowClient(tracking.tracking_uri(None, tracking_home))
    exp = c.get_experiment_by_name("dsn-evaluate")
    runs = c.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and runs[0].data.tags["dsn.cross_montage"] == "true"
    assert runs[0].data.metrics["eval/f1_macro"] == pytest.approx(pooled["f1_macro"])
    # each recording's verdict (dsn.trust), counted in the pooled table and the run
    assert sum(s["verdicts"].values()) == 4 and all(r["trust"]["verdict"] in s["verdicts"] for r in per)
    assert "verdicts: " + ", ".join(f"{n} {v}" for v, n in s["verdicts"].items()) in printed
    assert runs[0].data.metrics["eval/n_do_not_use"] == s["verdicts"]["do not use"]


def test_evaluate_finds_the_models_channel_by_alias(layouts, model_ckpt, tmp_path):
    from dsn.workflows.evaluate import evaluate

    s = evaluate(str(model_ckpt), layouts["bids"], "bids", cache_dir=str(tmp_path / "c"))
    assert s["channels"][0]["read"] == "Fpz-Cz" and not s["cross_montage"]
    assert s["pooled"]["n_epochs"] == sum(r["n_epochs"] for r in s["per_recording"]) > 0


@pytest.mark.slow
def test_bench_profiles_smoke(capsys, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("dsn_bench_profiles", Path(__file__).resolve().parents[1] / "benchmarks"
                                                  / "bench_profiles.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--smoke", "--data", str(tmp_path)])
    out = capsys.readouterr().out
    for text in ["before profiles (Sleep-EDF path)", "through the sleep-edf profile", "NSRR layout", "find_recordings"]:
        assert text in out


# ------------------------------------------------------------------------------------------ BDF (24-bit EDF)
def _to_bdf(edf_path: Path) -> Path:
    """The same recording written as BDF (BioSemi's 24-bit EDF) next to it; the EDF file removed."""
    from edfio import Bdf, BdfSignal, read_edf

    edf = read_edf(edf_path)
    signals = [BdfSignal(s.data, s.sampling_frequency, label=s.label, physical_dimension=s.physical_dimension,
                         physical_range=s.physical_range) for s in edf.signals]
    bdf_path = edf_path.with_suffix(".bdf")
    Bdf(signals, patient=edf.patient, recording=edf.recording, starttime=edf.starttime,
        data_record_duration=edf.data_record_duration).write(bdf_path)
    return bdf_path


def test_a_bids_bdf_recording_reads_as_its_edf(layouts, tmp_path):
    from dsn.data.psg import read_epochs
    from dsn.workflows.data import edf_header, inspect

    data = _copy(layouts, "bids", tmp_path)
    edf = data / "sub-01/ses-01/eeg/sub-01_ses-01_task-sleep_eeg.edf"
    p = Preprocessing(channels=(CH["bids"],), trim_minutes=30.0, unscored="drop")
    as_edf = load_recording(find_recordings(data, "bids")[0], p, tmp_path / "c1")
    header = edf_header(edf)
    bdf = _to_bdf(edf)
    edf.unlink()
    recs = find_recordings(data, "bids")
    assert recs[0].psg == bdf and recs[0].subject == "sub-01" and recs[0].hypnogram.name.endswith("_events.tsv")
    as_bdf = load_recording(recs[0], p, tmp_path / "c2")
    np.testing.assert_array_equal(as_bdf.y, as_edf.y)
    lo, hi = read_edf_range(bdf, CH["bids"])
    np.testing.assert_allclose(np.asarray(as_bdf.x), np.asarray(as_edf.x), atol=(hi - lo) / 65535 + 1e-3)
    assert edf_header(bdf) == header  # duration and every channel's rate (128 Hz EEG, as BIDS sets have)
    assert read_epochs(bdf, CH["bids"], 100.0).x.shape[1:] == (1, 3000)  # what dsn predict reads
    report = inspect(data, "bids", [CH["bids"]])
    assert not report.problems and any("sub-01_ses-01_task-sleep_eeg.bdf" in str(r) for r in report.recordings)


def read_edf_range(path: Path, label: str) -> tuple[float, float]:
    from edfio import read_bdf

    sig = next(s for s in read_bdf(path).signals if s.label == label)
    return sig.physical_range


def test_a_truncated_bdf_file_is_one_line(layouts, tmp_path):
    from dsn.data.edf import read_header

    data = _copy(layouts, "bids", tmp_path)
    bdf = _to_bdf(data / "sub-02/ses-01/eeg/sub-02_ses-01_task-sleep_eeg.edf")
    bdf.write_bytes(bdf.read_bytes()[:-3000])
    with pytest.raises(DataError, match=r"_eeg\.bdf: truncated BDF file: \d+ bytes but its header announces"):
        read_header(bdf)
