"""Query latency with and without the memory, measured side by side.

Timing the base model before the run and the edited one after it, minutes apart, measures
the machine's load as much as the memory (`none`, which adds nothing, came out at 5.90x and
0.38x). Here both are timed at the end of the run, in alternation over the same prompts for
several rounds: each prompt runs on the edited model and on an unedited copy of the base
model back to back, the order flipping from one prompt to the next so neither model always
runs second (on warmer caches). Rows: op "query" (edited) and "query_base" (unedited) with
the same keys, `b1:{round}:{i}` (prompt i alone) and `b{n}:{round}` (all n as one batch), so a
ratio can be taken per round and prompt.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .model import LM
from .scoring import encode_pairs, forward_logits
from .stream import Edit, Event


def timing_pairs(events: Sequence[Event], k: int) -> tuple[list[str], list[str]]:
    """The first `k` edits' prompts and targets (a fixed placeholder for a stream without)."""
    edits = [e for e in events if isinstance(e, Edit)][:k]
    return [e.prompt for e in edits] or ["hello"], [e.target for e in edits] or ["world"]


def _time(lm: LM, batch) -> float:
    with lm.stopwatch() as clock:
        forward_logits(lm, *batch)
    return clock.ms


def time_queries(edited: LM, base: LM, prompts: list[str], targets: list[str],
                 rounds: int, run_id: str) -> list[dict]:
    """Timing rows (see the module docstring). Invariant: every key appears exactly once with
    op "query" and once with op "query_base"."""
    models = {"query": edited, "query_base": base}
    rows: list[dict] = []
    with torch.no_grad():
        for lm in models.values():  # warm-up: first calls allocate and pick kernels
            for _ in range(3):
                forward_logits(lm, *encode_pairs(lm, prompts[:1], targets[:1])[:3])
        jobs = [(f"b1:{{r}}:{i}", [p], [t]) for i, (p, t) in enumerate(zip(prompts, targets))]
        jobs.append((f"b{len(prompts)}:{{r}}", prompts, targets))
        flip = 0
        for r in range(rounds):
            for key, ps, ts in jobs:
                order = ("query", "query_base") if flip % 2 == 0 else ("query_base", "query")
                flip += 1
                for op in order:
                    lm = models[op]
                    batch = encode_pairs(lm, ps, ts)[:3]
                    rows.append({"run_id": run_id, "op": op, "key": key.format(r=r),
                                 "ms": _time(lm, batch), "batch": len(ps)})
    return rows
