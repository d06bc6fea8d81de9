"""The contract through the runtime, for every registered method (and, for methods that edit
in batches, with `schedule.edit_batch`): every event recorded with the outcome its
capabilities promise (edits, a retraction between edits and one at the end, a merge event,
scheduled merges, queries), routing recorded exactly for routing methods, and a run killed
after ANY event (or after its final checkpoint) resumes to exactly the rows of an
uninterrupted run. A new method is picked up automatically."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from tinyrun import save_tiny_model, stream_events, write_jsonl

from lifelong.dispatch import apply_event, base_row
from lifelong.methods import (
    AttachContext,
    BatchEditing,
    Consolidating,
    Retractable,
    Routing,
    available_methods,
    build_method,
)
from lifelong.model import load_model
from lifelong.runtime import Runtime
from lifelong.scenario import load_scenario
from lifelong.store import Store
from lifelong.stream import Retract, parse_stream

pytestmark = pytest.mark.usefixtures("single_thread")

VOLATILE = {"ms", "probe_ms", "saved_at", "started_at", "finished_at"}
FAST = {"ft": {"steps": 3, "lr": 0.02}, "grace": {"steps": 4}, "defer": {"steps": 3, "negatives": 4},
        "wise-faiss": {"steps": 3, "shard_size": 2},
        "wise": {"steps": 3, "shard_size": 2, "prefixes": 1, "negatives": 2},
        "kn": {"ig_steps": 3}, "mend": {"steps": 2, "accumulate": 2}, "instructedit": {"steps": 2, "accumulate": 2}, "ke": {"steps": 2}, "serac": {"cls_steps": 20, "cf_steps": 5, "batch_size": 4},
        "rome": {"stats_fallback": True, "prefixes": 2, "steps": 3},
        "memit": {"stats_fallback": True, "prefixes": 2, "steps": 3},
        "alphaedit": {"stats_fallback": True, "prefixes": 2, "steps": 3},
        "calinet": {"steps": 10}, "t-patcher": {"steps": 10}, "lora": {"steps": 5},
        "ft-m": {"steps": 5}, "ft-ewc": {"steps": 5}, "f-learning": {"steps": 5}}
METHODS = sorted(available_methods())
CASES = [(m, 1) for m in METHODS] + [(m, 2) for m in METHODS
                                      if issubclass(available_methods()[m], BatchEditing)]


class SimulatedCrash(BaseException):
    """Raised where a kill -9 would strike; uncommitted rows are lost, as they would be."""


def tiny_stream() -> list[dict]:
    """5 edits (the last re-edits the first fact), a retraction between edits, a merge event,
    a query, and a retraction of the re-edit at the end: 9 events."""
    ev = stream_events(n_edits=5, reedits=0, retracts=0, queries=0)
    ev[4] = {**ev[4], "prompt": ev[0]["prompt"], "fact": ev[0]["fact"], "subject": ev[0]["subject"],
             "target": "Halvik"}
    ev.insert(3, {"kind": "retract", "id": "r-mid", "t": 35, "edit_id": "e001"})
    ev.insert(5, {"kind": "merge", "id": "m-mid", "t": 45})
    ev += [{"kind": "query", "id": "q0", "t": 60, "prompt": ev[0]["prompt"], "answer": "Halvik"},
           {"kind": "retract", "id": "r-end", "t": 70, "edit_id": "e004"}]
    return ev


@pytest.fixture(scope="module")
def setup_dir(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("platform")
    write_jsonl(stream_events(n_edits=4, seed=1, reedits=0, retracts=0, queries=0), d / "train.jsonl")
    return save_tiny_model(d / "tiny"), write_jsonl(tiny_stream(), d / "s.jsonl")


def scenario(d: Path, model: Path, stream: Path, name: str, batch: int, device: str = "cpu") -> Path:
    """One method at its cheapest settings (`FAST`) over `stream`, with the train split
    beside it, edits in batches of `batch`, the model on `device`."""
    settings = ", ".join(f"{k} = {json.dumps(v)}" for k, v in FAST.get(name, {}).items())
    path = d / f"{name}-{batch}-{device}.toml"
    path.write_text(f'name = "p"\nmodel = "{model}"\nthreads = 1\ndevice = "{device}"\n'
                    f'[stream]\nfile = "{stream}"\n'
                    f'train_file = "{stream.parent / "train.jsonl"}"\n'
                    f'[schedule]\ncheckpoint_every = 2\nmerge_every = 3\nedit_batch = {batch}\n'
                    f'locality_sample = 1\nlatency_queries = 2\nlatency_rounds = 1\n'
                    f'[[methods]]\nname = "{name}"\nsettings = {{ {settings} }}\n', encoding="utf-8")
    return path


def runtime(toml: Path, db: Path) -> Runtime:
    sc = load_scenario(toml)
    return Runtime(sc, parse_stream(sc.stream.file), Store(db))


def rows(db: Path, table: str) -> list[tuple]:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    out = [tuple((k, r[k]) for k in r.keys() if k not in VOLATILE)  # noqa: SIM118 (a Row)
           for r in con.execute(f"select * from {table}")]
    con.close()
    return sorted(out, key=repr)


@pytest.mark.parametrize(("name", "batch"), CASES, ids=[f"{m}-batch{b}" for m, b in CASES])
def test_runtime_contract_and_resume_after_every_event(name, batch, setup_dir, tmp_path):
    model, stream = setup_dir
    toml = scenario(tmp_path, model, stream, name, batch)
    ref = tmp_path / "ref.db"
    runtime(toml, ref).run_all()
    cls = available_methods()[name]
    method = build_method(name, FAST.get(name), 0)
    events = {r["event_id"]: r for r in Store(ref).rows("events")}
    assert len([e for e in events if not e.startswith("@")]) == 9
    retract = "applied" if issubclass(cls, Retractable) and method.retraction else "unsupported"
    assert events["r-mid"]["outcome"] == events["r-end"]["outcome"] == retract
    merges = [r["outcome"] for e, r in events.items() if e.startswith("@merge")]
    assert len(merges) == 1 and merges[0] in (("applied", "nothing") if issubclass(cls, Consolidating)
                                              else ("nothing",))
    assert events["m-mid"]["outcome"] in ("applied", "nothing")
    routed = [r.get("routed") for r in Store(ref).rows("probes") if r["role"] in ("rel", "loc")]
    assert all(x is not None for x in routed) if issubclass(cls, Routing) else \
        all(x is None for x in routed)

    # a kill after every event in turn (each attempt resumes the previous one), then after
    # the final checkpoint; the end result is the uninterrupted run's, row for row
    db = tmp_path / "crashed.db"
    for position in range(1, 10):
        rt = runtime(toml, db)

        def crash(rt=rt, position=position):
            if rt.position == position:
                raise SimulatedCrash

        rt._maybe_crash = crash
        with pytest.raises(SimulatedCrash):
            rt.run_all(resume=position > 1)
    rt = runtime(toml, db)

    def fault(point):
        if point == "after_final_checkpoint":
            raise SimulatedCrash

    rt._fault = fault
    with pytest.raises(SimulatedCrash):
        rt.run_all(resume=True)
    runtime(toml, db).run_all(resume=True)
    for table in ("events", "probes", "checkpoints"):
        assert rows(db, table) == rows(ref, table), table


@pytest.mark.parametrize("name", METHODS)
def test_an_unknown_edit_id_is_recorded_the_same_way_for_every_method(name, setup_dir):
    """A retraction of an id the method does not hold: outcome "nothing" with the reason, for
    every method that can retract; "unsupported" for one that cannot."""
    lm = load_model(str(setup_dir[0]))
    method = build_method(name, FAST.get(name), 0)
    method.attach(lm, AttachContext(seed=0, train_split=str(setup_dir[1].parent / "train.jsonl")))
    ev = Retract(id="r", t=0, edit_id="never-made")
    row = base_row("run", ev, 0, 0)
    apply_event(lm, method, ev, row, eval_after=False)
    if isinstance(method, Retractable) and method.retraction:
        assert row["outcome"] == "nothing" and "never-made" in row["error"]
    else:
        assert row["outcome"] == "unsupported"
    method.detach()
