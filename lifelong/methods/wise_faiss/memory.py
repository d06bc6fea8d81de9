"""WISE's side memories: a merged delta, the shards not merged yet and the open shard, with
the keys each memory protects; and the pure tensor helpers of sharding and protection."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..base import EditRequest


@dataclass
class SideMemory:
    """One side memory: a merged delta, closed shards not merged yet, the open shard."""

    merged: torch.Tensor
    shards: list[torch.Tensor] = field(default_factory=list)
    current: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    log: list[EditRequest] = field(default_factory=list)   # edits in order
    scores: list[float] = field(default_factory=list)      # edit scores when made
    keys: dict[str, torch.Tensor] = field(default_factory=dict)  # fact -> (n, in) keys
    basis: torch.Tensor | None = None  # orthonormal basis of `keys` (None: to recompute)
    in_shard: int = 0
    n_shards: int = 0

    def delta(self) -> torch.Tensor:
        d = self.merged + sum(self.shards, torch.zeros_like(self.merged))
        return d if self.current is None else d + self.current

    def threshold(self, ratio: float) -> float:
        return ratio * min(self.scores) if self.scores else float("inf")

    def protected_basis(self, fact: str) -> torch.Tensor | None:
        """(in, r) orthonormal basis of the keys of this memory's facts other than `fact`
        (None: nothing to protect). Kept up to date one key at a time; recomputed for a
        re-edit (its fact's own old key must not be protected) and after a retraction."""
        if not any(f != fact for f in self.keys):
            return None
        if fact in self.keys:
            return orthonormal([k for f, ks in self.keys.items() if f != fact for k in ks])
        return self._all_keys_basis()

    def _all_keys_basis(self) -> torch.Tensor | None:
        """Orthonormal basis of every protected key, cached until the keys change."""
        if self.basis is None and self.keys:
            self.basis = orthonormal([k for ks in self.keys.values() for k in ks])
        return self.basis

    def protected_rank(self) -> int:
        """Dimension of the span protection keeps (what fills a memory's null space)."""
        basis = self._all_keys_basis()
        return 0 if basis is None else basis.shape[1]

    def remember_key(self, fact: str, keys: torch.Tensor) -> None:
        """Protect `keys` ((n, in): the fact's activations at the positions its delta
        applies) from later edits; a re-edit's keys replace the fact's older ones."""
        new = fact not in self.keys
        self.keys[fact] = keys
        if new and self.basis is not None:
            for k in keys:
                self.basis = extend_basis(self.basis, k)
        else:
            self.basis = None

    def forget_key(self, fact: str) -> None:
        del self.keys[fact]
        self.basis = None

    def to_state(self) -> dict[str, Any]:
        """Tensors and plain data only (the store loads states with weights_only)."""
        return {"merged": self.merged, "shards": list(self.shards), "current": self.current,
                "mask": self.mask, "log": [vars(r) for r in self.log], "scores": list(self.scores),
                "keys": dict(self.keys), "basis": self.basis, "in_shard": self.in_shard,
                "n_shards": self.n_shards}

    @classmethod
    def from_state(cls, m: dict[str, Any], like: torch.Tensor | None = None) -> SideMemory:
        """`like`: the main weight, whose memory layout (a GPT-2 Conv1D's is a transposed
        view) the weight-shaped tensors get back. A saved memory file stores them
        contiguous, and a matmul's rounding can depend on the layout, so without this a
        loaded memory's later edits drift from the saved one's in the last bits."""
        def laid(t: torch.Tensor | None) -> torch.Tensor | None:
            if t is None or like is None:
                return t
            if t.shape != like.shape:  # keys and bases: only moved to the weight's device
                return t.to(like.device)
            return torch.empty_like(like, dtype=t.dtype).copy_(t)
        return cls(merged=laid(m["merged"]), shards=[laid(t) for t in m["shards"]],
                   current=laid(m["current"]), mask=laid(m["mask"]),
                   log=[EditRequest(**r) for r in m["log"]],
                   scores=list(m["scores"]), basis=laid(m["basis"]),
                   keys={f: laid(k.reshape(-1, k.shape[-1])) for f, k in m["keys"].items()},
                   in_shard=m["in_shard"], n_shards=m["n_shards"])


def orthonormal(keys: list[torch.Tensor], tol: float = 1e-3) -> torch.Tensor | None:
    """(in, r) orthonormal basis of the span of `keys`, dropping directions whose singular
    value is below `tol` of the largest."""
    if not keys:
        return None
    u, s, _ = torch.linalg.svd(torch.stack(keys, 1), full_matrices=False)
    return u[:, s > tol * s[0]]


def extend_basis(basis: torch.Tensor, key: torch.Tensor, tol: float = 1e-3) -> torch.Tensor:
    """`basis` plus the part of `key` outside its span (Gram-Schmidt, twice for stability),
    unless that part is below `tol` of the key's norm."""
    v = key - basis @ (basis.T @ key)
    v = v - basis @ (basis.T @ v)
    if v.norm() <= tol * key.norm():
        return basis
    return torch.cat([basis, (v / v.norm()).unsqueeze(1)], 1)


def activation_score(x: torch.Tensor, mask: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """(B,) the paper's score: mean over each row's masked tokens of ||x_t delta^T||."""
    norms = (x @ delta.T).norm(dim=-1)
    return (norms * mask).sum(-1) / mask.sum(-1).clamp_min(1)


def masked_step(p: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor | None,
                basis: torch.Tensor | None) -> torch.Tensor:
    """The full-size update a parameter stands for: masked (or, for a row mask, `p` holds
    only the shard's `rows` and is scattered into them), then projected off `basis`, so that
    ``step @ basis == 0``. Row masks commute with the projection (it acts on the input
    side), so a row-masked step stays both in its rows and in the null space."""
    step = p if rows is not None else p * mask
    if basis is not None:  # keep the earlier keys' outputs
        step = step - (step @ basis) @ basis.T
    if rows is None:
        return step
    return torch.zeros(mask.shape, dtype=p.dtype, device=p.device).index_add(0, rows, step)


def shard_mask(shape: torch.Size, ratio: float, unit: str, disjoint: bool, seed: int,
               shard: int) -> torch.Tensor:
    """Shard `shard`'s gradient mask (bool, `shape`): a random share `ratio` of the entries
    (`unit` "entry") or of the output rows ("row"), drawn from (seed, shard). Disjoint: the
    shards of a cycle of round(1 / ratio) share one random partition, each its own part."""
    base = shape if unit == "entry" else shape[:1]
    if disjoint:
        period = cycle_length(ratio)
        g = torch.Generator().manual_seed(seed + shard // period)
        mask = torch.randint(0, period, base, generator=g) == shard % period
    else:
        g = torch.Generator().manual_seed(seed + shard)
        mask = torch.rand(base, generator=g) < ratio
    return mask if unit == "entry" else mask.unsqueeze(1).expand(shape)


def cycle_length(ratio: float) -> int:
    """Shards per cycle of disjoint masks: round(1 / ratio)."""
    return max(1, round(1 / max(ratio, 1e-9)))


def by_cycle(shards: list[torch.Tensor], first: int, period: int) -> list[list[torch.Tensor]]:
    """Consecutive `shards` (the first is shard number `first`) grouped by mask cycle."""
    groups: dict[int, list[torch.Tensor]] = {}
    for i, shard in enumerate(shards):
        groups.setdefault((first + i) // period, []).append(shard)
    return list(groups.values())
