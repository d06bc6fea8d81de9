"""The report's figures: matplotlib (Agg, no pyplot state), one PNG per figure, in memory.

Every figure draws runs on shared axes, one colour per run (`run.colour`, the same in every
figure), teacher-forced solid and generated dashed. A figure is made only when some run has
rows for it, so new metrics and methods show up without changes here, and absent ones leave
no empty panels. Output is deterministic: same rows, same PNG bytes (no timestamps, no
software tag, fixed fonts and sizes).

The runs passed in are duck-typed: `label`, `colour`, `metrics` (run_metrics' dict), `curves`
(checkpoint_curves), `edit_windows` (edit_latency_windows), `merges` (merge_latencies). A
method's seeds drawn as one (`report_groups.SeedMean`) also has `members` (the seeds' runs)
and `legend`: its figures are the means over the seeds, drawn with a band from the lowest to
the highest seed (min..max). A legend names only the runs a figure drew.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: never opens a window, whatever the environment says

from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

DPI = 110
MODES = (("teacher_forced", "-", "teacher-forced"), ("generated", "--", "generated"))
MARKER = {"-": {"marker": "o", "ms": 3}, "--": {"marker": "o", "ms": 4, "mfc": "white"}}
RC = {"font.family": "DejaVu Sans", "font.size": 9, "axes.titlesize": 10,
      "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
      "axes.spines.right": False, "legend.fontsize": 8, "legend.frameon": False,
      "svg.hashsalt": "lifelong", "path.simplify": True}


@dataclass(frozen=True)
class Plot:
    """One rendered figure: `name` is file-name safe and unique within a report."""
    name: str
    title: str
    caption: str
    png: bytes


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def _new(ncols: int = 1, nrows: int = 1, width: float = 10.0, height: float = 3.8):
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


BAND_NOTE = " Methods with several seeds: the mean over seeds, the band from the lowest to the highest seed."


def _name(run) -> str:
    return getattr(run, "legend", None) or run.label


def _seeded(runs) -> bool:
    return any(getattr(r, "members", None) for r in runs)


def _band(ax, run, series: Callable[[Any], tuple[list[float], list[float]]]) -> None:
    """For a method's seeds drawn as one: shade min..max over the seeds at the x values every
    seed has (`series(obj)` gives (xs, ys) for the mean and for each seed alike)."""
    members = getattr(run, "members", None)
    if not members:
        return
    per = [dict(zip(*series(m))) for m in members]
    xs = sorted(set.intersection(*(set(p) for p in per))) if per else []
    if xs:
        ax.fill_between(xs, [min(p[x] for p in per) for x in xs], [max(p[x] for p in per) for x in xs],
                        color=run.colour, alpha=0.18, lw=0)


def _legend(fig: Figure, runs, styles: Sequence[tuple[str, str]] = ()) -> None:
    """One legend for the whole figure, below it: a colour per run, then the line styles."""
    handles = [Line2D([], [], color=r.colour, lw=2, label=_name(r)) for r in runs]
    handles += [Line2D([], [], color="#444", ls=ls, label=text, **MARKER.get(ls, {}))
                for ls, text in styles]
    wide = max((len(h.get_label()) for h in handles), default=0) > 24  # long names: fewer per row
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 3 if wide else 6))


def _series(run, get: Callable[[dict], Any]) -> tuple[list[float], list[float]]:
    """(edits, value) over a run's checkpoints where `get` gives a number."""
    xs, ys = [], []
    for c in run.curves:
        v = get(c)
        if v is not None:
            xs.append(c["edits_done"])
            ys.append(v)
    return xs, ys


def _pick(c: dict, key: str, mode: str, sub: str | None = None) -> float | None:
    fig = c.get(key)
    if fig and sub:
        fig = fig.get(sub)
    return fig.get(mode) if fig else None


def _has(run, key: str, sub: str | None = None) -> bool:
    """Whether a run has a value of `key` (either protocol) at some checkpoint."""
    return any(_series(run, lambda c, m=mode: _pick(c, key, m, sub))[0] for mode, _, _ in MODES)


def _protocol_lines(ax, runs, key: str, sub: str | None = None) -> list:
    """Both protocols of `key` (a rate in the curves) for every run; the runs drawn."""
    drawn = []
    for run in runs:
        for mode, ls, _ in MODES:
            def series(r, mode=mode):
                return _series(r, lambda c: _pick(c, key, mode, sub))
            xs, ys = series(run)
            if xs:
                ax.plot(xs, ys, ls=ls, color=run.colour, lw=1.6, **MARKER[ls])
                _band(ax, run, series)
                if not any(run is d for d in drawn):
                    drawn.append(run)
    _edits_axis(ax, runs)
    return drawn


def _edits_axis(ax, runs) -> None:
    """Shared x axis for 'against the number of edits': 0 to the longest stream, integers."""
    top = [c["edits_done"] for r in runs for c in r.curves]
    top += [w["edits_to"] for r in runs for w in r.edit_windows]
    top += [(getattr(r, "run", None) or {}).get("edits_total") or 0 for r in runs]
    ax.set_xlim(0, max(max(top, default=1), 1) * 1.03)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _score_axes(ax, title: str, xlabel: str = "edits applied (count)") -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("score (0 to 1)")
    ax.set_ylim(-0.03, 1.03)


QUALITY = (("reliability", "Reliability (edit prompt -> new target)"),
           ("generalization", "Generalization (rephrases -> new target)"),
           ("generalization_ood", "OOD generalization (unseen phrasing family)"),
           ("locality", "Locality (unchanged outputs)"),
           ("portability", "Portability"))


def quality_plot(runs) -> Plot | None:
    keys = [(k, t) for k, t in QUALITY if any(_has(r, k) for r in runs)]
    if not keys:
        return None
    have = [r for r in runs if any(_has(r, k) for k, _ in keys)]
    n = len(keys)
    fig, axes = _new(ncols=min(n, 3) if n != 4 else 2, nrows=1 if n <= 3 else 2,
                     height=3.8 if n <= 3 else 6.8)
    for ax, (key, title) in zip(axes, keys):
        _protocol_lines(ax, have, key)
        _score_axes(ax, title)
    for ax in axes[n:]:
        ax.set_visible(False)
    _legend(fig, have, [(ls, text) for _, ls, text in MODES])
    return Plot("quality", "Quality against the number of edits",
                "Measured at every checkpoint, on the edits made so far (intermediate checkpoints "
                "may probe a sample: schedule.probe_edits). Solid: teacher-forced token accuracy; "
                "dashed: generated (greedy output exactly right)." + BAND_NOTE * _seeded(have), _png(fig))


def _ticks(n: int, most: int = 12) -> list[int]:
    step = max(1, math.ceil(n / most))
    return list(range(0, n, step))


def retention_matrix_plot(run) -> Plot | None:
    """The retention heat map of one run; None unless it has two edit groups and two
    checkpoints or more (a 1x1 or one-column map shows nothing a table would not)."""
    ret = (run.metrics or {}).get("retention")
    if not ret or len(ret.get("groups") or ()) < 2 or len(ret.get("checkpoints") or ()) < 2:
        return None
    import numpy as np
    edits_at = {c["checkpoint"]: c["edits_done"] for c in run.curves}
    cols = [edits_at.get(k, k) for k in ret["checkpoints"]]
    g = ret["group_size"]
    rows = [f"{x * g + 1}-{(x + 1) * g}" for x in ret["groups"]]
    fig, axes = _new(ncols=2, width=10.0, height=max(3.2, min(9.0, 1.2 + 0.22 * len(rows))))
    image = None
    for ax, (mode, _, text) in zip(axes, MODES):
        R = np.array([[np.nan if v is None else v for v in row] for row in ret[f"matrix_{mode}"]],
                     dtype=float)
        cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#e6e6e6")
        image = ax.imshow(R, aspect="auto", cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        if R.size <= 120:
            for (i, j), v in np.ndenumerate(R):
                if not np.isnan(v):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if v < 0.6 else "black")
        ax.set_xticks(_ticks(len(cols)), [str(cols[j]) for j in _ticks(len(cols))])
        ax.set_yticks(_ticks(len(rows), 16), [rows[i] for i in _ticks(len(rows), 16)])
        ax.set_title(f"{_name(run)}: {text}" if not getattr(run, "members", None)
                     else f"{run.label}, {len(run.members)} seeds: {text}")
        ax.set_xlabel("checkpoint (edits applied)")
        ax.set_ylabel("edit group (edit numbers)")
        ax.grid(False)
    fig.colorbar(image, ax=axes, label="reliability (0 to 1)", shrink=0.9)
    seeds = getattr(run, "members", None)
    return Plot(f"retention-{safe_name(run.label)}", f"Retention matrix: {run.label}",
                "Reliability of each group of edits (rows, in stream order) at each checkpoint "
                "(columns). Grey: the group was not edited (or not probed) yet. A row fading "
                "to the right is forgetting."
                + (f" Mean over {len(seeds)} seeds." if seeds else ""), _png(fig))


def retention_age_plot(runs) -> Plot | None:
    have = [r for r in runs if (r.metrics or {}).get("retention_by_age")]
    if not have:
        return None
    fig, (ax,) = _new(width=8.0, height=3.8)
    for run in have:
        for mode, ls, _ in MODES:
            def series(r, mode=mode):
                rows = (r.metrics or {}).get("retention_by_age") or []
                pts = [((b["age_from"] + b["age_to"]) / 2, b[mode]) for b in rows if b[mode] is not None]
                return [x for x, _ in pts], [y for _, y in pts]
            xs, ys = series(run)
            if xs:
                ax.plot(xs, ys, ls=ls, color=run.colour, lw=1.6, **MARKER[ls])
                _band(ax, run, series)
    _score_axes(ax, "Reliability against edit age",
                "edit age (edits applied after it; bucket midpoint)")
    _legend(fig, have, [(ls, text) for _, ls, text in MODES])
    return Plot("retention-age", "Retention against edit age",
                "Reliability of an edit against how many edits came after it, pooled over all "
                "checkpoints. Solid: teacher-forced; dashed: generated." + BAND_NOTE * _seeded(have),
                _png(fig))


def conflict_plot(runs) -> Plot | None:
    have = [r for r in runs if _has(r, "conflict", "latest") or _has(r, "conflict", "stale")]
    if not have:
        return None
    fig, axes = _new(ncols=2)
    _protocol_lines(axes[0], have, "conflict", "latest")
    _score_axes(axes[0], "Newest value wins (re-edited facts)")
    _protocol_lines(axes[1], have, "conflict", "stale")
    _score_axes(axes[1], "Stale answers (a superseded value; lower is better)")
    _legend(fig, have, [(ls, text) for _, ls, text in MODES])
    return Plot("conflict", "Conflicts between old and new values",
                "Facts edited more than once. Left: the newest value comes out (from the newest "
                "and the older edits' prompts). Right: a superseded value still comes out "
                "(generated: share of facts; teacher-forced: token accuracy of old values)."
                + BAND_NOTE * _seeded(have), _png(fig))


def _log_if_spread(ax, values: Sequence[float]) -> None:
    pos = [v for v in values if v and v > 0]
    if pos and max(pos) / min(pos) > 50:
        ax.set_yscale("log")


def edit_latency_plot(runs) -> Plot | None:
    have = [r for r in runs if r.edit_windows]
    if not have:
        return None
    fig, (ax,) = _new(width=8.0, height=3.8)
    values = []
    for run in have:
        for key, ls in (("p50", "-"), ("p95", "--")):
            def series(r, key=key):
                return [w["edits_to"] for w in r.edit_windows], [w[key] for w in r.edit_windows]
            xs, ys = series(run)
            values += ys
            ax.plot(xs, ys, ls=ls, color=run.colour, lw=1.4, **MARKER[ls])
            _band(ax, run, series)
    _log_if_spread(ax, values)
    _edits_axis(ax, have)
    sizes = sorted({w["edits_to"] - w["edits_from"] + 1 for r in have for w in r.edit_windows[:1]})
    ax.set_title("Edit latency (over windows of consecutive edits)")
    ax.set_xlabel("edits applied (count, window end)")
    ax.set_ylabel("wall-clock per edit (ms)")
    _legend(fig, have, [("-", "p50"), ("--", "p95")])
    return Plot("edit-latency", "Edit latency against the number of edits",
                "Wall-clock time inside the method's edit, p50 (solid) and p95 (dashed) over "
                f"consecutive windows of {'/'.join(map(str, sizes))} edit(s); timings from the "
                "machine that recorded the run." + BAND_NOTE * _seeded(have), _png(fig))


def merge_latency_plot(runs) -> Plot | None:
    have = [r for r in runs if r.merges]
    if not have:
        return None
    fig, (ax,) = _new(width=8.0, height=3.6)
    for run in have:  # a method's seeds drawn as one: every seed's merges, as points
        ax.plot([m["edits"] for m in run.merges], [m["ms"] for m in run.merges],
                ls="none" if getattr(run, "members", None) else "-", marker="s", ms=4,
                color=run.colour, lw=1.2)
    _log_if_spread(ax, [m["ms"] for r in have for m in r.merges])
    _edits_axis(ax, have)
    ax.set_title("Merge (consolidation) latency")
    ax.set_xlabel("edits applied when it ran (count)")
    ax.set_ylabel("wall-clock per merge (ms)")
    _legend(fig, have)
    return Plot("merge-latency", "Merge latency",
                "Every consolidation a method performed, against the edits done when it ran.",
                _png(fig))


def query_latency_plot(runs) -> Plot | None:
    def q(run) -> dict:
        return ((run.metrics or {}).get("latency_ms") or {}).get("query") or {}
    have = [r for r in runs if q(r).get("p50_with_memory") is not None or q(r).get("p50_base") is not None]
    if not have:
        return None
    fig, (ax,) = _new(width=max(5.0, min(10.0, 1.2 * len(have) + 3)), height=3.8)
    for i, run in enumerate(have):
        for dx, key, style in ((-0.2, "p50_base", {"color": "white", "edgecolor": run.colour, "hatch": "//"}),
                               (0.2, "p50_with_memory", {"color": run.colour})):
            value = q(run).get(key)
            if value is None:
                continue
            ax.bar(i + dx, value, 0.38, **style)
            seeds = [q(m).get(key) for m in getattr(run, "members", ()) if q(m).get(key) is not None]
            if seeds:  # min..max over the seeds
                ax.errorbar(i + dx, value, [[value - min(seeds)], [max(seeds) - value]], color="#222",
                            capsize=3, lw=1)
    ax.set_xticks(range(len(have)), [r.label for r in have], rotation=20 if len(have) > 4 else 0)
    ax.set_title("Query latency, batch 1 (p50)")
    ax.set_ylabel("wall-clock per query (ms)")
    ax.set_xlabel("run")
    fig.legend(handles=[Patch(facecolor="white", edgecolor="#444", hatch="//",
                              label="base model (no memory)"),
                        Patch(color="#444", label="after the stream, with memory")],
               loc="outside lower center", ncols=2)
    return Plot("query-latency", "Query latency",
                "One forward pass on the same prompts, with and without the method's memory (p50 "
                "of single queries; the table's query overhead says whether the difference is "
                "more than noise)." + (" Methods with several seeds: the mean p50, bars from the "
                                       "lowest to the highest seed." if _seeded(have) else ""), _png(fig))


def _byte_unit(top: float) -> tuple[str, float]:
    for unit, size in (("GB", 1024 ** 3), ("MB", 1024 ** 2), ("KB", 1024)):
        if top >= size:
            return unit, float(size)
    return "bytes", 1.0


def memory_plot(runs) -> Plot | None:
    have = [r for r in runs if _series(r, lambda c: c.get("memory_bytes"))[0]]
    if not have:
        return None
    top = max(max(_series(r, lambda c: c.get("memory_bytes"))[1]) for r in have)
    unit, size = _byte_unit(top)
    fig, (ax,) = _new(width=8.0, height=3.8)
    for run in have:
        def series(r):
            xs, ys = _series(r, lambda c: c.get("memory_bytes"))
            return xs, [y / size for y in ys]
        ax.plot(*series(run), color=run.colour, lw=1.6, **MARKER["-"])
        _band(ax, run, series)
    _edits_axis(ax, have)
    ax.set_title("Memory held by the method")
    ax.set_xlabel("edits applied (count)")
    ax.set_ylabel(f"memory ({unit})")
    ax.set_ylim(bottom=0)
    _legend(fig, have)
    return Plot("memory", "Memory against the number of edits",
                "Bytes the method holds (its footprint) at every checkpoint." + BAND_NOTE * _seeded(have),
                _png(fig))


def routing_plot(runs) -> Plot | None:
    have = [r for r in runs if any(c.get("routing") for c in r.curves)]
    if not have:
        return None
    fig, (ax,) = _new(width=8.0, height=3.8)
    for run in have:
        for key, ls in (("accuracy", "-"), ("locality", ":")):
            def series(r, key=key):
                return _series(r, lambda c: (c.get("routing") or {}).get(key))
            ax.plot(*series(run), ls=ls, color=run.colour, lw=1.6, **MARKER["-"])
            _band(ax, run, series)
    _edits_axis(ax, have)
    _score_axes(ax, "Routing accuracy")
    ax.set_ylabel("share routed correctly (0 to 1)")
    _legend(fig, have, [("-", "edit and rephrase probes -> their memory"),
                        (":", "unrelated probes -> the main memory")])
    return Plot("routing", "Routing accuracy",
                "Methods that route (to a side memory): the share of edit and rephrase probes sent "
                "to the memory holding their edit (solid) and of unrelated (locality) probes sent to "
                "the main memory (dotted), from the probes' routed_ok column.", _png(fig))


def render_all(runs: Sequence[Any]) -> list[Plot]:
    """Every figure the runs have data for, in report order."""
    from .plots_health import health_plot  # it builds on this module's helpers
    with matplotlib.rc_context(RC):
        plots = [quality_plot(runs)]
        plots += [retention_matrix_plot(r) for r in runs]
        plots += [retention_age_plot(runs), conflict_plot(runs), edit_latency_plot(runs),
                  merge_latency_plot(runs), query_latency_plot(runs), memory_plot(runs),
                  routing_plot(runs), health_plot(runs)]
    out, seen = [], set()
    for p in plots:
        if p is not None:
            name, k = p.name, 2
            while name in seen:
                name, k = f"{p.name}-{k}", k + 1
            seen.add(name)
            out.append(p if name == p.name else Plot(name, p.title, p.caption, p.png))
    return out
