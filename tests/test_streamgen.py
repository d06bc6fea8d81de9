"""Edit streams drawn from a world's timeline: determinism, shares, and the consistency of
re-edits, retracts, queries and locality items."""

from __future__ import annotations

import functools
from datetime import datetime

import pytest
from hypothesis import given, settings, strategies as st

from lifelong.config import from_mapping
from lifelong.errors import ConfigError
from lifelong.stream import parse_stream
from lifelong.streamgen import StreamSpec, make_stream, write_stream
from lifelong.world import World, WorldConfig


@functools.lru_cache(maxsize=1)
def small_world() -> World:
    """400 entities x 6 relations: room for a few hundred edits and 300 locality facts."""
    return World.generate(WorldConfig(n_entities=400, seed=7))


specs = st.builds(
    StreamSpec, edits=st.integers(1, 400), reedit_share=st.sampled_from((0.0, 0.1, 0.25)),
    retract_share=st.sampled_from((0.0, 0.02, 0.1)), query_share=st.sampled_from((0.0, 0.05, 0.3)),
    spacing_seconds=st.sampled_from((0.0, 60.0, 3600.0)), seed=st.integers(0, 1000),
    locality_per_edit=st.integers(0, 3), n_locality_facts=st.integers(1, 300),
    n_rephrases=st.sampled_from((None, 0, 2)))


def _edits(events):
    return [e for e in events if e["kind"] == "edit"]


def test_deterministic_and_seed_dependent():
    spec = StreamSpec(edits=200, n_locality_facts=300)
    assert make_stream(small_world(), spec) == make_stream(small_world(), spec)
    other = StreamSpec(edits=200, n_locality_facts=300, seed=1)
    assert make_stream(small_world(), spec) != make_stream(small_world(), other)


@settings(max_examples=30, deadline=None)
@given(specs)
def test_stream_invariants(spec):
    world = small_world()
    events = make_stream(world, spec)
    edits = _edits(events)
    kinds = [e["kind"] for e in events]
    assert len(edits) == spec.edits
    assert sum(e["meta"]["reedit"] for e in edits) == round(spec.edits * spec.reedit_share)
    assert kinds.count("retract") == round(spec.edits * spec.retract_share)
    assert kinds.count("query") == round(spec.edits * spec.query_share)
    ids = [e["id"] for e in events]
    assert len(set(ids)) == len(ids)
    times = [datetime.fromisoformat(e["t"].replace("Z", "+00:00")) for e in events]
    assert times == sorted(times)
    _check_values(world, events)
    _check_locality(world, events, spec)


def _check_values(world: World, events: list[dict]) -> None:
    """Replays the stream: `previous` is the value just before each edit, re-edits follow an
    edit of their fact, retracts target the latest edit of a fact that is never edited again,
    and query answers are the value at their position."""
    current: dict[str, str] = {}
    by_id: dict[str, dict] = {}
    retracted: set[str] = set()
    later_facts = {}
    for i, e in enumerate(events):
        if e["kind"] == "edit":
            later_facts[e["fact"]] = i
    for i, e in enumerate(events):
        if e["kind"] == "edit":
            fact = world.fact(e["fact"])
            assert e["previous"] == current.get(e["fact"], fact.value) != e["target"]
            assert e["meta"]["reedit"] == (e["fact"] in current)
            assert e["prompt"] == world.prompt(fact, e["meta"]["template"])
            assert e["prompt"] not in e["rephrases"] and e["subject"] == fact.subject
            current[e["fact"]] = e["target"]
        elif e["kind"] == "retract":
            target = by_id[e["edit_id"]]  # KeyError: the retract precedes its edit
            assert target["kind"] == "edit" and e["edit_id"] not in retracted
            assert later_facts[target["fact"]] < i, "no edit of a retracted fact follows"
            retracted.add(e["edit_id"])
            current[target["fact"]] = target["previous"]
        else:
            assert e["answer"] in current.values()
            matches = [k for k, v in current.items()
                       if any(world.prompt(world.fact(k), t) == e["prompt"]
                              for t in range(len(world.templates(world.fact(k).relation))))]
            assert matches and e["answer"] == current[matches[0]]
        by_id[e["id"]] = e


def _check_locality(world: World, events: list[dict], spec: StreamSpec) -> None:
    edited = {e["fact"] for e in _edits(events)}
    stable_prompts = {}
    for fact in world.stable_facts():
        for t in world.trained_templates(fact):
            stable_prompts[world.prompt(fact, t)] = fact
    seen = set()
    for e in _edits(events):
        assert len(e["locality"]) == spec.locality_per_edit
        for item in e["locality"]:
            fact = stable_prompts[item["prompt"]]  # a trained phrasing of a stable fact
            assert fact.key not in edited and item["answer"] == fact.value
            seen.add(fact.key)
    assert len(seen) <= spec.n_locality_facts


def test_written_stream_passes_the_validator(tmp_path):
    spec = StreamSpec(edits=120, retract_share=0.05, query_share=0.1, n_locality_facts=300)
    events = make_stream(small_world(), spec)
    write_stream(events, tmp_path / "s.jsonl")
    parsed = parse_stream(tmp_path / "s.jsonl")
    assert len(parsed.events) == len(events)


def test_impossible_requests_are_clear_errors():
    with pytest.raises(ConfigError, match="cannot supply"):
        make_stream(small_world(), StreamSpec(edits=10_000, n_locality_facts=300))
    with pytest.raises(ConfigError, match="never-changing"):
        make_stream(small_world(), StreamSpec(edits=10, n_locality_facts=5000))
    with pytest.raises(ConfigError):
        from_mapping(StreamSpec, {"start": "yesterday"})
