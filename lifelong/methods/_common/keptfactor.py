"""The guard's radius factor for a key table that changes a few keys at a time, kept across
changes instead of recomputed (the FAISS-routed WISE variant's router keys).

`Guard.factor` over every key costs one pool x keys distance matrix: 82 ms at 10,000 keys of
768 with a 300-prompt pool on one idle core, paid after every edit. An edit adds a key and a
re-edit or a retraction removes some, so only those are measured: each key's distances to
the pool are computed once, when it arrives, and the per-pool-key claims (`guard.claims`) are
kept per block of keys (`guard.BlockClaims`, which GRACE's `grace.calibration` uses too, for
a codebook whose radii and floors also move).

Invariant: `factor` equals `Guard.factor(keys, key_radius x norms, rate, chunk=1)` over the
table's live keys, bit for bit (distances measured key by key; in chunks, as `Guard.factor`
does by default, they differ in the last bits). A key's figures depend on that key alone, so
the factor is a function of the set of live keys, whatever order they came and went in.
"""

from __future__ import annotations

import math

import torch

from .guard import BlockClaims, Guard
from .keytable import KeyTable


class KeptFactor:
    """Per key (by table id) a column of `BlockClaims`, append-only (a removed key's column
    stays, dead): its pool distances, radius and no floor."""

    def __init__(self, guard: Guard):
        self.guard = guard
        self.kept = BlockClaims(len(guard))
        self.column: dict[int, int] = {}  # live key id -> column
        self.used = 0  # columns 0..used-1 hold keys, live or dead
        self.seen = 0  # table ids below this have been looked at (ids only grow)

    def factor(self, table: KeyTable, key_radius: float, rate: float) -> float:
        """`Guard.factor` of the table's live keys at radii ``key_radius x norm``."""
        p = len(self.guard)
        if not p or math.floor(rate * p) >= p:
            return 1.0
        self._sync(table, key_radius)
        return self.kept.factor(self.used, rate)

    def nbytes(self) -> int:
        """Bytes held: the pool distances dominate (pool x keys ever added x 8)."""
        return self.kept.nbytes()

    def _sync(self, table: KeyTable, key_radius: float) -> None:
        """Columns for keys added to the table since, dead columns for keys removed. Ids are
        never reused and only grow (`KeyTable`), so the new ones are those from `seen` on;
        the live columns are scanned only when the counts say some key went."""
        now = table.norm
        new = [i for i in range(self.seen, table.next_id) if i in now]
        self.seen = table.next_id
        if len(self.column) + len(new) != len(now):
            gone = [self.column.pop(i) for i in [i for i in self.column if i not in now]]
            self.kept.set(gone, live=False)
        if not new:
            return
        cols = list(range(self.used, self.used + len(new)))
        self.kept.grow(self.used + len(new))
        keys = torch.from_numpy(table.index.get(new)).double()
        # key by key: a key's distances depend on it alone
        dist = torch.stack([torch.cdist(self.guard.keys, key[None])[:, 0] for key in keys], 1)
        # as `Guard.factor` was given them: key_radius x norm, as float32
        radii = torch.tensor([key_radius * table.norm[i] for i in new]).double()
        self.kept.set(cols, dist=dist, radii=radii, floors=torch.zeros(len(new), dtype=torch.float64),
                      live=True)
        self.column.update(zip(new, cols))
        self.used += len(new)
