"""`alphaedit`: AlphaEdit (Fang et al., ICLR 2025, "Null-Space Constrained Knowledge Editing
for Language Models"): MEMIT's update projected onto the null space of the preserved keys.

Preserved knowledge: the keys of ordinary text, whose second moment C = E[kkᵀ] is the
corpus statistic MEMIT uses. P = Û Ûᵀ, Û the eigenvectors of C whose eigenvalue is below
`null_threshold`, projects onto (nearly) the null space of those keys, so an update of the
form ΔW = X P leaves their outputs unchanged: ΔW k ≈ 0 for a preserved key k. Per layer l of
the range (as MEMIT, lowest first; `memit.py`), with K the batch's keys and R its residuals:

    ΔWᵀ = (P (Kᵀ K + K_pᵀ K_p) + α I)⁻¹ P Kᵀ R      (the paper's eq. 14, α = `l2`)

where K_p are the keys of every earlier edit at that layer (sequential editing: the paper's
accumulation, kept as the matrix K_pᵀ K_p), so later updates leave earlier edits' outputs
(nearly) alone. The solution is in P's range (α ΔWᵀ = P(...)), hence ΔW k = ΔW P k ≈ 0.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch

from ..config import setting
from ..progress import Reporter
from ._locate.lookup import Site, keys_at
from .context import AttachContext
from .memit import Memit, MemitConfig


@dataclass(frozen=True)
class AlphaEditConfig(MemitConfig):
    steps: int = setting(20, "maximum Adam steps of the z optimisation (paper: 20 for GPT-2 XL, "
                             "25 for GPT-J)", min=1, max=10_000)
    null_threshold: float = setting(2e-2, "eigenvalues of C below this, as a share of C's mean "
                                          "eigenvalue, span the null space the update is "
                                          "projected onto (paper: 2e-2 absolute on GPT-2 XL, "
                                          "GPT-J and LLaMA3 keys; relative here, so that it "
                                          "means the same at any key scale)", min=0.0)
    l2: float = setting(10.0, "α, the ridge of the projected solve (paper: 10)", min=0.0)


def null_projection(c: torch.Tensor, threshold: float) -> tuple[torch.Tensor, int]:
    """(P, its rank): the projection onto the eigenvectors of `c` whose eigenvalue is below
    `threshold` x the mean eigenvalue."""
    vals, vecs = torch.linalg.eigh(c)
    small = vals < threshold * vals.mean().clamp(min=1e-30)
    u = vecs[:, small]
    return u @ u.T, int(small.sum())


class AlphaEdit(Memit):
    """AlphaEdit. State: the edited weights, the log and the earlier edits' key products
    K_pᵀ K_p per layer. Footprint: their bytes."""

    name = "alphaedit"
    Config = AlphaEditConfig
    summary = ("AlphaEdit: MEMIT's update projected onto the null space of preserved and "
               "earlier edits' keys")
    no_retraction = "alphaedit with retract = \"unsupported\" cannot retract"

    def _prepare(self, ctx: AttachContext) -> None:
        self.projections, self.null_dims = [], []
        for name in self.names:
            c = self.cov[name]
            # the eigendecomposition is most of an attach (0.33 of 0.42 s at 768-wide keys):
            # chunks of one run share it, keyed by C's exact bytes and the threshold
            digest = hashlib.sha256(c.detach().cpu().numpy().tobytes()).hexdigest()
            key = ("alphaedit-projection", digest, self.config.null_threshold)
            if key not in ctx.memo:
                ctx.memo[key] = null_projection(c.double(), self.config.null_threshold)
                if ctx.memo[key][1] == 0:  # said once per run: its chunks share the memo
                    self._note_empty(name)
            projection, dims = ctx.memo[key]
            self.projections.append(projection.to(c.device))
            self.null_dims.append(dims)
        self.info = {**self.info, "null_space_dims": dict(zip(self.names, self.null_dims))}

    def _note_empty(self, name: str) -> None:
        """An empty null space makes every update zero: the run would record edits that
        change nothing, so it says why (seen on the multitask organism, whose 1024-wide keys
        have no eigenvalue below 0.1 x the mean)."""
        Reporter().note(f"{self.name}: no eigenvalue of {name}'s key covariance is below "
                        f"null_threshold {self.config.null_threshold} x their mean: the null "
                        "space is empty, so every update projects to zero and no edit changes "
                        "this layer (a larger null_threshold leaves room)")

    def _reset(self) -> None:
        self.kp = [torch.zeros_like(p) for p in self.projections]

    def _solve(self, i: int, keys: torch.Tensor, resid: torch.Tensor) -> torch.Tensor:
        p = self.projections[i]
        k = keys.double()
        a = p @ (k.T @ k + self.kp[i]) + self.config.l2 * torch.eye(
            p.shape[0], dtype=p.dtype, device=p.device)
        return torch.linalg.solve(a, p @ k.T @ resid.double()).T

    def _after(self, site_list: list[Site]) -> None:
        found = keys_at(self.lm, self.names, site_list)
        for i, name in enumerate(self.names):
            k = found[name].double()
            self.kp[i] = self.kp[i] + k.T @ k

    def detail(self, site: Site, **more: Any) -> dict[str, Any]:
        return super().detail(site, null_space_dims=list(self.null_dims), **more)

    def _extra_state(self) -> dict[str, Any]:
        return {"kp": [k.clone() for k in self.kp]}

    def _load_extra(self, state: dict[str, Any]) -> None:
        self.kp = [k.to(p.device, p.dtype) for k, p in zip(state["kp"], self.projections)]
