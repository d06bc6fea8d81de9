"""The guard's radius factor for a key table that changes a few keys at a time, kept across
changes instead of recomputed (the FAISS-routed WISE variant's router keys).

`Guard.factor` over every key costs one pool x keys distance matrix: ~145 ms at 10,000 keys
of 768 with a 300-prompt pool on one core, paid after every edit. An edit adds a key and a
re-edit or a retraction removes some, so only those are measured: each key's distances to
the pool are computed once, when it arrives, and the per-pool-key claims (`guard.claims`) are
kept per block of `BLOCK` keys; a change recomputes its block. The factor is a min / any over
blocks (GRACE's `grace.calibration` does the same for a codebook whose radii and floors also
move).

Invariant: `factor` equals `Guard.factor(keys, key_radius x norms, rate, chunk=1)` over the
table's live keys, bit for bit (distances measured key by key; in chunks, as `Guard.factor`
does by default, they differ in the last bits). A key's figures depend on that key alone, so
the factor is a function of the set of live keys, whatever order they came and went in.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .guard import Guard, claims, factor_of, padded
from .keytable import KeyTable

#: keys per block of kept claims (a change costs pool x BLOCK work)
BLOCK = 64


class KeptFactor:
    """Per key (by table id): its pool distances and radius, in append-only columns (a removed
    key's column stays, dead); per block of columns: the pool's claims."""

    def __init__(self, guard: Guard):
        self.guard = guard
        p = len(guard)
        self.column: dict[int, int] = {}  # live key id -> column
        self.dist = torch.zeros((p, 0), dtype=torch.float64)
        self.radii = torch.zeros(0, dtype=torch.float64)
        self.live = torch.zeros(0, dtype=torch.bool)
        self.need = torch.zeros((p, 0), dtype=torch.float64)
        self.forced = torch.zeros((p, 0), dtype=torch.bool)
        self.used = 0  # columns 0..used-1 hold keys, live or dead
        self.dirty: set[int] = set()  # blocks to recompute

    def factor(self, table: KeyTable, key_radius: float, rate: float) -> float:
        """`Guard.factor` of the table's live keys at radii ``key_radius x norm``."""
        p = len(self.guard)
        if not p or math.floor(rate * p) >= p:
            return 1.0
        self._sync(table, key_radius)
        if not self.column:
            return 1.0
        for b in sorted(self.dirty):
            s = slice(b * BLOCK, min(self.used, (b + 1) * BLOCK))
            self.need[:, b], self.forced[:, b] = claims(
                self.dist[:, s], self.radii[s], torch.zeros_like(self.radii[s]), self.live[s])
        self.dirty.clear()
        blocks = -(-self.used // BLOCK)
        return factor_of(self.need[:, :blocks].min(dim=1).values,
                         self.forced[:, :blocks].any(dim=1), rate)

    def nbytes(self) -> int:
        """Bytes held: the pool distances dominate (pool x keys ever added x 8)."""
        return sum(t.numel() * t.element_size()
                   for t in (self.dist, self.radii, self.live, self.need, self.forced))

    def _sync(self, table: KeyTable, key_radius: float) -> None:
        """Columns for keys added to the table since, dead columns for keys removed."""
        now = table.norm.keys()
        for i in [i for i in self.column if i not in now]:
            c = self.column.pop(i)
            self.live[c] = False
            self.dirty.add(c // BLOCK)
        new = sorted(i for i in now if i not in self.column)
        if not new:
            return
        self._grow(self.used + len(new))
        cols = list(range(self.used, self.used + len(new)))
        keys = torch.from_numpy(table.index.get(new)).double()
        for c, key in zip(cols, keys):  # key by key: a key's distances depend on it alone
            self.dist[:, c] = torch.cdist(self.guard.keys, key[None])[:, 0]
        # as `Guard.factor` was given them: key_radius x norm, as float32
        self.radii[cols] = torch.tensor([key_radius * table.norm[i] for i in new]).double()
        self.live[cols] = True
        self.column.update(zip(new, cols))
        self.dirty.update(c // BLOCK for c in cols)
        self.used += len(new)

    def _grow(self, n: int) -> None:
        """Room for `n` columns; capacity grows by a quarter (at most a fifth is spare)."""
        cap = self.radii.shape[0]
        if n <= cap:
            return
        cap, p = max(n, cap * 5 // 4, BLOCK), len(self.guard)
        blocks = -(-cap // BLOCK)
        self.dist = padded(self.dist, torch.zeros((p, cap), dtype=torch.float64))
        self.radii = padded(self.radii, torch.zeros(cap, dtype=torch.float64))
        self.live = padded(self.live, torch.zeros(cap, dtype=torch.bool))
        self.need = padded(self.need, torch.full((p, blocks), np.inf, dtype=torch.float64))
        self.forced = padded(self.forced, torch.zeros((p, blocks), dtype=torch.bool))
