"""The guard's radius factor for a codebook, kept across edits instead of recomputed.

The factor (`_common.guard`) reads, for every alive entry, its radius, its farthest member
key (the floor its radius keeps) and its distances to the unrelated pool's keys.
Recomputing all of it after every edit made an edit at ~7000 entries cost most of the 13.5x
its value training that `lifelong bench grace` measured before this module; an edit changes a
few entries, so only those are recomputed: their reach and pool distances, and the per-block `claims` of the
blocks of `BLOCK` rows they sit in. The factor is then a min / any over blocks.

Invariant: `factor` returns what `Guard.factor` computes from the codebook's alive entries
from scratch, provided every change of an entry's key or members was reported with `touch`
(radius and liveness changes are found by comparison). tests/test_grace.py checks it after
random edits and retractions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .._common.guard import Guard, claims, factor_of, padded

if TYPE_CHECKING:
    from .codebook import Codebook

#: rows per block of cached claims (a touched row costs pool x BLOCK work)
BLOCK = 64


class Calibration:
    """Per-row reach and pool distances, per-block claims, and the radii and liveness they
    were computed for."""

    def __init__(self, guard: Guard):
        self.guard = guard
        p = len(guard)
        self.reach = torch.zeros(0, dtype=torch.float64)
        self.pool = torch.zeros((p, 0), dtype=torch.float64)
        self.radii = torch.zeros(0, dtype=torch.float64)
        self.live = torch.zeros(0, dtype=torch.bool)
        self.need = torch.zeros((p, 0), dtype=torch.float64)
        self.forced = torch.zeros((p, 0), dtype=torch.bool)
        self.known = 0  # rows 0..known-1 have been computed at least once
        self.stale: set[int] = set()

    def touch(self, row: int) -> None:
        """The entry's key or members changed: recompute it at the next `factor`."""
        self.stale.add(row)

    def factor(self, book: Codebook, rate: float) -> tuple[float, torch.Tensor]:
        """(the guard's factor, reach (n,)) for the codebook's rows ``0..n-1``."""
        n = book.n
        self._grow(n)
        rows = sorted(r for r in self.stale if r < n)
        self.stale.clear()
        if rows:
            self.reach[rows] = torch.tensor([book.farthest_member(r) for r in rows],
                                            dtype=torch.float64)
            self.pool[:, rows] = torch.cdist(self.guard.keys, book.keys[rows].double())
        radii, live = book.radii[:n], book.alive[:n]
        changed = (radii != self.radii[:n]) | (live != self.live[:n])  # NaN: never seen
        changed[rows] = True
        for b in (changed.nonzero().flatten() // BLOCK).unique().tolist():
            s = slice(b * BLOCK, min(n, (b + 1) * BLOCK))
            self.need[:, b], self.forced[:, b] = claims(self.pool[:, s], radii[s],
                                                        self.reach[s], live[s])
        self.radii[:n], self.live[:n] = radii, live
        if n == 0 or not bool(live.any()):
            return 1.0, self.reach[:n]
        blocks = -(-n // BLOCK)
        return (factor_of(self.need[:, :blocks].min(dim=1).values,
                          self.forced[:, :blocks].any(dim=1), rate), self.reach[:n])

    def nbytes(self) -> int:
        """Bytes held: the pool distances dominate (pool x entries x 8)."""
        return sum(t.numel() * t.element_size() for t in (self.reach, self.pool, self.radii,
                                                          self.live, self.need, self.forced))

    def _grow(self, n: int) -> None:
        """Room for rows appended since (all stale; NaN radii compare unequal). Capacity
        grows by a quarter, so appending an entry does not copy the pool distances each
        time, and at most a fifth of what is held is spare."""
        known = self.known
        if n <= known:
            return
        if n > self.reach.shape[0]:
            cap, p = max(n, self.reach.shape[0] * 5 // 4, BLOCK), len(self.guard)
            f64 = {"dtype": torch.float64}
            self.reach = padded(self.reach, torch.zeros(cap, **f64))
            self.pool = padded(self.pool, torch.zeros((p, cap), **f64))
            self.radii = padded(self.radii, torch.full((cap,), float("nan"), **f64))
            self.live = padded(self.live, torch.zeros(cap, dtype=torch.bool))
            blocks = -(-cap // BLOCK)
            self.need = padded(self.need, torch.full((p, blocks), float("inf"), **f64))
            self.forced = padded(self.forced, torch.zeros((p, blocks), dtype=torch.bool))
        self.stale.update(range(known, n))
        self.known = n
