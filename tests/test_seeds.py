"""Tests for lifelong.metrics_seeds: the mean over seeds and its spread, by hand and as
properties, and `summary._merge_seeds` on hand-made run figures."""

from __future__ import annotations

import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lifelong.metrics_seeds import mean_std, mean_tree
from lifelong.summary import _merge_seeds

FAST = settings(max_examples=100, deadline=None)


def test_mean_std_by_hand():
    out = mean_std([0.9, None, 0.92, float("nan"), 0.94])
    assert out["mean"] == pytest.approx(0.92) and out["n"] == 3
    assert out["std"] == pytest.approx(0.02)  # sample std (ddof = 1)
    assert (out["min"], out["max"]) == (0.9, 0.94)
    assert mean_std([0.5]) == {"mean": 0.5, "std": None, "n": 1, "min": 0.5, "max": 0.5}
    assert mean_std([None, True]) is None  # flags are not figures


@FAST
@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=12))
def test_mean_std_matches_statistics(values):
    out = mean_std(values)
    assert out["min"] <= out["mean"] <= out["max"]
    assert out["mean"] == pytest.approx(statistics.fmean(values), abs=1e-6)
    if len(values) > 1:
        assert out["std"] == pytest.approx(statistics.stdev(values), rel=1e-6, abs=1e-6)


def test_mean_tree_means_spreads_and_agreement():
    seeds = [
        {"rel": {"teacher_forced": 0.8, "n": 12, "when": "final"}, "ppl": None, "m": [[1.0, 0.5]],
         "run_id": "ft@seed0", "flag": True, "groups": [0, 1]},
        {"rel": {"teacher_forced": 1.0, "n": 12, "when": "final"}, "ppl": 3.0, "m": [[0.0, 0.5]],
         "run_id": "ft@seed1", "flag": True, "groups": [0, 1]},
        {"rel": None, "ppl": 5.0, "m": [[0.5, None]], "run_id": "ft@seed2", "flag": False,
         "groups": [0, 1, 2]},
    ]
    mean, spread = mean_tree(seeds)
    assert mean["rel"] == {"teacher_forced": pytest.approx(0.9), "n": 12, "when": "final"}
    assert isinstance(mean["rel"]["n"], int)  # every seed agrees: kept as it is
    assert spread["rel"]["teacher_forced"] == {"std": pytest.approx(statistics.stdev([0.8, 1.0])), "n": 2}
    assert mean["ppl"] == 4.0 and spread["ppl"]["n"] == 2
    assert mean["m"] == [[0.5, 0.5]] and spread["m"][0][1] == {"std": 0.0, "n": 2}
    # no seed speaks for the others: disagreeing text, flags and list lengths become None
    assert mean["run_id"] is None and mean["flag"] is None and mean["groups"] is None
    assert set(mean) == set(seeds[0])


def run(seed, rel, complete=True):
    return {"run_id": f"ft@seed{seed}", "method": "ft", "label": "ft", "seed": seed,
            "status": "complete" if complete else "failed", "complete": complete,
            "reliability": {"teacher_forced": rel, "generated": rel, "n": 4, "when": "final"}}


def test_merge_seeds_keeps_keys_and_adds_spread():
    one = _merge_seeds([run(0, 0.5)])
    assert one["reliability"]["generated"] == 0.5 and one["spread"] is None and one["n_seeds"] == 1
    three = _merge_seeds([run(0, 0.5), run(1, 0.7), run(2, 0.9), run(3, 0.0, complete=False)])
    assert set(run(0, 0)) <= set(three)
    assert three["reliability"]["generated"] == pytest.approx(0.7)  # the incomplete seed left out
    assert three["spread"]["reliability"]["generated"] == {"std": pytest.approx(0.2), "n": 3}
    assert three["seeds"] == [0, 1, 2] and three["seeds_left_out"] == [3] and three["n_seeds"] == 3
    assert three["run_ids"] == ["ft@seed0", "ft@seed1", "ft@seed2"] and three["run_id"] is None
