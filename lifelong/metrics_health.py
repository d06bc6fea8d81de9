"""Model health figures: pure functions over the checkpoint rows (`lifelong.health` measures,
the runtime records `health_ppl`, `health_ppl_base`, `health_source` and `weight_change` in
every checkpoint row).

- `ppl_ratio`: perplexity of the held-out texts at a checkpoint over the pre-stream
  model's (1.0: unchanged; the collapse detector: sequential editing that breaks the model
  drives it up long before the edits themselves fail);
- `weight_delta_max`: the largest relative change |W - W0| / |W0| over the weights the method
  changed, and which weight it was.

Rows of stores made before health was recorded have none of these columns: every figure is
then None.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any


def _changes(c: dict) -> dict[str, dict]:
    text = c.get("weight_change")
    return json.loads(text) if isinstance(text, str) and text else {}


def health_point(c: dict) -> dict[str, Any] | None:
    """One checkpoint's health: {ppl, ppl_base, ppl_ratio, weight_delta_max, weight} or None
    when the checkpoint recorded none."""
    ppl, base = c.get("health_ppl"), c.get("health_ppl_base")
    changes = _changes(c)
    if ppl is None and c.get("weight_change") is None:
        return None
    top = max(changes.items(), key=lambda kv: kv[1]["delta"], default=(None, None))
    return {"ppl": ppl, "ppl_base": base,
            "ppl_ratio": (ppl / base) if ppl is not None and base else None,
            "weight_delta_max": top[1]["delta"] if top[1] else 0.0 if c.get("weight_change") else None,
            "weight": top[0], "weights_changed": len(changes)}


def health(checkpoints: Sequence[dict]) -> dict[str, Any] | None:
    """The run's health: the final checkpoint's figures (for a chunked run, the worst chunk's
    end) plus the worst perplexity ratio seen at any checkpoint, and what the texts were.
    None when no checkpoint recorded health."""
    ordered = sorted(checkpoints, key=lambda c: c["checkpoint"])
    points = [(c, health_point(c)) for c in ordered]
    points = [(c, p) for c, p in points if p is not None]
    if not points:
        return None
    chunks = [(c, p) for c, p in points if c["when"] == "chunk"]
    if chunks:
        final = max(chunks, key=lambda cp: cp[1]["ppl_ratio"] or 0.0)[1]
    else:
        finals = [p for c, p in points if c["when"] == "final"]
        final = finals[-1] if finals else points[-1][1]
    ratios = [p["ppl_ratio"] for _, p in points if p["ppl_ratio"] is not None]
    return {**final, "ppl_ratio_max": max(ratios) if ratios else None,
            "source": points[-1][0].get("health_source"),
            "when": "chunks (worst)" if chunks else "final"}


def leaked(checkpoints: Sequence[dict]) -> int | None:
    """Generalization probes dropped at the last checkpoint because an edit of the same fact
    was made with that prompt (None for stores that did not count them)."""
    ordered = sorted(checkpoints, key=lambda c: c["checkpoint"])
    vals = [c.get("leaked") for c in ordered if c.get("leaked") is not None]
    return int(vals[-1]) if vals else None
