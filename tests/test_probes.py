"""Tests for lifelong.probes: the Ledger (the stream's truth so far) and `plan` (which prompts
are probed at a checkpoint, and against which target). Pure, no model needed."""

from __future__ import annotations

import functools
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lifelong.probes import Ledger, leaked_rephrases, locality_pool, locality_sample, plan, retract_probe
from lifelong.stream import Edit, Merge, Probe, Query, Retract

FAST = settings(max_examples=150, deadline=None)

FACTS = ("f0", "f1", "f2")
TARGETS = ("A", "B", "C")


# ----------------------------------------------------------------------------- strategies

@st.composite
def streams(draw, max_steps: int = 16):
    """Edits over a few facts (targets from a small set, so repeats happen), interleaved with
    retractions of earlier, not yet retracted edits. Every edit has a unique prompt so that
    items can be traced back to the edit they came from."""
    events, live, t = [], [], 0.0
    for step in range(draw(st.integers(1, max_steps))):
        t += 1
        if live and draw(st.integers(0, 3)) == 0:
            victim = draw(st.sampled_from(live))
            live.remove(victim)
            events.append(Retract(f"r{step}", t, victim))
            continue
        eid = f"e{step}"
        events.append(Edit(
            eid, t, prompt=f"prompt of {eid}", target=draw(st.sampled_from(TARGETS)),
            fact=draw(st.sampled_from(FACTS)),
            previous=draw(st.sampled_from((None, "", "P", "Q"))),
            rephrases=tuple(f"rephrase {k} of {eid}" for k in range(draw(st.integers(0, 2)))),
            portability=tuple(Probe(f"port {k} of {eid}", f"ans{k}")
                              for k in range(draw(st.integers(0, 1)))),
            locality=tuple(Probe(f"loc {k}", f"x{k}") for k in range(draw(st.integers(0, 2)))),
        ))
        live.append(eid)
        if draw(st.booleans()) and draw(st.booleans()):
            events.append(Query(f"q{step}", t, "a query"))
    return events


def expected_truth(events):
    """Independent model of the stream's truth: per fact, the edits in stream order and which
    are retracted."""
    edits = [e for e in events if isinstance(e, Edit)]
    retracted = {e.edit_id for e in events if isinstance(e, Retract)}
    index = {e.id: k for k, e in enumerate(edits)}
    facts: dict[str, list[Edit]] = {}
    for e in edits:
        facts.setdefault(e.fact, []).append(e)
    return facts, retracted, index


# ----------------------------------------------------------------------------- plan: truth

@FAST
@given(streams())
def test_newest_value_of_a_reedited_fact_wins(events):
    led = Ledger.replay(events)
    items = plan(led, loc=[])
    facts, retracted, index = expected_truth(events)

    keys = [it.item for it in items]
    assert len(keys) == len(set(keys)), Counter(keys).most_common(3)
    assert {it.fact for it in items} == set(facts)

    for fact, edits in facts.items():
        mine = [it for it in items if it.fact == fact]
        by_role: dict[str, list] = {}
        for it in mine:
            by_role.setdefault(it.role, []).append(it)
        active = [e for e in edits if e.id not in retracted]

        if not active:  # every edit retracted: only a retraction probe, judged against the base
            assert [it.role for it in mine] == ["retract"]
            (it,) = mine
            first, last = edits[0], edits[-1]
            assert it.against_base is True
            assert it.prompt == last.prompt
            assert it.target == (first.previous or last.previous or last.target)
            assert it.edit_id == last.id and it.edit_index == index[last.id]
            continue

        newest = active[-1]
        older = [e for e in edits if index[e.id] < index[newest.id]]

        assert len(by_role.get("rel", [])) == 1
        (rel,) = by_role["rel"]
        assert (rel.prompt, rel.target, rel.edit_id) == (newest.prompt, newest.target, newest.id)
        assert rel.edit_index == index[newest.id] and not rel.against_base

        conflicts = by_role.get("conflict", [])
        assert sorted(it.prompt for it in conflicts) == sorted(
            e.prompt for e in older if e.id not in retracted)
        assert all(it.target == newest.target for it in conflicts)

        stale = by_role.get("stale", [])
        assert sorted(it.target for it in stale) == sorted(
            {e.target for e in edits if e.id != newest.id} - {newest.target})
        assert all(it.prompt == newest.prompt for it in stale)

        assert [it.prompt for it in by_role.get("gen", [])] == list(newest.rephrases)
        assert all(it.target == newest.target for it in by_role.get("gen", []))
        assert [(it.prompt, it.target) for it in by_role.get("port", [])] == [
            (p.prompt, p.answer) for p in newest.portability]

        assert "retract" not in by_role and "loc" not in by_role
        # Every item of an active fact is tied to its newest edit.
        assert {(it.edit_id, it.edit_index) for it in mine} == {(newest.id, index[newest.id])}
        assert not any(it.against_base for it in mine)


def test_plan_hand_example():
    events = [
        Edit("e1", 1, "Where does Ann live?", "Oslo", fact="ann", previous="Rome"),
        Edit("e2", 2, "Ann lives in", "Lima", fact="ann", previous="Oslo",
             rephrases=("Ann resides in",)),
        Edit("e3", 3, "Ann's city is", "Kyoto", fact="ann"),
        Retract("r1", 4, "e3"),
        Edit("e4", 5, "Bob works for", "Vantex", fact="bob", previous="Orbica"),
        Retract("r2", 6, "e4"),
        Edit("e5", 7, "Cy plays", "tennis"),
        Merge("m1", 8),
    ]
    items = {it.item: it for it in plan(Ledger.replay(events), loc=[Probe("sky is", "blue")])}
    assert set(items) == {"rel:e2", "gen:e2:0", "conflict:e1", "stale:e2:0", "stale:e2:1",
                          "retract:e4", "rel:e5", "loc:0"}
    assert items["conflict:e1"].target == "Lima" and items["conflict:e1"].prompt == "Where does Ann live?"
    # superseded (Oslo) and retracted (Kyoto) values are both stale, sorted by value
    assert [items[f"stale:e2:{k}"].target for k in (0, 1)] == ["Kyoto", "Oslo"]
    assert items["stale:e2:1"].prompt == "Ann lives in"
    assert (items["retract:e4"].prompt, items["retract:e4"].target) == ("Bob works for", "Orbica")
    assert items["retract:e4"].against_base and items["loc:0"].against_base
    assert items["rel:e5"].fact == "e5" and items["rel:e5"].edit_index == 4
    assert items["rel:e2"].edit_index == 1


def test_retract_probe_prefers_the_value_before_the_stream():
    first = Edit("a", 0, "p0", "mid", previous="orig")
    last = Edit("b", 1, "p1", "new", previous="mid")
    assert retract_probe(first, last) == ("p1", "orig")
    assert retract_probe(Edit("a", 0, "p0", "mid"), last) == ("p1", "mid")
    assert retract_probe(Edit("a", 0, "p", "new"), Edit("a", 0, "p", "new")) == ("p", "new")


def test_retraction_of_the_newest_restores_the_previous_value():
    events = [Edit("e1", 1, "p1", "A", fact="f"), Edit("e2", 2, "p2", "B", fact="f")]
    led = Ledger.replay(events)
    assert led.newest("f").id == "e2"
    led.add(Retract("r", 3, "e2"))
    assert led.newest("f").id == "e1"
    items = plan(led, loc=[])
    # the retracted value B is now stale: it must not come out of the restored fact
    assert [(it.role, it.prompt, it.target) for it in items] == [("rel", "p1", "A"),
                                                                  ("stale", "p1", "B")]
    led.add(Retract("r2", 4, "e1"))
    assert led.newest("f") is None
    assert [(it.role, it.prompt) for it in plan(led, loc=[])] == [("retract", "p2")]


def test_item_keys_unique_even_with_colons_in_ids_and_targets():
    events = [
        Edit("x1", 1, "p1", "b:c", fact="f1"), Edit("a", 2, "p2", "z", fact="f1"),
        Edit("x2", 3, "p3", "c", fact="f2"), Edit("a:b", 4, "p4", "z", fact="f2"),
    ]
    keys = [it.item for it in plan(Ledger.replay(events), loc=[])]
    assert len(keys) == len(set(keys)), keys


# ----------------------------------------------------------------------------- ledger

@FAST
@given(streams(), st.data())
def test_incremental_replay_equals_batch(events, data):
    cut = data.draw(st.integers(0, len(events)))
    led = Ledger.replay(events[:cut])
    for ev in events[cut:]:
        led.add(ev)
    batch = Ledger.replay(events)
    assert led == batch
    assert plan(led, loc=[]) == plan(batch, loc=[])


def test_ledger_ignores_queries_and_merges():
    e = Edit("e1", 1, "p", "t")
    assert Ledger.replay([Query("q", 0, "x"), e, Merge("m", 2)]) == Ledger.replay([e])
    led = Ledger.replay([e, Edit("e2", 2, "p2", "t2", fact="e1")])
    assert led.order == {"e1": 0, "e2": 1} and led.by_fact == {"e1": ["e1", "e2"]}


# ----------------------------------------------------------------------------- sampling

def many_facts(n: int = 10):
    return Ledger.replay([Edit(f"e{k}", k, f"p{k}", "T", rephrases=("r",)) for k in range(n)])


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(0, 10 ** 6), st.integers(1, 60))
def test_plan_sample_is_the_same_facts_at_every_checkpoint(k, seed, upto):
    """A fixed seeded sample: a fact probed at one checkpoint is probed at every later one
    (so forgetting follows the same facts), whole (rel + gen), in stream order."""
    events = [Edit(f"e{i}", i, f"p{i}", "T", rephrases=("r",)) for i in range(60)]
    full = Ledger.replay(events)
    early = Ledger.replay(events[:upto])
    loc = [Probe("l1", "a"), Probe("l2", "b")]
    items = plan(early, loc, sample=k, seed=seed, total_facts=60)
    later = plan(full, loc, sample=k, seed=seed, total_facts=60)
    facts = {it.fact for it in items if it.role != "loc"}
    assert facts == {it.fact for it in later if it.role != "loc"} & set(early.by_fact)
    want = Counter({"rel": len(facts), "gen": len(facts), "loc": 2})
    assert Counter(it.role for it in items) == +want
    order = [early.order[it.edit_id] for it in items if it.role == "rel"]
    assert order == sorted(order)
    assert plan(early, loc, sample=k, seed=seed, total_facts=60) == items


def test_plan_sample_size_and_seed_dependence():
    led = Ledger.replay([Edit(f"e{i}", i, f"p{i}", "T") for i in range(2000)])

    def picked(seed):
        return frozenset(it.fact for it in plan(led, [], sample=200, seed=seed, total_facts=2000))

    assert 150 <= len(picked(0)) <= 250
    assert len({picked(s) for s in range(5)}) == 5
    assert len({it.fact for it in plan(led, [], sample=0, total_facts=2000)}) == 2000


def test_plan_drops_rephrases_that_an_edit_of_the_fact_trained_on():
    """A user stream that lists an earlier (or retracted) edit's prompt as a rephrase of a
    later edit of the same fact: that probe is never scored, and it is counted."""
    events = [Edit("e1", 1, "old prompt", "A", fact="f"),
              Edit("e2", 2, "other fact", "B", fact="g", rephrases=("old prompt",)),
              Edit("e3", 3, "new prompt", "C", fact="f", rephrases=("old prompt", "fresh"),
                   ood_rephrases=("new prompt", "ood fresh"))]
    led = Ledger.replay(events)
    probes = {(it.role, it.prompt, it.fact) for it in plan(led, [])}
    assert ("gen", "fresh", "f") in probes and ("gen_ood", "ood fresh", "f") in probes
    assert ("gen", "old prompt", "f") not in probes and ("gen_ood", "new prompt", "f") not in probes
    assert ("gen", "old prompt", "g") in probes  # another fact's edit prompt is no leak
    assert leaked_rephrases(led) == 2


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10 ** 6), st.sampled_from((0.1, 0.3, 0.6)), st.sampled_from(("dev", "test")))
def test_generated_streams_never_probe_a_trained_prompt(seed, reedit_share, split):
    """Streams with re-edits from the world generator: no generalization probe (in- or
    out-of-distribution) at any checkpoint is a prompt some edit of its fact trained on."""
    from lifelong.stream import load_events_from_dicts
    from lifelong.streamgen import StreamSpec, make_stream
    world = _small_world()
    spec = StreamSpec(edits=120, split=split, reedit_share=reedit_share, seed=seed,
                      n_locality_facts=20, n_rephrases=7)
    events = load_events_from_dicts(make_stream(world, spec)).events
    led = Ledger.replay([])
    trained: dict[str, set[str]] = {}
    for ev in events:
        led.add(ev)
        if isinstance(ev, Edit):
            trained.setdefault(ev.fact, set()).add(ev.prompt)
    assert leaked_rephrases(led) == 0
    all_trained = {(f, p) for f, ps in trained.items() for p in ps}
    for it in plan(led, []):
        if it.role in ("gen", "gen_ood"):
            assert (it.fact, it.prompt) not in all_trained


@functools.lru_cache(maxsize=1)
def _small_world():
    from lifelong.world import World, WorldConfig
    return World.generate(WorldConfig(n_people=300, seed=3))


@pytest.mark.parametrize("sample", [0, 10, 11, -1])
def test_plan_sample_zero_or_at_least_total_gives_every_fact(sample):
    led = many_facts(10)
    assert plan(led, [], sample=sample, seed=3, total_facts=10) == plan(led, [])
    assert len(plan(led, [])) == 20


# ----------------------------------------------------------------------------- locality

probe_st = st.builds(Probe, st.sampled_from(["p1", "p2", "p3"]), st.sampled_from(["a", "b"]))


@FAST
@given(st.lists(st.lists(probe_st, max_size=4), max_size=6))
def test_locality_pool_dedups_and_keeps_first_seen_order(per_edit):
    events = []
    for k, loc in enumerate(per_edit):
        events.append(Edit(f"e{k}", k, "p", "t", locality=tuple(loc)))
        events.append(Query(f"q{k}", k, "p"))
    pool = locality_pool(events)
    flat = [p for loc in per_edit for p in loc]
    assert pool == list(dict.fromkeys(flat))
    assert len({(p.prompt, p.answer) for p in pool}) == len(pool)


@FAST
@given(st.integers(0, 30), st.integers(-2, 40), st.integers(0, 10 ** 6))
def test_locality_sample_seeded_sized_subset(n, size, seed):
    pool = [Probe(f"p{i}", f"a{i}") for i in range(n)]
    got = locality_sample(pool, size, seed)
    assert got == locality_sample(list(pool), size, seed)
    if size <= 0 or size >= n:
        assert got == pool
    else:
        assert len(got) == size
        assert len(set(got)) == size and set(got) <= set(pool)
        # a subsequence of the pool (kept in pool order)
        pos = [pool.index(p) for p in got]
        assert pos == sorted(pos)


def test_locality_sample_depends_on_seed():
    pool = [Probe(f"p{i}", "a") for i in range(50)]
    assert len({tuple(locality_sample(pool, 5, s)) for s in range(10)}) > 1
    # not the global RNG
    random.seed(1)
    a = locality_sample(pool, 5, 7)
    random.seed(2)
    assert locality_sample(pool, 5, 7) == a


def test_a_probe_that_needs_other_edits_is_asked_only_while_they_all_hold():
    """MQuAKE-style: a multi-hop question on e2 needs e1 and e2; it is planned only once both
    are applied, not after e1 is retracted, not after e1's fact is re-edited, and not in a
    ledger (a chunk) that lacks e1."""
    from lifelong.probes import Ledger, plan
    from lifelong.stream import Edit, Probe, Retract
    hop = Probe("Where was the head of state of X born?", "Naples", needs=("e1", "e2"))
    e1 = Edit("e1", 0, prompt="The head of state of X is", target="Umberto", fact="X|head")
    e2 = Edit("e2", 1, prompt="Umberto was born in", target="Naples", fact="U|born",
              portability=(hop, Probe("Umberto's birthplace is", "Naples")))
    e3 = Edit("e3", 2, prompt="The head of state of X is", target="Sergio", fact="X|head")

    def ports(events):
        return sorted(i.prompt for i in plan(Ledger.replay(events), []) if i.role == "port")

    assert ports([e1, e2]) == sorted([hop.prompt, "Umberto's birthplace is"])
    assert ports([e2]) == ["Umberto's birthplace is"]                      # a chunk without e1
    assert ports([e1, e2, Retract("r", 3, edit_id="e1")]) == ["Umberto's birthplace is"]
    assert ports([e1, e2, e3]) == ["Umberto's birthplace is"]              # e1 superseded
