"""`report` / `compare` say what was measured and nothing more (issue 19): refused retractions
are not "restored", stream queries are scored, a query overhead within noise is never bold,
runs of different models or streams are ranked only within their own group, edits that did
not converge are counted, skipped stream lines are shown, short runs draw no 1x1 heat map,
legends name only runs with data, and read-only places give one line, not a traceback.
Every store here is a real tiny run."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_report import copy_store, markdown_tables, parse_html
from tinyrun import save_tiny_model, stream_events, write_jsonl, write_scenario

from lifelong.cli import cli
from lifelong.plots import quality_plot
from lifelong.report import load_runs, write_report
from lifelong.runtime import Runtime
from lifelong.scenario import load_scenario
from lifelong.store import Store
from lifelong.stream import parse_stream
from lifelong.summary import summarize

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module", autouse=True)
def module_single_thread(single_thread_module):
    """Every module-scoped store here is built on one thread."""


def _run(scenario: Path, db: Path, skip_bad: bool = False) -> Path:
    sc = load_scenario(scenario, {})
    Runtime(sc, parse_stream(sc.stream.file, skip_bad=skip_bad), Store(db)).run_all()
    return db


@pytest.fixture(scope="module")
def honest_db(tmp_path_factory) -> Path:
    """none and ft (FT-L refuses every retraction) on 12 edits, 2 retractions, 2 queries."""
    d = tmp_path_factory.mktemp("honest")
    stream = write_jsonl(stream_events(n_edits=12, reedits=3, retracts=2, queries=2), d / "s.jsonl")
    return _run(write_scenario(d / "tiny.toml", save_tiny_model(d / "tiny"), stream), d / "honest.db")


@pytest.fixture(scope="module")
def other_db(tmp_path_factory) -> Path:
    """Another model and another stream (8 edits, one invalid line skipped), probed only at
    the end: one retention group at one checkpoint."""
    d = tmp_path_factory.mktemp("other")
    events = stream_events(n_edits=8, seed=1, reedits=1, retracts=1, queries=1)
    stream = write_jsonl(events, d / "other.jsonl")
    stream.write_text(stream.read_text() + '{"kind": "edit", "id": "bad"}\n')
    scenario = write_scenario(d / "other.toml", save_tiny_model(d / "tiny2", seed=1), stream,
                              schedule="checkpoint_every = 0")
    return _run(scenario, d / "other.db", skip_bad=True)


def compare_json(tmp_path: Path, *stores: Path) -> tuple[dict, str]:
    out = tmp_path / "c.json"
    res = CliRunner().invoke(cli, ["compare", *map(str, stores), "--json", str(out)])
    assert res.exit_code == 0, res.output
    return json.loads(out.read_text()), res.output


def cells(report: dict) -> dict[str, dict[str, tuple[str, bool]]]:
    """label -> header -> (text, bold), over every comparison table of the page; the
    Markdown twin must carry the same tables."""
    tables = parse_html(report["html"]).tables
    assert markdown_tables(report["markdown"].read_text()) == tables
    out: dict[str, dict[str, tuple[str, bool]]] = {}
    for table in tables:
        heads = [h for h, _ in table[0]]
        for row in table[1:]:
            out.setdefault(row[0][0], {}).update(dict(zip(heads, row)))
    return out


# --------------------------------------------------------------------------------- tests
def test_refused_retractions_are_unsupported_not_restored(honest_db, tmp_path):
    ft = next(r for r in load_runs([honest_db]) if r.label == "ft")
    assert ft.metrics["retraction"] == {"restored": None, "requested": 2, "performed": 0,
                                        "unsupported": 2, "when": "final"}
    table = cells(write_report([honest_db], tmp_path / "r.html"))
    assert table["ft"]["retract restored gen"] == ("unsupported (2/2)", False)
    assert table["ft"]["retractions unsupported"] == ("2/2", False)
    assert table["none"]["retractions unsupported"] == ("0/2", False)
    # none restored its facts (it performed both retractions), but nothing competes with it
    assert table["none"]["retract restored gen"] == ("1.000", False)
    doc, _ = compare_json(tmp_path, honest_db)
    assert "retract_restored_gen" not in doc["best"]


def test_stream_queries_reach_summary_compare_and_report(honest_db, tmp_path):
    with sqlite3.connect(honest_db) as con:
        rows = con.execute("select tf_acc, gen_exact from events where kind = 'query' "
                           "and run_id = 'ft@seed0'").fetchall()
    assert len(rows) == 2
    summary = summarize(Store(honest_db))
    q = summary["methods"]["ft"]["queries"]
    assert q["n"] == q["asked"] == 2 and q["when"] == "at_query"
    assert q["teacher_forced"] == pytest.approx(sum(r[0] for r in rows) / 2)
    assert q["generated"] == pytest.approx(sum(r[1] for r in rows) / 2)
    doc, _ = compare_json(tmp_path, honest_db)
    ft = next(r for r in doc["rows"] if r["label"] == "ft")
    assert (ft["queries_tf"], ft["queries_gen"]) == (q["teacher_forced"], q["generated"])
    table = cells(write_report([honest_db], tmp_path / "r.html"))
    assert table["ft"]["stream queries gen"][0] == f"{q['generated']:.3f}"


def _set_timings(db: Path, run_id: str, mem: list[float], base: list[float], rounds: int) -> None:
    """Replace a run's batch-1 timings by pairs keyed as the runtime keys them."""
    per = len(mem) // rounds
    with sqlite3.connect(db) as con:
        con.execute("delete from timings where run_id = ? and batch = 1", [run_id])
        for op, values in (("query", mem), ("query_base", base)):
            con.executemany("insert into timings (run_id, op, key, ms, batch) values (?, ?, ?, ?, 1)",
                            [(run_id, op, f"b1:{k // per}:{k % per}", v) for k, v in enumerate(values)])


def test_query_overhead_within_noise_is_never_bold(honest_db, tmp_path):
    db = copy_store(honest_db, tmp_path / "timed.db")
    base = [1.0 + 0.37 * ((7 * k) % 11) for k in range(20)]
    # none: the same latencies shuffled (a ratio of medians below 1 by chance); ft: 3x slower
    _set_timings(db, "none@seed0", [base[(3 * k + 1) % 20] for k in range(20)], base, 5)
    _set_timings(db, "ft@seed0", [3 * b for b in base], base, 5)
    runs = {r.label: r for r in load_runs([db])}
    noise = runs["none"].metrics["latency_ms"]["query"]
    assert noise["overhead_significant"] is False and noise["overhead_low"] < 1 < noise["overhead_high"]
    assert noise["overhead"] < 3.0  # the lower ratio: it was bold before
    table = cells(write_report([db], tmp_path / "r.html"))
    assert table["none"]["query overhead"][0].startswith("within noise [")
    assert table["none"]["query overhead"][1] is False
    assert table["ft"]["query overhead"][0].startswith("3.00x [")
    doc, _ = compare_json(tmp_path, db)
    assert "query_overhead" not in doc["best"]
    assert {r["label"]: r["query_overhead_measured"] for r in doc["rows"]} == {"none": False, "ft": True}
    # an old store timed the base model before the stream: a ratio, never a measurement
    with sqlite3.connect(db) as con:
        for run_id, config in con.execute("select run_id, config from runs").fetchall():
            c = json.loads(config)
            c["scenario"]["schedule"].pop("latency_rounds", None)
            con.execute("update runs set config = ? where run_id = ?", [json.dumps(c), run_id])
    old = cells(write_report([db], tmp_path / "old.html"))
    assert old["ft"]["query overhead"][0].endswith("timed apart") and not old["ft"]["query overhead"][1]


def test_model_and_stream_columns_best_only_within_a_group(honest_db, other_db, tmp_path):
    doc, terminal = compare_json(tmp_path, honest_db, other_db)
    rows = {r["label"]: r for r in doc["rows"]}
    assert {(r["model"], r["stream"], r["group"]) for r in doc["rows"]} == {
        ("tiny", "s.jsonl", 1), ("tiny2", "other.jsonl", 2)}
    assert [g["labels"] for g in doc["groups"]] == [["honest:none@seed0", "honest:ft@seed0"],
                                                    ["other:none@seed0", "other:ft@seed0"]]
    better = {c["key"]: c["better"] for c in doc["columns"]}
    for key, way in better.items():
        if way not in ("high", "low"):
            assert key not in doc["best"]
            continue
        expected = []
        for g in (1, 2):
            cands = [(r[key], r["label"]) for r in rows.values() if r["group"] == g and r["complete"]
                     and r[key] is not None and r.get(f"{key}_measured", True)]
            if len(cands) >= 2:
                top = (max if way == "high" else min)(v for v, _ in cands)
                expected += [lab for v, lab in cands if math.isclose(v, top, rel_tol=1e-9, abs_tol=1e-12)]
        assert sorted(doc["best"].get(key, [])) == sorted(expected), key
    assert "span 2 comparison groups" in " ".join(terminal.split())
    out = write_report([honest_db, other_db], tmp_path / "r.html")
    for text in (out["html"].read_text(), out["markdown"].read_text()):
        assert "span 2 comparison groups" in text
    table = cells(out)
    assert table["other:ft@seed0"]["model"] == ("tiny2", False)
    assert table["honest:none@seed0"]["stream"] == ("s.jsonl", False)


def test_the_same_stream_checked_out_twice_is_one_group(honest_db, tmp_path):
    """Runs group by the stream file's digest, not its path: the same file in another
    checkout compares with the first; the same path with other content does not."""
    first = json.loads(Store(honest_db).get_run("none@seed0")["stream"])
    model = json.loads(Store(honest_db).get_run("none@seed0")["config"])["scenario"]["model"]
    twin = tmp_path / "checkout" / "s.jsonl"
    twin.parent.mkdir()
    shutil.copyfile(first["path"], twin)
    methods = '[[methods]]\nname = "none"\n'
    db = _run(write_scenario(tmp_path / "twin.toml", Path(model), twin, methods), tmp_path / "twin.db")
    assert json.loads(Store(db).get_run("none@seed0")["stream"])["sha256"] == first["sha256"]
    doc, terminal = compare_json(tmp_path, honest_db, db)
    assert {r["group"] for r in doc["rows"]} == {1} and "comparison groups" not in terminal
    # the streams' paths stay visible, each run with its own
    assert len({r["stream"] for r in doc["rows"]}) == 2
    # one target changed, same file name: another stream
    changed = tmp_path / "changed" / "s.jsonl"
    changed.parent.mkdir()
    lines = twin.read_text().splitlines(keepends=True)
    row = json.loads(lines[0])
    lines[0] = json.dumps({**row, "target": row["target"] + " Jr"}) + "\n"
    changed.write_text("".join(lines))
    db2 = _run(write_scenario(tmp_path / "changed.toml", Path(model), changed, methods),
               tmp_path / "changed.db")
    doc, _ = compare_json(tmp_path, honest_db, db2)
    assert {r["group"] for r in doc["rows"]} == {1, 2}


def test_skipped_lines_shown_and_no_heat_map_of_one_cell(other_db, tmp_path):
    assert json.loads(Store(other_db).get_run("ft@seed0")["stream"])["skipped_lines"] == 1
    out = write_report([other_db], tmp_path / "r.html")
    assert "other.jsonl (1 invalid line skipped)" in out["html"].read_text()
    assert "other.jsonl (1 invalid line skipped)" in out["markdown"].read_text()
    ret = load_runs([other_db])[1].metrics["retention"]
    assert len(ret["groups"]) == 1 and len(ret["checkpoints"]) == 1
    assert not [p for p in out["plots"] if p.startswith("retention-") and p != "retention-age"]
    assert "quality" in out["plots"]


def test_not_converged_edits_are_counted_and_shown(honest_db, tmp_path):
    db = copy_store(honest_db, tmp_path / "conv.db")
    with sqlite3.connect(db) as con:
        if "converged" not in [r[1] for r in con.execute("pragma table_info(events)")]:
            con.execute("alter table events add column converged integer")
        con.execute("update events set converged = null")
        con.execute("update events set converged = 1 where run_id = 'ft@seed0' and kind = 'edit'")
        con.execute("update events set converged = 0 where run_id = 'ft@seed0' and event_id in ('e001', 'e004')")
    runs = {r.label: r for r in load_runs([db])}
    assert runs["ft"].metrics["edits"] == {"applied": 12, "converged": 10, "not_converged": 2, "total": 12}
    assert runs["none"].metrics["edits"]["not_converged"] is None  # no notion of it
    table = cells(write_report([db], tmp_path / "r.html"))
    assert table["ft"]["edits not converged"] == ("2/12", False)
    assert table["none"]["edits not converged"] == ("-", False)
    # a store without the column still reports, without the column
    with sqlite3.connect(db) as con:
        con.execute("alter table events drop column converged")
    assert load_runs([db])[1].metrics["edits"]["converged"] is None
    assert "edits not converged" not in write_report([db], tmp_path / "o.html")["markdown"].read_text()


def test_legend_names_only_runs_with_data(honest_db):
    ft = next(r for r in load_runs([honest_db]) if r.label == "ft")
    empty = dataclasses.replace(ft, label="failed-run", colour="#d62728", curves=[], metrics=None)
    # deterministic PNGs: a run with nothing to draw changes nothing, not even the legend
    assert quality_plot([ft, empty]).png == quality_plot([ft]).png


# -------------------------------------------------------------------- read-only places
def _as_other_user() -> list[str] | None:
    """A command prefix that runs as an unprivileged user (root ignores permission bits)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"] if setpriv else None


@pytest.fixture
def read_only_dir(honest_db):
    """A valid WAL-mode store alone in a directory nobody may write (no -wal or -shm file)."""
    prefix = _as_other_user()
    if prefix is None:
        pytest.skip("running as root without setpriv: cannot test as an unprivileged user")
    d = Path(tempfile.mkdtemp(prefix="lifelong-ro-", dir="/tmp"))
    store = copy_store(honest_db, d / "ro.db")
    with sqlite3.connect(store) as con:
        assert con.execute("pragma journal_mode").fetchone()[0] == "wal"
    con.close()
    assert sorted(p.name for p in d.iterdir()) == ["ro.db"]
    mpl = Path(tempfile.mkdtemp(prefix="lifelong-mpl-", dir="/tmp"))
    mpl.chmod(0o777)
    store.chmod(0o444)
    d.chmod(0o555)
    env = dict(os.environ, MPLCONFIGDIR=str(mpl), PYTHONDONTWRITEBYTECODE="1")
    yield prefix, store, env
    d.chmod(0o755)
    shutil.rmtree(d)
    shutil.rmtree(mpl)


def _cli(prefix: list[str], env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, sys.executable, "-m", "lifelong.cli", *args], capture_output=True,
                          text=True, timeout=300, env=env, cwd="/tmp", check=False)


def test_store_in_a_read_only_directory_opens_read_only(read_only_dir):
    prefix, store, env = read_only_dir
    check = f"import os, sys; sys.exit(os.access({str(store.parent)!r}, os.W_OK))"
    probe = subprocess.run([*prefix, sys.executable, "-c", check], check=False)
    assert probe.returncode == 0, "the directory must not be writable for the test user"
    res = _cli(prefix, env, "compare", str(store))
    assert res.returncode == 0, res.stderr
    assert "ft" in res.stdout and "not a lifelong store" not in res.stderr
    assert sorted(p.name for p in store.parent.iterdir()) == ["ro.db"]  # nothing written there
    # and a report into that directory: one line, no traceback
    res = _cli(prefix, env, "report", str(store), "-o", str(store.parent / "r.html"))
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("lifelong: cannot write "), res.stderr


def test_report_into_an_unwritable_place_is_one_line(honest_db, tmp_path):
    blocker = tmp_path / "a-file"  # a path under a file cannot be written, even by root
    blocker.write_text("x")
    res = _cli([], dict(os.environ), "report", str(honest_db), "-o", str(blocker / "r.html"))
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert res.stderr.startswith("lifelong: cannot write ") and "Traceback" not in res.stderr


def test_runs_group_by_the_model_weights_not_its_path(honest_db, tmp_path):
    """The same weights in another directory compare with the first run (one group, each run
    showing its own path); other weights saved at that same path later are another group,
    told apart by fingerprint."""
    model = Path(json.loads(Store(honest_db).get_run("none@seed0")["config"])["scenario"]["model"])
    stream = Path(json.loads(Store(honest_db).get_run("none@seed0")["stream"])["path"])
    twin = tmp_path / "copy" / "tiny"
    shutil.copytree(model, twin)
    methods = '[[methods]]\nname = "none"\n'
    db = _run(write_scenario(tmp_path / "twin.toml", twin, stream, methods), tmp_path / "twin.db")
    doc, terminal = compare_json(tmp_path, honest_db, db)
    assert {r["group"] for r in doc["rows"]} == {1} and "comparison groups" not in terminal
    assert len({r["model"] for r in doc["rows"]}) == 2
    save_tiny_model(twin, seed=1)  # rebuilt at the same path
    db2 = _run(write_scenario(tmp_path / "rebuilt.toml", twin, stream, methods),
               tmp_path / "rebuilt.db")
    fps = [Store(d).get_run("none@seed0")["model_fingerprint"] for d in (db, db2)]
    assert fps[0] != fps[1]
    doc, terminal = compare_json(tmp_path, db, db2)
    assert {r["group"] for r in doc["rows"]} == {1, 2}
    text = " ".join(terminal.split())
    assert "span 2 comparison groups" in text and all(fp in text for fp in fps)


def test_a_store_made_before_fingerprints_reads_and_gains_the_column(honest_db, tmp_path):
    """Old rows hold no fingerprint (their runs group by model path, as before); the next run
    into that store adds the column and records its own."""
    db = copy_store(honest_db, tmp_path / "old.db")
    with sqlite3.connect(db) as con:
        con.execute("alter table runs drop column model_fingerprint")
    doc, _ = compare_json(tmp_path, db)
    assert {r["group"] for r in doc["rows"]} == {1}
    model = json.loads(Store(db).get_run("none@seed0")["config"])["scenario"]["model"]
    stream = json.loads(Store(db).get_run("none@seed0")["stream"])["path"]
    sc = write_scenario(tmp_path / "new.toml", Path(model), Path(stream),
                        '[[methods]]\nname = "none"\nlabel = "later"\n')
    _run(sc, db)
    runs = {r["run_id"]: r for r in Store(db).runs()}
    assert runs["none@seed0"]["model_fingerprint"] is None
    assert runs["later@seed0"]["model_fingerprint"]
    doc, terminal = compare_json(tmp_path, db)
    assert {r["group"] for r in doc["rows"]} == {1, 2}  # unknown weights are not assumed equal
