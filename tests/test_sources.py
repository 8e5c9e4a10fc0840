"""Several data sets in one fit (``data.sources``): the config's one form and its errors, the split within each
source or of a held-out source, source-balanced oversampling, cv folds, and (slow) a fit on Sleep-EDF, NSRR and
BIDS layouts of `dsn synth` mapped onto [EEG, EOG] whose model scores a night of each layout."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from dsn import config
from dsn.data.datamodule import SleepEDFDataModule
from dsn.data.errors import DataError
from dsn.data.sources import source_groups, source_list, split_sources
from dsn.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
DEBUG = ["--config", "conf/demo.yaml", "--config", "conf/debug.yaml"]


@pytest.fixture(autouse=True)
def _project_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def _parse(*sources, extra=()):
    return config.parse([*DEBUG, "--data.channels", "[EEG, EOG]", "--data.sources", json.dumps(list(sources)), *extra])


def _two_halves(synth_dir) -> list[dict]:
    """The shared 6-subject Sleep-EDF set as two sources of three subjects each."""
    return [{"name": "a", "data_dir": str(synth_dir), "subjects": [0, 1, 2],
             "channels": {"EEG": "EEG Fpz-Cz", "EOG": "EOG horizontal"}},
            {"name": "b", "data_dir": str(synth_dir), "subjects": [3, 4, 5], "channels": ["Fpz-Cz", "EOG horizontal"]}]


# ------------------------------------------------------------------------------------------- config
def test_without_sources_the_config_is_as_before():
    cfg = config.parse(DEBUG)
    assert cfg.data.sources is None and cfg.data.test_sources is None and cfg.data.balance_sources is False
    assert "sources" not in config.normalized_data({"channels": ["EEG Fpz-Cz"]})


def test_sources_are_written_in_one_form_and_survive_set_keys(tmp_path):
    cfg = _parse({"dataset": "nsrr", "data_dir": str(tmp_path), "channels": {"EOG": "EOG(L)"}},
                 {"name": "lab", "dataset": "bids", "data_dir": str(tmp_path), "channels": ["Fpz-Cz", "E1=E1 - M2"]})
    a, b = cfg.data.sources
    assert a["name"] == "nsrr" and a["channels"] == {"EEG": "EEG", "EOG": "EOG(L)"}  # unmapped: the montage's name
    assert b["name"] == "lab" and b["channels"] == {"EEG": "Fpz-Cz", "EOG": "E1=E1 - M2"} and b["recordings"] is None
    again = config.set_keys(cfg, {"data.fold": 1, "pretrain.system.lr": 0.01})  # what a sweep trial or cv fold does
    assert again.data.sources == cfg.data.sources and again.data.fold == 1
    swapped = config.set_keys(cfg, {"data.channels": ["EOG", "EEG"], "data.recordings": [2]})  # mapped by name
    src = source_list(swapped.data.sources, swapped.data.channels, None, swapped.data.recordings)
    assert src[1].channels == ("E1=E1 - M2", "Fpz-Cz") and src[1].recordings == [2]


@pytest.mark.parametrize(("source", "extra", "needle"), [
    ({"name": "x", "dataset": "nsrr"}, (), "data.sources[0] (x): no data_dir; give the folder"),
    ({"data_dir": "d", "channels": {"EMG": "Chin"}}, (), "names ['EMG'], not channels of data.channels"),
    ({"data_dir": "d", "channels": ["Fpz-Cz"]}, (), "give one label or derivation per channel"),
    ({"data_dir": "d", "dataset": "nosuchprofile"}, (), "data.sources[0] (nosuchprofile).dataset"),
    ({"data_dir": "d", "colour": "red"}, (), "unknown key(s) ['colour']"),
    ({"data_dir": "d", "name": "a/b"}, (), "name='a/b': use letters"),
    ({"data_dir": "d"}, ("--data.test_sources", "[elsewhere]"), "['elsewhere'] not among the sources"),
    ({"data_dir": "d"}, ("--data.test_sources", "[sleep-edf]"), "holds out every source"),
])
def test_a_bad_source_is_one_line_naming_it(source, extra, needle):
    with pytest.raises(ConfigError) as e:
        _parse(source, extra=extra)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_two_sources_of_one_name_and_options_without_sources_are_refused():
    with pytest.raises(ConfigError, match=r"\['s'\] are used twice"):
        _parse({"name": "s", "data_dir": "d"}, {"name": "s", "data_dir": "e"})
    with pytest.raises(ConfigError, match="balance_sources: true needs data.sources"):
        config.parse([*DEBUG, "--data.balance_sources", "true"])
    with pytest.raises(ConfigError, match="test_sources=.* needs data.sources"):
        config.parse([*DEBUG, "--data.test_sources", "[a]"])


# ------------------------------------------------------------------------------------------- splits and sampling
def test_split_sources_splits_within_each_source_or_holds_one_out():
    subjects = {"a": [f"a-{i}" for i in range(4)], "b": [f"b-{i}" for i in range(3)]}
    folds = [split_sources(subjects, None, 3, k, 1, 0) for k in range(3)]
    for s in folds:  # every split has subjects of both sources
        for part in (s.train, s.val, s.test):
            assert {x[0] for x in part} == {"a", "b"}
    for src, subs in subjects.items():  # the test folds of each source partition its subjects
        tested = [x for s in folds for x in s.test if x.startswith(src)]
        assert sorted(tested) == sorted(subs)
    held = split_sources(subjects, ["b"], 3, 0, 1, 0)
    assert held.test == tuple(subjects["b"]) and len(held.val) == 1 and set(held.train) | set(held.val) == set(subjects["a"])
    with pytest.raises(DataError, match=r"source b: n_folds=4: need 2 <= n_folds <= number of subjects \(3\)"):
        split_sources(subjects, None, 4, 0, 1, 0)
    with pytest.raises(DataError, match=r"source b: 1 subject\(s\), not enough for 1 validation"):
        split_sources({**subjects, "b": ["b-0"]}, ["a"], 3, 0, 1, 0)


def test_source_balanced_oversampling_gives_every_source_and_class_the_same_count():
    from dsn.data.recording import Recording
    from dsn.data.sampling import BalancedSampler, EpochDataset

    rng = np.random.default_rng(0)
    recs = [Recording(n, n, 1, np.zeros((len(y), 1, 4), np.float32), y, 100.0)
            for n, y in (("big", rng.integers(0, 5, 400)), ("small", rng.integers(-1, 5, 60)))]
    ds = EpochDataset(recs)
    groups = source_groups(recs, {"big": "A", "small": "B"}, ds.labels, ["A", "B"])
    assert len(groups) == len(ds) and np.array_equal(groups % 5, ds.labels)  # class kept in the group
    idx = np.asarray(list(BalancedSampler(groups, seed=0)))
    src = (idx >= int((recs[0].y >= 0).sum())).astype(int)
    counts = np.bincount(src * 5 + ds.labels[idx], minlength=10)
    assert (counts == counts.max()).all()  # every (source, class) pair equally often


def test_data_module_reads_each_source_with_its_labels_and_prefixed_ids(synth_dir, tmp_path):
    cfg = _parse(*_two_halves(synth_dir), extra=("--data.n_folds", "3", "--data.cache_dir", str(tmp_path / "c")))
    dm = SleepEDFDataModule(**config.to_dict(cfg.data), mode="pretrain")
    dm.setup()
    names = [r.name for recs in dm.recordings.values() for r in recs]
    assert sorted(names) == sorted([f"a-SC40{i}1E0" for i in range(3)] + [f"b-SC40{i}1E0" for i in range(3, 6)])
    assert {dm.source_of[n] for n in names} == {"a", "b"} and dm.source_counts()["b"] == {"train": 1, "val": 1, "test": 1}
    assert all(r.x.shape[1] == 2 for recs in dm.recordings.values() for r in recs)
    prep = dm.scorer_preprocessing()
    assert prep["channels"] == ["EEG", "EOG"] and set(prep["channel_aliases"]["EEG"]) == {"EEG Fpz-Cz", "Fpz-Cz"}
    assert [s["channels"] for s in prep["sources"]] == [{"EEG": "EEG Fpz-Cz", "EOG": "EOG horizontal"},
                                                        {"EEG": "Fpz-Cz", "EOG": "EOG horizontal"}]
    from dsn.workflows.run import format_data_summary

    assert "source b: 1 train, 1 val, 1 test recordings" in format_data_summary(dm.summary())


def test_a_model_without_sources_says_nothing_of_them():
    from types import SimpleNamespace

    from dsn.workflows.evaluate import trained_on_entry

    old = SimpleNamespace(preprocessing={"channels": ["EEG Fpz-Cz"], "sfreq": 100.0})
    assert trained_on_entry(old) == {}
    new = SimpleNamespace(preprocessing={**old.preprocessing, "sources": [{"name": "a"}]})
    assert trained_on_entry(new) == {"trained_on": [{"name": "a"}]}


def test_a_source_lacking_a_montage_channel_names_source_file_channel_and_fix(synth_dir, tmp_path):
    bad = _two_halves(synth_dir)
    bad[1]["channels"] = {"EEG": "Fpz-Cz", "EOG": "EOG(L)"}
    cfg = _parse(*bad, extra=("--data.n_folds", "3", "--data.cache_dir", str(tmp_path / "c")))
    dm = SleepEDFDataModule(**config.to_dict(cfg.data), mode="pretrain")
    with pytest.raises(DataError) as e:
        dm.setup()
    msg = str(e.value)
    assert msg.startswith("data.sources b: ") and "-PSG.edf has no channel for the montage's EOG" in msg
    assert "EOG horizontal" in msg and "sources[b].channels: {EOG: LABEL}" in msg and "\n" not in msg


def test_cv_builds_folds_within_each_source(synth_dir, tmp_path):
    from dsn.workflows.cv.command import fit_config

    argv = [*DEBUG, "--data.channels", "[EEG, EOG]", "--data.sources", json.dumps(_two_halves(synth_dir)),
            "--data.cache_dir", str(tmp_path / "c"), "--folds", "3"]
    cfg, extra = fit_config(argv)
    base = config.set_keys(cfg, {"data.n_folds": extra["folds"], "tracking.register": None})
    tested = []
    for k in range(3):
        dm = SleepEDFDataModule(**config.to_dict(config.set_key(base, "data.fold", k).data), mode="pretrain")
        dm._discover()
        split = dm.make_split()
        assert sorted(s[0] for s in split.test) == ["a", "b"]  # one test subject of each source per fold
        tested += split.test
    assert sorted(tested) == sorted([f"a-SC40{i}" for i in range(3)] + [f"b-SC40{i}" for i in range(3, 6)])


# ------------------------------------------------------------------------------------------- fits (slow)
LAYOUT_LABELS = {"sleep-edf": {"EEG": "EEG Fpz-Cz", "EOG": "EOG horizontal"},
                 "nsrr": {"EEG": "EEG", "EOG": "EOG=EOG(L) - EOG(R)"},  # a derivation of this source's labels
                 "bids": {"EEG": "Fpz-Cz", "EOG": "EOG"}}
#: The file labels each layout's night is read from.
READ = {"sleep-edf": ["EEG Fpz-Cz", "EOG horizontal"], "nsrr": ["EEG", "EOG(L) - EOG(R)"], "bids": ["Fpz-Cz", "EOG"]}
NAMES = {"sleep-edf": "sedf", "nsrr": "shhs", "bids": "lab"}
TINY = ["--net.small_kernel", "50", "--finetune.net.hidden_size", "16", "--finetune.net.shortcut_size", "32",
        "--finetune.batch_size", "2", "--finetune.seq_len", "5", "--pretrain.trainer.enable_progress_bar", "false",
        "--finetune.trainer.enable_progress_bar", "false", "--data.progress", "false"]


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, Path]:
    """Three subjects x one 1-h night in each of the sleep-edf, nsrr and bids layouts."""
    from dsn.data.synth_layouts import write_layout

    root = tmp_path_factory.mktemp("layouts")
    for seed, layout in enumerate(LAYOUT_LABELS, 1):  # another seed each: other hypnograms in each source
        write_layout(root / layout, layout, subjects=3, hours=1.0, seed=seed, progress=False)
    return {layout: root / layout for layout in LAYOUT_LABELS}


def _sources(layouts) -> str:
    return json.dumps([{"name": NAMES[k], "dataset": k, "data_dir": str(v), "channels": LAYOUT_LABELS[k]}
                       for k, v in layouts.items()])


@pytest.mark.slow
def test_three_layouts_train_both_stages_and_the_model_scores_each(layouts, tmp_path, tracking_home):
    from dsn.cli import main as cli
    from dsn.workflows.fit import main as fit_main

    res = fit_main([*DEBUG, *TINY, "--data.channels", "[EEG, EOG]", "--data.sources", _sources(layouts),
                    "--data.n_folds", "3", "--data.balance_sources", "true", "--data.cache_dir", str(tmp_path / "c"),
                    "--tracking.home", str(tracking_home)])
    c = mlflow.MlflowClient(res.tracking_uri)
    metrics = c.get_run(res.parent_run_id).data.metrics
    for name in NAMES.values():
        for k in ("f1_macro", "acc", "kappa"):
            assert f"val/{name}/{k}" in metrics and f"pretrain/val/{name}/{k}" in metrics
    assert "val/f1_macro" in metrics and "test/shhs/f1_macro" in metrics
    ft = res.stage("finetune")
    assert metrics["val/shhs/f1_macro"] == pytest.approx(ft.metrics["val/shhs/f1_macro"])
    stage_run = c.get_run(ft.run_id).data.metrics
    assert "selected/val/lab/f1_macro" in stage_run
    for name in NAMES.values():  # each source's figures are those of its own recordings
        preds = [p for p in ft.predictions["val"] if p.name.startswith(f"{name}-")]
        y, y_hat = np.concatenate([p.y_true for p in preds]), np.concatenate([p.y_pred for p in preds])
        scored = y >= 0
        assert len(preds) == 1 and metrics[f"val/{name}/acc"] == pytest.approx(float(np.mean(y[scored] == y_hat[scored])))

    ckpt = Path(ft.selected_checkpoint)
    spec = torch.load(ckpt, map_location="cpu", weights_only=True)["dsn_scorer"]
    recorded = {s["name"]: s for s in spec["preprocessing"]["sources"]}
    assert set(recorded) == set(NAMES.values()) and recorded["shhs"]["dataset"] == "nsrr"
    assert recorded["shhs"]["channels"] == LAYOUT_LABELS["nsrr"] and recorded["lab"]["recordings"]["train"] == 1

    nights = {layout: sorted(p for p in folder.rglob("*.edf") if "Hypnogram" not in p.name)[0]
              for layout, folder in layouts.items()}  # one night of each layout, scored in one call
    out = tmp_path / "out"
    assert cli(["predict", *map(str, nights.values()), "--model", str(ckpt), "--out", str(out),
                "--tracking.home", str(tracking_home)]) == 0
    for layout, edf in nights.items():
        summary = json.loads((out / f"{edf.stem.removesuffix('-PSG')}_summary.json").read_text())
        assert summary["n_epochs"] == 120 and summary["channels"] == ["EEG", "EOG"]
        assert summary["labels"] == READ[layout]  # each layout read as its source was, the derivation included
        assert [s["name"] for s in summary["trained_on"]] == list(NAMES.values())

    from dsn.workflows.evaluate import evaluate, format_summary

    ev = evaluate(str(ckpt), layouts["bids"], "bids", cache_dir=str(tmp_path / "c"))  # its labels found by the model
    assert ev["n_recordings"] == 3 and not ev["cross_montage"] and [u["read"] for u in ev["channels"]] == READ["bids"]
    assert "model trained on: sedf (sleep-edf: EEG=EEG Fpz-Cz, EOG=EOG horizontal); shhs" in format_summary(ev)


@pytest.mark.slow
def test_a_held_out_source_is_the_test_set(layouts, tmp_path, tracking_home):
    from dsn.workflows.fit import main as fit_main

    res = fit_main([*DEBUG, *TINY, "--data.channels", "[EEG, EOG]", "--data.sources", _sources(layouts),
                    "--data.test_sources", "[lab]", "--stages", "[pretrain]", "--data.cache_dir", str(tmp_path / "c"),
                    "--tracking.home", str(tracking_home)])
    assert sorted(res.data_summary["recordings"]["test"]) == sorted(
        f"lab-sub-0{i}_ses-01_task-sleep_eeg" for i in (1, 2, 3))
    assert res.data_summary["sources"]["lab"] == {"train": 0, "val": 0, "test": 3}
    assert all(res.data_summary["sources"][s]["test"] == 0 for s in ("sedf", "shhs"))
    pre = res.stage("pretrain")
    assert {p.name.split("-")[0] for p in pre.predictions["test"]} == {"lab"}
    metrics = mlflow.MlflowClient(res.tracking_uri).get_run(res.parent_run_id).data.metrics
    assert metrics["test/f1_macro"] == pytest.approx(metrics["test/lab/f1_macro"])
    assert "test/sedf/f1_macro" not in metrics and "val/sedf/f1_macro" in metrics
    spec = torch.load(pre.selected_checkpoint, map_location="cpu", weights_only=True)["dsn_scorer"]
    assert [s["test_only"] for s in spec["preprocessing"]["sources"]] == [False, False, True]
