"""Resume at every instant of a run, its tail included: a run killed after any commit and
resumed ends with exactly the rows of an uninterrupted run (wall-clock columns aside), and a
final state is never probed twice."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from tinyrun import save_tiny_model, stream_events, write_jsonl, write_scenario

from lifelong.errors import StoreError
from lifelong.runtime import Runtime
from lifelong.scenario import CRASH_POINTS, load_scenario
from lifelong.store import Store
from lifelong.stream import parse_stream

pytestmark = pytest.mark.usefixtures("single_thread_module", "single_thread")
VOLATILE = {"ms", "probe_ms", "saved_at", "started_at", "finished_at", "blob"}
TIMING_METRICS = ("latency_ms", "edits_per_second")
FT = '[[methods]]\nname = "ft"\nsettings = { steps = 4, lr = 0.01 }\n'


class SimulatedKill(BaseException):
    """Raised where the fault would `os._exit`: what was not committed is lost."""


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny")


def _scenario(d: Path, tiny_dir: Path, name: str, events: list[dict], schedule: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    stream = write_jsonl(events, d / f"{name}.jsonl")
    return write_scenario(d / f"{name}.toml", tiny_dir, stream, methods=FT, schedule=schedule)


@pytest.fixture(scope="module")
def scenarios(tiny_dir, tmp_path_factory) -> dict[str, Path]:
    """separate: retractions follow the last edit, so the final state is probed on its own;
    merged: only queries follow the last scheduled checkpoint, which probes every fact, so it
    is the final one; sampled: the same, but the scheduled checkpoints probe a sample, so the
    final state is probed again in full."""
    d = tmp_path_factory.mktemp("scenarios")
    tail_queries = stream_events(n_edits=8, reedits=2, retracts=0, queries=2)
    return {
        "separate": _scenario(d, tiny_dir, "separate", stream_events(
            n_edits=8, reedits=2, retracts=2, queries=1), "checkpoint_every = 4"),
        "merged": _scenario(d, tiny_dir, "merged", tail_queries, "checkpoint_every = 4"),
        "sampled": _scenario(d, tiny_dir, "sampled", tail_queries,
                             "checkpoint_every = 4\nprobe_edits = 2"),
    }


def run(path: Path, db: Path, resume: bool = False, kill_after_events: int = 0,
        kill_at: str = "") -> None:
    sc = load_scenario(path)
    runtime = Runtime(sc, parse_stream(sc.stream.file), Store(db))
    runtime._crash_budget = 0 if resume else kill_after_events
    runtime._crash_point = "" if resume else kill_at

    def die():
        raise SimulatedKill

    runtime._die = die
    runtime.run_all(resume=resume)


def snapshot(db: Path) -> dict[str, list]:
    """Every table's rows without wall-clock columns, sorted; metrics without timing figures;
    the run rows without their status (a simulated kill records none, a real one neither)."""
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    out = {}
    for (table,) in con.execute("select name from sqlite_master where type = 'table'"):
        rows = []
        for r in con.execute(f"select * from [{table}]"):
            row = {k: r[k] for k in r.keys() if k not in VOLATILE}  # noqa: SIM118 (a Row iterates values)
            if table == "metrics" and row["name"] in TIMING_METRICS:
                row["value"] = None
            if table == "metrics" and row["name"] == "status":
                row["value"] = None
            rows.append(tuple(sorted(row.items())))
        out[table] = sorted(rows, key=repr)
    con.close()
    return out


@pytest.fixture(scope="module")
def references(scenarios, tmp_path_factory, single_thread_module) -> dict[str, dict]:
    """Made under the same thread count as the killed runs: the run row records it."""
    d = tmp_path_factory.mktemp("ref")
    out = {}
    for name, path in scenarios.items():
        run(path, d / f"{name}.db")
        out[name] = snapshot(d / f"{name}.db")
    return out


def _n_events(path: Path) -> int:
    return len(parse_stream(load_scenario(path).stream.file).events)


def _kills(scenarios) -> list[tuple[str, int, str]]:
    cases = []
    for name, path in scenarios.items():
        cases += [(name, k, "") for k in range(1, _n_events(path) + 1)]
        cases += [(name, 0, point) for point in CRASH_POINTS]
    return cases


def test_final_checkpoint_shapes(references):
    def whens(name):
        cks = [dict(r) for r in references[name]["checkpoints"]]
        return [(c["edits_done"], c["when"]) for c in sorted(cks, key=lambda c: c["checkpoint"])]
    assert whens("separate") == [(4, "checkpoint"), (8, "checkpoint"), (8, "final")]
    assert whens("merged") == [(4, "checkpoint"), (8, "final")]  # the state is not probed twice
    assert whens("sampled") == [(4, "checkpoint"), (8, "checkpoint"), (8, "final")]


def test_killed_at_every_instant_then_resumed_equals_uninterrupted(scenarios, references,
                                                                   tmp_path):
    """Every event boundary and every commit of the tail, for each shape of the tail."""
    cases = _kills(scenarios)
    assert len(cases) == sum(_n_events(p) + len(CRASH_POINTS) for p in scenarios.values())
    for i, (name, after_events, point) in enumerate(cases):
        db = tmp_path / f"{i}.db"
        with pytest.raises(SimulatedKill):
            run(scenarios[name], db, kill_after_events=after_events, kill_at=point)
        run(scenarios[name], db, resume=True)
        got = snapshot(db)
        for table, rows in references[name].items():
            assert got[table] == rows, (name, after_events, point, table)
        assert Store(db).get_run("ft@seed0")["status"] == "complete"


def _surgery(db: Path, keep: str) -> None:
    """Put a complete store back in the state a kill leaves right after one commit of the
    tail: `keep` = "final_checkpoint" (the probes and resume point only), "timings" or
    "metrics" (the run not yet marked complete)."""
    con = sqlite3.connect(db)
    with con:
        if keep == "final_checkpoint":
            con.execute("delete from timings where op = 'query'")
        if keep in ("final_checkpoint", "timings"):
            con.execute("delete from metrics")
        con.execute("update runs set status = 'running', finished_at = null")
    con.close()


@pytest.mark.parametrize("keep", ["final_checkpoint", "timings", "metrics"])
@pytest.mark.parametrize("shape", ["separate", "merged"])
def test_resume_after_the_tail_commits_of_a_real_store_adds_nothing(scenarios, references,
                                                                    tmp_path, keep, shape):
    """The same instants made by editing a finished store (what a kill there leaves on disk):
    a resume must not probe or record a second final checkpoint."""
    db = tmp_path / "s.db"
    run(scenarios[shape], db)
    _surgery(db, keep)
    run(scenarios[shape], db, resume=True)
    got = snapshot(db)
    for table in ("checkpoints", "probes", "events", "metrics"):
        assert got[table] == references[shape][table], table


ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def test_real_kill_in_the_tail_via_the_cli(scenarios, tmp_path):
    """The fault point really exits (like kill -9) and --resume completes without duplicates."""
    base = scenarios["separate"].read_text()
    ref_toml = tmp_path / "ref.toml"
    ref_toml.write_text(base)
    crash = tmp_path / "crash.toml"
    crash.write_text(base + '\n[faults]\ncrash_at = "after_query_timing"\n')

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "lifelong.cli", "simulate", *args, "--quiet"],
                              capture_output=True, text=True, timeout=300, env=ONE_THREAD,
                              check=False)

    assert cli(str(ref_toml), "--db", str(tmp_path / "ref.db")).returncode == 0
    died = cli(str(crash), "--db", str(tmp_path / "c.db"))
    assert died.returncode == 137, died.stderr
    con = sqlite3.connect(tmp_path / "c.db")
    assert con.execute("select status from runs").fetchone()[0] == "running"
    tables = {r[0] for r in con.execute("select name from sqlite_master where type = 'table'")}
    assert "timings" in tables and "metrics" not in tables  # killed between the two commits
    con.close()
    again = cli(str(crash), "--db", str(tmp_path / "c.db"), "--resume")
    assert again.returncode == 0, again.stderr
    ref, got = snapshot(tmp_path / "ref.db"), snapshot(tmp_path / "c.db")
    for table in ("checkpoints", "probes", "events"):
        assert got[table] == ref[table], table
    assert len(got["timings"]) == len(ref["timings"])
    assert json.loads(dict(got["runs"][0])["config"])["scenario"]["faults"]["crash_at"] == \
        "after_query_timing"


def test_resume_on_a_model_rebuilt_at_the_same_path_is_refused(tmp_path):
    """A run killed midway is not continued on other weights at its model's path (the rows
    would not be one run's): one line naming the store, the run and both fingerprints, and
    every row already recorded kept as it was. The same weights resume."""
    model = save_tiny_model(tmp_path / "model" / "tiny")
    path = _scenario(tmp_path / "sc", model, "s", stream_events(n_edits=6, reedits=1,
                                                               retracts=0, queries=0),
                     "checkpoint_every = 3")
    db = tmp_path / "s.db"
    with pytest.raises(SimulatedKill):
        run(path, db, kill_after_events=4)
    recorded = Store(db).get_run("ft@seed0")["model_fingerprint"]
    before = snapshot(db)
    save_tiny_model(model, seed=1)  # rebuilt: same path, other weights
    with pytest.raises(StoreError) as err:
        run(path, db, resume=True)
    msg = str(err.value)
    assert "\n" not in msg and str(db) in msg and "ft@seed0" in msg and recorded in msg
    assert snapshot(db) == before
    save_tiny_model(model, seed=0)  # the weights it started on
    run(path, db, resume=True)
    assert Store(db).get_run("ft@seed0")["status"] == "complete"
