"""The end-of-run summary: a JSON document with stable keys (docs/metrics.md), built from
metrics recomputed from the store's rows. (The terminal tables are `report.print_comparison`.)"""

from __future__ import annotations

import json
from typing import Any, Sequence

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
