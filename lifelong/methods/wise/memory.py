"""`wise`'s side memories and the pure tensor helpers of sharding, merging and the clamp.

A side memory is a merged delta (None until its first merge) and the shards not merged yet;
a delta is the side weight minus the main weight, so the main weight is never copied and
never changed. Invariants: every shard of a cycle starts from the same delta (`start`), its
mask is drawn from (seed, memory, shard position) only; `merge_shards` does not depend on
the order of the shards (TIES and linear with equal weights).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ...merging import merge as merge_deltas
from ..base import EditRequest


@dataclass
class Shard:
    """One knowledge shard: its delta (start included), gradient mask, edits and their
    scores (the activation score each edit reached when made)."""

    delta: torch.Tensor
    mask: torch.Tensor
    log: list[EditRequest] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)

    def to_state(self) -> dict[str, Any]:
        return {"delta": self.delta, "mask": self.mask, "log": [vars(r) for r in self.log],
                "scores": list(self.scores)}

    @classmethod
    def from_state(cls, s: dict[str, Any]) -> Shard:
        return cls(s["delta"], s["mask"], [EditRequest(**r) for r in s["log"]], list(s["scores"]))


@dataclass
class SideMemory:
    """A merged delta (None: nothing merged yet) with the edits of each merge (`merges`, in
    order: what a rebuild replays) and their scores, and the shards not merged yet (the last
    one open while it holds fewer than `shard_size` edits)."""

    merged: torch.Tensor | None = None
    merges: list[list[EditRequest]] = field(default_factory=list)
    merged_scores: list[float] = field(default_factory=list)
    shards: list[Shard] = field(default_factory=list)
    n_shards: int = 0  # shards ever opened: the next one's position (its mask's seed)

    def log(self) -> list[EditRequest]:
        """Every edit the memory holds, in order."""
        return [r for g in self.merges for r in g] + [r for s in self.shards for r in s.log]

    def candidates(self) -> list[tuple[torch.Tensor, list[float]]]:
        """What can serve a row: the merged delta and every shard holding an edit, each with
        the scores that set its threshold."""
        out = [(self.merged, self.merged_scores)] if self.merged is not None else []
        return out + [(s.delta, s.scores) for s in self.shards if s.log]

    def to_state(self) -> dict[str, Any]:
        """Tensors and plain data only (the store loads states with weights_only)."""
        return {"merged": self.merged, "merges": [[vars(r) for r in g] for g in self.merges],
                "merged_scores": list(self.merged_scores),
                "shards": [s.to_state() for s in self.shards], "n_shards": self.n_shards}

    def to(self, device: torch.device) -> SideMemory:
        """The same memory with its tensors on `device` (a state saved elsewhere)."""
        if self.merged is not None:
            self.merged = self.merged.to(device)
        for s in self.shards:
            s.delta, s.mask = s.delta.to(device), s.mask.to(device)
        return self

    @classmethod
    def from_state(cls, m: dict[str, Any]) -> SideMemory:
        return cls(m["merged"], [[EditRequest(**r) for r in g] for g in m["merges"]],
                   list(m["merged_scores"]), [Shard.from_state(s) for s in m["shards"]],
                   m["n_shards"])


def threshold(scores: Sequence[float], ratio: float) -> float:
    """act_ratio x the smallest edit score (no edit: nothing passes)."""
    return ratio * min(scores) if scores else float("inf")


def entry_mask(shape: torch.Size, ratio: float, seed: int) -> torch.Tensor:
    """(shape) bool: each entry kept with probability `ratio`, drawn from `seed` alone."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) < ratio


def clamp(delta: torch.Tensor, bound: float | None) -> torch.Tensor:
    """The norm constraint: every side entry within +/- `bound` of the main weight's."""
    return delta if bound is None else delta.clamp(-bound, bound)


def merge_shards(shards: Sequence[torch.Tensor], merged: torch.Tensor | None, how: str,
                 density: float, merged_weight: float, seed: int) -> torch.Tensor:
    """One merged delta from a cycle's shards (weights 1/k each) and, if there is one, the
    memory merged so far (weight `merged_weight` against the shards' 1 - merged_weight), as
    the reference weights them (0.6 / 0.4); `lifelong.merging` does the merge. ``how="sum"``:
    every shard and the merged memory added at weight 1 (`merged_weight` and `density`
    unused)."""
    k = len(shards)
    if how == "sum":
        return merge_deltas("linear", [*shards, *([] if merged is None else [merged])])
    if merged is None:
        return merge_deltas(how, list(shards), [1.0 / k] * k, density, seed)
    share = (1.0 - merged_weight) / k
    return merge_deltas(how, [*shards, merged], [share] * k + [merged_weight], density, seed)
