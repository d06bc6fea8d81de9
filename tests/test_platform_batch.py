"""Edit batching (`schedule.edit_batch`): which edits go to a method in one call, what the
rows say, and that a method that does not edit in batches gets exactly the run it gets
without batching. (Resuming after a kill inside a batch: tests/test_platform_runtime.py.)"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from tinyrun import save_tiny_model, stream_events, write_jsonl, write_scenario

import lifelong
from lifelong.dispatch import edit_count
from lifelong.methods.ft import FineTune
from lifelong.runtime import Runtime
from lifelong.scenario import Schedule, load_scenario
from lifelong.store import Store
from lifelong.stream import Edit, Merge, Query, parse_stream

pytestmark = pytest.mark.usefixtures("single_thread")

VOLATILE = {"ms", "probe_ms", "saved_at", "started_at", "finished_at", "run_id"}


def edit(i: int) -> Edit:
    return Edit(id=f"e{i}", t=i, prompt="p", target="t")


def test_a_batch_ends_at_other_events_schedule_points_and_its_size():
    events = [edit(0), edit(1), edit(2), Query(id="q", t=3, prompt="p"), edit(4), edit(5),
              edit(6), edit(7), Merge(id="m", t=8), edit(9)]
    sched = Schedule(edit_batch=3, checkpoint_every=0, merge_every=0)
    assert edit_count(events, 0, 0, sched, batching=True) == 3
    assert edit_count(events, 1, 1, sched, batching=True) == 2   # the query ends it
    assert edit_count(events, 3, 3, sched, batching=True) == 1   # a query alone
    assert edit_count(events, 4, 3, sched, batching=True) == 3
    assert edit_count(events, 7, 6, sched, batching=True) == 1   # the merge event ends it
    assert edit_count(events, 0, 0, sched, batching=False) == 1
    # schedule points: the 2nd edit (checkpoint_every = 2), the 5th (restart_every = 5)
    assert edit_count(events, 0, 0, Schedule(edit_batch=3, checkpoint_every=2), True) == 2
    assert edit_count(events, 4, 3, Schedule(edit_batch=3, checkpoint_every=0, merge_every=4),
                      True) == 1
    assert edit_count(events, 4, 3, Schedule(edit_batch=9, checkpoint_every=0,
                                              restart_every=5), True) == 2


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("batch")
    return save_tiny_model(d / "tiny"), write_jsonl(
        stream_events(n_edits=10, reedits=2, retracts=1, queries=1), d / "s.jsonl")


def run(tiny, d: Path, methods: str, batch: int) -> Path:
    toml = write_scenario(d / f"b{batch}.toml", tiny[0], tiny[1], methods=methods,
                          schedule=f"checkpoint_every = 4\nedit_batch = {batch}")
    sc = load_scenario(toml)
    db = d / f"b{batch}.db"
    Runtime(sc, parse_stream(sc.stream.file), Store(db)).run_all()
    return db


def event_rows(db: Path) -> list[dict]:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    out = [{k: r[k] for k in r.keys() if k not in VOLATILE}  # noqa: SIM118 (a Row)
           for r in con.execute("select * from events order by seq, event_id")]
    con.close()
    return out


def test_a_batch_editing_method_gets_the_edits_in_batches(tiny, tmp_path, monkeypatch):
    sizes = []
    original = FineTune.edit_batch

    def spy(self, requests):
        sizes.append(len(requests))
        return original(self, requests)

    monkeypatch.setattr(FineTune, "edit_batch", spy)
    db = run(tiny, tmp_path, '[[methods]]\nname = "ft"\nsettings = { steps = 3 }\n', 3)
    assert sizes == [3, 1, 3, 1, 2]  # checkpoints after edits 4 and 8 end a batch
    edits = [r for r in event_rows(db) if r["kind"] == "edit"]
    assert len(edits) == 10 and all(r["outcome"] == "applied" for r in edits)
    assert [r["edit_index"] for r in edits] == list(range(10))
    assert edits[0]["steps"] == edits[1]["steps"] == edits[2]["steps"]  # one joint update


def test_a_method_that_does_not_batch_gets_the_same_run(tiny, tmp_path):
    methods = '[[methods]]\nname = "grace"\nsettings = { steps = 3 }\n'
    for sub in ("one", "three"):
        (tmp_path / sub).mkdir()
    assert event_rows(run(tiny, tmp_path / "one", methods, 1)) == \
        event_rows(run(tiny, tmp_path / "three", methods, 3))


def test_the_api_hands_batches_over_the_same_way(tiny):
    ed = lifelong.open(str(tiny[0]), method="ft", settings={"steps": 3}, seed=0)
    receipts = ed.edit_batch([("Aldric works for", "Zentro"), ("Brenna was born in", "Kyoto")])
    assert len(receipts) == 2 and receipts[0] == receipts[1]
    assert [op["edit_id"] for op in ed.log] == ["edit-1", "edit-2"]
    ed2 = lifelong.open(str(tiny[0]), method="grace", settings={"steps": 3}, seed=0)
    receipts = ed2.edit_batch([("Aldric works for", "Zentro"), ("Brenna was born in", "Kyoto")])
    assert len(receipts) == 2 and receipts[0].detail["entries"] == 1
