"""`memit`: MEMIT (Meng et al. 2023, "Mass-Editing Memory in a Transformer"), batched edits
spread over a range of MLP output projections.

Per batch: for each request a target z for the residual stream at the output of the last
layer L of the range (`_locate/values.py`: the value optimisation at block L's output), then
for each layer l of the range, lowest first (the paper's algorithm 1):

    K   = the requests' keys at l (input of layers.{l}.mlp.out, averaged over contexts)
    R   = (z − h_L) / (number of layers left), h_L the block-L output now
    ΔW  = R Kᵀ (λ C + K Kᵀ)⁻¹,   C = E[kkᵀ] over the corpus, λ = `mom2_update_weight`

applied before the next layer's keys are read, so each layer takes its share of what is
left. One receipt per request (its own value optimisation's losses).

Default layers: the `span` layers ending at the model's edit layer (the paper's range ends
at the layer its causal trace peaks at: 3..8 of GPT-J, 13..17 of GPT-2 XL, 5 or 6 layers);
on the built-in 4-layer model, whose edit layer is 1, that is layers 0 and 1, every MLP up
to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .. import layers
from ..config import setting
from ._common.loop import receipt
from ._locate.config import LocateConfig
from ._locate.lookup import Site, keys_at, outputs_at
from ._locate.method import LocateEdit, edit_layers
from ._locate.values import optimise_value
from .base import EditReceipt, EditRequest


@dataclass(frozen=True)
class MemitConfig(LocateConfig):
    layers: tuple[int, ...] | None = setting(None, "layers whose mlp.out share the update "
                                                   "(negative counts from the end); default: "
                                                   "the `span` layers ending at the model's "
                                                   "edit layer (paper: 3..8 of GPT-J)")
    span: int = setting(5, "how many layers the default range has (paper: 6 for GPT-J, 5 for "
                           "GPT-2 XL); fewer where the model has fewer below its edit layer",
                        min=1, max=64)
    clamp: float = setting(0.75, "‖δ‖ is clamped to this times ‖h_L‖ after every step (paper: "
                                 "0.75)", min=0.0)
    steps: int = setting(25, "maximum Adam steps of the z optimisation (paper: 25 for GPT-J)",
                         min=1, max=10_000)
    mom2_update_weight: float = setting(15_000.0, "λ, the weight of C against the batch's own "
                                                  "keys (paper: 15,000 for GPT-J, 20,000 for "
                                                  "GPT-2 XL)", min=0.0)


class Memit(LocateEdit):
    """MEMIT. State: the edited weights and the log. Footprint: their bytes."""

    name = "memit"
    Config = MemitConfig
    summary = "MEMIT: batched edits spread over a range of MLP projections, from key statistics"
    no_retraction = "memit with retract = \"unsupported\" cannot retract"

    def _layers(self, model: torch.nn.Module) -> list[int]:
        return edit_layers(model, self.config.layers, self.config.span)

    def _solve(self, i: int, keys: torch.Tensor, resid: torch.Tensor) -> torch.Tensor:
        """ΔW (out, in) at the i-th layer of the range from keys (n, in) and residuals
        (n, out) (float64)."""
        c = self.cov[self.names[i]].double()
        c = c + self.config.ridge * c.diagonal().mean() * torch.eye(
            c.shape[0], dtype=c.dtype, device=c.device)
        k = keys.double()
        a = self.config.mom2_update_weight * c + k.T @ k
        return resid.double().T @ torch.linalg.solve(a, k.T).T

    def _after(self, site_list: list[Site]) -> None:
        """After a batch's update (AlphaEdit: remember its keys)."""

    def _apply(self, requests: Sequence[EditRequest]) -> list[EditReceipt]:
        site_list = self.sites(requests)
        top = f"layers.{self.layer_ids[-1]}"
        settings = self.value_settings()
        zs, results = [], []
        for site in site_list:
            _, z, result = optimise_value(self.lm, top, site, settings)
            zs.append(z)
            results.append(result)
        targets = torch.stack(zs)
        norms = []
        for i, name in enumerate(self.names):
            keys = keys_at(self.lm, [name], site_list)[name]
            resid = (targets - outputs_at(self.lm, top, site_list)) / (len(self.names) - i)
            delta = self._solve(i, keys, resid)
            with torch.no_grad():
                w = layers.weight_out_in(self.modules[i])
                w.add_(delta.to(w.dtype))
            norms.append(float(delta.norm()))
        self._after(site_list)
        return [receipt([r], self.config.stop_loss, self.detail(s, update_norms=norms))
                for s, r in zip(site_list, results)]
