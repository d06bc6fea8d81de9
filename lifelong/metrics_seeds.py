"""Figures over several seeds of one method: the mean and its spread, computed from the
per-run figures (which `metrics.run_metrics` computed from the rows). Pure functions.

Spread is the sample standard deviation (ddof = 1) over the seeds that have a value, with
that count `n`; one seed has no spread (`std` None). Shared by the JSON summary
(`summary._merge_seeds`), the comparison table (`report_table`) and the plots.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not (
        isinstance(v, float) and math.isnan(v))


def mean_std(values: Sequence[Any]) -> dict[str, Any] | None:
    """`{mean, std, n, min, max}` over the numbers among `values` (None and NaN are left
    out); None when there is none. `std` is the sample standard deviation, None for n = 1.
    Invariant: min <= mean <= max."""
    nums = [float(v) for v in values if _is_number(v)]
    if not nums:
        return None
    n, mean = len(nums), math.fsum(nums) / len(nums)
    mean = min(max(mean, min(nums)), max(nums))  # rounding must not leave [min, max]
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in nums) / (n - 1)) if n > 1 else None
    return {"mean": mean, "std": std, "n": n, "min": min(nums), "max": max(nums)}


def mean_tree(items: Sequence[Any]) -> tuple[Any, Any]:
    """Element-wise mean of same-shaped figure trees (one per seed) and its spread tree.

    Returns (mean, spread). Dicts recurse over the keys of every item; lists of one length
    recurse element-wise; numeric leaves become the mean over the seeds that have a number
    (spread leaf `{std, n}`), kept as they are (int stays int) when every seed agrees;
    other leaves (text, flags, lists of different lengths) are kept where every seed that
    has one agrees and are None where seeds disagree (spread leaf None): no seed speaks for
    the others. Invariant: the mean tree has the keys of the items."""
    present = [i for i in items if i is not None]
    if not present:
        return None, None
    head = present[0]
    if isinstance(head, dict):
        keys = list(dict.fromkeys(k for i in present if isinstance(i, dict) for k in i))
        pairs = {k: mean_tree([i.get(k) if isinstance(i, dict) else None for i in items])
                 for k in keys}
        return {k: m for k, (m, _) in pairs.items()}, {k: s for k, (_, s) in pairs.items()}
    if isinstance(head, list):
        if all(isinstance(i, list) and len(i) == len(head) for i in items):
            pairs = [mean_tree([i[j] for i in items]) for j in range(len(head))]
            return [m for m, _ in pairs], [s for _, s in pairs]
        return (head if all(i == head for i in present) else None), None
    if _is_number(head):
        stats = mean_std(items)
        if stats is None:
            return head, None
        nums = [v for v in items if _is_number(v)]
        value = head if all(v == head for v in nums) else stats["mean"]
        return value, {"std": stats["std"], "n": stats["n"]}
    return (head if all(i == head for i in present) else None), None
