"""T-Patcher's patches and losses: pure tensor code, no model, no hooks.

A patch is one neuron added to an FFN: a key ``k`` and bias ``b`` over the FFN's input (the
model width) and a value ``v`` over its output. At every position, the FFN output ``y`` becomes
``y + act(x . k + b) v`` where ``x`` is the FFN input there; ``x . k + b`` is the patch's
*pre-activation* ``a``, which the losses below talk about. Many patches are one matrix
product: ``act(x K^T + b) V``.

`PatchLog` holds every active edit in edit order, each with its neurons (zero or more) and the
FFN inputs of its own prompt+target tokens (the memory later edits keep their patches silent
on). Invariant: the log, plus the unrelated memory, is the whole state; `stacked` is derived
from it (cached per device, rebuilt whenever the log changes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ..base import tensor_bytes

#: every neuron as one (K (N, d_in), b (N,), V (N, d_out))
Stacked = tuple[torch.Tensor, torch.Tensor, torch.Tensor]

#: above this exponent, `exp_capped` continues linearly (finite values and gradients)
EXP_CAP = 30.0


@dataclass
class Edit:
    """One active edit: its request, the positions its neurons were keyed at (indices into the
    prompt+target token row), the FFN inputs of that row (`rows`, (T, d_in)) and its neurons
    (`keys` (n, d_in), `bias` (n,), `values` (n, d_out); n may be 0)."""

    edit_id: str
    prompt: str
    target: str
    positions: list[int]
    rows: torch.Tensor
    keys: torch.Tensor
    bias: torch.Tensor
    values: torch.Tensor

    def to_state(self) -> dict[str, Any]:
        return {"edit_id": self.edit_id, "prompt": self.prompt, "target": self.target,
                "positions": list(self.positions), "rows": self.rows.clone(),
                "keys": self.keys.clone(), "bias": self.bias.clone(),
                "values": self.values.clone()}

    @classmethod
    def from_state(cls, s: dict[str, Any]) -> Edit:
        return cls(s["edit_id"], s["prompt"], s["target"], [int(p) for p in s["positions"]],
                   s["rows"].clone(), s["keys"].clone(), s["bias"].clone(), s["values"].clone())

    def nbytes(self) -> int:
        return tensor_bytes(self.rows, self.keys, self.bias, self.values)


@dataclass
class PatchLog:
    """The active edits in order. `stacked(device)` gives every neuron as (K, b, V)."""

    key_dim: int
    value_dim: int
    edits: list[Edit] = field(default_factory=list)
    _cache: dict[str, Stacked] = field(default_factory=dict, init=False, repr=False)

    def __len__(self) -> int:
        return len(self.edits)

    def neurons(self) -> int:
        return sum(e.keys.shape[0] for e in self.edits)

    def ids(self) -> list[str]:
        return [e.edit_id for e in self.edits]

    def append(self, edit: Edit) -> None:
        self.edits.append(edit)
        self._cache.clear()

    def truncate(self, n: int) -> list[Edit]:
        """Keep the first `n` edits; returns the dropped ones, in order."""
        dropped, self.edits = self.edits[n:], self.edits[:n]
        self._cache.clear()
        return dropped

    def replace(self, edits: list[Edit]) -> None:
        self.edits = list(edits)
        self._cache.clear()

    def stacked(self, device: torch.device | str = "cpu") -> Stacked:
        """(K (N, d_in), b (N,), V (N, d_out)) of every neuron, float32 on `device`."""
        key = str(device)
        if key not in self._cache:
            if self.edits:
                k = torch.cat([e.keys for e in self.edits])
                b = torch.cat([e.bias for e in self.edits])
                v = torch.cat([e.values for e in self.edits])
            else:
                k, b, v = (torch.zeros((0, self.key_dim)), torch.zeros(0),
                           torch.zeros((0, self.value_dim)))
            self._cache[key] = (k.to(device), b.to(device), v.to(device))
        return self._cache[key]

    def rows(self) -> torch.Tensor:
        """The FFN inputs of every active edit's tokens, (sum T, d_in)."""
        if not self.edits:
            return torch.zeros((0, self.key_dim))
        return torch.cat([e.rows for e in self.edits])

    def nbytes(self) -> int:
        return sum(e.nbytes() for e in self.edits)


# ---- the patch function ---------------------------------------------------------------------
# ---- the losses (paper section 3) -----------------------------------------------------------
def exp_capped(z: torch.Tensor, cap: float = EXP_CAP) -> torch.Tensor:
    """exp(z) up to `cap`, continued by its tangent above (equal value and slope at `cap`), so
    a far-off pre-activation early in training gives a large finite loss, not inf/NaN."""
    capped = torch.exp(z.clamp(max=cap))
    return torch.where(z > cap, math.exp(cap) * (1 + (z - cap)), capped)


def top_mean(values: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of the `k` largest entries of `values` (all of them when there are fewer)."""
    flat = values.reshape(-1)
    if flat.numel() == 0:
        return flat.sum()
    return torch.topk(flat, min(k, flat.numel())).values.mean()


def activation_loss(a_edit: torch.Tensor, margin: float) -> torch.Tensor:
    """l_a: each neuron active at its own position: mean of exp(margin - a_edit)."""
    return exp_capped(margin - a_edit).mean()


def memory_loss(a_mem: torch.Tensor, a_edit: torch.Tensor, margin: float, gap: float,
                top: int) -> torch.Tensor:
    """l_m: the neurons silent on memory inputs. `a_mem` (m, n): pre-activations of the n new
    neurons on the m memory rows; `a_edit` (n,): at their own positions. Two terms, each the
    mean of its `top` largest values: exp(a_mem - margin) (below the margin) and
    exp(a_mem - a_edit + gap) (below the edit's own activation by `gap`)."""
    if a_mem.numel() == 0:
        return a_mem.sum()
    below = exp_capped(a_mem - margin)
    apart = exp_capped(a_mem - a_edit.unsqueeze(0) + gap)
    return top_mean(below, top) + top_mean(apart, top)
