"""Lower bounds on the Euclidean distances from a query to many keys, from a low-rank sketch.

Split every key k (and query q) around the keys' mean mu into its coordinates a on an
orthonormal basis U of r columns (the keys' leading principal directions) and the rest p:
``k - mu = U a + p`` with ``U^T p = 0``. Then

    |q - k|^2 = |a_q - a_k|^2 + |p_q - p_k|^2 >= |a_q - a_k|^2 + (|p_q| - |p_k|)^2,

which is the squared distance between the (r + 1)-vectors ``[a, |p|]``. One product of a
query's (r + 1)-vector with the rows' bounds every distance from below, at (r + 1) / d of the
cost of a full scan; a search then measures exact distances only for the rows the bound does
not rule out (`nearest.nearest_covering`).

Invariants: the bound holds whatever the basis (a poor basis only rules out fewer rows), but
only for rows whose sketch is of their current key: the owner calls `touch(row)` whenever a
row's key changes; rows past the last sketched one are sketched on the next call. The bound
is relaxed by a float32 rounding margin, so it never exceeds the float64 distance.

The products run in torch, on arrays shared with numpy (no copies): numpy's BLAS (OpenBLAS)
keeps a thread pool of its own, and a lookup that alternates it with torch's (the model's
forward, the exact distances) waits for the other pool's spinning threads to yield. With the
numpy products GRACE's serving of a 32-row batch over 954 keys took 7.95 ms on 2 cores at 2
threads, where the same lookup alone took 0.26 ms (`reports/cuda-h200/s38/prof_grace.py cpu
1000`), and it added 12-16 ms to each batch-32 query on a GPU machine's 16 cores
(`reports/cuda-h200/README.md`, third and fourth calls).
"""

from __future__ import annotations

import numpy as np
import torch

#: columns of the basis (measured on GRACE codebooks of the built-in model at 7000-10,000
#: keys: with 64, a query's bound leaves at most 10 rows that a radius of ~0.05 |k| might
#: cover, with 32 up to 84, with 16 up to 300)
RANK = 64
#: fewer rows than this: no sketch (a full scan is as cheap as the bookkeeping)
MIN_ROWS = 512
#: the basis is a principal-component basis of at most this many evenly spaced live rows
BASIS_SAMPLE = 2048
#: relative slack for float32 arithmetic: the (r + 1)-wide product of m terms errs by at most
#: ~m * 6e-8 * |x| |y| (m = 65: 4e-6 (|x|^2 + |y|^2) / 2), the sums and the stored figures by a
#: few 6e-8 (|x|^2 + |y|^2): well inside this share of |x|^2 + |y|^2
SLACK = 1e-5
#: `within`: relative float32 error allowed for a squared distance summed from differences
#: (d terms: at most ~d * 6e-8 of it, 5e-5 at d = 768; typical far less); at least
#: `width_slack(d)` for wider keys
GATHER_SLACK = 1e-3
#: `within`: margin for a squared distance from norms and one float32 product, relative to
#: |k|^2 + |q|^2 (rounding of the product of d terms: at most ~d * 6e-8 |k| |q|, so half that
#: share); at least `width_slack(d)` for wider keys (a 7B model's 11,008-wide MLP: 1.3e-3)
GEMV_SLACK = 1e-4


def width_slack(d: int) -> float:
    """Twice the worst-case relative float32 rounding of a d-term sum (unit roundoff 6e-8)."""
    return 2 * d * 6e-8


class Sketch:
    """The (r + 1)-vectors of a key matrix's rows (module docstring), kept up to date
    incrementally; the basis is rebuilt (and every row sketched again) each time the number of
    rows doubles, so its cost per row stays constant. That rebuild runs inside whichever call
    first sees the doubled rows (a lookup or a placement): 0.16-0.39 s at 7000-9800 rows of
    768 (one thread, two readings each), once per doubling."""

    def __init__(self, rank: int = RANK, min_rows: int = MIN_ROWS):
        self.rank, self.min_rows = rank, min_rows
        self.mean: np.ndarray | None = None
        self.basis: np.ndarray | None = None  # (d, r) float64, orthonormal columns
        self.based_on = 0                      # rows when the basis was built
        self.vecs = np.zeros((0, rank + 1), dtype=np.float32)  # [a, |p|] per row
        self.sq = np.zeros(0, dtype=np.float32)  # (1 - SLACK) |k - mu|^2 per row
        self.norms = np.zeros(0, dtype=np.float32)  # |k|^2 per row (`within`)
        self.done = 0                          # rows [0, done) are sketched, bar `stale`
        self.stale: set[int] = set()

    def touch(self, row: int) -> None:
        """The key of `row` changed: sketch it again before the next bound."""
        if row < self.done:
            self.stale.add(row)

    def nbytes(self) -> int:
        basis = 0 if self.basis is None else self.basis.nbytes + self.mean.nbytes
        return basis + self.vecs.nbytes + self.sq.nbytes + self.norms.nbytes

    def within(self, keys: torch.Tensor, live: torch.Tensor, query: torch.Tensor,
               reach: np.ndarray) -> np.ndarray | None:
        """Rows (ascending) of live keys that may lie within ``reach[row]`` of one `query`
        (d,): a superset of those whose float64 distance does. From the bounds where they
        rule out most rows, else from one float32 product with every row, its rounding
        covered by a margin of GEMV_SLACK (|k|^2 + |q|^2) or more for wide keys. None below
        `min_rows` rows."""
        bounds = self.lower_bounds(keys, live, query[None])
        if bounds is None:
            return None
        r2 = (reach * reach).astype(np.float32)
        rows = np.flatnonzero(bounds[0] <= r2)
        n = keys.shape[0]
        if len(rows) <= n // 8:  # few: measure just those, in float32
            d2 = (keys[torch.from_numpy(rows)] - query).pow(2).sum(1).numpy()
            return rows[d2 <= r2[rows] * (1 + max(GATHER_SLACK, width_slack(keys.shape[1])))]
        q = query.float()
        qq = float(q.double().pow(2).sum())
        d2 = self.norms[:n] + np.float32(qq) - 2.0 * (keys @ q).numpy()
        d2 -= max(GEMV_SLACK, width_slack(keys.shape[1])) * (self.norms[:n] + np.float32(qq))
        return rows[d2[rows] <= r2[rows]]

    def lower_bounds(self, keys: torch.Tensor, live: torch.Tensor,
                     queries: torch.Tensor) -> np.ndarray | None:
        """(B, n) float32 squared lower bounds on |query - key| for `keys` (n, d) float32,
        +inf for rows that are not `live`; None below `min_rows` rows (scan them instead)."""
        n = keys.shape[0]
        if n < self.min_rows or keys.shape[1] <= 2 * self.rank:  # a scan costs as little
            return None
        self._refresh(keys, live)
        # torch, not numpy, for the products: numpy's BLAS keeps its own thread pool, which
        # waits on torch's and torch's on it (module docstring); the arrays are shared
        q = queries.double() - torch.from_numpy(self.mean)
        a = q @ torch.from_numpy(self.basis)
        qsq = (q * q).sum(1)
        rest = (qsq - (a * a).sum(1)).clamp(min=0.0).sqrt()
        qv = torch.cat([a, rest[:, None]], 1).float()
        # in place, float32: |q~|^2 + |k~|^2 - 2 q~.k~, less the slack (module docstring)
        lb = qv @ torch.from_numpy(self.vecs[:n]).T
        lb *= -2.0
        lb += torch.from_numpy(self.sq[:n])[None, :]
        lb += ((1 - SLACK) * qsq).float()[:, None]
        lb = lb.clamp_(min=0.0).numpy()
        dead = np.flatnonzero(~live.numpy())
        if len(dead):
            lb[:, dead] = np.inf
        return lb

    # ---- upkeep -------------------------------------------------------------------------
    def _refresh(self, keys: torch.Tensor, live: torch.Tensor) -> None:
        n = keys.shape[0]
        if self.basis is None or n >= 2 * self.based_on:
            self._rebuild_basis(keys, live)
        if n > self.vecs.shape[0]:
            grow = max(n, 2 * self.vecs.shape[0])
            self.vecs = np.concatenate([self.vecs, np.zeros((grow - self.vecs.shape[0],
                                                             self.vecs.shape[1]), dtype=np.float32)])
            self.sq = np.concatenate([self.sq, np.zeros(grow - self.sq.shape[0], dtype=np.float32)])
            self.norms = np.concatenate([self.norms, np.zeros(grow - self.norms.shape[0],
                                                              dtype=np.float32)])
        rows = sorted(self.stale) + list(range(self.done, n))
        if rows:
            self._sketch(keys, np.asarray(rows, dtype=np.int64))
        self.stale.clear()
        self.done = n

    def _rebuild_basis(self, keys: torch.Tensor, live: torch.Tensor) -> None:
        rows = torch.nonzero(live).squeeze(1)
        if len(rows) < 2 * self.rank:  # too few live rows to estimate directions: take all
            rows = torch.arange(keys.shape[0])
        if len(rows) > BASIS_SAMPLE:  # evenly spaced: deterministic, covers the whole history
            rows = rows[torch.linspace(0, len(rows) - 1, BASIS_SAMPLE).long()]
        sample = keys[rows].double().numpy()
        self.mean = sample.mean(0)
        self.basis = leading_directions(sample - self.mean, self.rank)  # fewer if few rows
        self.based_on = keys.shape[0]
        self.vecs = np.zeros((0, self.basis.shape[1] + 1), dtype=np.float32)
        self.sq = np.zeros(0, dtype=np.float32)
        self.norms = np.zeros(0, dtype=np.float32)
        self.done, self.stale = 0, set()

    def _sketch(self, keys: torch.Tensor, rows: np.ndarray) -> None:
        raw = keys[torch.from_numpy(rows)].double()
        k = raw - torch.from_numpy(self.mean)
        a = k @ torch.from_numpy(self.basis)
        sq = (k * k).sum(1)
        rest = (sq - (a * a).sum(1)).clamp(min=0.0).sqrt()
        self.vecs[rows] = torch.cat([a, rest[:, None]], 1).float().numpy()
        self.sq[rows] = ((1 - SLACK) * sq).float().numpy()
        self.norms[rows] = (raw * raw).sum(1).float().numpy()


def leading_directions(centred: np.ndarray, rank: int, power: int = 2) -> np.ndarray:
    """(d, r) orthonormal columns, r = min(rank, rows, d), spanning (nearly) the top `rank` principal directions of
    the rows of `centred`: a randomized range finder with `power` power iterations, from a
    fixed seed (the same rows give the same basis). Cost O(rows x d x rank), not O(d^3)."""
    rng = np.random.default_rng(0)
    x = torch.from_numpy(centred)
    y = x @ torch.from_numpy(rng.standard_normal((centred.shape[1], rank + 8)))
    for _ in range(power):
        y = torch.linalg.qr(y).Q
        y = x @ (x.T @ y)
    y = torch.linalg.qr(y).Q
    vt = torch.linalg.svd(y.T @ x, full_matrices=False).Vh
    return np.ascontiguousarray(vt[:rank].T.numpy())
