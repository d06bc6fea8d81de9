"""MEND's editor networks: plain torch modules, no model and no data (see `__init__.py`).

One `GradientEditor` per weight shape (``shared``, the paper's choice) or per weight. It
maps the rows of one weight's gradient factors, ``u`` (the weight's input, ``d_in``) and
``δ`` (the gradient of the edit loss at its output, ``d_out``), concatenated into
``z = [u, δ]`` and normalised, through ``n_hidden + 1`` residual low-rank layers

    z ← z + clamp_min(s_m ⊙ (U V z + b) + o_m, 0)

(``U`` d×r, ``V`` r×d, ``r = min(rank, d)``; ``s_m``, ``o_m`` the scale and offset of mode
``m``, the edited weight's index among the weights sharing the editor) into ``[ũ, δ̃]``.
`MendEditor` holds the editors and one learned step size ``η_l`` per edited weight and
turns factors into the update ``ΔW_l = −η_l Σ_i δ̃_i ũ_iᵀ`` (``(out, in)``, float32).

Invariants: a fresh editor is the identity on the normalised factors (``U = 0``: the paper's
initialisation), so its update is ``−η`` times the gradient of the normalised factors; the
construction is a pure function of the shapes, the settings and the seed (``V`` is drawn
from a generator seeded by it); the normalisation statistics change only through
`observe` (training), never while editing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .._common.saved import SavedNetwork

#: added to the standard deviation before dividing (the reference code's value)
STD_EPS = 1e-7
#: a feature's standard deviation is floored at this share of the mean over its part (u or δ)
STD_FLOOR = 1e-2


class ResidualLowRank(nn.Module):
    """``z + clamp_min(s_m ⊙ (U V z + b) + o_m, 0)``. ``clamp`` and not ``relu``: at the
    identity initialisation every pre-activation is exactly 0, where relu's gradient is 0 and
    U would never move; clamp passes the gradient at 0."""

    def __init__(self, dim: int, rank: int, modes: int, generator: torch.Generator):
        super().__init__()
        self.u = nn.Parameter(torch.zeros(dim, rank))
        self.v = nn.Parameter(torch.randn(rank, dim, generator=generator))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.scale = nn.Parameter(torch.ones(modes, dim))
        self.shift = nn.Parameter(torch.zeros(modes, dim))

    def forward(self, z: torch.Tensor, mode: int) -> torch.Tensor:
        pre = (z @ self.v.T) @ self.u.T + self.bias
        return z + (pre * self.scale[mode] + self.shift[mode]).clamp(min=0)


class GradientEditor(nn.Module):
    """The editor of one weight shape (``d_in``, ``d_out``), with running statistics of the
    factors it has seen in training (count, mean and sum of squared deviations per feature of
    ``[u, δ]``, float64, merged batch by batch: Chan et al.'s parallel update)."""

    def __init__(self, d_in: int, d_out: int, rank: int, n_hidden: int, modes: int,
                 norm: bool, generator: torch.Generator):
        super().__init__()
        dim = d_in + d_out
        self.d_in, self.d_out, self.norm = d_in, d_out, norm
        self.layers = nn.ModuleList(ResidualLowRank(dim, min(rank, dim), modes, generator)
                                    for _ in range(n_hidden + 1))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("m2", torch.zeros(dim, dtype=torch.float64))

    @torch.no_grad()
    def observe(self, u: torch.Tensor, delta: torch.Tensor) -> None:
        """Add the rows of (`u`, `delta`) to the statistics."""
        z = torch.cat([u, delta], -1).double()
        n = z.shape[0]
        if n == 0:
            return
        mean_b = z.mean(0)
        m2_b = ((z - mean_b) ** 2).sum(0)
        total = self.count + n
        diff = mean_b - self.mean
        self.mean += diff * (n / total)
        self.m2 += m2_b + diff ** 2 * (self.count * n / total)
        self.count.fill_(total)

    def std(self) -> torch.Tensor:
        """Per feature: the standard deviation seen in training, floored at `STD_FLOOR` of
        its part's mean (a feature nearly constant in training cannot blow an edit up), or
        1 throughout a part that never varied (too few training rows)."""
        std = (self.m2 / (self.count - 1).clamp(min=1)).sqrt()
        parts = []
        for part in (std[:self.d_in], std[self.d_in:]):
            scale = part.mean()
            parts.append(torch.where(scale > 0, part.clamp(min=float(STD_FLOOR) * scale),
                                     torch.ones_like(part)))
        return torch.cat(parts)

    def normalise(self, z: torch.Tensor) -> torch.Tensor:
        if not self.norm:
            return z
        return (z - self.mean.to(z.dtype)) / (self.std().to(z.dtype) + STD_EPS)

    def forward(self, u: torch.Tensor, delta: torch.Tensor,
                mode: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(ũ, δ̃) for rows `u` (n, d_in) and `delta` (n, d_out)."""
        z = self.normalise(torch.cat([u, delta], -1).float())
        for layer in self.layers:
            z = layer(z, mode)
        return z[:, :self.d_in], z[:, self.d_in:]


class MendEditor(SavedNetwork):
    """The editors and step sizes of every edited weight, in the order of `shapes`
    (``(d_in, d_out)`` per weight). `editor_parameters` are trained at the editor's learning
    rate, `edit_lrs` (the per-weight ``η_l``) at ``lr_lr``."""

    what = "editor"

    def __init__(self, shapes: Sequence[tuple[int, int]], *, rank: int, n_hidden: int,
                 shared: bool, norm: bool, edit_lr: float, seed: int):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.slots: list[tuple[str, int]] = []  # (editor key, mode) per weight
        members: dict[str, list[int]] = {}
        for i, (d_in, d_out) in enumerate(shapes):
            key = f"shape_{d_in}x{d_out}" if shared else f"weight_{i}"
            members.setdefault(key, []).append(i)
            self.slots.append((key, len(members[key]) - 1))
        self.nets = nn.ModuleDict({
            key: GradientEditor(*shapes[idx[0]], rank, n_hidden, len(idx), norm, generator)
            for key, idx in members.items()})
        self.edit_lrs = nn.Parameter(torch.full((len(shapes),), float(edit_lr)))

    def editor_parameters(self) -> list[nn.Parameter]:
        return list(self.nets.parameters())

    def observe(self, i: int, u: torch.Tensor, delta: torch.Tensor) -> None:
        self.nets[self.slots[i][0]].observe(u, delta)

    def delta(self, i: int, u: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """ΔW (d_out, d_in) of weight `i` from its factors' rows: −η_i Σ_rows δ̃ ũᵀ."""
        key, mode = self.slots[i]
        u_t, d_t = self.nets[key](u, delta, mode)
        return -self.edit_lrs[i] * (d_t.T @ u_t)

