"""Paired differences (`lifelong compare --minus VARIANT=CONTROL`): a variant minus its control
seed by seed, only within one comparison group and scenario, only between complete runs. The
runs here are RunData built by hand (the figures are what is under test, not a replay); the
command on real stores is tested in test_report_seeds.py."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lifelong.errors import LifelongError
from lifelong.report import RunData
from lifelong.report_pairs import Pair, cell, differences, parse_pairs


def run(label: str, seed: int, rel: float, loc: float, *, scenario: str = "s", chunk: int = 0,
        complete: bool = True, stream: str = "a" * 64, axes: str = "model=m") -> RunData:
    """A run as the report loads it: a sweep label ("scenario,...:method"), its config (the
    scenario's name and chunk size), a stream digest, and one final checkpoint's figures."""
    config = {"scenario": {"name": scenario, "schedule": {"restart_every": chunk}}, "seed": seed}
    figure = {"teacher_forced": rel, "generated": rel}
    return RunData(Path("x.db"), {"run_id": f"{scenario}:{label}@seed{seed}",
                                  "label": f"{scenario},{axes}:{label}", "seed": seed,
                                  "config": json.dumps(config), "model_fingerprint": "f",
                                  "stream": json.dumps({"sha256": stream, "events": 10})},
                   curves=[{"reliability": figure, "locality": {"teacher_forced": loc,
                                                                 "generated": loc}}],
                   banner=None if complete else "stopped after 3 of 10 events")


values = st.floats(0, 1, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(variant=st.dictionaries(st.integers(0, 5), values, min_size=1),
       control=st.dictionaries(st.integers(0, 5), values, min_size=1),
       incomplete=st.sets(st.integers(0, 5)))
def test_differences_pair_each_seed_with_its_own_control(variant, control, incomplete):
    runs = [run("v", s, x, 1.0 - x, complete=s not in incomplete) for s, x in variant.items()]
    runs += [run("c", s, x, 0.5) for s, x in control.items()]
    seeds = sorted((set(variant) & set(control)) - incomplete)
    if not seeds:
        with pytest.raises(LifelongError, match="--minus v=c"):
            differences(runs, [Pair("v", "c")])
        return
    [row] = differences(runs, [Pair("v", "c")])
    diffs = [variant[s] - control[s] for s in seeds]
    assert row["seeds"] == seeds and row["n_seeds"] == len(seeds)
    assert row["rel_gen"] == pytest.approx(statistics.fmean(diffs))
    if len(diffs) > 1:
        assert row["rel_gen_std"] == pytest.approx(statistics.stdev(diffs))
    else:
        assert row["rel_gen_std"] is None  # no spread from one seed, as the seed means
    assert row["rel_tf_variant"] == pytest.approx(statistics.fmean(variant[s] for s in seeds))
    assert row["loc_tf"] == pytest.approx(statistics.fmean(0.5 - variant[s] for s in seeds))


def test_a_pair_never_crosses_a_scenario_or_a_comparison_group():
    runs = [run("v", 0, 0.9, 1.0, scenario="t10", chunk=10), run("c", 0, 0.1, 1.0, scenario="t10", chunk=10),
            run("v", 0, 0.8, 1.0, scenario="t100", chunk=100), run("c", 0, 0.7, 1.0, scenario="t100", chunk=100),
            # same scenario name, another stream: another group, no control there
            run("v", 0, 0.0, 1.0, scenario="t10", chunk=10, stream="b" * 64),
            # same scenario and group, another sweep's axes in its label: not this pair's
            run("v", 0, 0.3, 1.0, scenario="t100", chunk=100, axes="model=m,edits=200")]
    rows = differences(runs, [Pair("v", "c")])
    assert sorted((r["scenario"], round(r["rel_gen"], 6)) for r in rows) == [
        ("t10", 0.8), ("t100", 0.1)]


def test_pair_specs_are_checked_in_one_line():
    assert parse_pairs(["f-learning=ft", " a = b "]) == [Pair("f-learning", "ft"), Pair("a", "b")]
    for bad in ("ft", "=ft", "ft=", "ft=ft"):
        with pytest.raises(LifelongError, match="expected VARIANT=CONTROL"):
            parse_pairs([bad])


def test_a_cell_shows_the_variant_and_the_difference_with_its_spread():
    runs = [run("v", s, x, 1.0) for s, x in ((0, 0.5), (1, 0.7))]
    runs += [run("c", s, x, 1.0) for s, x in ((0, 0.25), (1, 0.25))]
    [row] = differences(runs, [Pair("v", "c")])
    assert cell(row, "rel_gen") == "0.600 (+0.350 ± 0.141)"
    assert cell(row, "port_gen") == ""  # neither run has the figure
    [one] = differences(runs[:1] + runs[2:3], [Pair("v", "c")])
    assert cell(one, "rel_gen") == "0.500 (+0.250)"  # one seed: no spread shown
