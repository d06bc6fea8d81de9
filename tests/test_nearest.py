"""`methods/_common/nearest.py`: the batched exact k-nearest rows GRACE's lookups use."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lifelong.methods._common.nearest import nearest_rows, squared_norms


def brute(keys, live, q, k):
    """Rows by (float64 distance, row), live rows only, padded with -1 / inf."""
    d = (keys.double() - q.double()).norm(dim=-1)
    order = sorted((float(d[r]), r) for r in range(keys.shape[0]) if live[r])[:k]
    rows = [r for _, r in order] + [-1] * (k - len(order))
    dist = [x for x, _ in order] + [float("inf")] * (k - len(order))
    return rows, dist


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 40), k=st.integers(1, 12), seed=st.integers(0, 10_000),
       dead=st.floats(0.0, 1.0), grid=st.booleans())
def test_nearest_rows_is_the_exact_float64_ranking(n, k, seed, dead, grid):
    """Whatever the keys (on a coarse grid: many exact ties), the live share and k: the
    rows and distances of a brute-force float64 ranking with ties to the lower row."""
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(n, 6, generator=g)
    queries = torch.randn(5, 6, generator=g)
    if grid:  # ties: keys and queries on a grid of step 1
        keys, queries = keys.round(), queries.round()
    live = torch.rand(n, generator=g) >= dead
    rows, dist = nearest_rows(keys, squared_norms(keys, live), queries, k)
    assert rows.shape == dist.shape == (5, k)
    for i in range(5):
        want_rows, want_dist = brute(keys, live, queries[i], k)
        assert rows[i].tolist() == want_rows
        assert dist[i].tolist() == want_dist
