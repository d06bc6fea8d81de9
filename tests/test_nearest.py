"""`methods/_common/nearest.py` and `sketch.py`: the batched exact k-nearest rows GRACE's
lookups use, the sketch's lower bounds on distances, and the nearest covering row found
through them."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lifelong.methods._common.keytable import KeyTable
from lifelong.methods._common.nearest import (
    nearest_covering,
    nearest_one,
    nearest_rows,
    squared_norms,
)
from lifelong.methods._common.sketch import Sketch


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


def covering_by_scan(keys, live, radii, q, k):
    """The lookup rule on a brute-force ranking: of the k nearest live rows, the first whose
    radius covers the query; -1 if none."""
    rows, dist = brute(keys, live, q, k)
    return next((r for r, d in zip(rows, dist) if r >= 0 and d <= radii[r]), -1)


def sketched(n, dim, seed, grid, dead, rank):
    """Keys far from the origin (the bounds' float32 cancellation at work), a few moved after
    the first sketch, live rows, radii that put some keys exactly at a radius (a radius is
    another key's distance), and queries: keys themselves, their neighbours and strangers."""
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(n, dim, generator=g) + 50.0
    if grid:
        keys = keys.round()
    live = torch.rand(n, generator=g) >= dead
    sketch = Sketch(rank=rank, min_rows=1)
    sketch.lower_bounds(keys, live, keys[:1])
    for row in torch.randint(0, n, (3,), generator=g).tolist():  # keys that move
        keys[row] += torch.randn(dim, generator=g).round() if grid else torch.randn(dim, generator=g)
        sketch.touch(row)
    some = keys[torch.arange(4) % n]
    queries = torch.cat([some, some + torch.randn(4, dim, generator=g).round() * 0.5,
                         torch.randn(4, dim, generator=g) + 50.0])
    other = torch.randint(0, n, (n,), generator=g)
    radii = (keys.double() - keys[other].double()).norm(dim=-1).numpy()
    radii = radii * (torch.rand(n, generator=g).double().numpy() < 0.5)
    return keys, live, sketch, queries, radii


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 40), dim=st.integers(9, 14), seed=st.integers(0, 10_000),
       grid=st.booleans(), dead=st.floats(0.0, 0.5), rank=st.integers(1, 4))
def test_sketch_bounds_never_exceed_the_float64_distance(n, dim, seed, grid, dead, rank):
    """The sketch's squared bound is at most the squared float64 distance for every live row
    (keys moved and touched included, rows appended past a basis rebuild), +inf for the
    others."""
    keys, live, sketch, queries, _ = sketched(n, dim, seed, grid, dead, rank)
    more = torch.cat([keys, keys[:n] + 0.25])  # doubles the rows: a new basis
    live = torch.cat([live, live])
    for ks in (keys, more):
        bounds = sketch.lower_bounds(ks, live[:len(ks)], queries)
        d2 = ((ks.double()[None] - queries.double()[:, None]).norm(dim=-1) ** 2).numpy()
        on = live[:len(ks)].numpy()
        assert (bounds[:, on] <= d2[:, on]).all()
        assert (bounds[:, ~on] == float("inf")).all()


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 40), dim=st.integers(9, 14), seed=st.integers(0, 10_000),
       grid=st.booleans(), dead=st.floats(0.0, 0.5), rank=st.integers(1, 4), k=st.integers(1, 6))
def test_nearest_covering_through_the_sketch_is_the_scan_rule(n, dim, seed, grid, dead, rank, k):
    """With the sketch's bounds, the nearest covering row among the k nearest is the
    brute-force answer (ties to the lower row, keys exactly at a radius covered), or None
    when more rows than the limit would need measuring."""
    keys, live, sketch, queries, radii = sketched(n, dim, seed, grid, dead, rank)
    bounds = sketch.lower_bounds(keys, live, queries)
    want = [covering_by_scan(keys, live, radii, q, k) for q in queries]
    entry, hit = nearest_covering(keys, radii, queries, k, bounds, limit=n)
    assert entry.tolist() == want and hit.tolist() == [w >= 0 for w in want]
    found = nearest_covering(keys, radii, queries, k, bounds, limit=1)
    assert found is None or found[0].tolist() == want


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 40), dim=st.integers(9, 14), seed=st.integers(0, 10_000),
       grid=st.booleans(), dead=st.floats(0.0, 0.5), rank=st.integers(1, 4),
       wide=st.booleans())
def test_sketch_within_keeps_every_row_in_reach(n, dim, seed, grid, dead, rank, wide):
    """`Sketch.within` returns ascending live rows, among them every live row whose float64
    distance is within its reach, rows exactly at it included: one such row (the bounds then
    leave few rows, measured one by one) or half the rows (`wide`: the bounds cannot narrow
    them, one product with every row)."""
    keys, live, sketch, queries, _ = sketched(n, dim, seed, grid, dead, rank)
    g = torch.Generator().manual_seed(seed)
    for q in queries:
        d = (keys.double() - q.double()).norm(dim=-1).numpy()
        edge = (torch.rand(n, generator=g) < 0.5).numpy() if wide else np.arange(n) == seed % n
        reach = np.where(edge, d, 0.0)
        rows = sketch.within(keys, live, q, reach)
        want = set(np.flatnonzero((d <= reach) & live.numpy()).tolist())
        assert list(rows) == sorted(rows) and want <= set(rows.tolist())
        assert live.numpy()[rows].all()


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 40), dim=st.integers(9, 14), seed=st.integers(0, 10_000),
       grid=st.booleans(), dead=st.floats(0.0, 1.0), rank=st.integers(1, 4))
def test_nearest_one_through_the_sketch_is_the_exact_nearest(n, dim, seed, grid, dead, rank):
    """With the sketch's bounds, each query's nearest live row and its float64 distance are
    the brute-force answer (ties to the lower row; -1 / inf when no row is live), or None
    when more rows than the limit would need measuring."""
    keys, live, sketch, queries, _ = sketched(n, dim, seed, grid, dead, rank)
    bounds = sketch.lower_bounds(keys, live, queries)
    want = [brute(keys, live, q, 1) for q in queries]
    rows, dist = nearest_one(keys, queries, bounds, limit=n)
    assert rows.tolist() == [r[0] for r, _ in want] and dist.tolist() == [d[0] for _, d in want]
    found = nearest_one(keys, queries, bounds, limit=1)
    assert found is None or found[0].tolist() == rows.tolist()


@settings(max_examples=40, deadline=None)
@given(ops=st.lists(st.tuples(st.booleans(), st.integers(0, 10_000)), min_size=1, max_size=40),
       sketch_from=st.sampled_from([1, 10**9]), grid=st.booleans())
def test_a_key_table_finds_the_exact_nearest_key_as_keys_come_and_go(ops, sketch_from, grid):
    """Adds and removals in any order, searched in a batch (through the sketch from the first
    key, or by scan) and one query at a time (FAISS's shortlist), and after a save and load:
    each query's nearest live key by float64 distance, ties to the lower id, and its distance
    (the router's rule reads both)."""
    from unittest import mock
    with mock.patch.object(KeyTable, "sketch_min_rows", sketch_from), \
            mock.patch.object(KeyTable, "sketch_rank", 2):
        table, keys = KeyTable(12), {}
        g = torch.Generator().manual_seed(len(ops))
        for add, r in ops:
            if add or not keys:
                key = torch.randn(1, 12, generator=g) + 20.0
                key = key.round() if grid else key
                keys[table.add(key.numpy(), label=r % 3, owner=f"e{r}")] = key[0]
            else:
                gone = sorted(keys)[r % len(keys)]
                table.remove([gone])
                del keys[gone]
            ids = sorted(keys)
            held = [keys[i] for i in ids]
            first = (held or [torch.full((12,), 20.0)])[0]
            step = torch.randn(12, generator=g)
            edge = first + 0.0499 * first.norm() * step / step.norm()  # just inside a reach
            queries = torch.cat([torch.stack(held or [torch.zeros(12)])[:3],
                                 (torch.randn(3, 12, generator=g) + 20.0).round(), edge[None]])
            if held:
                d = (torch.stack(held).double()[None] - queries.double()[:, None]).norm(dim=-1)
                want = [min(zip(row.tolist(), ids)) for row in d]
            else:
                want = [(float("inf"), -1)] * len(queries)
            for t in (table, KeyTable.from_state(table.to_state())):
                assert t.nearest(queries.numpy()) == want
                assert [t.nearest(q[None].numpy())[0] for q in queries] == want  # one at a time
                # within a reach, in a batch and one at a time: the same answer wherever the
                # nearest key lies within it
                alone = [t.nearest(q[None].numpy(), within=0.05)[0] for q in queries]
                for got in (t.nearest(queries.numpy(), within=0.05), alone):
                    for (d, i), one in zip(want, got):
                        assert one == (d, i) if i >= 0 and d <= 0.05 * t.norm[i] \
                            else one in ((d, i), (float("inf"), -1))
