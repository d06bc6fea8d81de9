"""The WISE paper's chunked protocol (`schedule.restart_every`): each chunk of T edits is
made from a fresh model and method, probed at its end (its own edits and their own locality
prompts), and the figures are pooled over chunks."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_runtime import metric_values, table_rows
from tinyrun import (
    PEOPLE,
    SimulatedCrash,
    run_store,
    save_tiny_model,
    stream_events,
    write_jsonl,
    write_scenario,
)

from lifelong.runtime import Runtime
from lifelong.scenario import load_scenario
from lifelong.store import Store
from lifelong.stream import parse_stream

pytestmark = pytest.mark.usefixtures("single_thread")
FT = '[[methods]]\nname = "ft"\nsettings = { steps = 4, lr = 0.05 }\n'


@pytest.fixture(scope="module")
def chunked(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("chunks")
    model = save_tiny_model(d / "tiny")
    events = stream_events(n_edits=10, reedits=2, retracts=1, queries=1)
    for i, e in enumerate(x for x in events if x["kind"] == "edit"):  # distinct locality prompts
        e["locality"][0]["prompt"] = f"{PEOPLE[(i + 3) % len(PEOPLE)]} was born in"
    stream = write_jsonl(events, d / "s.jsonl")
    return write_scenario(d / "chunked.toml", model, stream, methods=FT,
                          schedule="checkpoint_every = 0\nrestart_every = 4")


def run(path: Path, db: Path, resume: bool = False, crash_at: int = 0) -> Store:
    return run_store(path, db, resume=resume, crash_at=crash_at)


@pytest.fixture(scope="module")
def reference(chunked, tmp_path_factory) -> Store:
    return run(chunked, tmp_path_factory.mktemp("ref") / "ref.db")


def rows(db: Path, sql: str) -> list[sqlite3.Row]:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    out = con.execute(sql).fetchall()
    con.close()
    return out


def test_each_chunk_probes_its_own_edits_and_locality(chunked, reference):
    events = [json.loads(line) for line in Path(load_scenario(chunked).stream.file).read_text().splitlines()]
    edits = [e for e in events if e["kind"] == "edit"]
    cks = rows(reference.path, "select * from checkpoints order by checkpoint")
    assert [c["when"] for c in cks] == ["chunk", "chunk", "final"]   # 10 edits: 4 + 4 + 2
    assert [c["edits_done"] for c in cks] == [4, 8, 10]
    for k, c in enumerate(cks):
        chunk = edits[4 * k: 4 * k + 4]
        probed = rows(reference.path, f"select * from probes where checkpoint = {c['checkpoint']}")
        newest = {}
        for e in chunk:
            newest[e["fact"]] = e["id"]
        rel = {r["edit_id"] for r in probed if r["role"] in ("rel", "retract")}
        assert rel == set(newest.values())  # exactly this chunk's facts
        loc = {(r["prompt"], r["target"]) for r in probed if r["role"] == "loc"}
        assert loc == {(p["prompt"], p["answer"]) for e in chunk for p in e["locality"]}


def test_figures_are_pooled_over_chunks(reference):
    m = {r["name"]: json.loads(r["value"]) for r in reference.rows("metrics", "ft@seed0")}
    probes = rows(reference.path, "select * from probes where role = 'rel'")
    assert m["reliability"]["n"] == len(probes)
    assert m["reliability"]["teacher_forced"] == pytest.approx(
        sum(r["tf_acc"] for r in probes) / len(probes))
    assert m["chunks"] == {"size": 4, "count": 3}
    assert m["retention"] is None  # chunks probe different edits: no retention curve


def test_a_retraction_of_an_earlier_chunk_is_recorded_not_sent(reference):
    (row,) = rows(reference.path, "select * from events where kind = 'retract'")
    assert row["outcome"] == "nothing" and "earlier chunk" in row["error"]


def test_unrelated_inputs_never_include_what_the_chunk_probes(chunked, tmp_path):
    sc = load_scenario(chunked)
    rt = Runtime(sc, parse_stream(sc.stream.file), Store(tmp_path / "x.db"))
    from lifelong.probes import locality_pool
    pool = locality_pool(rt.events)
    edits = [e for e in rt.events if e.kind == "edit"]
    ctx = rt._context(pool, [], 0, 0)
    first = {p.prompt for e in edits[:4] for p in e.locality}
    assert ctx.unrelated_prompts and not first & set(ctx.unrelated_prompts)


def test_restart_every_needs_no_checkpoints(chunked, tmp_path):
    from lifelong.errors import ConfigError
    bad = tmp_path / "bad.toml"
    bad.write_text(chunked.read_text().replace("checkpoint_every = 0", "checkpoint_every = 2"))
    with pytest.raises((ConfigError, ValueError)):
        load_scenario(bad)


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(crash_at=st.integers(min_value=1, max_value=12))
def test_crash_then_resume_equals_uninterrupted(chunked, reference, tmp_path_factory, crash_at):
    db = tmp_path_factory.mktemp("crash") / "crashed.db"
    with pytest.raises(SimulatedCrash):
        run(chunked, db, crash_at=crash_at)
    resumed = run(chunked, db, resume=True)
    for table in ("events", "probes", "checkpoints"):
        assert table_rows(resumed.path, table) == table_rows(reference.path, table), table
    assert metric_values(resumed) == metric_values(reference)
