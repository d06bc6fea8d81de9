"""KE's hyper-network: plain torch modules, no model and no data (see `__init__.py`).

`EditEncoder`: a one-layer bidirectional LSTM over the token embeddings of the edit's text
(``x``, the model's prediction ``y``, the desired ``a``), its two final hidden states
concatenated and mapped by a linear layer and ``tanh`` to the condition ``c`` (``cond_dim``).
The embeddings are the base model's own (frozen): they are passed in at every call, never
held, so they are neither saved nor counted here.

`WeightHead` (one per edited weight ``W``, ``m × n`` = ``d_out × d_in``): two weight-normalised
linear layers with ``tanh`` between them map ``c`` to ``α, β ∈ R^m``, ``γ, δ ∈ R^n`` and
``η ∈ R``; the update of ``W`` is

    ΔW = s · σ(η) · (α̂ ⊙ ∇_W L + β̂),    α̂ = softmax(α) γᵀ,  β̂ = softmax(β) δᵀ

(``σ`` the sigmoid, ``softmax`` over the ``m`` output rows, ``s`` = `max_scale`, ``∇_W L`` the
fine-tuning gradient of the edit in ``(out, in)`` orientation).

Invariants: the construction is a pure function of the shapes, the settings and the seed
(initialised inside a forked, seeded torch RNG: the global RNG is untouched); the output is
a pure function of the parameters, the embeddings, the token ids and the gradients (no
dropout, no state that changes while editing).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._common.saved import SavedNetwork


class WeightNormLinear(nn.Module):
    """``x ↦ (g / ‖v‖) ⊙ (v x) + b`` per output row (Salimans and Kingma's weight
    normalisation, as the reference's heads), initialised as ``nn.Linear`` with ``g = ‖v‖``."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        plain = nn.Linear(d_in, d_out)
        self.v = nn.Parameter(plain.weight.detach().clone())
        self.g = nn.Parameter(plain.weight.detach().norm(dim=1))
        self.b = nn.Parameter(plain.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.g / self.v.norm(dim=1).clamp(min=1e-12)
        return F.linear(x, self.v * scale.unsqueeze(1), self.b)


class EditEncoder(nn.Module):
    """The condition ``c`` (``cond_dim``) of one edit from its embedded tokens ``(T, d)``."""

    def __init__(self, d_embed: int, hidden: int, cond_dim: int):
        super().__init__()
        self.lstm = nn.LSTM(d_embed, hidden, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * hidden, cond_dim)

    def forward(self, embedded: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.lstm(embedded.unsqueeze(0))  # h: (2 directions, 1, hidden)
        return torch.tanh(self.out(torch.cat([h[0, 0], h[1, 0]])))


class WeightHead(nn.Module):
    """The update of one weight (``d_out × d_in``) from the condition and the gradient."""

    def __init__(self, cond_dim: int, hidden: int, d_in: int, d_out: int):
        super().__init__()
        self.d_in, self.d_out = d_in, d_out
        self.first = WeightNormLinear(cond_dim, hidden)
        self.second = WeightNormLinear(hidden, 2 * (d_out + d_in) + 1)

    def forward(self, cond: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        m, n = self.d_out, self.d_in
        alpha, gamma, beta, delta, eta = self.second(torch.tanh(self.first(cond))).split(
            [m, n, m, n, 1])
        # (softmax(α) γᵀ) ⊙ G without forming the rank-1 matrix
        scaled = grad * alpha.softmax(-1).unsqueeze(1) * gamma.unsqueeze(0)
        shift = beta.softmax(-1).unsqueeze(1) * delta.unsqueeze(0)
        return torch.sigmoid(eta) * (scaled + shift)


class HyperNetwork(SavedNetwork):
    """The encoder and one head per edited weight, in the order of `shapes` (``(d_in, d_out)``
    per weight)."""

    what = "hyper-network"

    def __init__(self, d_embed: int, shapes: Sequence[tuple[int, int]], *, hidden: int,
                 cond_dim: int, max_scale: float, seed: int):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.encoder = EditEncoder(d_embed, hidden, cond_dim)
            self.heads = nn.ModuleList(WeightHead(cond_dim, hidden, d_in, d_out)
                                       for d_in, d_out in shapes)
        self.max_scale = float(max_scale)

    def condition(self, embedding: torch.Tensor, ids: Sequence[int]) -> torch.Tensor:
        """``c`` of the edit whose text is the token ids `ids`, embedded by `embedding` (the
        model's own matrix, ``(vocab, d)``; read, never changed, never differentiated)."""
        index = torch.tensor(list(ids), dtype=torch.long, device=embedding.device)
        return self.encoder(embedding.detach()[index].float())

    def deltas(self, cond: torch.Tensor, grads: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """ΔW (``(out, in)``, float32) of every edited weight, from ``c`` and the gradients."""
        return [self.max_scale * head(cond, g.float()) for head, g in zip(self.heads, grads)]

