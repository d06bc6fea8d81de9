"""The end-of-run summary: a JSON document with stable keys (docs/metrics.md) and the table
printed in the terminal. Both are built from metrics recomputed from the store's rows."""

from __future__ import annotations

import json
from typing import Any, Sequence

from rich.console import Console
from rich.table import Table

from .metrics import compute_run_metrics
from .store import Store

SCHEMA = "lifelong.summary/1"
PROTOCOL = {
    "when": "final = probed after the whole stream (the WISE-paper protocol); after_edit = the "
            "edit's own prompt right after it; checkpoints = along the stream",
    "teacher_forced": "mean token accuracy of the target with the gold prefix fed in",
    "generated": "share of prompts whose greedy decoding reproduces the target tokens exactly",
    "locality": "agreement with the model before the stream (tokens / greedy output)",
}


def summarize(store: Store, run_ids: Sequence[str] | None = None) -> dict[str, Any]:
    """Summary of the given runs (default: all runs in the store)."""
    runs = [r for r in store.runs() if run_ids is None or r["run_id"] in run_ids]
    per_run = [compute_run_metrics(store, r["run_id"]) for r in runs]
    methods: dict[str, Any] = {}
    for m in per_run:
        methods.setdefault(m["label"], []).append(m)
    first = runs[0] if runs else {}
    return {
        "schema": SCHEMA, "db": str(store.path), "scenario": first.get("scenario"),
        "model": first.get("model"), "code_version": first.get("code_version"),
        "stream": json.loads(first["stream"]) if first.get("stream") else None,
        "protocol": PROTOCOL,
        "methods": {label: _merge_seeds(ms) for label, ms in methods.items()},
        "runs": per_run,
    }


def _merge_seeds(ms: list[dict]) -> dict:
    """One method's figures: the run itself for one seed, the mean over seeds otherwise."""
    if len(ms) == 1:
        return ms[0] | {"seeds": [ms[0]["seed"]]}
    out = _mean_tree(ms)
    out.update(seeds=[m["seed"] for m in ms], method=ms[0]["method"], label=ms[0]["label"])
    return out


def _mean_tree(items: list[Any]) -> Any:
    """Element-wise mean of numeric leaves of same-shaped dicts; other leaves from the first."""
    head = items[0]
    if isinstance(head, dict):
        return {k: _mean_tree([i.get(k) if isinstance(i, dict) else None for i in items]) for k in head}
    nums = [i for i in items if isinstance(i, (int, float)) and not isinstance(i, bool)]
    if nums and len(nums) == len(items):
        return sum(nums) / len(nums)
    return head


def _pair(m: dict | None, a: str = "teacher_forced", b: str = "generated") -> str:
    if not m or m.get(a) is None:
        return "-"
    return f"{m[a]:.2f}/{m[b]:.2f}" if m.get(b) is not None else f"{m[a]:.2f}"


def _num(v: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if v is None else fmt.format(v)


def quality_table(summary: dict) -> Table:
    """Final quality figures per run: teacher-forced/generated, after the whole stream."""
    t = Table(title=f"{summary.get('scenario')}: quality after the whole stream "
                    "(teacher-forced/generated)",
              caption="rel@edit = reliability right after each edit; "
                      "rel/gen/loc = reliability/generalization/locality (locality: agreement with "
                      "the pre-stream model); retention: final reliability of edit groups probed "
                      "earlier; conflict: newest value generated / a superseded value generated; "
                      "retract: share restored to pre-stream behaviour")
    for col in ("method", "seed", "edits", "rel@edit", "rel", "gen", "loc", "port", "retention",
                "forgetting", "conflict new/stale", "retract"):
        t.add_column(col, justify="left" if col == "method" else "right")
    for m in summary["runs"]:
        ret = m.get("retention") or {}
        conf, retr = m.get("conflict"), m.get("retraction")
        t.add_row(
            m["label"], str(m["seed"]), f"{m['edits']['applied']}/{m['edits']['total']}",
            _pair(m["reliability_after_edit"]),
            _pair(m["reliability"]), _pair(m["generalization"]), _pair(m["locality"]),
            _pair(m["portability"]), _pair(ret), _pair(ret, "forgetting_teacher_forced",
                                                       "forgetting_generated"),
            (f"{conf['latest']['generated']:.2f}/{conf['stale']['generated']:.2f}" if conf else "-"),
            ("unsupported" if retr and retr["unsupported"] == retr["requested"] and retr["requested"]
             else _pair((retr or {}).get("restored"))))
    return t


def cost_table(summary: dict) -> Table:
    """Speed and memory per run (wall-clock on this machine)."""
    t = Table(title="cost (milliseconds on this machine)")
    for col in ("method", "seed", "edit p50", "edit p95", "edit p99", "merge p50",
                "query p50 mem", "query p50 base", "memory", "edits/s"):
        t.add_column(col, justify="left" if col == "method" else "right")
    for m in summary["runs"]:
        lat = m["latency_ms"]
        edit, merge, q = lat.get("edit") or {}, lat.get("merge") or {}, lat.get("query") or {}
        t.add_row(m["label"], str(m["seed"]), _num(edit.get("p50")), _num(edit.get("p95")),
                  _num(edit.get("p99")), _num(merge.get("p50")),
                  _num(q.get("p50_with_memory"), "{:.2f}"), _num(q.get("p50_base"), "{:.2f}"),
                  _bytes(m.get("memory_bytes")), _num(m.get("edits_per_second")))
    return t


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def print_table(summary: dict, console: Console | None = None) -> None:
    """Both tables; wide enough not to truncate figures when stdout is not a terminal."""
    import sys
    console = console or Console(width=None if sys.stdout.isatty() else 160)
    console.print(quality_table(summary))
    console.print(cost_table(summary))
