"""The comparison table of `lifelong report` and `lifelong compare`: its columns, its rows
(runs and means over seeds, `report_groups`) and which figure is best.

Best is marked only within a comparison group (`report_groups.group_key`), among complete
runs, where at least two have a value. A method's mean over its complete seeds
("0.912 ± 0.013", sample std), not its seeds' own rows, competes for best. A figure that is
not a measurement is shown as what it is and never bold: a query overhead whose interval
holds 1.0 ("within noise"), a retraction figure of a method that performed no retraction
("unsupported").

The runs are duck-typed (`report.RunData`): `store`, `run` (the runs row), `label`,
`colour`, `metrics` (run_metrics), `curves` (checkpoint_curves), `banner` (None: complete).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .metrics_seeds import mean_std
from .report_groups import (
    SeedMean,
    get,
    group_key,
    model_path,
    seed_means,
    short_names,
    stream_path,
)

PROTOCOL_NOTE = (
    "TF = teacher-forced (mean token accuracy with the gold prefix fed in); gen = generated "
    "(greedy output reproduces the target exactly). Locality: agreement with the pre-stream "
    "model. Figures are final (after the whole stream) unless the `measured` column says "
    "otherwise; stream queries are scored when the stream asked them. Best per column in bold, "
    "among complete runs with the same model, stream and chunk size; a method with several "
    "seeds competes with its mean over seeds (mean ± sample std). For forgetting, stale answers, "
    "latency, overhead and memory lower is better. Retraction restored: over the retractions "
    "the method performed. Query overhead: ratio of median latencies with its 95% bootstrap "
    "interval, 'within noise' (never bold) when the interval holds 1.0.")
RUNS, QUALITY, STREAM, CONFLICT, ROUTING = ("Runs", "Final quality", "Along the stream",
                                            "Conflicts, retractions and queries", "Routing")
COST = "Cost (wall-clock on the machine that recorded the run)"
PARTS = (RUNS, QUALITY, STREAM, CONFLICT, ROUTING, COST)


class Column(NamedTuple):
    """A figure column: where its value lives (`source` "last" = the run's last checkpoint in
    `checkpoint_curves`, the final one for a complete run; "metrics" = `run_metrics`), which
    way is better ("high" / "low"; "" = never ranked), how to print it (`kind`; "count"
    prints value/`of`), its table (`part`) and when it is shown (`show` "any": some run has
    a value; "positive": some run has a value above 0)."""
    key: str
    header: str
    better: str
    kind: str
    source: str
    path: tuple[str, ...]
    part: str
    of: tuple[str, ...] = ()
    show: str = "any"


def _pair(key: str, header: str, better: str, source: str, part: str, *path: str) -> list[Column]:
    return [Column(f"{key}_tf", f"{header} TF", better, "score", source, (*path, "teacher_forced"), part),
            Column(f"{key}_gen", f"{header} gen", better, "score", source, (*path, "generated"), part)]


# A new figure is one line here; columns with no value in any run are left out of the table.
COLUMNS: tuple[Column, ...] = (
    Column("not_converged", "edits not converged", "", "count", "metrics", ("edits", "not_converged"),
           RUNS, of=("edits", "total"), show="positive"),
    *_pair("rel", "reliability", "high", "last", QUALITY, "reliability"),
    *_pair("gen", "generalization", "high", "last", QUALITY, "generalization"),
    *_pair("gen_ood", "OOD generalization", "high", "last", QUALITY, "generalization_ood"),
    *_pair("loc", "locality", "high", "last", QUALITY, "locality"),
    *_pair("port", "portability", "high", "last", QUALITY, "portability"),
    Column("rel_disagree", "reliability TF/gen differ", "", "score", "metrics",
           ("protocol_gap", "rel", "disagree"), QUALITY, show="positive"),
    Column("ppl", "target perplexity", "low", "number", "metrics", ("perplexity", "teacher_forced"), QUALITY),
    Column("health_ppl", "held-out text perplexity vs before", "low", "ratio", "metrics",
           ("health", "ppl_ratio"), QUALITY),
    Column("weight_delta", "largest weight change (relative)", "low", "number", "metrics",
           ("health", "weight_delta_max"), QUALITY),
    *_pair("rel_after_edit", "right after edit", "high", "metrics", STREAM, "reliability_after_edit"),
    *_pair("retention", "retention", "high", "metrics", STREAM, "retention"),
    Column("forgetting_tf", "forgetting TF", "low", "score", "metrics",
           ("retention", "forgetting_teacher_forced"), STREAM),
    Column("forgetting_gen", "forgetting gen", "low", "score", "metrics",
           ("retention", "forgetting_generated"), STREAM),
    Column("conflict_latest_gen", "newest wins gen", "high", "score", "last",
           ("conflict", "latest", "generated"), CONFLICT),
    Column("conflict_stale_gen", "stale gen", "low", "score", "last", ("conflict", "stale", "generated"),
           CONFLICT),
    Column("retract_restored_gen", "retract restored gen", "high", "score", "metrics",
           ("retraction", "restored", "generated"), CONFLICT),
    Column("retract_unsupported", "retractions unsupported", "", "count", "metrics",
           ("retraction", "unsupported"), CONFLICT, of=("retraction", "requested")),
    *_pair("queries", "stream queries", "high", "metrics", CONFLICT, "queries"),
    Column("routing", "routing accuracy", "high", "score", "last", ("routing", "accuracy"), ROUTING),
    Column("routing_act", "activation router accuracy", "high", "score", "last",
           ("routing", "shadow", "activation", "accuracy"), ROUTING),
    Column("routing_act_loc", "activation router unrelated", "high", "score", "last",
           ("routing", "shadow", "activation", "locality"), ROUTING),
    Column("routing_loc", "routing unrelated", "high", "score", "last", ("routing", "locality"), ROUTING),
    Column("edit_p50_ms", "edit p50 ms", "low", "ms", "metrics", ("latency_ms", "edit", "p50"), COST),
    Column("edit_p95_ms", "edit p95 ms", "low", "ms", "metrics", ("latency_ms", "edit", "p95"), COST),
    Column("merge_p50_ms", "merge p50 ms", "low", "ms", "metrics", ("latency_ms", "merge", "p50"), COST),
    Column("query_overhead", "query overhead", "low", "ratio", "metrics",
           ("latency_ms", "query", "overhead"), COST),
    Column("memory_bytes", "memory", "low", "bytes", "last", ("memory_bytes",), COST),
    Column("edits_per_second", "edits/s", "high", "rate", "metrics", ("edits_per_second",), COST),
)
IDENTITY = ("run", "method", "seed", "model", "stream", "status", "measured", "edits")
TEXT_KEYS = frozenset(IDENTITY[:7]) | {"group"}  # left-aligned




def figures(rd: Any) -> dict[str, Any]:
    """The run's value of every column (None where not computable)."""
    src = {"last": rd.curves[-1] if rd.curves else {}, "metrics": rd.metrics or {}}
    if (rd.metrics or {}).get("chunks"):  # restart_every: the pooled chunk figures
        src["last"] = rd.metrics
    return {c.key: get(src[c.source], *c.path) for c in COLUMNS}


def fmt(value: Any, kind: str) -> str:
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
    if kind == "count":
        return f"{value:g}"
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


# ------------------------------------------------------------------------------ the table
@dataclass
class Line:
    """A table row: one run (`members` = [run]) or a mean over seeds (`mean` set)."""
    label: str
    members: list
    group: int
    colour: str
    mean: SeedMean | None = None


@dataclass
class Comparison:
    """The table. `columns`: figure columns with data; `lines` in table order (by group, then
    run order; a mean row after its last seed) with `cells[i][key]` = (text, bold); `rows`: one
    dict per run (CSV, JSON), `means`: one per mean over seeds; `best[key]`: labels of the best
    rows; `groups`: one description per comparison group."""
    columns: list[Column]
    lines: list[Line]
    cells: list[dict[str, tuple[str, bool]]]
    rows: list[dict[str, Any]]
    best: dict[str, list[str]]
    groups: list[str] = field(default_factory=list)
    means: list[dict[str, Any]] = field(default_factory=list)


class Cell(NamedTuple):
    text: str
    value: Any  # what competes for best; None: not ranked


def _count_cell(col: Column, members: list) -> Cell:
    vals = [get(m.metrics or {}, *col.path) for m in members]
    if all(v is None for v in vals):
        return Cell("-", None)
    total = sum(get(m.metrics or {}, *col.of) or 0 for m in members)
    seeds = f" ({len(members)} seeds)" if len(members) > 1 else ""
    return Cell(f"{sum(v or 0 for v in vals)}/{total}{seeds}", None)


def _retraction_cell(col: Column, members: list) -> Cell | None:
    """'unsupported (k/n)' when no member has a restored figure because the method refused
    its retractions; None (the ordinary cell) otherwise."""
    rs = [(m.metrics or {}).get("retraction") or {} for m in members]
    if any(r.get("restored") is not None for r in rs) or not any(r.get("unsupported") for r in rs):
        return None
    seeds = f", {len(members)} seeds" if len(members) > 1 else ""
    return Cell(f"unsupported ({sum(r.get('unsupported') or 0 for r in rs)}/"
                f"{sum(r.get('requested') or 0 for r in rs)}{seeds})", None)


def _overhead_cell(col: Column, members: list) -> Cell | None:
    """A measured overhead with its interval, ranked; otherwise never ranked: 'timed apart'
    (old stores: base model before the stream, memory after it), 'within noise' (the
    interval holds 1.0, or none could be computed). A mean over seeds is ranked only when
    every seed's overhead is a measurement."""
    qs = [get(m.metrics or {}, "latency_ms", "query") or {} for m in members]
    if all(q.get("overhead") is None for q in qs):
        return None
    apart = [q for q in qs if q.get("overhead_side_by_side") is False]
    noise = [q for q in qs if not q.get("overhead_significant")]
    if len(members) > 1:
        st = mean_std([q.get("overhead") for q in qs])
        if apart or noise:
            why = "timed apart" if apart else "within noise"
            return Cell(f"{why} ({len(apart or noise)} of {len(members)} seeds)", None)
        return Cell(f"{st['mean']:.2f}x ± {st['std']:.2f}", st["mean"])
    q = qs[0]
    ci = (f" [{q['overhead_low']:.2f}-{q['overhead_high']:.2f}]"
          if q.get("overhead_low") is not None else " (no interval)")
    if apart:
        return Cell(f"{q['overhead']:.2f}x{ci}, timed apart", None)
    if noise:
        return Cell(f"within noise{ci}", None)
    return Cell(f"{q['overhead']:.2f}x{ci}", q["overhead"])


SPECIAL: dict[str, Callable[[Column, list], Cell | None]] = {
    "retract_restored_gen": _retraction_cell, "query_overhead": _overhead_cell}


def _cell(col: Column, line: Line, figs: dict[int, dict]) -> Cell:
    if col.kind == "count":
        return _count_cell(col, line.members)
    special = SPECIAL.get(col.key, lambda c, m: None)(col, line.members)
    if special is not None:
        return special
    vals = [figs[id(m)][col.key] for m in line.members]
    if line.mean is None:
        return Cell(fmt(vals[0], col.kind), vals[0])
    st = mean_std(vals)
    if st is None:
        return Cell("-", None)
    n = "" if st["n"] == len(vals) else f" ({st['n']} of {len(vals)} seeds)"
    spread = fmt(st["std"], col.kind).rstrip("x") if st["std"] is not None else "?"
    return Cell(f"{fmt(st['mean'], col.kind)} ± {spread}{n}", st["mean"])


def _measured(rd: Any) -> str:
    chunks = (rd.metrics or {}).get("chunks")
    if chunks and rd.metrics.get("complete"):
        return f"chunks of {chunks['size']} (x{chunks['count']})"
    last = rd.curves[-1] if rd.curves else None
    return ("no checkpoint" if last is None else "final" if last["when"] == "final"
            else f"checkpoint {last['checkpoint']} ({last['edits_done']} edits)")


def _identity(line: Line, names: dict[str, str]) -> dict[str, str]:
    first = line.members[0]
    model, stream = model_path(first), stream_path(first)
    seeds = [m.run.get("seed") for m in line.members]
    applied = mean_std([get(m.metrics or {}, "edits", "applied") for m in line.members])
    done = "-" if applied is None else fmt(applied["mean"], "count")
    edits = f"{done}/{first.run.get('edits_total') or '-'}"
    measured = {_measured(m) for m in line.members}
    return {"run": line.label, "method": str(first.run.get("method")), "model": names[model],
            "seed": (", ".join(map(str, seeds)) + f" ({len(seeds)} seeds)") if line.mean else str(seeds[0]),
            "stream": names[stream], "status": str(first.run.get("status")) if not line.mean else "complete",
            "measured": measured.pop() if len(measured) == 1 else "mixed", "edits": edits,
            "group": str(line.group + 1)}


def _lines(runs: Sequence[Any], means: list[SeedMean]) -> tuple[list[Line], list[tuple]]:
    """The table's rows, grouped by comparison group (in order of first appearance)."""
    keys = list(dict.fromkeys(group_key(r) for r in runs))
    mean_of = {id(m): sm for sm in means for m in sm.members}
    out: list[Line] = []
    for g, key in enumerate(keys):
        members = [r for r in runs if group_key(r) == key]
        for r in members:
            out.append(Line(r.label, [r], g, r.colour))
            sm = mean_of.get(id(r))
            if sm is not None and r is sm.members[-1]:
                out.append(Line(sm.label, sm.members, g, sm.colour, sm))
    return out, keys


def _best(cols: list[Column], lines: list[Line], cells: list[dict[str, Cell]]) -> dict[str, list[str]]:
    """Per column, within each group: the best among complete single runs that are not a seed
    of a mean row, and mean rows, where at least two have a ranked value."""
    in_mean = {id(m) for ln in lines if ln.mean for m in ln.members}
    best: dict[str, list[str]] = {}
    for c in (c for c in cols if c.better in ("high", "low")):
        for g in sorted({ln.group for ln in lines}):
            cands = [(cell[c.key].value, ln.label) for ln, cell in zip(lines, cells)
                     if ln.group == g and cell[c.key].value is not None
                     and (ln.mean or (ln.members[0].banner is None and id(ln.members[0]) not in in_mean))]
            if len(cands) >= 2:
                top = (max if c.better == "high" else min)(v for v, _ in cands)
                best.setdefault(c.key, []).extend(
                    lab for v, lab in cands if math.isclose(v, top, rel_tol=1e-9, abs_tol=1e-12))
    return best


def _describe(keys: list[tuple], firsts: list[Any], names: dict[str, str]) -> list[str]:
    """One line per group; `firsts[i]` is group i's first run (whose model and stream
    paths name the group; the fingerprint is added where it tells groups apart)."""
    return [f"model {names[model_path(r)]}"
            + (f" ({m.split(':', 1)[1]})" if m.startswith("fingerprint:") else "")
            + f", stream {names[stream_path(r)]} ({ev if ev is not None else '?'} events)"
            + (f", chunks of {t}" if t else "") for (m, _, ev, t), r in zip(keys, firsts)]


def comparison(runs: Sequence[Any]) -> Comparison:
    figs = {id(r): figures(r) for r in runs}
    means = seed_means(runs)
    lines, keys = _lines(runs, means)
    firsts = [next(ln.members[0] for ln in lines if ln.group == g) for g in range(len(keys))]
    names = short_names(list(dict.fromkeys(model_path(r) for r in runs))) | short_names(
        list(dict.fromkeys(stream_path(r) for r in runs)))
    cols = [c for c in COLUMNS if any(
        f[c.key] is not None and (c.show == "any" or f[c.key] > 0) for f in figs.values())]
    raw = [{c.key: _cell(c, ln, figs) for c in cols} for ln in lines]
    best = _best(cols, lines, raw)
    cells = []
    for ln, cell in zip(lines, raw):
        row = {k: (v, False) for k, v in _identity(ln, names).items()}
        cells.append(row | {k: (c.text, ln.label in best.get(k, [])) for k, c in cell.items()})
    rows, mean_rows = [], []
    for ln, cell in zip(lines, raw):
        ident = _identity(ln, names)
        if ln.mean is None:
            rows.append(_run_row(ln, ident, cols, figs, cell))
        else:
            mean_rows.append(_mean_row(ln, ident, cols, figs))
    return Comparison(cols, lines, cells, rows, best, _describe(keys, firsts, names), mean_rows)


def _run_row(ln: Line, ident: dict, cols: list[Column], figs: dict, cell: dict[str, Cell]) -> dict:
    """One run's CSV/JSON row: identity, then every column's value; overhead and retraction
    say whether their figure is a measurement."""
    r = ln.members[0]
    m = r.metrics or {}
    row = {"store": str(r.store), "run_id": r.run["run_id"], "label": r.label, "method": r.run.get("method"),
           "seed": r.run.get("seed"), "status": r.run.get("status"), "complete": r.banner is None,
           "measured": ident["measured"], "model": ident["model"], "stream": ident["stream"],
           "group": ln.group + 1, "edits_applied": get(m, "edits", "applied"),
           "edits_total": r.run.get("edits_total")}
    row |= {c.key: figs[id(r)][c.key] for c in cols}
    if "query_overhead" in row:
        row["query_overhead_measured"] = cell["query_overhead"].value is not None
    return row


def _mean_row(ln: Line, ident: dict, cols: list[Column], figs: dict) -> dict:
    """A mean over seeds for CSV/JSON: `{key}` the mean, `{key}_std` the sample std, `n_seeds`."""
    row = {"store": str(ln.members[0].store), "label": ln.label, "method": ident["method"],
           "seeds": [m.run.get("seed") for m in ln.members], "n_seeds": len(ln.members),
           "model": ident["model"], "stream": ident["stream"], "group": ln.group + 1}
    for c in cols:
        st = mean_std([figs[id(m)][c.key] for m in ln.members])
        row[c.key], row[f"{c.key}_std"] = (st["mean"], st["std"]) if st else (None, None)
    return row


def table_groups(cmp: Comparison) -> list[tuple[str, list[tuple[str, str]]]]:
    """The table in parts (title, [(key, header)]): "Runs" with every identity column, the
    figure parts led by the run (and its group when there are several); the same parts in
    the terminal, the page and the Markdown twin. Empty parts are left out."""
    lead = [("run", "run")] + ([("group", "group")] if len(cmp.groups) > 1 else [])
    out = [(RUNS, lead + [(k, k) for k in IDENTITY[1:]]
            + [(c.key, c.header) for c in cmp.columns if c.part == RUNS])] if cmp.lines else []
    for part in PARTS[1:]:
        cols = [(c.key, c.header) for c in cmp.columns if c.part == part]
        if cols:
            out.append((part, lead + cols))
    return out


def group_note(cmp: Comparison) -> str | None:
    """Where the runs span several comparison groups, a sentence saying so (best is per group)."""
    if len(cmp.groups) < 2:
        return None
    return (f"These runs span {len(cmp.groups)} comparison groups (different model, stream or "
            "chunk size); the best figure is marked within each group only. "
            + "; ".join(f"group {i}: {d}" for i, d in enumerate(cmp.groups, 1)) + ".")
