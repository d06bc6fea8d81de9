"""Tests for lifelong.metrics: pure functions over recorded rows, built here by hand as plain
dicts shaped like the store's rows."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lifelong.metrics import (
    backward_transfer,
    by_role,
    conflict,
    edit_counts,
    forgetting,
    latency,
    percentiles,
    queries,
    query_overhead,
    rate,
    retention,
    retention_by_age,
    retention_matrix,
    retraction,
    run_metrics,
)

FAST = settings(max_examples=100, deadline=None)
NAN = float("nan")


def ck(checkpoint, edits_done, when="checkpoint", memory_bytes=0):
    return {"checkpoint": checkpoint, "edits_done": edits_done, "when": when,
            "memory_bytes": memory_bytes}


def pr(checkpoint, role, edit_index, tf_acc, gen_exact, fact=None):
    return {"checkpoint": checkpoint, "role": role, "fact": fact or f"f{edit_index}",
            "edit_index": edit_index, "tf_acc": tf_acc, "gen_exact": gen_exact}


def assert_matrix(R, expected):
    np.testing.assert_allclose(R, np.array(expected, dtype=float), equal_nan=True, atol=1e-12)


# ----------------------------------------------------------------------------- retention

# Checkpoints 1..4; checkpoint 4 (final) has the same edits_done as 3 and replaces it.
CKS = [ck(2, 4), ck(1, 2), ck(4, 6, "final"), ck(3, 6)]  # deliberately unsorted
REL = {  # checkpoint -> tf_acc of edit_index 0..n-1
    1: [1.0, 0.6],
    2: [0.8, 0.4, 1.0, 1.0],
    3: [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # replaced by 4: must not count
    4: [0.4, 0.2, 0.9, 0.5, 1.0, 0.8],
}


def hand_probes():
    rows = []
    for c, vals in REL.items():
        for i, v in enumerate(vals):
            rows.append(pr(c, "rel", i, v, int(v >= 0.9)))
            rows.append(pr(c, "gen", i, 0.0, 0))       # other roles never count
            rows.append(pr(c, "conflict", i, 0.0, 0))
    rows.append(pr(9, "rel", 0, 0.0, 0))               # a checkpoint that was not recorded
    return rows


def test_retention_matrix_hand_example():
    groups, cols, R = retention_matrix(hand_probes(), CKS, group_size=2)
    assert groups == [0, 1, 2]
    assert cols == [1, 2, 4]
    assert_matrix(R, [[0.8, 0.6, 0.3],
                      [NAN, 1.0, 0.7],
                      [NAN, NAN, 0.9]])
    _, _, G = retention_matrix(hand_probes(), CKS, group_size=2, mode="generated")
    assert_matrix(G, [[0.5, 0.0, 0.0],
                      [NAN, 1.0, 0.5],
                      [NAN, NAN, 0.5]])
    groups3, _, R3 = retention_matrix(hand_probes(), CKS, group_size=3)
    assert groups3 == [0, 1]
    assert_matrix(R3, [[0.8, (0.8 + 0.4 + 1.0) / 3, (0.4 + 0.2 + 0.9) / 3],
                       [NAN, 1.0, (0.5 + 1.0 + 0.8) / 3]])


def test_forgetting_and_backward_transfer_hand_computed():
    _, _, R = retention_matrix(hand_probes(), CKS, group_size=2)
    # group 0: best earlier 0.8, final 0.3; group 1: best earlier 1.0, final 0.7; group 2 new
    assert forgetting(R) == pytest.approx(((0.8 - 0.3) + (1.0 - 0.7)) / 2)
    assert backward_transfer(R) == pytest.approx(((0.3 - 0.8) + (0.7 - 1.0)) / 2)
    # best earlier value, not the first: recovery then drop
    R2 = np.array([[0.5, 0.9, 0.6], [NAN, 0.2, 0.4]])
    assert forgetting(R2) == pytest.approx(((0.9 - 0.6) + (0.2 - 0.4)) / 2)
    assert backward_transfer(R2) == pytest.approx(((0.6 - 0.5) + (0.4 - 0.2)) / 2)


def test_forgetting_none_with_one_checkpoint_or_no_old_group():
    assert forgetting(np.array([[0.7], [0.2]])) is None
    assert backward_transfer(np.array([[0.7], [0.2]])) is None
    only_new = np.array([[NAN, 1.0]])
    assert forgetting(only_new) is None and backward_transfer(only_new) is None
    # a single checkpoint after the dedup rule: both checkpoints have 2 edits done
    _, cols, R = retention_matrix([pr(1, "rel", 0, 1.0, 1), pr(2, "rel", 0, 0.5, 0)],
                                  [ck(1, 2), ck(2, 2, "final")], group_size=2)
    assert cols == [2] and R.shape == (1, 1) and R[0, 0] == 0.5
    assert forgetting(R) is None


def test_retention_summary_hand_example():
    out = retention(hand_probes(), CKS, 2)
    assert out["groups"] == [0, 1, 2] and out["checkpoints"] == [1, 2, 4]
    assert out["group_size"] == 2 and out["when"] == "checkpoints"
    assert out["teacher_forced"] == pytest.approx((0.3 + 0.7) / 2)  # groups seen before the end
    assert out["forgetting_teacher_forced"] == pytest.approx(0.4)
    assert out["backward_transfer_teacher_forced"] == pytest.approx(-0.4)
    assert out["matrix_teacher_forced"] == [[0.8, 0.6, 0.3], [None, 1.0, 0.7], [None, None, 0.9]]
    assert out["generated"] == pytest.approx((0.0 + 0.5) / 2)
    assert retention([], CKS, 2) is None


@st.composite
def recorded(draw):
    """Random checkpoints (edits_done non-decreasing, repeats allowed) and rel rows."""
    n_ck = draw(st.integers(1, 5))
    done, cks = 0, []
    for c in range(1, n_ck + 1):
        done += draw(st.integers(0, 3))
        cks.append(ck(c, max(done, 1), "final" if c == n_ck else "checkpoint"))
    rows = []
    for c in cks:
        for i in range(c["edits_done"]):
            if draw(st.booleans()):
                rows.append(pr(c["checkpoint"], "rel", i,
                               draw(st.floats(0, 1)), draw(st.integers(0, 1))))
    return cks, rows, draw(st.integers(1, 4))


@FAST
@given(recorded(), st.sampled_from(["teacher_forced", "generated"]))
def test_retention_matrix_entries_are_means_of_rows(data, mode):
    cks, rows, G = data
    col = "tf_acc" if mode == "teacher_forced" else "gen_exact"
    groups, cols, R = retention_matrix(rows, list(reversed(cks)), G, mode)
    # kept: every checkpoint not followed by one with the same edits_done
    kept = [c["checkpoint"] for k, c in enumerate(cks)
            if k + 1 == len(cks) or cks[k + 1]["edits_done"] != c["edits_done"]]
    assert cols == kept
    assert groups == sorted({r["edit_index"] // G for r in rows if r["checkpoint"] in kept})
    assert R.shape == (len(groups), len(cols))
    for gi, g in enumerate(groups):
        for j, c in enumerate(cols):
            vals = [r[col] for r in rows if r["checkpoint"] == c and r["edit_index"] // G == g]
            if vals:
                assert R[gi, j] == pytest.approx(sum(vals) / len(vals))
                assert 0.0 <= R[gi, j] <= 1.0
            else:
                assert math.isnan(R[gi, j])


@st.composite
def matrices(draw, monotone=False):
    n_g, n_c = draw(st.integers(1, 4)), draw(st.integers(1, 5))
    R = np.full((n_g, n_c), NAN)
    for g in range(n_g):
        first = draw(st.integers(0, n_c - 1))
        vals = draw(st.lists(st.floats(0, 1), min_size=n_c - first, max_size=n_c - first))
        if monotone:
            vals = sorted(vals, reverse=True)
        R[g, first:] = vals
    return R


@FAST
@given(matrices(monotone=True))
def test_forgetting_nonnegative_when_values_only_decrease(R):
    f, b = forgetting(R), backward_transfer(R)
    has_old = R.shape[1] > 1 and any(not math.isnan(row[-2]) for row in R)
    assert (f is None) == (not has_old) and (b is None) == (not has_old)
    if has_old:
        assert f >= 0 and b <= 0
        assert f == pytest.approx(-b)   # best earlier value is the first one


@FAST
@given(matrices())
def test_forgetting_at_least_minus_backward_transfer(R):
    f, b = forgetting(R), backward_transfer(R)
    assert (f is None) == (b is None)
    if f is not None:
        assert -1 <= f <= 1 and -1 <= b <= 1
        assert f >= -b - 1e-12


def test_retention_by_age_pools_checkpoints():
    cks = [ck(1, 2), ck(2, 4, "final")]
    rows = [pr(1, "rel", 0, 1.0, 1), pr(1, "rel", 1, 0.5, 0),
            pr(2, "rel", 0, 0.2, 0), pr(2, "rel", 1, 0.4, 0),
            pr(2, "rel", 2, 0.6, 1), pr(2, "rel", 3, 1.0, 1), pr(2, "gen", 3, 0.0, 0)]
    out = retention_by_age(rows, cks, 2)
    # ages: ck1: e0 1, e1 0; ck2: e0 3, e1 2, e2 1, e3 0
    assert out == [
        {"age_from": 0, "age_to": 1, "n": 4, "teacher_forced": pytest.approx(3.1 / 4),
         "generated": 0.75},
        {"age_from": 2, "age_to": 3, "n": 2, "teacher_forced": pytest.approx(0.3),
         "generated": 0.0},
    ]


# ----------------------------------------------------------------------------- conflict, rate

def test_conflict_hand_example():
    rows = [pr(5, "rel", 0, 1.0, 1, "f1"), pr(5, "rel", 1, 0.5, 0, "f2"),
            pr(5, "rel", 2, 0.8, 1, "f3"),
            pr(5, "conflict", 0, 0.6, 0, "f1"), pr(5, "conflict", 0, 0.2, 0, "f1"),
            pr(5, "stale", 0, 0.4, 1, "f1"), pr(5, "stale", 0, 0.0, 0, "f1"),
            pr(5, "stale", 2, 0.2, 0, "f3"),
            pr(4, "stale", 1, 1.0, 1, "f2")]   # another checkpoint
    out = conflict(by_role(rows, 5))
    # latest: rel of re-edited facts (f1, f3) + conflict rows
    assert out["latest"]["teacher_forced"] == pytest.approx((1.0 + 0.8 + 0.6 + 0.2) / 4)
    assert out["latest"]["generated"] == pytest.approx(2 / 4)
    # stale tf: mean over stale rows; generated: share of facts with any superseded value out
    assert out["stale"]["teacher_forced"] == pytest.approx(0.2)
    assert out["stale"]["generated"] == pytest.approx(1 / 2)
    assert out["facts"] == 2 and out["when"] == "final"


def test_conflict_none_without_reedited_facts():
    rows = [pr(1, "rel", 0, 1.0, 1), pr(1, "gen", 0, 1.0, 1), pr(1, "loc", -1, 1.0, 1, "")]
    assert conflict(by_role(rows, 1)) is None
    assert conflict({}) is None


def test_rate():
    assert rate([]) is None
    rows = [{"tf_acc": 1.0, "gen_exact": 1}, {"tf_acc": 0.5, "gen_exact": 0},
            {"tf_acc": 0.0, "gen_exact": 0}, {"tf_acc": 0.25, "gen_exact": 1}]
    assert rate(rows) == {"teacher_forced": pytest.approx(0.4375), "generated": 0.5,
                          "n": 4, "when": "final"}
    assert rate(rows, when="after_edit")["when"] == "after_edit"


# ----------------------------------------------------------------------------- latency

@FAST
@given(st.lists(st.floats(0, 1e6), min_size=1, max_size=60))
def test_percentiles_match_numpy(ms):
    out = percentiles(ms)
    a = np.asarray(ms)
    for q in (50, 95, 99):
        assert out[f"p{q}"] == pytest.approx(np.percentile(a, q))
    assert out["mean"] == pytest.approx(a.mean()) and out["n"] == len(ms)
    assert out["p50"] <= out["p95"] <= out["p99"] <= max(ms)


def test_percentiles_empty():
    assert percentiles([]) is None


def test_latency_separates_batch1_and_batched():
    events = [{"kind": "edit", "ms": 10.0, "outcome": "applied", "tf_acc": 1.0},
              {"kind": "edit", "ms": 30.0, "outcome": "failed", "tf_acc": None},
              {"kind": "edit", "ms": None, "outcome": "applied", "tf_acc": None},
              {"kind": "merge", "ms": 100.0, "outcome": "applied", "tf_acc": None},
              {"kind": "merge", "ms": 7.0, "outcome": "skipped", "tf_acc": None},
              {"kind": "query", "ms": 99.0, "outcome": "applied", "tf_acc": None}]
    timings = ([{"op": "query", "batch": 1, "ms": v} for v in (2.0, 4.0, 6.0)]
               + [{"op": "query_base", "batch": 1, "ms": v} for v in (1.0, 2.0, 3.0)]
               + [{"op": "query", "batch": 8, "ms": v} for v in (20.0, 40.0)]
               + [{"op": "query_base", "batch": 8, "ms": 10.0}])
    out = latency(events, timings)
    assert out["edit"]["n"] == 2 and out["edit"]["p50"] == pytest.approx(20.0)
    assert out["merge"]["n"] == 1 and out["merge"]["p50"] == 100.0
    q = out["query"]
    assert q["p50_with_memory"] == 4.0 and q["p50_base"] == 2.0
    assert q["p95_with_memory"] == pytest.approx(np.percentile([2, 4, 6], 95))
    assert q["batch"] == 8
    assert q["batch_ms_with_memory"] == pytest.approx(30.0) and q["batch_ms_base"] == 10.0
    assert q["overhead"] == pytest.approx(2.0)


def test_latency_without_base_timings_has_no_overhead():
    out = latency([], [{"op": "query", "batch": 1, "ms": 3.0}])
    assert out["edit"] is None and out["merge"] is None
    assert out["query"]["p50_with_memory"] == 3.0 and out["query"]["p50_base"] is None
    assert out["query"]["batch"] is None and out["query"]["batch_ms_with_memory"] is None
    assert "overhead" not in out["query"]


# ----------------------------------------------------------------------------- run_metrics

STABLE_KEYS = {"run_id", "method", "label", "seed", "status", "complete", "edits", "reliability",
               "reliability_after_edit", "generalization", "locality", "portability",
               "retention", "retention_by_age", "conflict", "routing", "retraction", "latency_ms",
               "memory_bytes", "memory_growth", "edits_per_second", "perplexity", "chunks", "queries",
               "generalization_ood", "health", "leaked_rephrases", "protocol_gap"}


def test_protocol_gap_counts_the_probes_the_protocols_score_differently():
    from lifelong.metrics import protocol_gap
    rows = [{"tf_acc": 1.0, "tf_exact": 1, "gen_exact": 1},   # both
            {"tf_acc": 2 / 3, "tf_exact": 0, "gen_exact": 0},  # TF's part credit
            {"tf_acc": 0.5, "tf_exact": 0, "gen_exact": 1},   # an alias generated, not TF's
            {"tf_acc": 0.0, "tf_exact": 0, "gen_exact": 0},   # neither
            {"tf_acc": 1.0, "gen_exact": 0}]                  # no tf_exact recorded; served apart
    out = protocol_gap(rows)
    assert out["teacher_forced"] == pytest.approx((1 + 2 / 3 + 0.5 + 0 + 1) / 5)
    assert out["generated"] == pytest.approx(2 / 5)
    assert out["gap"] == pytest.approx(out["teacher_forced"] - out["generated"])
    assert out["disagree"] == pytest.approx(3 / 5) and out["partial"] == pytest.approx(2 / 5)
    assert out["exact_disagree"] == pytest.approx(2 / 5) and out["n"] == 5
    assert protocol_gap([]) is None
    # one-token answers: teacher forcing is all or nothing too, the protocols agree
    one = [{"tf_acc": float(v), "tf_exact": v, "gen_exact": v} for v in (1, 0, 1)]
    assert protocol_gap(one)["disagree"] == 0.0 and protocol_gap(one)["gap"] == 0.0


def test_perplexity_is_the_mean_of_per_row_exp_nll():
    import math

    from lifelong.metrics import perplexity
    rows = [{"nll": 0.0}, {"nll": math.log(2.0)}, {"nll": float("nan")}, {"nll": None}]
    out = perplexity(rows)
    assert out["teacher_forced"] == pytest.approx(1.5) and out["n"] == 2
    assert perplexity([{"nll": None}]) is None


def test_pooled_roles_take_only_the_named_checkpoints():
    from lifelong.metrics import pooled_roles
    rows = [{"checkpoint": c, "role": r} for c, r in [(1, "rel"), (2, "rel"), (2, "loc"), (3, "rel")]]
    out = pooled_roles(rows, {1, 2})
    assert len(out["rel"]) == 2 and len(out["loc"]) == 1


def hand_run(config_as_str=True):
    config = {"scenario": {"schedule": {"group_size": 0, "checkpoint_every": 2}}}
    run = {"run_id": "r1", "method": "ft", "label": "ft-fast", "seed": 3, "status": "done",
           "edits_total": 4, "config": json.dumps(config) if config_as_str else config}
    events = [
        {"kind": "edit", "ms": 10.0, "outcome": "applied", "tf_acc": 1.0, "gen_exact": 1},
        {"kind": "edit", "ms": 20.0, "outcome": "applied", "tf_acc": 0.5, "gen_exact": 0},
        {"kind": "edit", "ms": 30.0, "outcome": "failed", "tf_acc": None, "gen_exact": None},
        {"kind": "edit", "ms": 40.0, "outcome": "applied", "tf_acc": 0.0, "gen_exact": 0},
        {"kind": "retract", "ms": 1.0, "outcome": "unsupported", "tf_acc": None, "gen_exact": None},
        {"kind": "merge", "ms": 5.0, "outcome": "applied", "tf_acc": None, "gen_exact": None},
        {"kind": "query", "ms": 2.0, "outcome": "applied", "tf_acc": 1.0, "gen_exact": 1},
    ]
    checkpoints = [ck(2, 4, "final", 300), ck(1, 2, "checkpoint", 100)]
    probes = [
        # intermediate checkpoint: must not leak into the final figures
        pr(1, "rel", 0, 1.0, 1), pr(1, "rel", 1, 1.0, 1), pr(1, "gen", 0, 1.0, 1),
        pr(1, "loc", -1, 1.0, 1, ""),
        # final checkpoint
        pr(2, "rel", 0, 0.5, 0, "fa"), pr(2, "rel", 2, 1.0, 1, "f0"), pr(2, "rel", 3, 0.75, 1),
        pr(2, "gen", 2, 0.25, 0, "f0"), pr(2, "gen", 3, 0.75, 1),
        pr(2, "port", 3, 0.0, 0),
        pr(2, "conflict", 2, 0.5, 0, "f0"), pr(2, "stale", 2, 0.5, 1, "f0"),
        pr(2, "retract", 1, 0.8, 1), pr(2, "loc", -1, 0.9, 1, ""), pr(2, "loc", -1, 0.7, 0, ""),
    ]
    timings = [{"op": "query", "batch": 1, "ms": 4.0}, {"op": "query_base", "batch": 1, "ms": 2.0}]
    return run, events, checkpoints, probes, timings


def test_run_metrics_hand_example():
    out = run_metrics(*hand_run())
    assert set(out) == STABLE_KEYS
    assert (out["run_id"], out["method"], out["label"], out["seed"], out["status"]) == (
        "r1", "ft", "ft-fast", 3, "done")
    assert out["complete"] is True
    assert out["edits"] == {"applied": 3, "converged": None, "not_converged": None, "total": 4}
    rel = out["reliability"]
    assert rel["teacher_forced"] == pytest.approx(0.75) and rel["generated"] == pytest.approx(2 / 3)
    assert rel["n"] == 3 and rel["when"] == "final"
    after = out["reliability_after_edit"]
    assert after["when"] == "after_edit" and after["n"] == 3
    assert after["teacher_forced"] == pytest.approx(0.5) and after["generated"] == pytest.approx(1 / 3)
    assert out["generalization"]["teacher_forced"] == pytest.approx(0.5)
    assert out["generalization"]["n"] == 2
    assert out["locality"]["teacher_forced"] == pytest.approx(0.8)
    assert out["locality"]["generated"] == pytest.approx(0.5)
    assert out["portability"]["n"] == 1 and out["portability"]["teacher_forced"] == 0.0
    assert out["conflict"]["facts"] == 1
    assert out["conflict"]["latest"]["teacher_forced"] == pytest.approx(0.75)  # rel f0 + conflict
    assert out["conflict"]["stale"]["generated"] == 1.0
    # the one retraction was refused: its fact's probe says nothing about the method
    assert out["retraction"] == {"restored": None, "requested": 1, "performed": 0, "unsupported": 1,
                                 "when": "final"}
    assert out["queries"] == {"teacher_forced": 1.0, "generated": 1.0, "n": 1, "asked": 1,
                              "when": "at_query"}
    assert out["memory_bytes"] == 300
    assert out["memory_growth"] == [{"edits": 2, "bytes": 100}, {"edits": 4, "bytes": 300}]
    assert out["edits_per_second"] == pytest.approx(4 / 0.1)
    assert out["latency_ms"]["query"]["overhead"] == pytest.approx(2.0)
    assert out["latency_ms"]["merge"]["n"] == 1
    # group size falls back to checkpoint_every (2)
    ret = out["retention"]
    assert ret["group_size"] == 2 and ret["checkpoints"] == [1, 2] and ret["groups"] == [0, 1]
    assert ret["matrix_teacher_forced"] == [[1.0, 0.5], [None, 0.875]]
    assert ret["forgetting_teacher_forced"] == pytest.approx(0.5)
    assert [b["age_from"] for b in out["retention_by_age"]] == [0, 2]
    json.dumps(out)  # plain data


def test_run_metrics_is_pure_and_accepts_config_dict():
    args = hand_run()
    before = copy.deepcopy(args)
    a, b = run_metrics(*args), run_metrics(*args)
    assert a == b
    assert args == before
    assert run_metrics(*hand_run(config_as_str=False)) == a


def test_run_metrics_without_final_checkpoint_is_incomplete():
    run, events, checkpoints, probes, timings = hand_run()
    checkpoints = [c for c in checkpoints if c["when"] != "final"]
    out = run_metrics(run, events, checkpoints, probes, timings)
    assert set(out) == STABLE_KEYS
    assert out["complete"] is False and out["memory_bytes"] is None
    assert out["reliability"] is None and out["locality"] is None and out["conflict"] is None
    # the retraction was still requested even though nothing was probed
    assert out["retraction"] == {"restored": None, "requested": 1, "performed": 0, "unsupported": 1,
                                 "when": "final"}


def test_run_metrics_uses_latest_final_checkpoint_and_explicit_group_size():
    run, events, checkpoints, probes, timings = hand_run()
    run = dict(run, config=json.dumps({"scenario": {"schedule": {"group_size": 1,
                                                                 "checkpoint_every": 2}}}))
    checkpoints = checkpoints + [ck(3, 4, "final", 500)]
    probes = probes + [pr(3, "rel", 0, 0.0, 0)]
    events = [e for e in events if e["kind"] != "retract"]
    out = run_metrics(run, events, checkpoints, probes, timings)
    assert out["memory_bytes"] == 500
    assert out["reliability"]["n"] == 1 and out["reliability"]["teacher_forced"] == 0.0
    assert out["retention"]["group_size"] == 1
    assert out["retraction"] is None and out["conflict"] is None


# ----------------------------------------------------------------------------- issue 19

def edit(event_id, fact, converged=None):
    return {"kind": "edit", "event_id": event_id, "fact": fact, "outcome": "applied", "ms": 1.0,
            "converged": converged}


def retract(target, outcome):
    row = {"kind": "retract", "outcome": outcome, "ms": 0.1}
    if outcome != "unsupported":  # the runtime records the target only after the method returned
        row["target_id"] = target
    return row


def test_restored_counts_only_retractions_the_method_performed():
    events = [edit("e0", "fa"), edit("e1", "fb"), edit("e2", "fc"),
              retract("e0", "applied"), retract("e1", "nothing")]
    probes = [pr(1, "retract", 0, 0.5, 1, "fa"), pr(1, "retract", 1, 1.0, 1, "fb")]
    out = retraction(events, probes)
    # fb's retraction was not performed (outcome nothing): its probe is left out
    assert out["restored"] == {"teacher_forced": 0.5, "generated": 1.0, "n": 1, "when": "final"}
    assert (out["requested"], out["performed"], out["unsupported"]) == (2, 1, 0)


def test_refused_retractions_restore_nothing():
    """FT-L refuses every retraction: its retracted facts may still behave as before the stream
    (it overwrote them), but it restored none of them."""
    events = [edit("e0", "fa"), edit("e1", "fb"), retract("e0", "unsupported"),
              retract("e1", "unsupported")]
    probes = [pr(1, "retract", 0, 1.0, 1, "fa"), pr(1, "retract", 1, 1.0, 1, "fb")]
    assert retraction(events, probes) == {"restored": None, "requested": 2, "performed": 0,
                                          "unsupported": 2, "when": "final"}
    # one refused retraction of an unknown target: no probe can be credited
    mixed = [edit("e0", "fa"), edit("e1", "fb"), retract("e0", "applied"), retract("e1", "unsupported")]
    assert retraction(mixed, probes)["restored"] is None
    assert retraction([edit("e0", "fa")], []) is None


def test_queries_are_scored_at_query_time():
    events = [edit("e0", "fa"),
              {"kind": "query", "tf_acc": 1.0, "gen_exact": 1},
              {"kind": "query", "tf_acc": 0.5, "gen_exact": 0},
              {"kind": "query", "tf_acc": None, "gen_exact": None, "gen_text": "x"}]  # no answer
    assert queries(events) == {"teacher_forced": 0.75, "generated": 0.5, "n": 2, "asked": 3,
                               "when": "at_query"}
    unanswered = queries(events[-1:])
    assert unanswered["n"] == 0 and unanswered["asked"] == 1 and unanswered["generated"] is None
    assert queries([edit("e0", "fa")]) is None


def test_edit_counts_read_the_converged_column():
    rows = [edit("e0", "a", 1), edit("e1", "b", 0), edit("e2", "c", 0), edit("e3", "d", None)]
    assert edit_counts(rows) == {"applied": 4, "converged": 1, "not_converged": 2, "total": 4}
    old = [{k: v for k, v in r.items() if k != "converged"} for r in rows]  # a store without it
    assert edit_counts(old) == {"applied": 4, "converged": None, "not_converged": None, "total": 4}


def paired(mem, base, rounds=3):
    """Timing rows as the runtime keys them: b1:<round>:<i>, the same key for both ops."""
    per = len(mem) // rounds
    return ([{"op": "query", "batch": 1, "key": f"b1:{k // per}:{k % per}", "ms": v} for k, v in enumerate(mem)]
            + [{"op": "query_base", "batch": 1, "key": f"b1:{k // per}:{k % per}", "ms": v}
               for k, v in enumerate(base)])


BASE = [1.0 + 0.37 * ((7 * k) % 11) for k in range(24)]  # spread-out latencies, 3 rounds of 8


def test_overhead_of_a_slower_memory_is_a_measurement():
    mem = [2.0 * b * (1 + 0.05 * ((3 * k) % 4 - 1.5)) for k, b in enumerate(BASE)]
    out = query_overhead(paired(mem, BASE))
    assert out["ratio"] == pytest.approx(np.median(mem) / np.median(BASE))
    assert 1.0 < out["low"] <= out["ratio"] <= out["high"]
    assert out["significant"] is True and out["pairs"] == 24 and len(out["rounds"]) == 3
    assert query_overhead(paired(mem, BASE)) == out  # seeded bootstrap: same rows, same interval
    # the same figures timed minutes apart (old stores): never a measurement
    assert query_overhead(paired(mem, BASE), side_by_side=False)["significant"] is False


def test_overhead_of_no_memory_is_noise():
    """`none` holds no memory: pairs of the same distribution, shuffled, give a ratio of
    medians away from 1.0 by chance and an interval that holds 1.0."""
    mem = [BASE[(5 * k + 3) % 24] for k in range(24)]
    out = query_overhead(paired(mem, BASE))
    assert out["low"] <= 1.0 <= out["high"]
    assert out["significant"] is False
    lat = latency([], paired(mem, BASE))["query"]
    assert lat["overhead_significant"] is False and lat["overhead_low"] == out["low"]


def test_overhead_is_noise_when_rounds_disagree():
    # rounds 0 and 1: memory 1.5x slower; round 2: 1.5x faster (a burst of load on the base)
    mem = [b * (1.5 if k < 16 else 1 / 1.5) for k, b in enumerate(BASE)]
    out = query_overhead(paired(mem, BASE))
    assert out["rounds"][0] > 1 and out["rounds"][2] < 1
    assert out["significant"] is False
    assert query_overhead(paired([1.0], [1.0], rounds=1)) is None  # one pair: no spread at all
