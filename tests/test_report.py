"""`lifelong report` / `lifelong compare` on real tiny stores: the page renders in headless
Chromium with every figure, the Markdown twin carries the same table, broken runs are
reported instead of crashing, figures come from the rows (not the metrics cache), and the
comparison exports parse with one row per run."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import shutil
import sqlite3
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from tinyrun import save_tiny_model, stream_events, write_jsonl, write_scenario

from lifelong.cli import cli
from lifelong.errors import StoreError
from lifelong.metrics import run_metrics
from lifelong.report import load_runs, write_report
from lifelong.runtime import Interrupted, Runtime
from lifelong.scenario import load_scenario
from lifelong.store import Store
from lifelong.stream import parse_stream

pytestmark = pytest.mark.usefixtures("single_thread")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EXPECTED_PLOTS = {"quality", "retention-none", "retention-ft", "retention-age", "conflict",
                  "edit-latency", "query-latency", "memory", "health"}


@pytest.fixture(scope="module", autouse=True)
def module_single_thread():
    """One torch thread for the module-scoped runs too: they are set up before the
    function-scoped `single_thread` fixture, and threads contending for 2 busy cores make the
    tiny runs 10-20x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def scenario_file(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("scenario")
    model = save_tiny_model(d / "tiny")
    stream = write_jsonl(stream_events(n_edits=12, reedits=3, retracts=2, queries=2), d / "s.jsonl")
    return write_scenario(d / "tiny.toml", model, stream)


def _runtime(scenario_file: Path, db: Path, **overrides) -> Runtime:
    sc = load_scenario(scenario_file, overrides)
    return Runtime(sc, parse_stream(sc.stream.file), Store(db))


@pytest.fixture(scope="module")
def good_db(scenario_file, tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("good") / "tiny.db"
    _runtime(scenario_file, db).run_all()
    return db


def _broken(scenario_file: Path, db: Path, at_event: int, exc: BaseException) -> Path:
    """An ft run that raises `exc` after `at_event` events (uncommitted rows are lost)."""
    runtime = _runtime(scenario_file, db, methods=["ft"])
    seen = [0]

    def crash():
        seen[0] += 1
        if seen[0] == at_event:
            raise exc

    runtime._maybe_crash = crash
    with pytest.raises((type(exc), Interrupted)):  # the runtime reports Ctrl-C as Interrupted
        runtime.run_all()
    return db


@pytest.fixture(scope="module")
def broken_dbs(scenario_file, tmp_path_factory) -> tuple[Path, Path]:
    """interrupted.db: ft stopped after 7 events (one checkpoint at 4 edits committed);
    failed.db: ft failed after 2 events (no checkpoint)."""
    d = tmp_path_factory.mktemp("broken")
    interrupted = _broken(scenario_file, d / "interrupted.db", 7, KeyboardInterrupt())
    failed = _broken(scenario_file, d / "failed.db", 2, RuntimeError("boom"))
    return interrupted, failed


@pytest.fixture(scope="module")
def report(good_db, tmp_path_factory) -> dict:
    return write_report([good_db], tmp_path_factory.mktemp("report") / "report.html")


def copy_store(src: Path, dst: Path) -> Path:
    """A consistent copy (the store is in WAL mode: copying the file alone may miss rows)."""
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)
    return dst


class Tables(HTMLParser):
    """Rows of the page's comparison tables as (text, bold) cells, and its <img> sources."""

    def __init__(self):
        super().__init__()
        self.tables: list[list[list[tuple[str, bool]]]] = []
        self.imgs: list[str] = []
        self._in, self._cell, self._bold = False, None, False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        elif tag == "table" and "comparison" in (a.get("class") or ""):
            self._in = True
            self.tables.append([])
        elif self._in and tag == "tr":
            self.tables[-1].append([])
        elif self._in and tag in ("td", "th"):
            self._cell, self._bold = "", False
        elif self._in and tag == "b" and self._cell is not None:
            self._bold = True

    def handle_endtag(self, tag):
        if tag == "table":
            self._in = False
        elif self._in and tag in ("td", "th"):
            self.tables[-1][-1].append((self._cell.strip(), self._bold))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def parse_html(path: Path) -> Tables:
    p = Tables()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def markdown_tables(text: str) -> list[list[list[tuple[str, bool]]]]:
    """The Markdown tables under '## Comparison', cells as (text, bold)."""
    section = text.split("## Comparison", 1)[1].split("\n## ", 1)[0]
    tables, current = [], None
    for line in section.splitlines():
        if not line.startswith("|"):
            current = None
            continue
        if re.fullmatch(r"\|( -+:? \|)+", line):
            continue
        if current is None:
            current = []
            tables.append(current)
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        current.append([(c.strip("*"), c.startswith("**")) for c in cells])
    return tables


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


# --------------------------------------------------------------------------------- tests
def test_page_renders_in_chromium_with_every_plot(report, tmp_path):
    page = parse_html(report["html"])
    assert set(report["plots"]) == EXPECTED_PLOTS
    assert len(page.imgs) == len(report["plots"])
    for src in page.imgs:
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1])
        assert png.startswith(PNG_MAGIC)
        Image.open(io.BytesIO(png)).verify()
    html_text = report["html"].read_text(encoding="utf-8")
    assert not re.search(r'(src|href)="(https?:)?//', html_text), "page must need no network"
    assert "<script" not in html_text

    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no chromium binary found (CI installs Debian's `chromium`: see .ci/run)")
    shot = tmp_path / "shot.png"
    proc = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                           "--disable-background-networking", "--disable-component-update",
                           "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
                           f"--screenshot={shot}", "--window-size=1280,4000",
                           report["html"].resolve().as_uri()],
                          capture_output=True, text=True, timeout=180)
    assert shot.exists(), proc.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape == (4000, 1280, 3)
    packed = pixels.reshape(-1, 3).astype(np.int64) @ np.array([65536, 256, 1])
    assert len(np.unique(packed)) > 200, "screenshot has too few colours: blank page?"
    assert (pixels.min(axis=2) < 200).mean() > 0.03, "screenshot is nearly all white"
    lower = pixels[1000:3000]  # the figures, well below the header and table
    assert len(np.unique(lower.reshape(-1, 3), axis=0)) > 100


def test_markdown_twin_has_the_same_table_and_figures(report):
    md_text = report["markdown"].read_text(encoding="utf-8")
    html_tables = parse_html(report["html"]).tables
    md = markdown_tables(md_text)
    assert len(md) == len(html_tables) >= 2
    assert md == html_tables
    for table in md:
        assert [row[0][0] for row in table] == ["run", "none", "ft"]
    flat = [cell for t in md for row in t for cell in row]
    assert any(bold for _, bold in flat), "the best figure of some column is marked"
    page_pngs = [base64.b64decode(s.split(",", 1)[1]) for s in parse_html(report["html"]).imgs]
    for name, png_path, png in zip(report["plots"], report["pngs"], page_pngs):
        assert f"]({png_path.name})" in md_text
        assert png_path.read_bytes() == png, name


def test_final_curve_point_equals_final_metrics(good_db):
    for rd in load_runs([good_db]):
        assert rd.banner is None
        for key in ("reliability", "generalization", "locality", "conflict", "routing"):
            assert rd.curves[-1][key] == rd.metrics[key], key
        assert [c["edits_done"] for c in rd.curves] == [4, 8, 12]
        assert sum(w["n"] for w in rd.edit_windows) == 12


def test_report_recomputes_from_rows_not_the_metrics_cache(good_db, report, tmp_path):
    db = copy_store(good_db, tmp_path / good_db.name)
    with sqlite3.connect(db) as con:
        assert con.execute("select count(*) from metrics").fetchone()[0] > 0
        con.execute("update metrics set value = '999'")
    again = write_report([db], tmp_path / "out" / "report.html")
    assert again["markdown"].read_text() == report["markdown"].read_text()
    assert [p.read_bytes() for p in again["pngs"]] == [p.read_bytes() for p in report["pngs"]]
    assert again["html"].read_text() == report["html"].read_text()


def test_interrupted_and_failed_runs_are_reported(broken_dbs, good_db, tmp_path):
    interrupted, failed = broken_dbs
    assert Store(interrupted).get_run("ft@seed0")["status"] == "interrupted"
    assert Store(failed).get_run("ft@seed0")["status"] == "failed"
    out = write_report([interrupted, failed, good_db], tmp_path / "broken.html")
    assert out["runs"] == ["interrupted:ft@seed0", "failed:ft@seed0", "none", "tiny:ft@seed0"]
    text = out["html"].read_text()
    assert text.count('class="banner') == 2
    assert "was interrupted" in text and "The run failed" in text and "RuntimeError: boom" in text
    assert "checkpoint 1 (4 edits)" in text and "no checkpoint" in text
    md = out["markdown"].read_text()
    assert "> **interrupted:ft@seed0: interrupted**" in md and "> **failed:ft@seed0: failed**" in md
    runs = {r.label: r for r in load_runs([interrupted, failed])}
    assert len(runs["interrupted:ft@seed0"].curves) == 1
    assert runs["failed:ft@seed0"].curves == []
    # the quality plot still shows the interrupted run's one checkpoint
    assert "quality" in write_report([interrupted], tmp_path / "i.html")["plots"]


def test_a_run_still_running_gets_a_banner(good_db, tmp_path):
    db = copy_store(good_db, tmp_path / "live.db")
    with sqlite3.connect(db) as con:
        con.execute("update runs set status = 'running' where run_id = 'ft@seed0'")
        con.execute("delete from checkpoints where run_id = 'ft@seed0' and edits_done > 8")
    banners = {r.label: r.banner for r in load_runs([db])}
    assert banners["none"] is None
    assert "still running" in banners["ft"] and "8 of 12 edits" in banners["ft"]


def test_new_metrics_show_up_without_changes(good_db, tmp_path):
    """The routing seam (a `routed_ok` probes column) and merges appear when rows have them."""
    db = copy_store(good_db, tmp_path / "routed.db")
    with sqlite3.connect(db) as con:
        con.execute("alter table probes add column routed_ok integer")
        con.execute("update probes set routed_ok = (tf_acc > 0.5) where run_id = 'ft@seed0'")
        con.execute("insert into events (run_id, event_id, seq, kind, edit_index, outcome, ms) "
                    "values ('ft@seed0', '@merge-000008', 9, 'merge', 8, 'applied', 5.0)")
    out = write_report([db], tmp_path / "r.html")
    assert {"routing", "merge-latency"} <= set(out["plots"])
    ft = next(r for r in load_runs([db]) if r.label == "ft")
    assert ft.curves[-1]["routing"] == ft.metrics["routing"] is not None
    assert "routing accuracy" in out["markdown"].read_text()
    assert "merge p50 ms" in out["markdown"].read_text()


def test_compare_csv_and_json_hold_one_row_per_run(good_db, broken_dbs, tmp_path):
    csv_path, json_path = tmp_path / "c.csv", tmp_path / "c.json"
    res = CliRunner().invoke(cli, ["compare", str(good_db), *map(str, broken_dbs), "--csv",
                                   str(csv_path), "--json", str(json_path)])
    assert res.exit_code == 0, res.output
    assert "Final quality" in res.output and "RuntimeError: boom" in res.output
    rows = list(csv.DictReader(csv_path.open()))
    doc = json.loads(json_path.read_text())
    ids = ["tiny:ft@seed0", "none", "interrupted:ft@seed0", "failed:ft@seed0"]
    assert [r["label"] for r in rows] == [r["label"] for r in doc["rows"]]
    assert sorted(r["label"] for r in rows) == sorted(ids)
    assert len(doc["rows"]) == 4 and doc["schema"] == "lifelong.compare/1"
    by_label = {r["label"]: r for r in doc["rows"]}
    good = load_runs([good_db])
    metrics = {r.run["run_id"]: r.metrics for r in good}
    assert by_label["none"]["rel_tf"] == metrics["none@seed0"]["reliability"]["teacher_forced"]
    assert float(next(r for r in rows if r["label"] == "tiny:ft@seed0")["rel_gen"]) == pytest.approx(
        metrics["ft@seed0"]["reliability"]["generated"])
    assert by_label["failed:ft@seed0"]["complete"] is False
    assert set(doc["best"]) <= {c["key"] for c in doc["columns"]}


def test_empty_store_and_not_a_store(tmp_path):
    empty = tmp_path / "empty.db"
    Store(empty)
    res = CliRunner().invoke(cli, ["report", str(empty), "-o", str(tmp_path / "e.html")])
    assert res.exit_code == 0, res.output
    assert "There are no runs" in (tmp_path / "e.html").read_text()
    assert "There are no runs" in (tmp_path / "e.md").read_text()
    res = CliRunner().invoke(cli, ["compare", str(empty), "--csv", str(tmp_path / "e.csv")])
    assert res.exit_code == 0 and "no runs" in res.output

    not_sqlite = tmp_path / "notes.db"
    not_sqlite.write_text("hello, I am not a database\n" * 100)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as con:
        con.execute("create table foo (x)")
    for bad in (not_sqlite, other, tmp_path / "missing.db"):
        with pytest.raises(StoreError, match="store"):
            load_runs([bad])
    proc = subprocess.run([sys.executable, "-m", "lifelong.cli", "report", str(not_sqlite), "-o",
                           str(tmp_path / "x.html")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "not a lifelong store" in proc.stderr
    assert not (tmp_path / "x.html").exists()


def test_run_metrics_untouched_by_report(good_db):
    """The report's figures for a complete run are run_metrics' own (same function, same rows)."""
    store = Store(good_db)
    for rd in load_runs([good_db]):
        rid = rd.run["run_id"]
        direct = run_metrics(store.get_run(rid), store.rows("events", rid), store.rows("checkpoints", rid),
                             store.rows("probes", rid), store.rows("timings", rid))
        assert rd.metrics == direct
