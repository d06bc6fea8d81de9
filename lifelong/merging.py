"""Merging weight deltas ("task vectors"): TIES, linear and DARE.

All functions are pure: they take deltas (tensors of one shape, each the change a shard made
to a weight) and optional per-delta weights, and return one merged delta. They are used by
WISE to fold knowledge shards into a side memory, and are reusable by any method that merges.

TIES (Yadav et al. 2023): (1) trim each delta to its top-`density` fraction of entries by
magnitude, (2) elect a sign per entry (the sign of the weighted sum of trimmed deltas),
(3) disjoint mean: average, per entry, only the deltas that agree with the elected sign.
Invariant: the result does not depend on the order of the deltas (given the same weights).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _weights(deltas: Sequence[torch.Tensor], weights: Sequence[float] | None) -> torch.Tensor:
    if not deltas:
        raise ValueError("nothing to merge")
    shape = deltas[0].shape
    if any(d.shape != shape for d in deltas):
        raise ValueError("deltas differ in shape")
    w = torch.ones(len(deltas)) if weights is None else torch.as_tensor(weights, dtype=torch.float32)
    if w.shape != (len(deltas),) or (w < 0).any() or w.sum() <= 0:
        raise ValueError("weights must be non-negative, one per delta, not all zero")
    return w


def _ordered_sum(stack: torch.Tensor) -> torch.Tensor:
    """Sum over dim 0 in sorted order, so that float rounding (and hence the result, bit for
    bit) does not depend on the order of the inputs."""
    return stack.sort(dim=0).values.sum(0)


def trim(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the `density` fraction of entries with the largest magnitude (ties at the
    threshold are kept, so the result is order-free); zero the rest."""
    if not 0.0 < density <= 1.0:
        raise ValueError("density must be in (0, 1]")
    if density == 1.0:
        return delta.clone()
    flat = delta.abs().flatten()
    k = max(1, round(density * flat.numel()))
    threshold = torch.topk(flat, k, sorted=False).values.min()
    return torch.where(delta.abs() >= threshold, delta, torch.zeros_like(delta))


def ties(deltas: Sequence[torch.Tensor], density: float = 0.5,
         weights: Sequence[float] | None = None) -> torch.Tensor:
    """TIES merge. `weights` scale each delta's vote and its share of the disjoint mean (an
    already-merged memory that holds many edits can be weighted against new shards)."""
    w = _weights(deltas, weights)
    stack = torch.stack([trim(d.float(), density) for d in deltas])  # (n, ...)
    wv = w.to(stack.device).view(-1, *([1] * (stack.dim() - 1)))
    sign = torch.sign(_ordered_sum(stack * wv))
    agree = (torch.sign(stack) == sign) & (stack != 0)
    num = _ordered_sum(stack * wv * agree)
    den = _ordered_sum((wv * agree).to(stack.dtype))
    return torch.where(den > 0, num / den.clamp_min(1e-12), torch.zeros_like(num)).to(deltas[0].dtype)


def linear(deltas: Sequence[torch.Tensor], weights: Sequence[float] | None = None,
           normalize: bool = False) -> torch.Tensor:
    """Weighted sum of deltas (`normalize`: weighted mean)."""
    w = _weights(deltas, weights)
    if normalize:
        w = w / w.sum()
    out = sum(wi * d.float() for wi, d in zip(w.tolist(), deltas))
    return out.to(deltas[0].dtype)


def dare(deltas: Sequence[torch.Tensor], drop: float = 0.5, seed: int = 0,
         weights: Sequence[float] | None = None) -> torch.Tensor:
    """DARE (Yu et al. 2024): drop each entry with probability `drop`, rescale the rest by
    1/(1-drop), then sum. The mask of delta i comes from (seed, i), so the result depends on
    the order of the deltas: DARE is not order-independent (TIES is)."""
    if not 0.0 <= drop < 1.0:
        raise ValueError("drop must be in [0, 1)")
    kept = []
    for i, d in enumerate(deltas):
        g = torch.Generator().manual_seed(seed * 100_003 + i)
        mask = (torch.rand(d.shape, generator=g) >= drop).to(d.device, d.dtype)  # drawn on the CPU
        kept.append(d * mask / (1.0 - drop))
    return linear(kept, weights)


def merge(method: str, deltas: Sequence[torch.Tensor], weights: Sequence[float] | None = None,
          density: float = 0.5, seed: int = 0) -> torch.Tensor:
    """Dispatch by name: "ties", "linear" (weighted sum) or "dare" (drop = 1 - density)."""
    if method == "ties":
        return ties(deltas, density, weights)
    if method == "linear":
        return linear(deltas, weights)
    if method == "dare":
        return dare(deltas, 1.0 - density, seed, weights)
    raise ValueError(f"unknown merge {method!r}; known: ties, linear, dare")
