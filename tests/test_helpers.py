"""The small shared helpers: run-length encoding (dsn.data.labels), flatten and json_default (dsn.utils)."""

import json

import numpy as np

from dsn.data.labels import runs, true_runs
from dsn.utils import flatten, json_default


def test_runs_encodes_every_run_in_order():
    assert runs([]) == []
    assert runs(np.array([2])) == [(2, 0, 1)]
    assert runs(np.array([0, 0, 1, 1, 1, -1, 0])) == [(0, 0, 2), (1, 2, 3), (-1, 5, 1), (0, 6, 1)]
    y = np.random.default_rng(0).integers(0, 3, 200)
    back = np.concatenate([np.full(n, v) for v, _, n in runs(y)])
    np.testing.assert_array_equal(back, y)


def test_true_runs_gives_half_open_intervals():
    assert true_runs(np.zeros(4, bool)) == []
    assert true_runs(np.array([True, True, False, True])) == [(0, 2), (3, 4)]
    assert true_runs([False, True, True, True, False]) == [(1, 4)]


def test_flatten_and_json_default():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None}) == {"a.b": 1, "a.c.d": [1, 2], "e": None}
    text = json.dumps({"x": np.float32(0.5), "y": np.arange(3), "z": {1, 2} - {1, 2}}, default=json_default)
    assert json.loads(text) == {"x": 0.5, "y": [0, 1, 2], "z": "set()"}
