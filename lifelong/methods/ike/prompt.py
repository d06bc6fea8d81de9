"""How IKE writes demonstrations before a query: pure functions of token ids.

A demonstration is one stored edit written as `_common.conditioning.edit_prefix` writes it
(its prompt's tokens, its target's tokens, the separator's tokens). Given the stored edits
nearest to a query, nearest first, `fitting` says how many are written and `written` what
precedes the row:

* the nearest is taken first and further ones are added, in order of distance, while the
  demonstrations together with the row (every real token of it in this forward: prompt and
  continuation) fit the model's context; the first one that does not fit ends the list, so
  what is written is always the j nearest for some j, the farthest dropped first. The row
  is never cut, and no demonstration is ever cut in part;
* they are written farthest first, so the nearest demonstration is the last text before the
  query (as we read the paper, it orders its demonstrations by similarity, the most similar
  next to the input).

Invariant: ``len(written(p[:fitting(p, n, limit)])) + n <= limit`` whenever `limit` is set.
"""

from __future__ import annotations

from collections.abc import Sequence


def fitting(prefixes: Sequence[Sequence[int]], row_len: int, limit: int | None) -> int:
    """How many of `prefixes` (nearest first) are written before a row of `row_len` tokens
    in a context of `limit` positions (None: no limit, all of them)."""
    if limit is None:
        return len(prefixes)
    used, kept = row_len, 0
    for p in prefixes:
        if used + len(p) > limit:
            break
        used += len(p)
        kept += 1
    return kept


def written(prefixes: Sequence[Sequence[int]]) -> list[int]:
    """The tokens before the query: `prefixes` (nearest first) written farthest first, the
    nearest last."""
    return [t for p in reversed(prefixes) for t in p]
