"""The end-of-run summary: a JSON document with stable keys (docs/metrics.md), built from
metrics recomputed from the store's rows. (The terminal tables are `report.print_comparison`.)"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from .metrics import compute_run_metrics
from .metrics_seeds import mean_tree
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
    """One method's figures: the run itself for one seed (`spread` None); for several, the
    mean over the complete seeds (all seeds when none is complete) with `spread`, a tree of
    the same shape whose numeric leaves are `{std, n}` (sample std over the seeds that have
    the figure; `metrics_seeds.mean_tree`). `seeds`: the seeds averaged; `seeds_left_out`:
    the incomplete ones when some were; `run_ids`: the runs averaged (`run_id` is None: no seed
    speaks for the others). Invariant: the keys of a run's figures stay."""
    if len(ms) == 1:
        return ms[0] | {"seeds": [ms[0]["seed"]], "n_seeds": 1, "run_ids": [ms[0]["run_id"]], "spread": None}
    used = [m for m in ms if m.get("complete")] or ms
    out, spread = mean_tree(used)
    out.update(seeds=[m["seed"] for m in used], n_seeds=len(used), method=ms[0]["method"],
               label=ms[0]["label"], run_ids=[m["run_id"] for m in used], spread=spread)
    if len(used) < len(ms):
        out["seeds_left_out"] = [m["seed"] for m in ms if m not in used]
    return out
