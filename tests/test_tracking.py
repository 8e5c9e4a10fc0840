"""`dsn.tracking`: the one place a command's run opens, the lookups the CLI and the sweep report use, and
the tag names every module shares (`dsn/tags.py`)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from dsn import config, tracking
from dsn.tags import CV_KEY_TAG, KIND_TAG, STUDY_TAG

ROOT = Path(__file__).resolve().parents[1]


def test_start_top_run_tags_the_kind_and_environment_and_logs_the_config(tracking_home, monkeypatch):
    monkeypatch.chdir(ROOT)
    uri = tracking.tracking_uri(None, tracking_home)
    exp = tracking.experiment_id(uri, "top", tracking_home)
    cfg = config.load_config(["conf/demo.yaml"])
    rid = tracking.start_top_run(uri, exp, "cv", "cv-demo", cfg=cfg, tags={CV_KEY_TAG: "abc"}, params={"cv.folds": 4})
    run = tracking.get_run(uri, rid)
    assert run.info.run_name == "cv-demo" and run.info.status == "RUNNING"
    assert run.data.tags[KIND_TAG] == "cv" and run.data.tags[CV_KEY_TAG] == "abc"
    assert run.data.tags["python"] and any(k.startswith("version.") for k in run.data.tags)
    assert run.data.params["cv.folds"] == "4"
    assert run.data.params["net.drop_prob"] == str(cfg.net.drop_prob)  # the training items
    assert config.identity_items(config.default_parser().parse_string(
        tracking.read_text_artifact(uri, rid, "config.yaml"))) == config.identity_items(cfg)
    child = tracking.start_top_run(uri, exp, "fold", "fold-0", parent=rid)
    got = tracking.get_run(uri, child)
    assert got.data.tags[tracking.PARENT_TAG] == rid and got.data.params == {}
    assert tracking.read_text_artifact(uri, child, "config.yaml") is None


def test_a_run_whose_params_cannot_be_logged_is_closed_as_failed(tracking_home, monkeypatch):
    uri = tracking.tracking_uri(None, tracking_home)
    exp = tracking.experiment_id(uri, "top", tracking_home)

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(tracking, "log_params", broken)
    with pytest.raises(OSError, match="disk full"):
        tracking.start_top_run(uri, exp, "evaluate", "evaluate-x", params={"model": "m"})
    (run,) = tracking.find_runs(uri, exp, {KIND_TAG: "evaluate"})
    assert run.info.status == "FAILED"


def test_lookups_find_experiments_and_tagged_runs(tracking_home):
    uri = tracking.tracking_uri(None, tracking_home)
    assert tracking.find_experiment_id(uri, "nope") is None
    assert tracking.recent_experiment_id(uri) is None  # only MLflow's Default experiment
    a = tracking.experiment_id(uri, "a", tracking_home)
    b = tracking.experiment_id(uri, "b", tracking_home)
    assert tracking.find_experiment_id(uri, "a") == a and tracking.recent_experiment_id(uri, "b") == b
    rid = tracking.start_run(uri, b, "sweep-s", tags={KIND_TAG: "sweep", STUDY_TAG: "s"})
    assert tracking.recent_experiment_id(uri) == b  # updated last
    assert [r.info.run_id for r in tracking.find_tagged_runs(uri, {KIND_TAG: "sweep", STUDY_TAG: "s"})] == [rid]
    assert [r.info.run_id for r in tracking.find_tagged_runs(uri, {STUDY_TAG: "s"}, "b")] == [rid]
    assert tracking.find_tagged_runs(uri, {STUDY_TAG: "s"}, "a") == []
    assert tracking.find_tagged_runs(uri, {STUDY_TAG: "s"}, "missing") == []
    assert tracking.recent_experiment_id("sqlite:////nonexistent/dir/x.db") is None


# ----------------------------------------------------------------------------- where MLflow is called
def _calls(path: Path) -> set[str]:
    """Names called as ``x.client(...)``/``MlflowClient(...)`` and literals ``"dsn.*"`` in a module."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("client", "MlflowClient"):
            found.add(node.func.attr)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("dsn.") \
                and " " not in node.value and node.value.count(".") == 1 and node.value[4:].replace("_", "").isalpha():
            found.add(node.value)
    return found


def test_no_mlflow_client_or_tag_literal_outside_the_tracking_modules():
    allowed_client = {"tracking.py", "recorder.py"}
    for path in sorted((ROOT / "dsn").rglob("*.py")):
        if path.name in ("tags.py",):
            continue
        found = _calls(path)
        if path.name not in allowed_client:
            assert not found & {"client", "MlflowClient"}, f"{path}: an MLflow client call outside dsn/tracking.py"
        tag_literals = {f for f in found if f.startswith("dsn.")}
        assert not tag_literals - _module_names(), f"{path}: tag names as literals {tag_literals}; import them from dsn.tags"


def _module_names() -> set[str]:
    """``dsn.<module>`` strings that name modules (a logger name, a docstring reference), not tags."""
    return {f"dsn.{p.stem}" for p in (ROOT / "dsn").iterdir()}
