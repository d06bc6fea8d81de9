"""A FAISS index of edit keys, each labelled with the memory that holds its edit and the
edit's id (WISE's router; any method that routes by nearest edit key).

Invariant: the index and the three maps hold the same ids; ids are never reused (`next_id`
only grows), so a saved table loads to the same search results.

Search (`nearest`) is exact, in float64, ties to the lower id, and reads a copy of the keys
held here by id (row = id; a removed id's row stays, dead). Below `MIN_ROWS` keys a float32
scan shortlists and float64 ranks: for one query FAISS's flat scan, for a batch one float32
product with every key (`nearest.nearest_rows`: a batch costs one product, where FAISS's flat
index scans once per query). From `MIN_ROWS` keys on, one query or a batch, the distance
sketch's bounds (`sketch.Sketch`) leave a handful of keys to measure (`nearest.nearest_one`),
as GRACE's lookups do, and with `within` answer a query no key can reach unsearched. The
FAISS index stays the table's saved form and its key store for `get`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from ...index import KeyIndex
from .nearest import SHORTLIST_MARGIN, nearest_one, nearest_rows, rank_shortlist
from .sketch import MIN_ROWS, RANK, Sketch


class KeyTable:
    #: the search sketch's basis width and the table size it starts at (class attributes so
    #: that tests can run the sketch on small tables)
    sketch_rank, sketch_min_rows = RANK, MIN_ROWS

    def __init__(self, dim: int, metric: str = "l2"):
        if metric != "l2":
            raise ValueError(f"a key table searches by Euclidean distance, got metric {metric!r}")
        self.index = KeyIndex(dim, metric)
        self.label: dict[int, int] = {}   # id -> memory
        self.owner: dict[int, str] = {}   # id -> edit id
        self.norm: dict[int, float] = {}  # id -> norm of the key
        self.next_id = 0
        self._searchable()

    def _searchable(self) -> None:
        """The search copy of the keys, empty: rows by id, live flags, squared norms (+inf:
        dead, so `nearest_rows` never returns the row) and the sketch."""
        dim = self.index.dim
        self._keys = torch.zeros((0, dim))
        self._live = torch.zeros(0, dtype=torch.bool)
        self._sq = torch.zeros(0)
        self._length = np.zeros(0)  # float64 |key| by row, as `norm` holds it
        self._sketch = Sketch(self.sketch_rank, self.sketch_min_rows)
        self._reach: tuple[float, np.ndarray] | None = None  # `_reach2`'s cache

    def _put(self, ids: list[int], keys: np.ndarray) -> None:
        """Rows `ids` of the search copy hold `keys` and are live (buffers grow by a quarter:
        amortised O(1) appends, at most a quarter of the copy unused)."""
        need = max(ids) + 1
        if need > self._keys.shape[0]:
            grow = max(need, self._keys.shape[0] * 5 // 4, 16) - self._keys.shape[0]
            self._keys = torch.cat([self._keys, torch.zeros((grow, self._keys.shape[1]))])
            self._live = torch.cat([self._live, torch.zeros(grow, dtype=torch.bool)])
            self._sq = torch.cat([self._sq, torch.full((grow,), float("inf"))])
            self._length = np.concatenate([self._length, np.zeros(grow)])
        self._reach = None
        rows = torch.tensor(ids)
        self._keys[rows] = torch.from_numpy(np.ascontiguousarray(keys, dtype=np.float32))
        self._live[rows] = True
        self._sq[rows] = self._keys[rows].pow(2).sum(1)
        self._length[ids] = [self.norm.get(i, 0.0) for i in ids]

    def __len__(self) -> int:
        return len(self.index)

    def add(self, key: np.ndarray, label: int, owner: str) -> int:
        """Add one key (shape (1, dim)); returns its id."""
        i = self.next_id
        self.index.add(key, [i])
        self.label[i], self.owner[i] = label, owner
        self.norm[i] = float(np.linalg.norm(key))
        self._put([i], np.asarray(key, dtype=np.float32).reshape(1, -1))
        self.next_id += 1
        return i

    def remove(self, ids: Iterable[int]) -> None:
        ids = list(ids)
        self.index.remove(ids)
        if ids:
            rows = torch.tensor(ids)
            self._live[rows] = False
            self._sq[rows] = float("inf")
        for i in ids:
            self.label.pop(i), self.owner.pop(i), self.norm.pop(i)

    def owned_by(self, edits: set[str]) -> list[int]:
        """Ids of the keys of `edits`, in insertion order."""
        return [i for i, e in self.owner.items() if e in edits]

    def labelled(self, label: int) -> list[int]:
        """Ids of the keys labelled `label`, in insertion order."""
        return [i for i, m in self.label.items() if m == label]

    def nearest(self, queries: np.ndarray, within: float | None = None) -> list[tuple[float, int]]:
        """(distance, id) of each query's nearest key, by exact float64 Euclidean distance,
        ties to the lower id ((inf, -1) when there is none; module docstring). With `within`,
        a query that no key can lie within `within` x that key's norm of (by the sketch's
        bounds, from `MIN_ROWS` keys on) gets (inf, -1) unsearched: for callers whose rule uses the nearest
        key only when it lies within that reach (the router), the answer is the same."""
        q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).reshape(-1, self.index.dim)
        rows, dist = np.full(q.shape[0], -1, dtype=np.int64), np.full(q.shape[0], np.inf)
        if len(self) and q.shape[0] == 1 and self.next_id < self._sketch.min_rows:
            rows, dist = self._one(q)
        elif len(self):
            n = self.next_id
            keys, live = self._keys[:n], self._live[:n]
            bounds = self._sketch.lower_bounds(keys, live, q)
            todo = np.arange(q.shape[0])
            if bounds is not None and within is not None:
                todo = np.flatnonzero((bounds <= self._reach2(within)[None, :]).any(1))
                bounds = bounds[todo]
            if len(todo):
                found = None if bounds is None else nearest_one(keys, q[todo], bounds,
                                                                limit=max(32, n // 8))
                if found is None:
                    r, d = nearest_rows(keys, self._sq[:n], q[todo], 1)
                    found = r[:, 0].numpy(), d[:, 0].numpy()
                rows[todo], dist[todo] = found
        return [(float(d), int(i)) for i, d in zip(rows, dist)]

    def _reach2(self, within: float) -> np.ndarray:
        """(next_id,) float32 (`within` x each key's norm)^2, rounded up, so that comparing a
        float32 bound with it never rules out a row the float64 reach admits; cached until a
        key is added or `within` changes (a forward pass per query asks for it)."""
        if self._reach is None or self._reach[0] != within:
            r2 = ((within * self._length[:self.next_id]) ** 2).astype(np.float32)
            self._reach = (within, np.nextafter(r2, np.float32(np.inf)))
        return self._reach[1]

    def _one(self, q: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """One query below `MIN_ROWS` keys: FAISS's flat scan shortlists as `nearest_rows`
        does (the float32 nearest `SHORTLIST_MARGIN` + 1), ranked by float64 distance, ties to
        the lower id. (Inside a forward the sketch path costs the same at 1000-2000 keys and
        less from 4000 on: 1.0-1.2 against 1.7-2.2 ms per serving call at 10,000; README.)"""
        _, cand = self.index.search(q.numpy(), SHORTLIST_MARGIN + 1)
        short = torch.from_numpy(np.sort(cand[0][cand[0] >= 0]))[None]
        rows, dist = rank_shortlist(self._keys, self._sq, short, q, 1)
        return rows[:, 0].numpy(), dist[:, 0].numpy()

    def nbytes(self) -> int:
        """Bytes held: the FAISS index, the search copy of the keys and the sketch."""
        return self.index.nbytes() + self._keys.numel() * 4 + self._live.numel() \
            + self._sq.numel() * 4 + self._length.nbytes + self._sketch.nbytes()

    def to_state(self) -> dict[str, Any]:
        return {"index": torch.from_numpy(self.index.to_bytes().copy()),
                "key_memory": dict(self.label), "key_edit": dict(self.owner),
                "key_norm": dict(self.norm), "next_key": self.next_id}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> KeyTable:
        table = cls.__new__(cls)
        table.index = KeyIndex.from_bytes(state["index"].numpy())
        table.label = {int(k): int(v) for k, v in state["key_memory"].items()}
        table.owner = {int(k): v for k, v in state["key_edit"].items()}
        table.norm = {int(k): float(v) for k, v in state["key_norm"].items()}
        table.next_id = state["next_key"]
        table._searchable()
        ids = sorted(table.label)
        if ids:
            table._put(ids, table.index.get(ids))
        return table
