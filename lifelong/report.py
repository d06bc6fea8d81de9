"""`lifelong report` and `lifelong compare`: method comparison over one or more stores.

Everything is recomputed from the recorded rows (events, checkpoints, probes, timings) by
`lifelong.metrics`, never read from the `metrics` cache table, so a report of an old store
stays true. Stores are opened read-only. Runs that failed, were interrupted or are still
running are reported from what they recorded, with a banner saying so; nothing here raises
on them. A file that is not a store raises `StoreError` (one line from the CLI).

The page is self-contained HTML (PNGs inlined as base64, no scripts, no network) with a
Markdown twin next to it (`.md`, PNGs written beside it). Both carry the same comparison
table, built once (`comparison`). Output depends only on the rows: no timestamps.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import click

from .errors import StoreError
from .metrics import checkpoint_curves, edit_latency_windows, merge_latencies, run_metrics

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")
SCHEMA_VERSION = 1
PROTOCOL_NOTE = ("TF = teacher-forced (mean token accuracy with the gold prefix fed in); gen = "
                 "generated (greedy output reproduces the target exactly). Locality: agreement "
                 "with the pre-stream model. Figures are final (after the whole stream) unless "
                 "the `measured` column says otherwise. Best per column in bold, among complete "
                 "runs; for forgetting, stale answers, latency, overhead and memory lower is better.")


# ------------------------------------------------------------------------------ reading stores
def _connect(path: Path) -> tuple[sqlite3.Connection, set[str]]:
    """A read-only connection to a lifelong store and its tables; StoreError if it is not one."""
    if not path.is_file():
        raise StoreError(f"{path}: no such store file")
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
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
    for i, r in enumerate(runs):
        r.colour = PALETTE[i % len(PALETTE)]


def load_runs(paths: Sequence[str | Path]) -> list[RunData]:
    """Every run of every store, in store order then run order (rowid)."""
    out: list[RunData] = []
    for p in map(Path, paths):
        con, tables = _connect(p)
        try:
            for run in [dict(r) for r in con.execute("select * from runs order by rowid")]:
                out.append(_load_run(p, con, tables, run))
        finally:
            con.close()
    _assign_labels(out)
    for r in out:
        r.banner = _banner(r)
    return out


# ------------------------------------------------------------------------- comparison table
def _get(d: Any, *path: str) -> Any:
    """d[path[0]][path[1]]...; None where absent. JSON text (run config) is parsed on the way."""
    for k in path:
        try:
            d = json.loads(d) if isinstance(d, str) else d
        except ValueError:
            return None
        d = d.get(k) if isinstance(d, dict) else None
    return d


class Column(NamedTuple):
    """A figure column: where its value lives (`source` "last" = the run's last checkpoint in
    `checkpoint_curves`, the final one for a complete run; "metrics" = `run_metrics`), which
    way is better ("high" / "low"), and how to print it (`kind`)."""
    key: str
    header: str
    better: str
    kind: str
    source: str
    path: tuple[str, ...]


def _pair(key: str, header: str, better: str, source: str, *path: str) -> list[Column]:
    return [Column(f"{key}_tf", f"{header} TF", better, "score", source, (*path, "teacher_forced")),
            Column(f"{key}_gen", f"{header} gen", better, "score", source, (*path, "generated"))]


# A new figure is one line here; columns with no value in any run are left out of the table.
COLUMNS: tuple[Column, ...] = (
    *_pair("rel", "reliability", "high", "last", "reliability"),
    *_pair("gen", "generalization", "high", "last", "generalization"),
    *_pair("loc", "locality", "high", "last", "locality"),
    *_pair("port", "portability", "high", "last", "portability"),
    Column("ppl", "target perplexity", "low", "number", "metrics", ("perplexity", "teacher_forced")),
    *_pair("rel_after_edit", "right after edit", "high", "metrics", "reliability_after_edit"),
    *_pair("retention", "retention", "high", "metrics", "retention"),
    Column("forgetting_tf", "forgetting TF", "low", "score", "metrics",
           ("retention", "forgetting_teacher_forced")),
    Column("forgetting_gen", "forgetting gen", "low", "score", "metrics", ("retention", "forgetting_generated")),
    Column("conflict_latest_gen", "newest wins gen", "high", "score", "last",
           ("conflict", "latest", "generated")),
    Column("conflict_stale_gen", "stale gen", "low", "score", "last", ("conflict", "stale", "generated")),
    Column("retract_restored_gen", "retract restored gen", "high", "score", "metrics",
           ("retraction", "restored", "generated")),
    Column("routing", "routing accuracy", "high", "score", "last", ("routing", "accuracy")),
    Column("routing_act", "activation router accuracy", "high", "score", "last",
           ("routing", "shadow", "activation", "accuracy")),
    Column("routing_act_loc", "activation router unrelated", "high", "score", "last",
           ("routing", "shadow", "activation", "locality")),
    Column("routing_loc", "routing unrelated", "high", "score", "last", ("routing", "locality")),
    Column("edit_p50_ms", "edit p50 ms", "low", "ms", "metrics", ("latency_ms", "edit", "p50")),
    Column("edit_p95_ms", "edit p95 ms", "low", "ms", "metrics", ("latency_ms", "edit", "p95")),
    Column("merge_p50_ms", "merge p50 ms", "low", "ms", "metrics", ("latency_ms", "merge", "p50")),
    Column("query_overhead", "query overhead", "low", "ratio", "metrics",
           ("latency_ms", "query", "overhead")),
    Column("memory_bytes", "memory", "low", "bytes", "last", ("memory_bytes",)),
    Column("edits_per_second", "edits/s", "high", "rate", "metrics", ("edits_per_second",)),
)
QUALITY_KEYS = {c.key for c in COLUMNS[:9]}  # reliability .. perplexity: "Final quality"


def figures(rd: RunData) -> dict[str, Any]:
    """The run's value of every column (None where not computable)."""
    src = {"last": rd.curves[-1] if rd.curves else {}, "metrics": rd.metrics or {}}
    if (rd.metrics or {}).get("chunks"):  # restart_every: the pooled chunk figures
        src["last"] = rd.metrics
    return {c.key: _get(src[c.source], *c.path) for c in COLUMNS}


IDENTITY = ("run", "method", "seed", "status", "measured", "edits")


def _fmt(value: Any, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "score":
        return f"{value:.3f}"
    if kind == "ratio":
        return f"{value:.2f}x"
    if kind == "number":
        return f"{value:.3g}"
    if kind == "bytes":
        for unit, size in (("GB", 1024 ** 3), ("MB", 1024 ** 2), ("KB", 1024)):
            if value >= size:
                return f"{value / size:.1f} {unit}"
        return f"{value:.0f} B"
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def _measured(rd: RunData) -> str:
    chunks = (rd.metrics or {}).get("chunks")
    if chunks and rd.metrics.get("complete"):
        return f"chunks of {chunks['size']} (x{chunks['count']})"
    last = rd.curves[-1] if rd.curves else None
    return ("no checkpoint" if last is None else "final" if last["when"] == "final"
            else f"checkpoint {last['checkpoint']} ({last['edits_done']} edits)")


@dataclass
class Comparison:
    """The table: `columns` (figure columns with data), `rows` one per run, in run order;
    `cells[i][key]` = (text, bold). `best[key]` = labels of the best runs for that column."""
    columns: list[Column]
    rows: list[dict[str, Any]]
    cells: list[dict[str, tuple[str, bool]]]
    best: dict[str, list[str]]


def comparison(runs: Sequence[RunData]) -> Comparison:
    figs = [figures(r) for r in runs]
    cols = [c for c in COLUMNS if any(f[c.key] is not None for f in figs)]
    best: dict[str, list[str]] = {}
    for c in cols:  # best among complete runs, when at least two have a value
        cands = [(f[c.key], r.label) for f, r in zip(figs, runs) if f[c.key] is not None and not r.banner]
        if len(cands) >= 2:
            top = (max if c.better == "high" else min)(v for v, _ in cands)
            best[c.key] = [lab for v, lab in cands if math.isclose(v, top, rel_tol=1e-9, abs_tol=1e-12)]
    rows, cells = [], []
    for f, r in zip(figs, runs):
        m = r.metrics or {}
        ident = {"store": str(r.store), "run_id": r.run["run_id"], "label": r.label,
                 "method": r.run.get("method"), "seed": r.run.get("seed"), "status": r.run.get("status"),
                 "complete": r.banner is None, "measured": _measured(r),
                 "edits_applied": _get(m, "edits", "applied"), "edits_total": r.run.get("edits_total")}
        rows.append(ident | {c.key: f[c.key] for c in cols})
        edits = "/".join("-" if ident[k] is None else str(ident[k]) for k in ("edits_applied", "edits_total"))
        row_cells = {k: (str(ident[k]), False) for k in ("method", "seed", "status", "measured")}
        row_cells |= {"run": (r.label, False), "edits": (edits, False)}
        for c in cols:
            row_cells[c.key] = (_fmt(f[c.key], c.kind), r.label in best.get(c.key, []))
        cells.append(row_cells)
    return Comparison(cols, rows, cells, best)


def table_groups(cmp: Comparison) -> list[tuple[str, list[tuple[str, str]]]]:
    """The table in three parts (title, [(key, header)]), each led by the identity columns;
    the same parts in the terminal, the page and the Markdown twin. Empty parts are left out."""
    parts = (("Final quality", lambda c: c.key in QUALITY_KEYS),
             ("Along the stream", lambda c: c.key not in QUALITY_KEYS and c.kind == "score"),
             ("Cost (wall-clock on the machine that recorded the run)",
              lambda c: c.kind != "score" and c.key not in QUALITY_KEYS))
    return [(title, [(k, k) for k in IDENTITY] + [(c.key, c.header) for c in cols])
            for title, keep in parts if (cols := [c for c in cmp.columns if keep(c)])]


# ---------------------------------------------------------------------------- page writing
CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em}
h2{margin-top:1.6em;border-bottom:1px solid #ddd}.meta,figcaption,.note{color:#555}.banner{
background:#fff3cd;border:1px solid #e0b100;padding:.6em 1em;margin:.6em 0;border-radius:4px}
.banner.failed{background:#f8d7da;border-color:#c33}.wrap{overflow-x:auto}table{border-collapse:
collapse;font-size:.82em}th,td{border:1px solid #ccc;padding:.25em .5em;text-align:right;
white-space:nowrap}th{background:#f3f3f3;white-space:normal}td.l,th:first-child{text-align:left}
figure img{max-width:100%;height:auto}.swatch{display:inline-block;width:.8em;height:.8em}"""


def _head(runs: Sequence[RunData], paths: Sequence[Path]) -> tuple[str, list[tuple[str, str]]]:
    """The page title and the facts under it (stores, runs, model, code version, stream)."""
    def distinct(values):
        return ", ".join(sorted({str(v) for v in values if v})) or "-"
    title = distinct(r.run.get("scenario") for r in runs) if runs else ", ".join(p.stem for p in paths)
    return f"lifelong report: {title}", [
        ("stores", ", ".join(p.name for p in paths)), ("runs", str(len(runs))),
        ("model", distinct(r.run.get("model") for r in runs)),
        ("code version", distinct(r.run.get("code_version") for r in runs)),
        ("stream", distinct(_get(r.run.get("stream"), "path") for r in runs))]


RUN_HEADS = ("run", "store", "method", "seed", "status", "settings")


def _run_rows(runs: Sequence[RunData]) -> list[tuple[str, ...]]:
    """The 'Runs' table: what each run was (its method's settings as JSON)."""
    return [tuple(str(v) for v in (r.label, r.store.name, r.run.get("method"), r.run.get("seed"),
            r.run.get("status"), json.dumps(_get(r.run.get("config"), "method", "settings"),
                                            sort_keys=True))) for r in runs]


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
        out += [f"<h3>{e(title)}</h3>", '<div class="wrap"><table class="comparison"><thead><tr>']
        out += [f"<th>{e(h)}</th>" for _, h in heads] + ["</tr></thead><tbody>"]
        for r, row in zip(runs, cmp.cells):
            tds = []
            for k, _ in heads:
                text, bold = row[k]
                sw = f'<span class="swatch" style="background:{r.colour}"></span>' if k == "run" else ""
                cls = ' class="l"' if k in IDENTITY[:5] else ""
                tds.append(f"<td{cls}>{sw}{'<b>' + e(text) + '</b>' if bold else e(text)}</td>")
            out.append("<tr>" + "".join(tds) + "</tr>")
        out.append("</tbody></table></div>")
    if runs:
        out.append(f'<p class="note">{e(PROTOCOL_NOTE)}</p>')
    for p in plots:
        data = base64.b64encode(p.png).decode("ascii")
        out.append(f'<h2>{e(p.title)}</h2><figure><img alt="{e(p.title)}" '
                   f'src="data:image/png;base64,{data}"><figcaption>{e(p.caption)}</figcaption></figure>')
    if runs:
        out += ["<h2>Runs</h2>", '<div class="wrap"><table><tr>'
                + "".join(f"<th>{h}</th>" for h in RUN_HEADS) + "</tr>"]
        out += ["<tr>" + "".join(f'<td class="l">{e(v)}</td>' for v in row) + "</tr>"
                for row in _run_rows(runs)] + ["</table></div>"]
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
                "|" + "|".join(" --- " if k in IDENTITY[:5] else " ---: " for k, _ in heads) + "|"]
        out += ["| " + " | ".join((f"**{t}**" if b else t).replace("|", "\\|")
                                  for t, b in (row[k] for k, _ in heads)) + " |" for row in cmp.cells]
        out.append("")
    if runs:
        out += [PROTOCOL_NOTE, ""]
    for p, name in plot_files:
        out += [f"## {p.title}", "", f"![{p.title}]({name})", "", p.caption, ""]
    if runs:
        out += ["## Runs", "", "| " + " | ".join(RUN_HEADS) + " |", "|" + " --- |" * len(RUN_HEADS)]
        out += ["| " + " | ".join(v.replace("|", "\\|") for v in row) + " |" for row in _run_rows(runs)]
    return "\n".join(out + [""])


def write_report(paths: Sequence[str | Path], output: str | Path) -> dict[str, Any]:
    """Write OUTPUT (HTML) and its Markdown twin with PNGs beside it. Returns what was
    written: `html`, `markdown`, `pngs`, `plots` (names, in page order), `runs` (labels)."""
    from .plots import render_all  # matplotlib only when a report is drawn
    paths = [Path(p) for p in paths]
    runs = load_runs(paths)
    plots = render_all(runs) if runs else []
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
@click.command()
@click.argument("stores", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--output", default="report.html", show_default=True,
              type=click.Path(dir_okay=False), help="HTML file to write (Markdown twin: same name, .md)")
def report(stores, output):
    """One HTML page (and a Markdown twin) comparing every run of the STORE files."""
    done = write_report(stores, output)
    click.echo(f"{done['html']}: {len(done['runs'])} run(s), {len(done['plots'])} figure(s)")
    click.echo(f"{done['markdown']}: Markdown twin, {len(done['pngs'])} PNG file(s) beside it")


def _write_csv(cmp: Comparison, path: str) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(cmp.rows[0]) if cmp.rows else ["store", "run_id", "label"])
        w.writeheader()
        w.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in cmp.rows)


def _rich_tables(cmp: Comparison) -> list[Any]:
    from rich.table import Table
    tables = []
    for title, heads in table_groups(cmp):
        t = Table(title=title)
        for k, h in heads:  # "reliability TF" -> two header lines: narrow columns
            t.add_column(h if k in IDENTITY else "\n".join(h.rsplit(" ", 1)),
                         justify="left" if k in IDENTITY[:5] else "right")
        for row in cmp.cells:
            t.add_row(*[f"[bold]{row[k][0]}[/bold]" if row[k][1] else row[k][0] for k, _ in heads])
        tables.append(t)
    return tables


def print_comparison(runs: Sequence[RunData], console: Any) -> Comparison:
    """The comparison tables in the terminal (what `compare` and `simulate` print): a banner
    per unfinished run, the tables with the best per column in bold, the protocol note."""
    cmp = comparison(runs)
    for r in runs:
        if r.banner:
            console.print(f"{r.label}: {r.banner}", style="yellow", markup=False, highlight=False)
    for t in _rich_tables(cmp):
        console.print(t)
    if runs:
        console.print(PROTOCOL_NOTE, highlight=False)
    return cmp


@click.command()
@click.argument("stores", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="write the table as CSV")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="write the table as JSON")
def compare(stores, csv_path, json_path):
    """The comparison table of every run of the STORE files (terminal, CSV, JSON)."""
    import sys

    from rich.console import Console
    runs = load_runs(stores)
    cmp = print_comparison(runs, Console(width=None if sys.stdout.isatty() else 200))
    if not runs:
        print(f"no runs in {', '.join(stores)}")
    if csv_path:
        _write_csv(cmp, csv_path)
    if json_path:
        doc = {"schema": "lifelong.compare/1", "protocol": PROTOCOL_NOTE,
               "columns": [{"key": c.key, "header": c.header, "better": c.better} for c in cmp.columns],
               "rows": cmp.rows, "best": cmp.best}
        Path(json_path).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
