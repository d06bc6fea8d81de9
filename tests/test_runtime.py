"""The runtime end to end on a tiny model: determinism, crash/resume, interruption, the store."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tinyrun import save_tiny_model, stream_events, write_jsonl, write_scenario

from lifelong.errors import StoreError
from lifelong.runtime import Runtime
from lifelong.scenario import load_scenario
from lifelong.store import Store
from lifelong.stream import parse_stream

VOLATILE = {"ms", "probe_ms", "saved_at", "started_at", "finished_at"}
pytestmark = pytest.mark.usefixtures("single_thread")
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def scenario_file(tiny_dir, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("scenario")
    stream = write_jsonl(stream_events(n_edits=12, reedits=3, retracts=2, queries=2), d / "s.jsonl")
    return write_scenario(d / "tiny.toml", tiny_dir, stream)


def run_scenario(scenario_file: Path, db: Path, resume: bool = False, **overrides) -> Store:
    sc = load_scenario(scenario_file, overrides)
    store = Store(db)
    Runtime(sc, parse_stream(sc.stream.file), store).run_all(resume=resume)
    return store


def table_rows(db: Path, table: str) -> list[tuple]:
    """A table's rows without wall-clock columns, sorted (what must be reproducible)."""
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    rows = [tuple((k, r[k]) for k in r.keys() if k not in VOLATILE)  # noqa: SIM118 (a Row)
            for r in con.execute(f"select * from {table}")]
    con.close()
    return sorted(rows, key=repr)


def metric_values(store: Store) -> dict:
    """Final metrics without the timing-dependent ones."""
    out = {}
    for run in store.runs():
        rows = {r["name"]: json.loads(r["value"]) for r in store.rows("metrics", run["run_id"])}
        for k in ("latency_ms", "edits_per_second", "status"):
            rows.pop(k, None)
        out[run["run_id"]] = rows
    return out


def test_same_seed_same_rows(scenario_file, tmp_path):
    a = run_scenario(scenario_file, tmp_path / "a.db")
    b = run_scenario(scenario_file, tmp_path / "b.db")
    for table in ("events", "probes", "checkpoints", "reference"):
        assert table_rows(a.path, table) == table_rows(b.path, table), table
    assert metric_values(a) == metric_values(b)
    statuses = {r["run_id"]: r["status"] for r in a.runs()}
    assert statuses == {"none@seed0": "complete", "ft@seed0": "complete"}


def test_every_event_and_checkpoint_recorded(scenario_file, tmp_path):
    store = run_scenario(scenario_file, tmp_path / "a.db")
    events = store.rows("events", "ft@seed0")
    assert {e["kind"] for e in events} == {"edit", "retract", "query"}
    assert sum(e["kind"] == "edit" for e in events) == 12
    retracts = [e for e in events if e["kind"] == "retract"]
    assert all(e["outcome"] == "unsupported" and "cannot retract" in e["error"] for e in retracts)
    assert all(e["ms"] is not None for e in events)
    cks = store.rows("checkpoints", "ft@seed0")
    assert [c["edits_done"] for c in sorted(cks, key=lambda c: c["checkpoint"])] == [4, 8, 12, 12]
    assert json.loads(store.get_run("ft@seed0")["config"])["method"]["settings"]["steps"] == 4


class SimulatedCrash(BaseException):
    """Raised where a kill -9 would strike; uncommitted rows are lost, as they would be."""


@pytest.fixture(scope="module")
def ft_reference(scenario_file, tmp_path_factory) -> Store:
    return run_scenario(scenario_file, tmp_path_factory.mktemp("ref") / "ref.db", methods=["ft"])


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(crash_at=st.integers(min_value=1, max_value=16))  # the stream has 16 events
def test_crash_then_resume_equals_uninterrupted(scenario_file, ft_reference, tmp_path_factory,
                                                crash_at):
    d = tmp_path_factory.mktemp("crash")
    reference = ft_reference
    sc = load_scenario(scenario_file, {"methods": ["ft"]})
    store = Store(d / "crashed.db")
    runtime = Runtime(sc, parse_stream(sc.stream.file), store)
    seen = [0]

    def crash():
        seen[0] += 1
        if seen[0] == crash_at:
            raise SimulatedCrash

    runtime._maybe_crash = crash
    with pytest.raises(SimulatedCrash):
        runtime.run_all()
    resumed = run_scenario(scenario_file, d / "crashed.db", resume=True, methods=["ft"])
    for table in ("events", "probes", "checkpoints"):
        assert table_rows(resumed.path, table) == table_rows(reference.path, table), table
    assert metric_values(resumed) == metric_values(reference)


def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lifelong.cli", *args], capture_output=True,
                          text=True, timeout=300, env=ONE_THREAD, check=False, **kw)


def summary_figures(path: Path) -> dict:
    runs = json.loads(path.read_text())["runs"]
    for r in runs:
        for k in ("latency_ms", "edits_per_second", "status"):
            r.pop(k)
    return {r["run_id"]: r for r in runs}


def test_kill9_then_resume_via_cli(scenario_file, tmp_path):
    """A process that dies like kill -9 mid-run resumes to the same results, no duplicates."""
    ref = cli("simulate", str(scenario_file), "--db", str(tmp_path / "ref.db"), "--json",
              str(tmp_path / "ref.json"), "--quiet")
    assert ref.returncode == 0, ref.stderr
    # the fault kills the process (os._exit, no cleanup) after 24 events: in the second run
    crash_toml = tmp_path / "crash.toml"
    crash_toml.write_text(scenario_file.read_text() + "\n[faults]\ncrash_after_events = 24\n")
    db = tmp_path / "crash.db"
    died = cli("simulate", str(crash_toml), "--db", str(db), "--quiet")
    assert died.returncode == 137
    assert Store(db).get_run("ft@seed0")["status"] == "running"  # as a kill leaves it
    again = cli("simulate", str(crash_toml), "--db", str(db), "--resume", "--json",
                str(tmp_path / "crash.json"))
    assert again.returncode == 0, again.stderr
    assert "none@seed0: already complete" in again.stderr
    assert "ft@seed0: resuming after event" in again.stderr
    assert summary_figures(tmp_path / "crash.json") == summary_figures(tmp_path / "ref.json")
    for table in ("events", "probes", "checkpoints"):
        assert len(table_rows(db, table)) == len(table_rows(tmp_path / "ref.db", table))


def test_sigint_saves_and_resumes(tiny_dir, tmp_path):
    events = stream_events(n_edits=150, reedits=10, retracts=3)
    stream = write_jsonl(events, tmp_path / "long.jsonl")
    toml = write_scenario(tmp_path / "long.toml", tiny_dir, stream, schedule="checkpoint_every = 10",
                          methods='[[methods]]\nname = "ft"\nsettings = { steps = 6, lr = 0.01 }\n')
    db = tmp_path / "long.db"
    proc = subprocess.Popen([sys.executable, "-m", "lifelong.cli", "simulate", str(toml), "--db",
                             str(db), "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ONE_THREAD)
    deadline = time.time() + 120
    while time.time() < deadline and not _has_state(db):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "--resume" in err
    assert Store(db).get_run("ft@seed0")["status"] == "interrupted"
    done = cli("simulate", str(toml), "--db", str(db), "--resume", "--quiet")
    assert done.returncode == 0, done.stderr
    assert Store(db).get_run("ft@seed0")["status"] == "complete"
    assert len(Store(db).rows("events", "ft@seed0")) == len(events)


def _has_state(db: Path) -> bool:
    if not db.exists():
        return False
    try:
        con = sqlite3.connect(db)
        n = con.execute("select count(*) from state").fetchone()[0]
        con.close()
        return n > 0
    except sqlite3.Error:
        return False


def test_existing_run_needs_resume_and_same_config(scenario_file, tmp_path):
    run_scenario(scenario_file, tmp_path / "a.db", methods=["none"])
    with pytest.raises(StoreError, match="--resume"):
        run_scenario(scenario_file, tmp_path / "a.db", methods=["none"])
    run_scenario(scenario_file, tmp_path / "a.db", resume=True, methods=["none"])  # complete: no-op
    with pytest.raises(StoreError, match="another configuration"):
        run_scenario(scenario_file, tmp_path / "a.db", resume=True, methods=["none"], edits=5)


def test_a_scenario_that_gained_a_method_resumes_the_runs_it_had(scenario_file, tmp_path):
    """The scenario's list of methods is not part of a run's identity: `--resume` after
    adding a method (or picking one with --method) keeps the finished run and runs the new."""
    store = run_scenario(scenario_file, tmp_path / "a.db", methods=["none"])
    before = store.get_run("none@seed0")
    store = run_scenario(scenario_file, tmp_path / "a.db", resume=True, methods=["none", "ft"])
    assert store.get_run("none@seed0") == before
    assert store.get_run("ft@seed0")["status"] == "complete"
    run_scenario(scenario_file, tmp_path / "a.db", resume=True, methods=["ft"])  # complete: no-op


def test_resume_refuses_a_stream_whose_content_changed(tiny_dir, tmp_path):
    """The run records its stream file's digest; resuming it against the same path with
    other content is refused (one line), and a store recorded before the digest resumes."""
    path = write_jsonl(stream_events(n_edits=6), tmp_path / "s.jsonl")
    scenario = write_scenario(tmp_path / "s.toml", tiny_dir, path)
    store = run_scenario(scenario, tmp_path / "a.db", methods=["none"])
    recorded = json.loads(store.get_run("none@seed0")["stream"])
    assert recorded["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert "sha256" not in json.loads(store.get_run("none@seed0")["config"])["stream"]
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[0]["target"], rows[2]["target"] = rows[2]["target"], rows[0]["target"]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(StoreError, match=r"another version of .*s\.jsonl"):
        run_scenario(scenario, tmp_path / "a.db", resume=True, methods=["none"])
    with sqlite3.connect(tmp_path / "a.db") as con:  # as a store made before the digest
        con.execute("update runs set stream = ?", [json.dumps(
            {k: v for k, v in recorded.items() if k != "sha256"})])
    run_scenario(scenario, tmp_path / "a.db", resume=True, methods=["none"])  # complete: no-op


def test_invalid_stream_is_refused_and_nothing_written(tiny_dir, tmp_path):
    events = stream_events(n_edits=6)
    lines = [json.dumps(e) for e in events]
    lines[3] = lines[3].replace('"target": ', '"target": "", "x": ')
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    toml = write_scenario(tmp_path / "bad.toml", tiny_dir, bad)
    db = tmp_path / "bad.db"
    res = cli("simulate", str(toml), "--db", str(db), "--quiet")
    assert res.returncode == 2
    assert f"{bad}:4: " in res.stderr
    assert not db.exists()
    skipped = cli("simulate", str(toml), "--db", str(db), "--quiet", "--skip-bad", "--method", "none",
                  "--json", str(tmp_path / "s.json"))
    assert skipped.returncode == 0, skipped.stderr
    assert "skipped 1 invalid line" in skipped.stderr
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["skipped_lines"] == 1
    assert summary["methods"]["none"]["edits"]["total"] == 5
