"""Exact k-nearest rows of a key matrix for a batch of queries, in one matrix product.

Why not the FAISS flat index: FAISS scans the keys once per query below its BLAS threshold
(128,000 queries in the faiss-cpu 1.15 wheel), so a batch of 32 lookups costs 32 scans;
here a batch costs one product (measured in `lifelong bench grace`). The ranking is exact
Euclidean distance in float64: the float32 product only shortlists ``k + SHORTLIST_MARGIN``
rows, and a row could be lost only if float32 rounding moved it past that many others.
"""

from __future__ import annotations

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
    dist = (keys[short].double() - queries.double().unsqueeze(1)).norm(dim=-1)
    dist = torch.where(torch.isfinite(norms[short]), dist, torch.full_like(dist, float("inf")))
    order = dist.argsort(dim=1, stable=True)[:, :k]
    rows, dist = short.gather(1, order), dist.gather(1, order)
    rows = torch.where(torch.isfinite(dist), rows, torch.full_like(rows, -1))
    if k > m:  # fewer rows than k at all
        pad = k - m
        rows = torch.cat([rows, torch.full((b, pad), -1, dtype=torch.long)], 1)
        dist = torch.cat([dist, torch.full((b, pad), float("inf"), dtype=torch.float64)], 1)
    return rows, dist
