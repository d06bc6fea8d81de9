"""lifelong.index.KeyIndex: add / remove / search / range / save-load round trips, both
regimes (exact flat and approximate HNSW with tombstones), and exact-vs-approximate recall."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lifelong.bench import bench_index, synthetic_keys
from lifelong.index import KeyIndex


def keys(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def brute(x: np.ndarray, ids: np.ndarray, q: np.ndarray, metric: str = "l2") -> np.ndarray:
    if metric == "l2":
        d = ((q[:, None, :] - x[None]) ** 2).sum(-1)
        return ids[np.argmin(d, axis=1)]
    return ids[np.argmax(q @ x.T, axis=1)]


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_exact_search_matches_brute_force(metric):
    x, q = keys(200), keys(30, seed=1)
    ids = np.arange(200, dtype=np.int64) * 7 + 3
    index = KeyIndex(16, metric)
    index.add(x, ids)
    assert len(index) == 200 and not index.approximate
    dist, got = index.search(q, 3)
    assert dist.shape == got.shape == (30, 3)
    assert np.array_equal(got[:, 0], brute(x, ids, q, metric))
    if metric == "l2":  # squared distances, nearest first
        assert np.allclose(dist[:, 0], ((q - x[(got[:, 0] - 3) // 7]) ** 2).sum(-1), rtol=1e-4)
        assert np.all(np.diff(dist, axis=1) >= 0)


def test_remove_get_contains_and_missing_neighbours():
    x = keys(10)
    index = KeyIndex(16)
    index.add(x, np.arange(10))
    assert index.remove([3, 4, 99]) == 2 and len(index) == 8
    assert 3 not in index and 5 in index
    assert np.array_equal(index.get([5]), x[5:6])
    with pytest.raises(KeyError):
        index.get([3])
    _, got = index.search(x[3:5], 1)
    assert not np.isin(got, [3, 4]).any()
    dist, got = index.search(x[:1], 20)  # only 8 keys: the rest are -1 at infinite distance
    assert (got[0, 8:] == -1).all() and np.isinf(dist[0, 8:]).all()
    index.add(x[3:4], [3])  # a removed id may come back
    assert index.search(x[3:4], 1)[1][0, 0] == 3
    with pytest.raises(ValueError, match="already present"):
        index.add(x[:1], [0])
    with pytest.raises(ValueError):
        index.add(x[:2, :8], [50, 51])


def test_range_search_returns_everything_within_the_radius_nearest_first():
    x = keys(100)
    index = KeyIndex(16)
    index.add(x, np.arange(100))
    q = x[:2] + 0.01
    for (dist, got), qi in zip(index.range(q, 20.0), q):
        expected = np.flatnonzero(((x - qi) ** 2).sum(-1) < 20.0)
        assert sorted(got.tolist()) == expected.tolist()
        assert np.all(np.diff(dist) >= 0)


@pytest.mark.parametrize("threshold", [0, 50])
def test_byte_round_trip_through_a_state_dict(threshold):
    x = keys(120)
    index = KeyIndex(16, approximate_above=threshold)
    index.add(x, np.arange(120))
    index.remove([5, 6, 7])
    assert index.approximate == bool(threshold)
    buf = io.BytesIO()
    torch.save({"index": torch.from_numpy(index.to_bytes())}, buf)
    state = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    again = KeyIndex.from_bytes(state["index"].numpy())
    assert len(again) == len(index) == 117 and again.approximate == index.approximate
    q = keys(40, seed=3)
    for a, b in zip(index.search(q, 5), again.search(q, 5)):
        assert np.array_equal(a, b)
    assert 6 not in again and not np.isin(again.search(x[5:8], 3)[1], [5, 6, 7]).any()


def test_file_round_trip(tmp_path):
    index = KeyIndex(16, "ip")
    index.add(keys(10), np.arange(10))
    index.save(tmp_path / "k.faiss")
    again = KeyIndex.load(tmp_path / "k.faiss")
    assert again.metric == "ip" and np.array_equal(again.search(keys(3), 2)[1], index.search(keys(3), 2)[1])


def test_switches_to_hnsw_past_the_threshold_and_compacts_tombstones():
    x = keys(300)
    index = KeyIndex(16, approximate_above=100, compact_ratio=0.25)
    index.add(x[:100], np.arange(100))
    assert not index.approximate
    index.add(x[100:], np.arange(100, 300))
    assert index.approximate and len(index) == 300
    index.remove(range(50))  # tombstones, filtered from searches
    assert len(index) == 250
    assert not np.isin(index.search(x[:50], 3)[1], np.arange(50)).any()
    index.remove(range(50, 120))  # past the ratio: rebuilt without tombstones
    assert len(index) == 180 and not index._dead
    assert index.search(x[200:201], 1)[1][0, 0] == 200
    index.add(x[10:11], [10])  # re-adding a tombstoned id
    assert 10 in index and index.search(x[10:11], 1)[1][0, 0] == 10


def test_approximate_recall_against_exact_on_clustered_keys():
    x = synthetic_keys(3000, 32, seed=0)
    q = x[:200] + 0.01 * np.random.default_rng(1).standard_normal((200, 32)).astype(np.float32)
    flat, hnsw = KeyIndex(32, approximate_above=0), KeyIndex(32, approximate_above=1)
    flat.add(x, np.arange(3000))
    hnsw.add(x, np.arange(3000))
    assert hnsw.approximate
    exact = flat.search(q, 1)[1][:, 0]
    approx = hnsw.search(q, 1)[1][:, 0]
    assert np.mean(exact == approx) >= 0.95
    assert np.array_equal(exact, brute(x, np.arange(3000), q))


def test_bench_index_runs_small():
    out = bench_index([500], [16], queries=40, echo=lambda *_: None)
    assert {r["index"] for r in out["rows"]} == {"flat", "hnsw"}
    assert all(r["recall_at_1"] >= 0.9 for r in out["rows"])
    skipped = bench_index([10**6], [4096], max_mb=1, echo=lambda *_: None)["skipped"]
    assert skipped and skipped[0]["dim"] == 4096


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["add", "remove"]), st.integers(0, 30)), max_size=60),
       st.sampled_from([0, 8]))
def test_model_based_add_remove(ops, threshold):
    """Against a dict model: membership, size and exact nearest neighbours agree, whichever
    regime the index is in."""
    pool = keys(31, dim=8, seed=4)
    index = KeyIndex(8, approximate_above=threshold, compact_ratio=0.5)
    live: dict[int, np.ndarray] = {}
    for op, i in ops:
        if op == "add" and i not in live:
            index.add(pool[i], [i])
            live[i] = pool[i]
        elif op == "remove":
            assert index.remove([i]) == (1 if live.pop(i, None) is not None else 0)
    assert len(index) == len(live) and sorted(index.ids().tolist()) == sorted(live)
    if live:
        ids = np.array(sorted(live))
        got = index.search(pool, 1)[1][:, 0]
        if not index.approximate:
            assert np.array_equal(got, brute(pool[ids], ids, pool))
        assert np.isin(got, ids).all()
        for i in live:  # a stored key finds itself
            assert index.search(pool[i], 1)[1][0, 0] == i
