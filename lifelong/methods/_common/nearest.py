"""Exact k-nearest rows of a key matrix for a batch of queries, in one matrix product.

Why not the FAISS flat index: FAISS scans the keys once per query below its BLAS threshold
(128,000 queries in the faiss-cpu 1.15 wheel), so a batch of 32 lookups costs 32 scans;
here a batch costs one product (measured in `lifelong bench grace`). The ranking is exact
Euclidean distance in float64: the float32 product only shortlists ``k + SHORTLIST_MARGIN``
rows, and a row could be lost only if float32 rounding moved it past that many others.
"""

from __future__ import annotations

import numpy as np
import torch

#: extra rows the float32 shortlist keeps beyond k before the float64 ranking
SHORTLIST_MARGIN = 8


def squared_norms(keys: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
    """(n,) float32 squared norms of `keys` (n, d), +inf for rows that are not `live` (so no
    search returns them). Cache it while the keys do not change."""
    norms = keys.float().pow(2).sum(1)
    return torch.where(live, norms, torch.full_like(norms, float("inf")))


def nearest_rows(keys: torch.Tensor, norms: torch.Tensor, queries: torch.Tensor,
                 k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The `k` live rows nearest each query, nearest first, ties to the lower row:
    ``(rows, distances)`` of shape (B, k), rows -1 and distances +inf where fewer than k
    rows are live. Distances are exact float64 Euclidean (not squared). (Should more than
    `SHORTLIST_MARGIN` rows tie at the k-th distance, which of them are kept is the float32
    shortlist's choice, not necessarily the lowest rows.)"""
    n, b = keys.shape[0], queries.shape[0]
    m = min(n, k + SHORTLIST_MARGIN)
    q = queries.float()
    # |q - k|^2 up to |q|^2, which is the same for every row of a query
    score = norms.unsqueeze(0) - 2.0 * (q @ keys.float().T)
    short = score.topk(m, dim=1, largest=False).indices.sort(dim=1).values  # by row: stable
    rows, dist = rank_shortlist(keys, norms, short, queries, k)
    if k > m:  # fewer rows than k at all
        pad = k - m
        rows = torch.cat([rows, torch.full((b, pad), -1, dtype=torch.long, device=rows.device)], 1)
        dist = torch.cat([dist, torch.full((b, pad), float("inf"), dtype=torch.float64,
                                           device=dist.device)], 1)
    return rows, dist


def rank_shortlist(keys: torch.Tensor, norms: torch.Tensor, short: torch.Tensor,
                   queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The `k` nearest of each query's shortlisted rows (`short`, (B, m), ascending by row) by
    exact float64 distance, ties to the lower row; rows whose norm is +inf (dead) rank last,
    as -1 with distance +inf."""
    dist = (keys[short].double() - queries.double().unsqueeze(1)).norm(dim=-1)
    dist = torch.where(torch.isfinite(norms[short]), dist, torch.full_like(dist, float("inf")))
    order = dist.argsort(dim=1, stable=True)[:, :k]
    rows, dist = short.gather(1, order), dist.gather(1, order)
    return torch.where(torch.isfinite(dist), rows, torch.full_like(rows, -1)), dist


def nearest_covering(keys: torch.Tensor, radii: np.ndarray, queries: torch.Tensor, k: int,
                     bounds: np.ndarray, limit: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(row, hit) per query: of the `k` rows nearest to it (by exact float64 distance, ties to
    the lower row), the nearest whose radius covers it (``distance <= radii[row]``), row -1
    where none does: the answer `nearest_rows` followed by that rule gives, computed without
    a full scan from `bounds` ((B, n) float32 squared lower bounds on the distances,
    `sketch.Sketch`, whose margin covers their float32 rounding): exact distances only for
    the rows the bounds leave within reach. None when some query leaves more than `limit`
    rows to measure (then scan).

    Why it is exact: let j be the nearest covering row. A row whose bound exceeds its radius
    covers nothing, so j is among the rows measured first; j is the answer iff fewer than k
    rows come before it in (distance, row) order, and every such row has its bound at most
    j's distance, so the second measurement counts them all."""
    # the bounds' margin (>= 3e-6 of the squared distance) exceeds float32 rounding of r^2: a
    # row exactly at its radius stays in
    near = bounds <= (radii * radii).astype(np.float32)[None, :]
    if int(np.count_nonzero(near, axis=1).max(initial=0)) > limit:
        return None
    entry = np.full(queries.shape[0], -1, dtype=np.int64)
    q64 = queries.double()
    qi, rows = np.nonzero(near)  # by query, then row
    dist = _distances(keys, rows, q64, qi)
    covered = dist <= radii[rows]
    qi, rows, dist = qi[covered], rows[covered], dist[covered]
    if len(qi):
        first = np.lexsort((rows, dist, qi))  # per query: nearest, then lower row
        first = first[np.r_[True, qi[first][1:] != qi[first][:-1]]]
        qj, j, dj = qi[first], rows[first], dist[first]
        before = bounds[qj] <= (dj * dj).astype(np.float32)[:, None]
        count = np.count_nonzero(before, axis=1)  # j among them: its rank is below count
        if int(count.max()) > limit:
            return None
        won = count <= k
        if not won.all():  # measure who comes before j where k or more rows might
            bi, brows = np.nonzero(before & ~won[:, None])
            d = _distances(keys, brows, q64, qj[bi])
            ahead = (d < dj[bi]) | ((d == dj[bi]) & (brows < j[bi]))
            won |= np.bincount(bi, weights=ahead, minlength=len(qj)) < k
        entry[qj[won]] = j[won]
    entry = torch.from_numpy(entry)
    return entry, entry >= 0


def nearest_one(keys: torch.Tensor, queries: torch.Tensor, bounds: np.ndarray,
                limit: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(row, distance) of each query's nearest live row, by exact float64 distance, ties to the
    lower row (-1 and +inf where no row is live): the answer `nearest_rows(..., k=1)` gives,
    computed from `bounds` ((B, n) float32 squared lower bounds, +inf for dead rows;
    `sketch.Sketch`) without a full scan. None when some query leaves more than `limit` rows
    to measure (then scan).

    Why it is exact: the least of a few measured distances, `best`, bounds the nearest
    distance from above; a row at most `best` away has its bound at most best^2, so measuring
    every such row finds the nearest, and every row tied with it."""
    b, n = bounds.shape
    m = min(n, 8)
    first = np.argpartition(bounds, m - 1, axis=1)[:, :m]  # the m smallest bounds per query
    q64 = queries.double()
    d = _distances(keys, first.ravel(), q64, np.repeat(np.arange(b), m)).reshape(b, m)
    best = np.where(np.isfinite(np.take_along_axis(bounds, first, 1)), d, np.inf).min(1)
    near = np.isfinite(bounds) & (bounds.astype(np.float64) <= (best * best)[:, None])
    if int(np.count_nonzero(near, axis=1).max(initial=0)) > limit:
        return None
    rows, dist = np.full(b, -1, dtype=np.int64), np.full(b, np.inf)
    qi, cand = np.nonzero(near)  # by query, then row
    if len(qi):
        dc = _distances(keys, cand, q64, qi)
        order = np.lexsort((cand, dc, qi))  # per query: nearest, then lower row
        order = order[np.r_[True, qi[order][1:] != qi[order][:-1]]]
        rows[qi[order]], dist[qi[order]] = cand[order], dc[order]
    return rows, dist


def _distances(keys: torch.Tensor, rows: np.ndarray, queries: torch.Tensor,
               which: np.ndarray) -> np.ndarray:
    """Exact float64 distances from `queries[which[i]]` to `keys[rows[i]]`, the expression
    `nearest_rows` and GRACE's placement use (so a key exactly at a radius stays in)."""
    picked = keys[torch.from_numpy(rows)].double()
    return (picked - queries[torch.from_numpy(which)]).norm(dim=-1).numpy()
