"""`lifelong report` and `lifelong compare`: method comparison over one or more stores.

Everything is recomputed from the recorded rows (events, checkpoints, probes, timings) by
`lifelong.metrics`, never read from the `metrics` cache table, so a report of an old store
stays true. Stores are opened read-only (as immutable files where their directory cannot be
written). Runs that failed, were interrupted or are still running are reported from what
they recorded, with a banner saying so; nothing here raises on them. A file that is not a
store raises `StoreError`, an output that cannot be written `LifelongError` (one line from
the CLI).

The page is self-contained HTML (PNGs inlined as base64, no scripts, no network) with a
Markdown twin next to it (`.md`, PNGs written beside it). Both carry the same comparison
tables, built once (`report_table.comparison`: model and stream columns, best per
comparison group, means over seeds). Output depends only on the rows: no timestamps.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from .errors import LifelongError, StoreError
from .methods.registry import current_name
from .metrics import (
    checkpoint_curves,
    edit_latency_windows,
    merge_latencies,
    run_metrics,
)
from .report_groups import get, seed_means, short_names, stream_of
from .report_table import (
    IDENTITY,
    PROTOCOL_NOTE,
    TEXT_KEYS,
    Comparison,
    comparison,
    group_note,
    table_groups,
)

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")
SCHEMA_VERSION = 1


# ------------------------------------------------------------------------------ reading stores
def _open_read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection. SQLite creates a WAL store's `-shm` file even for readers;
    where it cannot (a read-only directory) and no `-wal` file holds rows, the file is
    opened as immutable: nobody can change it there while we read."""
    uri = path.resolve().as_uri()
    con = sqlite3.connect(f"{uri}?mode=ro", uri=True)
    try:
        con.execute("select count(*) from sqlite_master").fetchone()
        return con
    except sqlite3.OperationalError as exc:
        con.close()
        wal = path.with_name(path.name + "-wal")
        if wal.exists() and wal.stat().st_size > 0:
            raise StoreError(f"{path}: cannot be opened read-only ({exc}) and its -wal file holds "
                             "rows; copy the store and its -wal file to a writable directory") from None
    return sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True)


def _connect(path: Path) -> tuple[sqlite3.Connection, set[str]]:
    """A read-only connection to a lifelong store and its tables; StoreError if it is not one."""
    if not path.is_file():
        raise StoreError(f"{path}: no such store file")
    try:
        con = _open_read_only(path)
        con.row_factory = sqlite3.Row
        tables = {r[0] for r in con.execute("select name from sqlite_master where type='table'")}
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path}: not a lifelong store (not an SQLite file: {exc})") from None
    if not {"meta", "runs"} <= tables:
        raise StoreError(f"{path}: not a lifelong store (no meta/runs tables)")
    meta = {r["key"]: r["value"] for r in con.execute("select key, value from meta")}
    if str(meta.get("schema_version")) != str(SCHEMA_VERSION):
        raise StoreError(f"{path}: store schema {meta.get('schema_version')} is not {SCHEMA_VERSION}")
    return con, tables


def _rows(con: sqlite3.Connection, tables: set[str], table: str, run_id: str) -> list[dict]:
    return [dict(r) for r in con.execute(f"select * from {table} where run_id = ?", [run_id])
            ] if table in tables else []


@dataclass
class RunData:
    """One run, recomputed from its rows. `curves` has one entry per distinct checkpoint;
    `banner` is None exactly when the run is complete with a final checkpoint."""
    store: Path
    run: dict
    label: str = ""
    colour: str = "#000000"
    metrics: dict | None = None
    curves: list[dict] = field(default_factory=list)
    edit_windows: list[dict] = field(default_factory=list)
    merges: list[dict] = field(default_factory=list)
    events: int = 0
    problem: str | None = None
    banner: str | None = None


def _load_run(path: Path, con: sqlite3.Connection, tables: set[str], run: dict) -> RunData:
    """Everything the report needs from one run's rows (its label and banner come later)."""
    rid = run["run_id"]
    events, cks = _rows(con, tables, "events", rid), _rows(con, tables, "checkpoints", rid)
    probes, timings = _rows(con, tables, "probes", rid), _rows(con, tables, "timings", rid)
    rd = RunData(path, run, curves=checkpoint_curves(probes, cks), events=len(events),
                 merges=merge_latencies(events))
    n_edits = sum(e["kind"] == "edit" for e in events)
    rd.edit_windows = edit_latency_windows(events, max(1, math.ceil(n_edits / 40)))
    try:
        rd.metrics = run_metrics(run, events, cks, probes, timings)
    except (KeyError, TypeError, ValueError) as exc:
        rd.problem = f"its final figures could not be computed ({type(exc).__name__}: {exc})"
    return rd


def _banner(rd: RunData) -> str | None:
    """Why this run's figures are not final, in words; None for a complete run."""
    run, status, problem = rd.run, rd.run.get("status"), rd.problem
    final = bool(rd.curves) and rd.curves[-1]["when"] == "final"
    if status == "complete" and final and not problem:
        return None
    parts = [{"failed": "The run failed.",
              "interrupted": "The run was interrupted (`lifelong simulate ... --resume` continues it).",
              "running": "The run is still running, or its process was killed (status 'running').",
              "complete": "The run is marked complete but has no final checkpoint."}.get(
        status, f"The run has status {status!r}.")]
    if run.get("error"):
        parts.append(f"Error: {run['error'].rstrip(': ')}.")
    if problem:
        parts.append(f"Note: {problem}.")
    events = f"{rd.events} of {run.get('events_total') or '?'} events"
    parts.append(f"Figures below come from what it recorded: {events}, {len(rd.curves)} checkpoint(s), "
                 f"the last after {rd.curves[-1]['edits_done']} of {run.get('edits_total') or '?'} edits."
                 if rd.curves else f"It recorded {events} and no checkpoint, so no quality figures.")
    return " ".join(parts)


def _assign_labels(runs: list[RunData]) -> None:
    """Run label; the run id where labels collide; `store-stem:run_id` where those collide
    too (runs of several stores); then a number. Invariant: labels end up unique."""
    for r in runs:
        r.label = r.run.get("label") or r.run["run_id"]
    for namer in (lambda r: r.run["run_id"], lambda r: f"{r.store.stem}:{r.run['run_id']}"):
        labels = [r.label for r in runs]
        for r in runs:
            if labels.count(r.label) > 1:
                r.label = namer(r)
    seen: dict[str, int] = {}
    for r in runs:
        seen[r.label] = seen.get(r.label, 0) + 1
        if seen[r.label] > 1:
            r.label = f"{r.label}#{seen[r.label]}"


def _assign_colours(runs: list[RunData]) -> None:
    """One colour per thing drawn (`entities`): a run, or a method's seeds together."""
    for i, e in enumerate(entities(runs)):
        for r in getattr(e, "members", None) or [e]:
            r.colour = PALETTE[i % len(PALETTE)]


def entities(runs: Sequence[RunData]) -> list[Any]:
    """What the plots draw, in run order: a `SeedMean` in place of a method's complete seeds
    (where it has two or more in one store and comparison group), every other run as is."""
    mean_of = {id(m): sm for sm in seed_means(runs) for m in sm.members}
    out: list[Any] = []
    for r in runs:
        e = mean_of.get(id(r), r)
        if not any(e is o for o in out):
            out.append(e)
    return out


def _method_name(run: dict) -> str | None:
    """The run's method under today's name (see `methods.current_name`)."""
    try:
        settings = json.loads(run.get("config") or "{}").get("method", {}).get("settings")
    except (ValueError, AttributeError):
        settings = None
    return current_name(run["method"], settings) if run.get("method") else run.get("method")


def load_runs(paths: Sequence[str | Path], scenarios: Sequence[str] = ()) -> list[RunData]:
    """Every run of every store, in store order then run order (rowid); with `scenarios`,
    only the runs of those scenarios (by name: a sweep's store holds several)."""
    out: list[RunData] = []
    for p in map(Path, paths):
        con, tables = _connect(p)
        try:
            for run in [dict(r) for r in con.execute("select * from runs order by rowid")]:
                if scenarios and run.get("scenario") not in scenarios:
                    continue
                run["method"] = _method_name(run)
                out.append(_load_run(p, con, tables, run))
        finally:
            con.close()
    _assign_labels(out)
    for r in out:
        r.banner = _banner(r)
    _assign_colours(out)
    return out


# ---------------------------------------------------------------------------- page writing
# No sideways scrolling: tables are split into narrow parts, and text cells wrap.
CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em}
h2{margin-top:1.6em;border-bottom:1px solid #ddd}.meta,figcaption,.note{color:#555}.banner{
background:#fff3cd;border:1px solid #e0b100;padding:.6em 1em;margin:.6em 0;border-radius:4px}
.banner.failed{background:#f8d7da;border-color:#c33}table{border-collapse:collapse;font-size:.82em;
max-width:100%}th,td{border:1px solid #ccc;padding:.25em .5em;text-align:right}th{background:
#f3f3f3}td.l,th.l{text-align:left;overflow-wrap:anywhere}figure img{max-width:100%;
height:auto}.swatch{display:inline-block;width:.8em;height:.8em}"""


def _streams(runs: Sequence[RunData]) -> str:
    """The streams' short names, each with its count of invalid lines skipped (`--skip-bad`)."""
    names = short_names([str(stream_of(r).get("path") or "-") for r in runs])
    out = []
    for r in runs:
        s = stream_of(r)
        skipped = s.get("skipped_lines") or 0
        text = names[str(s.get("path") or "-")] + (
            f" ({skipped} invalid line{'s' * (skipped != 1)} skipped)" if skipped else "")
        out.append(text)
    return ", ".join(dict.fromkeys(out)) or "-"


def _head(runs: Sequence[RunData], paths: Sequence[Path]) -> tuple[str, list[tuple[str, str]]]:
    """The page title and the facts under it (stores, runs, model, code version, stream)."""
    def distinct(values):
        return ", ".join(sorted({str(v) for v in values if v})) or "-"
    title = distinct(r.run.get("scenario") for r in runs) if runs else ", ".join(p.stem for p in paths)
    return f"lifelong report: {title}", [
        ("stores", ", ".join(p.name for p in paths)), ("runs", str(len(runs))),
        ("model", distinct(r.run.get("model") for r in runs)),
        ("code version", distinct(r.run.get("code_version") for r in runs)),
        ("stream", _streams(runs))]


RUN_HEADS = ("run", "store", "method", "seed", "status", "settings")


def _run_rows(runs: Sequence[RunData]) -> list[tuple[str, ...]]:
    """The 'Runs' table: what each run was (its method's settings as JSON)."""
    return [tuple(str(v) for v in (r.label, r.store.name, r.run.get("method"), r.run.get("seed"),
            r.run.get("status"), json.dumps(get(r.run.get("config"), "method", "settings"),
                                            sort_keys=True))) for r in runs]


def _notes(cmp: Comparison) -> list[str]:
    """The sentences under the tables: the protocol, and the groups where there are several."""
    return [n for n in (group_note(cmp), PROTOCOL_NOTE) if n]


def render_html(runs: Sequence[RunData], plots: Sequence[Any], cmp: Comparison,
                paths: Sequence[Path]) -> str:
    e, (title, facts) = html.escape, _head(runs, paths)
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{e(title)}</title><style>{CSS}</style></head><body>", f"<h1>{e(title)}</h1>",
           '<p class="meta">' + "<br>".join(f"<b>{e(k)}</b>: {e(v)}" for k, v in facts) + "</p>"]
    if not runs:
        out.append(f'<p class="banner">There are no runs in {e(", ".join(map(str, paths)))}.</p>')
    for r in runs:
        if r.banner:
            cls = "banner failed" if r.run.get("status") == "failed" else "banner"
            out.append(f'<div class="{cls}"><b>{e(r.label)}: {e(str(r.run.get("status")))}</b>. '
                       f"{e(r.banner)}</div>")
    if runs:
        out.append("<h2>Comparison</h2>")
    for title, heads in table_groups(cmp):
        out += [f"<h3>{e(title)}</h3>", '<table class="comparison"><thead><tr>']
        out += [('<th class="l">' if k in TEXT_KEYS else "<th>") + f"{e(h)}</th>" for k, h in heads]
        out.append("</tr></thead><tbody>")
        for line, row in zip(cmp.lines, cmp.cells):
            tds = []
            for k, _ in heads:
                text, bold = row[k]
                sw = f'<span class="swatch" style="background:{line.colour}"></span>' if k == "run" else ""
                cls = ' class="l"' if k in TEXT_KEYS else ""
                tds.append(f"<td{cls}>{sw}{'<b>' + e(text) + '</b>' if bold else e(text)}</td>")
            out.append("<tr>" + "".join(tds) + "</tr>")
        out.append("</tbody></table>")
    out += [f'<p class="note">{e(n)}</p>' for n in (_notes(cmp) if runs else [])]
    for p in plots:
        data = base64.b64encode(p.png).decode("ascii")
        out.append(f'<h2>{e(p.title)}</h2><figure><img alt="{e(p.title)}" '
                   f'src="data:image/png;base64,{data}"><figcaption>{e(p.caption)}</figcaption></figure>')
    if runs:
        out += ["<h2>Runs</h2>", "<table><tr>" + "".join(f'<th class="l">{h}</th>' for h in RUN_HEADS) + "</tr>"]
        out += ["<tr>" + "".join(f'<td class="l">{e(v)}</td>' for v in row) + "</tr>"
                for row in _run_rows(runs)] + ["</table>"]
    return "\n".join(out + ["</body></html>", ""])


def render_markdown(runs: Sequence[RunData], plot_files: Sequence[tuple[Any, str]],
                    cmp: Comparison, paths: Sequence[Path]) -> str:
    title, facts = _head(runs, paths)
    out = [f"# {title}", ""] + [f"- **{k}**: {v}" for k, v in facts] + [""]
    if not runs:
        out += [f"There are no runs in {', '.join(map(str, paths))}.", ""]
    out += [f"> **{r.label}: {r.run.get('status')}**. {r.banner}\n" for r in runs if r.banner]
    if runs:
        out += ["## Comparison", ""]
    for title, heads in table_groups(cmp):
        out += [f"### {title}", "", "| " + " | ".join(h for _, h in heads) + " |",
                "|" + "|".join(" --- " if k in TEXT_KEYS else " ---: " for k, _ in heads) + "|"]
        out += ["| " + " | ".join((f"**{t}**" if b else t).replace("|", "\\|")
                                  for t, b in (row[k] for k, _ in heads)) + " |" for row in cmp.cells]
        out.append("")
    for note in (_notes(cmp) if runs else []):
        out += [note, ""]
    for p, name in plot_files:
        out += [f"## {p.title}", "", f"![{p.title}]({name})", "", p.caption, ""]
    if runs:
        out += ["## Runs", "", "| " + " | ".join(RUN_HEADS) + " |", "|" + " --- |" * len(RUN_HEADS)]
        out += ["| " + " | ".join(v.replace("|", "\\|") for v in row) + " |" for row in _run_rows(runs)]
    return "\n".join(out + [""])


def write_report(paths: Sequence[str | Path], output: str | Path,
                 scenarios: Sequence[str] = ()) -> dict[str, Any]:
    """Write OUTPUT (HTML) and its Markdown twin with PNGs beside it. Returns what was
    written: `html`, `markdown`, `pngs`, `plots` (names, in page order), `runs` (labels).
    Raises OSError where the output cannot be written (the CLI says so in one line)."""
    from .plots import render_all  # matplotlib only when a report is drawn
    paths = [Path(p) for p in paths]
    runs = load_runs(paths, scenarios)
    plots = render_all(entities(runs)) if runs else []
    cmp = comparison(runs)
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    files = [(p, f"{out.stem}-{p.name}.png") for p in plots]
    for p, name in files:
        (out.parent / name).write_bytes(p.png)
    md = out.with_suffix(".md") if out.suffix.lower() != ".md" else out.with_name(out.stem + "-twin.md")
    out.write_text(render_html(runs, plots, cmp, paths), encoding="utf-8")
    md.write_text(render_markdown(runs, files, cmp, paths), encoding="utf-8")
    return {"html": out, "markdown": md, "pngs": [out.parent / n for _, n in files],
            "plots": [p.name for p in plots], "runs": [r.label for r in runs]}


# ------------------------------------------------------------------------------------ CLI
def _cannot_write(exc: OSError, path: Any) -> LifelongError:
    return LifelongError(f"cannot write {exc.filename or path}: {exc.strerror or exc}")


@click.command()
@click.argument("stores", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--output", default="report.html", show_default=True,
              type=click.Path(dir_okay=False), help="HTML file to write (Markdown twin: same name, .md)")
@click.option("--scenario", "scenarios", multiple=True,
              help="only the runs of this scenario (repeatable; a sweep's store holds several)")
def report(stores, output, scenarios):
    """One HTML page (and a Markdown twin) comparing every run of the STORE files."""
    try:
        done = write_report(stores, output, scenarios)
    except OSError as exc:
        raise _cannot_write(exc, output) from None
    click.echo(f"{done['html']}: {len(done['runs'])} run(s), {len(done['plots'])} figure(s)")
    click.echo(f"{done['markdown']}: Markdown twin, {len(done['pngs'])} PNG file(s) beside it")


def _write_csv(cmp: Comparison, path: str) -> None:
    """One row per run, then one per mean over seeds (`{key}_std`, `n_seeds`, `seeds`)."""
    rows = cmp.rows + [m | {"seeds": " ".join(map(str, m["seeds"]))} for m in cmp.means]
    names = list(dict.fromkeys(k for r in rows for k in r)) or ["store", "run_id", "label"]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=names)
        w.writeheader()
        w.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)


def _rich_tables(cmp: Comparison) -> list[Any]:
    from rich.table import Table
    tables = []
    for title, heads in table_groups(cmp):
        t = Table(title=title)
        for k, h in heads:  # "reliability TF" -> two header lines: narrow columns
            t.add_column(h if k in IDENTITY or k == "group" else "\n".join(h.rsplit(" ", 1)),
                         justify="left" if k in TEXT_KEYS else "right")
        for row in cmp.cells:
            t.add_row(*[f"[bold]{row[k][0]}[/bold]" if row[k][1] else row[k][0] for k, _ in heads])
        tables.append(t)
    return tables


def print_comparison(runs: Sequence[RunData], console: Any) -> Comparison:
    """The comparison tables in the terminal (what `compare` and `simulate` print): a banner
    per unfinished run, the tables with the best per column in bold, the notes (protocol;
    the comparison groups where the runs span several)."""
    cmp = comparison(runs)
    for r in runs:
        if r.banner:
            console.print(f"{r.label}: {r.banner}", style="yellow", markup=False, highlight=False)
    for t in _rich_tables(cmp):
        console.print(t)
    for note in (_notes(cmp) if runs else []):
        console.print(note, highlight=False, markup=False)
    return cmp


@click.command()
@click.argument("stores", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="write the table as CSV")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="write the table as JSON")
@click.option("--scenario", "scenarios", multiple=True,
              help="only the runs of this scenario (repeatable; a sweep's store holds several)")
@click.option("--minus", "minus", multiple=True, metavar="VARIANT=CONTROL",
              help="also: VARIANT's figures minus CONTROL's, seed by seed, mean ± std over the "
                   "seeds (run labels; repeatable; see lifelong/report_pairs.py)")
def compare(stores, csv_path, json_path, scenarios, minus):
    """The comparison table of every run of the STORE files (terminal, CSV, JSON)."""
    import sys

    from rich.console import Console

    from .report_pairs import differences, parse_pairs, rich_table
    pairs = parse_pairs(minus)
    runs = load_runs(stores, scenarios)
    diffs = differences(runs, pairs) if pairs else []
    console = Console(width=None if sys.stdout.isatty() else 200)
    cmp = print_comparison(runs, console)
    if not runs:
        print(f"no runs in {', '.join(stores)}")
    if diffs:
        console.print(rich_table(diffs))
    path = csv_path
    try:
        if csv_path:
            _write_csv(cmp, csv_path)
        if json_path:
            path = json_path
            doc = {"schema": "lifelong.compare/1", "protocol": PROTOCOL_NOTE,
                   "columns": [{"key": c.key, "header": c.header, "better": c.better} for c in cmp.columns],
                   "rows": cmp.rows, "seed_means": cmp.means, "best": cmp.best,
                   **({"differences": diffs} if pairs else {}),
                   "groups": [{"group": i, "description": d, "labels": [
                       ln.label for ln in cmp.lines if ln.group + 1 == i]} for i, d in enumerate(cmp.groups, 1)]}
            Path(json_path).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise _cannot_write(exc, path) from None
