"""Several seeds of one method (issue 11): compare, report and the JSON summary show the mean
over seeds with its spread, best compares means, the plots draw one mean curve with a band
per method, and the widest page (seeds and two comparison groups) does not scroll sideways.
Stores are real tiny runs; one seed's final reliability is then raised by hand, so that the
seeds differ and a seed's own row is the best single figure."""

from __future__ import annotations

import csv
import json
import re
import statistics
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_report import find_chromium
from test_report_honest import cells
from tinyrun import save_tiny_model, stream_events, write_jsonl, write_scenario

from lifelong.cli import cli
from lifelong.errors import LifelongError
from lifelong.report import entities, load_runs, write_report
from lifelong.report_groups import seed_means
from lifelong.runtime import Runtime
from lifelong.scenario import load_scenario
from lifelong.store import Store
from lifelong.stream import parse_stream
from lifelong.summary import summarize

pytestmark = pytest.mark.usefixtures("single_thread")
SEEDS = ("ft@seed0", "ft@seed1", "ft@seed2")


@pytest.fixture(scope="module", autouse=True)
def module_single_thread(single_thread_module):
    """Every module-scoped store here is built on one thread."""


def _run(scenario: Path, db: Path) -> Path:
    sc = load_scenario(scenario, {})
    Runtime(sc, parse_stream(sc.stream.file), Store(db)).run_all()
    return db


@pytest.fixture(scope="module")
def seeds_db(tmp_path_factory) -> Path:
    """none and ft, seeds 0, 1 and 2; ft@seed2 then gets every final reliability probe right."""
    d = tmp_path_factory.mktemp("seeds")
    stream = write_jsonl(stream_events(n_edits=12, reedits=3, retracts=2, queries=2), d / "s.jsonl")
    db = _run(write_scenario(d / "tiny.toml", save_tiny_model(d / "tiny"), stream,
                             extra="seeds = [0, 1, 2]"), d / "seeds.db")
    with Store(db).db.conn as con:
        con.execute("update probes set tf_acc = 1.0, gen_exact = 1 where run_id = 'ft@seed2' and "
                    "role = 'rel' and checkpoint = (select max(checkpoint) from checkpoints "
                    "where run_id = 'ft@seed2')")
    return db


@pytest.fixture(scope="module")
def other_db(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("other")
    stream = write_jsonl(stream_events(n_edits=8, seed=1, reedits=1, retracts=1), d / "o.jsonl")
    return _run(write_scenario(d / "o.toml", save_tiny_model(d / "tiny2", seed=1), stream), d / "o.db")


def per_run(db: Path, key: str) -> dict[str, float]:
    return {r.run["run_id"]: r.metrics[key]["generated"] for r in load_runs([db])}


def test_mean_rows_show_spread_and_best_compares_means(seeds_db, tmp_path):
    rel = per_run(seeds_db, "reliability")
    ft = [rel[s] for s in SEEDS]
    assert len(set(ft)) > 1 and rel["ft@seed2"] == 1.0  # the seeds differ
    out = write_report([seeds_db], tmp_path / "r.html")
    table = cells(out)
    assert list(table) == ["none@seed0", "none@seed1", "none@seed2", "none (mean)",
                           "ft@seed0", "ft@seed1", "ft@seed2", "ft (mean)"]
    mean, std = statistics.fmean(ft), statistics.stdev(ft)
    assert table["ft (mean)"]["reliability gen"][0] == f"{mean:.3f} ± {std:.3f}"
    assert table["ft (mean)"]["seed"] == ("0, 1, 2 (3 seeds)", False)
    # a seed's own row is never bold, even when it is the best single figure
    assert all(not table[s]["reliability gen"][1] for s in SEEDS)
    best_mean = max(mean, statistics.fmean(rel[f"none@seed{i}"] for i in range(3)))
    assert table["ft (mean)"]["reliability gen"][1] == (best_mean == mean)
    assert any(table["none (mean)"][h][1] for h in table["none (mean)"])  # means compete


def test_compare_exports_and_summary_carry_the_spread(seeds_db, tmp_path):
    res = CliRunner().invoke(cli, ["compare", str(seeds_db), "--json", str(tmp_path / "c.json"),
                                   "--csv", str(tmp_path / "c.csv")])
    assert res.exit_code == 0, res.output
    assert "± " in res.output and "(3 seeds)" in res.output
    doc = json.loads((tmp_path / "c.json").read_text())
    assert len(doc["rows"]) == 6  # one per run, as before
    means = {m["label"]: m for m in doc["seed_means"]}
    ft = [per_run(seeds_db, "reliability")[s] for s in SEEDS]
    assert means["ft (mean)"]["rel_gen"] == pytest.approx(statistics.fmean(ft))
    assert means["ft (mean)"]["rel_gen_std"] == pytest.approx(statistics.stdev(ft))
    assert means["ft (mean)"]["n_seeds"] == 3 and means["ft (mean)"]["seeds"] == [0, 1, 2]
    assert set(doc["best"].get("rel_gen", [])) <= {"ft (mean)", "none (mean)"}
    rows = list(csv.DictReader((tmp_path / "c.csv").open()))
    assert [r["label"] for r in rows][-2:] == ["none (mean)", "ft (mean)"]
    assert float(rows[-1]["rel_gen_std"]) == pytest.approx(statistics.stdev(ft))

    summary = summarize(Store(seeds_db))
    m = summary["methods"]["ft"]
    assert m["reliability"]["generated"] == pytest.approx(statistics.fmean(ft))
    assert m["spread"]["reliability"]["generated"] == {"std": pytest.approx(statistics.stdev(ft)), "n": 3}
    assert m["n_seeds"] == 3 and m["seeds"] == [0, 1, 2]
    assert set(summary["runs"][0]) <= set(m)  # every key of a run stays
    assert m["spread"]["latency_ms"]["edit"]["p50"]["n"] == 3


def test_plots_draw_one_mean_per_method(seeds_db, tmp_path):
    runs = load_runs([seeds_db])
    drawn = entities(runs)
    assert [e.label for e in drawn] == ["none (mean)", "ft (mean)"]
    ft = drawn[1]
    assert {m.colour for m in ft.members} == {ft.colour}  # the seeds share the mean's colour
    seeds = [[c["reliability"]["generated"] for c in m.curves] for m in ft.members]
    assert [c["reliability"]["generated"] for c in ft.curves] == pytest.approx(
        [statistics.fmean(v) for v in zip(*seeds)])
    out = write_report([seeds_db], tmp_path / "r.html")
    assert {"retention-none_mean", "retention-ft_mean"} <= set(out["plots"])
    assert not any("seed" in p for p in out["plots"])
    md = out["markdown"].read_text()
    assert "the band from the lowest to the highest seed" in md


def test_widest_page_does_not_scroll_sideways(seeds_db, other_db, tmp_path):
    out = write_report([seeds_db, other_db], tmp_path / "wide.html")
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no chromium binary found (CI installs Debian's `chromium`: see .ci/run)")
    # the page has no script: a copy of it gets one that writes the layout into the title
    probe = tmp_path / "probe.html"
    probe.write_text(out["html"].read_text().replace("</body>", (
        "<script>var w = 0; for (const t of document.querySelectorAll('table')) "
        "w = Math.max(w, t.getBoundingClientRect().right); document.title = 'W ' + "
        "document.documentElement.scrollWidth + ' ' + innerWidth + ' ' + Math.ceil(w);</script></body>")))
    proc = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           "--disable-background-networking", f"--user-data-dir={tmp_path / 'profile'}",
                           "--window-size=900,2000", "--dump-dom", probe.resolve().as_uri()],
                          capture_output=True, text=True, timeout=180, check=False)
    found = re.search(r"<title>W (\d+) (\d+) (\d+)</title>", proc.stdout)
    assert found, proc.stderr[-2000:]
    scroll, inner, tables = map(int, found.groups())
    assert scroll <= inner and tables <= inner, (scroll, inner, tables)
    assert "span 2 comparison groups" in out["html"].read_text()


def test_seeds_in_stores_of_their_own_pool_and_other_settings_do_not(tmp_path):
    """A sweep keeps each seed in its own store: their mean is one row. The same label run
    with other settings is another experiment: its own mean, never pooled with them."""
    model = save_tiny_model(tmp_path / "tiny")
    stream = write_jsonl(stream_events(n_edits=6, reedits=0, retracts=0, queries=0), tmp_path / "s.jsonl")
    ft = '[[methods]]\nname = "ft"\nsettings = {{ steps = {}, lr = 0.01 }}\n'
    dbs = [_run(write_scenario(tmp_path / "one.toml", model, stream, methods=ft.format(4),
                               extra=f"seeds = [{seed}]"), tmp_path / f"ft@seed{seed}.db")
           for seed in (0, 1, 2)]
    dbs.append(_run(write_scenario(tmp_path / "one.toml", model, stream, methods=ft.format(2),
                                   extra="seeds = [0, 1]"), tmp_path / "other.db"))
    means = {m.label: sorted(r.run["seed"] for r in m.members) for m in seed_means(load_runs(dbs))}
    assert means == {"ft@seed0:ft (mean)": [0, 1, 2], "other:ft (mean)": [0, 1]}


def test_compare_minus_gives_each_seeds_difference_and_names_a_missing_label(seeds_db, tmp_path):
    res = CliRunner().invoke(cli, ["compare", str(seeds_db), "--minus", "ft=none",
                                   "--json", str(tmp_path / "c.json")])
    assert res.exit_code == 0, res.output
    assert "Paired differences" in res.output
    [row] = json.loads((tmp_path / "c.json").read_text())["differences"]
    rel = per_run(seeds_db, "reliability")
    diffs = [rel[f"ft@seed{i}"] - rel[f"none@seed{i}"] for i in range(3)]
    assert row["seeds"] == [0, 1, 2]
    assert row["rel_gen"] == pytest.approx(statistics.fmean(diffs))
    assert row["rel_gen_std"] == pytest.approx(statistics.stdev(diffs))
    res = CliRunner().invoke(cli, ["compare", str(seeds_db), "--minus", "ft=fx"])
    assert res.exit_code != 0 and isinstance(res.exception, LifelongError)
    assert "--minus ft=fx: no seed has complete runs of both" in str(res.exception)
    assert "labels: ft, none" in str(res.exception)
