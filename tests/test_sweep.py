"""`lifelong sweep`: expansion and ids, dry run, the local pool on a tiny stream (gathered
store, per-seed spread, re-run skips), a killed worker resumed to the same rows, a failed run
recorded while the sweep goes on, and the same sweep through a real local Ray instance."""

from __future__ import annotations

import dataclasses
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import uuid
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from tinyrun import save_tiny_model, stream_events, write_jsonl, write_scenario

from lifelong.cli import cli
from lifelong.config import from_mapping
from lifelong.errors import ConfigError, LifelongError
from lifelong.report import load_runs
from lifelong.report_table import comparison
from lifelong.scenario import MethodSpec, Scenario, StreamSource, load_scenario
from lifelong.sweep.command import plan_lines
from lifelong.sweep.executors import cores, pool_threads
from lifelong.sweep.progress import Counts, eta_seconds, status_text
from lifelong.sweep.spec import SweepConfig, expand, load_sweep

ROOT = Path(__file__).resolve().parent.parent
VOLATILE = {"ms", "probe_ms", "saved_at", "started_at", "finished_at", "run_id"}
QUALITY = ("rel_tf", "rel_gen", "gen_tf", "gen_gen", "loc_tf", "loc_gen", "rel_after_edit_tf",
           "rel_after_edit_gen")
FT = 'settings = { steps = 4, lr = 0.01 }'
pytestmark = pytest.mark.usefixtures("single_thread")


# ------------------------------------------------------------------------------ expansion, ids
def _scenario() -> Scenario:
    return Scenario(name="tiny", stream=StreamSource(file="/s/a.jsonl"),
                    methods=(MethodSpec("none"), MethodSpec("ft", settings={"steps": 3})))


@settings(max_examples=30, deadline=None)
@given(seeds=st.lists(st.integers(0, 5), min_size=1, max_size=3, unique=True),
       steps=st.lists(st.integers(1, 9), min_size=1, max_size=3, unique=True),
       lrs=st.lists(st.sampled_from([0.01, 0.02, 0.1, 1e-05]), min_size=1, max_size=2, unique=True),
       edits=st.lists(st.integers(0, 20), max_size=2, unique=True),
       models=st.lists(st.sampled_from(["builtin", "/m/a", "/n/a", "/m/b"]), max_size=2,
                       unique=True))
def test_expansion_is_deterministic_unique_and_complete(seeds, steps, lrs, edits, models):
    cfg = from_mapping(SweepConfig, {"scenario": "x.toml", "seeds": seeds, "models": models,
                                     "stream": {"max_edits": edits},
                                     "grid": {"ft": {"steps": steps, "lr": lrs}}})
    runs = expand(cfg, [("x.toml", _scenario())], Path("/base"))
    assert runs == expand(cfg, [("x.toml", _scenario())], Path("/base"))  # stable ids
    configs = (1 + len(steps) * len(lrs)) * max(1, len(edits)) * max(1, len(models))
    assert len(runs) == configs * len(seeds)
    assert len({r.run_id for r in runs}) == len(runs) == len({r.store for r in runs})
    by_label = Counter(r.label for r in runs)
    assert set(by_label.values()) == {len(seeds)}  # a configuration's seeds share its label
    for r in runs:
        assert r.run_id == f"{r.label}@seed{r.seed}" and r.scenario["seeds"] == [r.seed]
        assert r.build().methods[0].display == r.label  # the runtime writes this run id
        settings_ = r.method["settings"]
        if r.method["name"] == "ft":
            assert f"[steps={settings_['steps']},lr={settings_['lr']!r}]" in r.label
        if len(edits) > 1:
            assert f"edits={r.scenario['stream']['max_edits']}" in r.label


def test_ids_read_like_the_grid(tmp_path):
    (tmp_path / "s.toml").write_text('[stream]\nfile = "s.jsonl"\n[[methods]]\nname = "ft"\n')
    (tmp_path / "w.toml").write_text('scenario = "s.toml"\nseeds = 1\n'
                                     '[grid]\nft.steps = [5, 10]\nft.lr = 0.02\n')
    sw = load_sweep(tmp_path / "w.toml")
    assert [r.run_id for r in sw.runs] == ["ft[steps=5,lr=0.02]@seed1",
                                           "ft[steps=10,lr=0.02]@seed1"]
    assert sw.runs[1].method == {"name": "ft", "label": "ft[steps=10,lr=0.02]",
                                 "settings": {"steps": 10, "lr": 0.02}}
    assert sw.runs[0].scenario["stream"]["file"] == str(tmp_path / "s.jsonl")
    assert all(r.store.endswith(".db") and "/" not in r.store and "[" not in r.store
               for r in sw.runs)
    lines = plan_lines(sw.runs)
    assert lines[0].split() == ["id", "scenario", "method", "settings", "seed", "model", "stream"]
    assert '{"lr": 0.02, "steps": 5}' in lines[1]
    # torch threads in the local pool: the scenario's, else the run's share of the cores
    assert pool_threads(sw.runs[0], workers=2) == max(1, cores() // 2)
    assert pool_threads(dataclasses.replace(sw.runs[0], scenario={**sw.runs[0].scenario,
                                                                  "threads": 3}), 2) == 3


def test_progress_line_counts_and_time_left():
    c = Counts(total=6, complete=2, failed=1, running=2, walls=[10.0, 20.0])
    assert eta_seconds(c, slots=2) == 15.0 * 3 / 2
    text = status_text(c, slots=2, elapsed=75)
    assert text == "2 complete, 1 failed, 2 running, 0:01:15 elapsed, ~0:00:22 left"
    assert "after the first run" in status_text(Counts(total=3), slots=1)


@pytest.mark.parametrize("text, fragment", [
    ('scenario = "s.toml"\nsede = [1]\n', "unknown key(s) sede"),
    ('scenario = "s.toml"\nscenarios = ["s.toml"]\n', "either scenario"),
    ('scenario = "s.toml"\n[grid]\ngrace.eps = [0.1]\n', "grid.grace: no method labelled"),
    ('scenario = "s.toml"\n[stream]\norder = ["random"]\n', "stream.order"),
    ('scenario = "s.toml"\n[grid]\nft.steps = []\n', "list of values is empty"),
    ('scenario = "nope.toml"\n', "no such scenario file"),
])
def test_sweep_file_mistakes_are_one_line(tmp_path, text, fragment):
    (tmp_path / "s.toml").write_text('[stream]\nfile = "s.jsonl"\n[[methods]]\nname = "ft"\n')
    (tmp_path / "w.toml").write_text(text)
    with pytest.raises(ConfigError) as err:
        load_sweep(tmp_path / "w.toml")
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_shipped_sweep_dry_run_and_a_bad_setting_on_the_command_line(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "lifelong.cli", "sweep",
                          "sweeps/quickstart-seeds.toml", "--dry-run"], capture_output=True,
                         text=True, env=env, cwd=ROOT, timeout=300, check=False)
    assert res.returncode == 0, res.stderr
    ids = [line.split()[0] for line in res.stdout.splitlines()[1:-1]]
    methods = load_scenario(ROOT / "scenarios" / "quickstart.toml").methods
    assert ids == [f"{m.display}@seed{s}" for m in methods for s in (0, 1, 2)]
    assert "quickstart.jsonl" in res.stdout and not (ROOT / "runs" / "quickstart-seeds").exists()
    (tmp_path / "s.toml").write_text('[stream]\nfile = "s.jsonl"\n[[methods]]\nname = "ft"\n')
    (tmp_path / "w.toml").write_text('scenario = "s.toml"\n[grid]\nft.stepz = [1, 2]\n')
    result = CliRunner().invoke(cli, ["sweep", str(tmp_path / "w.toml"), "--out",
                                      str(tmp_path / "o")])
    assert isinstance(result.exception, ConfigError)
    assert "stepz" in str(result.exception) and "\n" not in str(result.exception)
    assert not (tmp_path / "o").exists()  # refused before anything ran


# ----------------------------------------------------------------------------- the local pool
@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A folder with a tiny model, a 6-edit stream and a scenario (`none` and `ft`, 1 thread)."""
    d = tmp_path_factory.mktemp("sweep")
    model = save_tiny_model(d / "model")
    stream = write_jsonl(stream_events(n_edits=6, reedits=1, retracts=1, queries=1), d / "s.jsonl")
    write_scenario(d / "tiny.toml", model, stream, extra="threads = 1")
    (d / "seeds.toml").write_text('scenario = "tiny.toml"\nseeds = [0, 1]\n')
    return d


def sweep_cli(*args: str):
    return CliRunner().invoke(cli, ["sweep", *map(str, args)])


@pytest.fixture(scope="module")
def pool_out(tiny) -> Path:
    """2 methods x 2 seeds through the local pool with 2 workers."""
    out = tiny / "pool"
    result = sweep_cli(tiny / "seeds.toml", "--out", out, "--workers", 2, "--quiet")
    assert result.exit_code == 0, (result.output, result.exception)
    assert "sweep seeds: 4 of 4 runs complete" in result.output
    return out


def rows(db: Path, table: str, run_id: str | None = None) -> list[str]:
    """A table's rows without wall-clock columns and run ids, sorted (what must reproduce)."""
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    where, args = ("where run_id = ?", [run_id]) if run_id else ("", [])
    out = sorted(repr(tuple((k, r[k]) for k in r.keys() if k not in VOLATILE))  # noqa: SIM118
                 for r in con.execute(f"select * from {table} {where}", args))
    con.close()
    return out


def query(db: Path, sql: str) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def quality(db: Path) -> dict:
    """`lifelong compare`'s quality figures: per run, and per label over seeds (± std)."""
    cmp = comparison(load_runs([db]))
    out = {r["run_id"]: {k: r.get(k) for k in QUALITY} for r in cmp.rows}
    out |= {m["label"]: {k: m.get(k) for q in QUALITY for k in (q, f"{q}_std")} | {
        "n_seeds": m["n_seeds"]} for m in cmp.means}
    return out


def test_pool_sweep_gathers_one_store_with_spread_over_seeds(tiny, pool_out):
    db = pool_out / "sweep.db"
    ids = ["none@seed0", "none@seed1", "ft@seed0", "ft@seed1"]
    in_order = query(db, "select run_id, status from runs order by rowid")
    assert in_order == [(i, "complete") for i in ids]
    assert sorted(p.name for p in (pool_out / "runs").glob("*.db")) == sorted(f"{i}.db"
                                                                              for i in ids)
    assert query(db, "select distinct threads, status from sweep_attempts") == [(1, "complete")]
    prov = query(db, "select executor, host, worker, code_version, sweep_hash, attempts, store "
                     "from sweep order by position")
    assert all(p[0] == "pool" and p[1] and p[2].startswith("pool pid") and p[3] and p[5] == 1
               for p in prov)
    assert {p[4] for p in prov} == {load_sweep(tiny / "seeds.toml").digest}
    for i in ids:  # each run's rows, gathered verbatim
        assert rows(db, "probes", i) == rows(pool_out / "runs" / f"{i}.db", "probes", i)
    figures = quality(db)
    for label in ("none (mean)", "ft (mean)"):
        assert figures[label]["n_seeds"] == 2
        assert figures[label]["rel_tf"] is not None and figures[label]["rel_tf_std"] is not None
    assert figures["none@seed0"]["loc_tf"] == 1.0


def test_rerun_skips_finished_runs_and_a_second_start_is_refused(tiny, pool_out):
    db = pool_out / "sweep.db"
    before = (rows(db, "probes"), query(db, "select count(*) from sweep_attempts"))
    refused = sweep_cli(tiny / "seeds.toml", "--out", pool_out, "--quiet")
    assert isinstance(refused.exception, LifelongError) and "--resume" in str(refused.exception)
    again = sweep_cli(tiny / "seeds.toml", "--out", pool_out, "--resume", "--quiet")
    assert again.exit_code == 0, (again.output, again.exception)
    assert "4 of 4 runs complete (4 of them before this invocation)" in again.output
    assert (rows(db, "probes"), query(db, "select count(*) from sweep_attempts")) == before


def test_killed_worker_resumes_to_the_rows_of_an_uninterrupted_sweep(tiny, pool_out):
    """One scenario's worker dies like kill -9 after 5 events (fault injection), another's
    model is broken (the run fails, recorded with its error): the pool goes on; --resume
    completes the first with the rows of the uninterrupted pool sweep."""
    crash = (tiny / "tiny.toml").read_text().replace('name = "tiny"', 'name = "crash"')
    (tiny / "crash.toml").write_text(crash + "\n[faults]\ncrash_after_events = 5\n")
    (tiny / "empty").mkdir()
    (tiny / "broken.toml").write_text(f'model = "empty"\n[stream]\nfile = "s.jsonl"\n'
                                      f'[[methods]]\nname = "ft"\n{FT}\n')
    (tiny / "faults.toml").write_text('scenarios = ["crash.toml", "broken.toml"]\n'
                                      f'[[methods]]\nname = "ft"\n{FT}\n')
    out = tiny / "faults"
    first = sweep_cli(tiny / "faults.toml", "--out", out, "--workers", 2, "--quiet")
    assert isinstance(first.exception, LifelongError), first.output
    assert "2 of 2 runs not complete (1 failed, 1 died)" in str(first.exception)
    crashed, broken = "crash,model=model:ft@seed0", "broken,model=empty:ft@seed0"
    status = dict(query(out / "sweep.db", "select run_id, status from sweep"))
    assert status == {crashed: "died", broken: "failed"}
    second = sweep_cli(tiny / "faults.toml", "--out", out, "--workers", 2, "--resume", "--quiet")
    assert "1 of 2 runs not complete (1 failed)" in str(second.exception)
    db = out / "sweep.db"
    runs = dict(query(db, "select run_id, status || ': ' || coalesce(error, '') from runs"))
    assert runs[crashed] == "complete: " and runs[broken].startswith("failed: ")
    assert "not a model directory" in runs[broken]
    attempts = query(db, f"select status, resumed, from_event from sweep_attempts "
                         f"where run_id = '{crashed}' order by attempt")
    assert attempts[0][0] == "died" and attempts[1][:2] == ("complete", 1) and attempts[1][2] > 0
    for table in ("events", "probes", "checkpoints"):
        assert rows(db, table, crashed) == rows(pool_out / "sweep.db", table, "ft@seed0"), table
    assert quality(db)[crashed] == quality(pool_out / "sweep.db")["ft@seed0"]


# ----------------------------------------------------------------------------------------- Ray
def test_ray_sweep_gives_the_pool_sweeps_figures(tiny, pool_out):
    ray = pytest.importorskip("ray")
    from lifelong.sweep.command import run_sweep
    from lifelong.sweep.executors import ray_task
    ray.init(num_cpus=2, log_to_driver=False, include_dashboard=False)
    token = uuid.uuid4().hex
    try:
        out = tiny / "ray"
        sw = load_sweep(tiny / "seeds.toml")
        outcomes, earlier = run_sweep(sw, out, ray="auto", quiet=True)
        assert {o.status for o in outcomes.values()} == {"complete"} and not earlier
        db = out / "sweep.db"
        assert query(db, "select distinct executor from sweep") == [("ray",)]
        assert all(w.startswith("ray node") for (w,) in query(db, "select worker from sweep"))
        assert quality(db) == quality(pool_out / "sweep.db")
        for table in ("events", "probes", "checkpoints", "reference"):
            assert rows(db, table) == rows(pool_out / "sweep.db", table), table
        # a worker without the driver's folder (no shared file system) gets the store's bytes
        # and ships them back
        store = out / "runs" / "ft@seed0.db"
        task = {"run_id": "ft@seed0", "scenario": sw.runs[2].scenario, "threads": 1,
                "store": str(store), "out": str(tiny / "elsewhere"), "token": token,
                "executor": "ray", "sweep_hash": sw.digest, "run_key": sw.runs[2].key}
        back = ray.get(ray.remote(ray_task).remote(task, [ray.put(store.read_bytes())]))
        assert back["status"] == "complete" and back["blob"][:16] == b"SQLite format 3\x00"
    finally:
        ray.shutdown()
        shutil.rmtree(Path(tempfile.gettempdir()) / f"lifelong-sweep-{token}", ignore_errors=True)

