"""The guard's radius factor for a codebook, kept across edits instead of recomputed.

The factor (`_common.guard`) reads, for every alive entry, its radius, its farthest member
key (the floor its radius keeps) and its distances to the unrelated pool's keys.
Recomputing all of it after every edit made an edit at ~7000 entries cost most of the 13.5x
its value training that `lifelong bench grace` measured before this module; an edit changes a
few entries, so only those are recomputed: their reach and pool distances, and the claims of
the blocks they sit in (`_common.guard.BlockClaims`, shared with `wise-faiss`'s kept factor).

Invariant: `factor` returns what `Guard.factor` computes from the codebook's alive entries
from scratch, provided every change of an entry's key or members was reported with `touch`
(radius and liveness changes are found by comparison). tests/test_grace.py checks it after
random edits and retractions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .._common.guard import BlockClaims, Guard

if TYPE_CHECKING:
    from .codebook import Codebook


class Calibration:
    """Per-row reach and pool distances, and the radii and liveness the kept claims were
    computed for (`_common.guard.BlockClaims`: the floors are the reach)."""

    def __init__(self, guard: Guard):
        self.guard = guard
        self.kept = BlockClaims(len(guard))
        self.known = 0  # rows 0..known-1 have been computed at least once
        self.stale: set[int] = set()

    @property
    def reach(self) -> torch.Tensor:
        """(capacity,) each row's farthest member distance, as last computed."""
        return self.kept.floors

    def touch(self, row: int) -> None:
        """The entry's key or members changed: recompute it at the next `factor`."""
        self.stale.add(row)

    def factor(self, book: Codebook, rate: float) -> tuple[float, torch.Tensor]:
        """(the guard's factor, reach (n,)) for the codebook's rows ``0..n-1``."""
        n = book.n
        self.kept.grow(n)
        self.stale.update(range(self.known, n))  # appended since: never computed
        self.known = max(self.known, n)
        rows = sorted(r for r in self.stale if r < n)
        self.stale.clear()
        if rows:
            self.kept.set(rows, dist=torch.cdist(self.guard.keys, book.keys[rows].double()),
                          floors=torch.tensor([book.farthest_member(r) for r in rows],
                                              dtype=torch.float64))
        radii, live = book.radii[:n], book.alive[:n]
        changed = ((radii != self.kept.radii[:n]) | (live != self.kept.live[:n])).nonzero()
        changed = changed.flatten().tolist()  # NaN radii: never seen
        if changed:
            self.kept.set(changed, radii=radii[changed], live=live[changed])
        return self.kept.factor(n, rate), self.reach[:n]

    def nbytes(self) -> int:
        """Bytes held: the pool distances dominate (pool x entries x 8)."""
        return self.kept.nbytes()
