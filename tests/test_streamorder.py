"""Seeded replay orders: a permutation that keeps every fact's history in order (re-edits
after first edits, retractions after their edit, queries where their answer holds), merges
and fact-less queries after what they followed, non-decreasing time, deterministic."""

from __future__ import annotations

import functools

from hypothesis import given, settings
from hypothesis import strategies as st

from lifelong.events import event_to_dict
from lifelong.stream import Edit, Merge, Query, Retract, load_events_from_dicts
from lifelong.streamgen import StreamSpec, make_stream
from lifelong.streamorder import reedit_pairs, seeded_order
from lifelong.world import World, WorldConfig


@functools.lru_cache(maxsize=1)
def _world() -> World:
    return World.generate(WorldConfig(n_people=300, seed=5))


@functools.lru_cache(maxsize=8)
def _events(seed: int):
    spec = StreamSpec(edits=150, reedit_share=0.3, retract_share=0.05, query_share=0.2,
                      seed=seed, n_locality_facts=20)
    return load_events_from_dicts(make_stream(_world(), spec)).events


def _fact_of(ev, edits):
    if isinstance(ev, Edit):
        return ev.fact
    if isinstance(ev, Retract):
        return edits[ev.edit_id].fact
    return ev.fact


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 5), st.integers(0, 10 ** 9))
def test_a_seeded_order_keeps_every_fact_history(stream_seed, seed):
    events = _events(stream_seed)
    out = seeded_order(events, seed)
    assert sorted(e.id for e in out) == sorted(e.id for e in events)
    assert [e.t for e in out] == sorted(e.t for e in events)
    edits = {e.id: e for e in events if isinstance(e, Edit)}
    for fact in {_fact_of(e, edits) for e in events}:
        assert [e.id for e in events if _fact_of(e, edits) == fact] == \
               [e.id for e in out if _fact_of(e, edits) == fact]
    # replayed in the new order, every query's answer is its fact's value at that point
    value: dict[str, str] = {}
    for ev in out:
        if isinstance(ev, Edit):
            value[ev.fact] = ev.target
        elif isinstance(ev, Retract):
            value[edits[ev.edit_id].fact] = edits[ev.edit_id].previous
        elif isinstance(ev, Query):
            assert value[ev.fact] == ev.answer
    assert seeded_order(events, seed) == out


def test_seeds_give_different_orders_and_glue_factless_events():
    events = _events(0)
    assert len({tuple(e.id for e in seeded_order(events, s)) for s in range(4)}) == 4
    plain = (Edit("a", 1, "p", "x", fact="f"), Merge("m", 2), Query("q", 3, "p?"),
             Edit("b", 4, "p2", "y", fact="g"), Edit("c", 5, "p3", "z", fact="f"))
    for seed in range(10):
        ids = [e.id for e in seeded_order(plain, seed)]
        assert ids[ids.index("a"):ids.index("a") + 3] == ["a", "m", "q"]
        assert ids.index("a") < ids.index("c")


# ---------------------------------------------------------------- through the runtime
def _seeded_scenario(tmp_path, seeds: str = "[0, 1]"):
    from tinyrun import save_tiny_model, stream_events, write_jsonl, write_scenario
    model = save_tiny_model(tmp_path / "tiny")
    events = stream_events(n_edits=10, reedits=3, retracts=2, queries=0)
    stream = write_jsonl(events, tmp_path / "s.jsonl")
    scenario = write_scenario(tmp_path / "s.toml", model, stream, extra=f"seeds = {seeds}",
                              methods='[[methods]]\nname = "ft"\nsettings = { steps = 3 }\n')
    text = scenario.read_text().replace("[stream]\n", '[stream]\norder = "seeded"\n')
    scenario.write_text(text)
    return scenario


def _run(scenario, db, resume=False, crash_at=0):
    from tinyrun import run_store
    return run_store(scenario, db, resume=resume, crash_at=crash_at)


def _order(store, run_id):
    return [e["event_id"] for e in sorted(store.rows("events", run_id), key=lambda e: e["seq"])
            if not e["event_id"].startswith("@")]


def test_runtime_replays_each_seed_in_its_order_and_resumes_at_every_event(tmp_path):
    import pytest
    scenario = _seeded_scenario(tmp_path, "[3]")
    ref = _run(scenario, tmp_path / "ref.db")
    order = _order(ref, "ft@seed3")
    from lifelong.stream import parse_stream
    assert order == [e.id for e in seeded_order(parse_stream(tmp_path / "s.jsonl").events, 3)]
    assert order != [e.id for e in parse_stream(tmp_path / "s.jsonl").events]
    volatile = {"ms", "probe_ms", "saved_at", "started_at", "finished_at"}

    def rows(store, table):
        return sorted((tuple((k, v) for k, v in r.items() if k not in volatile)
                       for r in store.rows(table, "ft@seed3")), key=repr)

    for crash_at in range(1, len(order) + 1):  # every event position
        db = tmp_path / f"c{crash_at}.db"
        from tinyrun import SimulatedCrash
        with pytest.raises(SimulatedCrash):
            _run(scenario, db, crash_at=crash_at)
        resumed = _run(scenario, db, resume=True)
        for table in ("events", "probes", "checkpoints"):
            assert rows(resumed, table) == rows(ref, table), (crash_at, table)


@settings(max_examples=12, deadline=None)
@given(st.integers(0, 5), st.integers(0, 40))
def test_reedit_pairs_are_each_facts_first_two_edits_side_by_side(stream_seed, limit):
    events = _events(stream_seed)
    pairs = reedit_pairs(events, limit)
    edits = [ev for ev in events if isinstance(ev, Edit)]
    by_fact: dict[str, list[Edit]] = {}
    for ev in edits:
        by_fact.setdefault(ev.fact, []).append(ev)
    expected = [f for f, evs in sorted(by_fact.items(), key=lambda kv: edits.index(kv[1][0]))
                if len(evs) > 1]
    assert len(pairs) == 2 * (min(limit, len(expected)) if limit else len(expected))
    for i in range(0, len(pairs), 2):
        a, b = pairs[i], pairs[i + 1]
        fact = expected[i // 2]
        assert (a.id, b.id) == (by_fact[fact][0].id, by_fact[fact][1].id)
        assert b.previous == a.target  # the stream's own chain: the re-edit replaces the edit
    assert [ev.t for ev in pairs] == sorted(ev.t for ev in pairs)
    assert load_events_from_dicts(event_to_dict(ev) for ev in pairs).events  # a valid stream


def test_streams_reedits_writes_the_pairs_and_refuses_a_stream_without_any(tmp_path):
    from click.testing import CliRunner

    from lifelong.cli import cli
    from lifelong.stream import dump_stream, parse_stream
    src = tmp_path / "s.jsonl"
    dump_stream(_events(0), src)
    out = tmp_path / "pairs.jsonl"
    res = CliRunner().invoke(cli, ["streams", "reedits", str(src), "-o", str(out), "--pairs", "3"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith(f"{out}: 3 re-edit pairs (6 edits)")
    assert parse_stream(out).events == reedit_pairs(parse_stream(src).events, 3)
    once = tmp_path / "once.jsonl"
    dump_stream([ev for ev in _events(0) if isinstance(ev, Edit)][:1], once)
    res = CliRunner().invoke(cli, ["streams", "reedits", str(once), "-o", str(out)])
    assert res.exit_code != 0 and "no fact is edited more than once" in str(res.exception)
