"""`rome`: ROME (Meng et al. 2022, "Locating and Editing Factual Associations in GPT"), a
rank-one update of one MLP output projection per edit.

Where: ``layers.{layer}.mlp.out`` (default: `layers.default_edit_layer`, the model config's
`lifelong_edit_layer` from its causal trace). Per edit: the key k* is the projection's input
at the lookup token (`key_position`), averaged over the bare prompt and random prefix
contexts; the value v* is the projection's output there, optimised so that the model
outputs the target (`_locate/values.py`: NLL + KL on "{subject} is a" + weight decay, norm
clamp). Then the closed form (the paper's eq. 2), with C = E[kkᵀ] over the corpus:

    W ← W + (v* − (W k* + b)) (C⁻¹ k*)ᵀ / ((C⁻¹ k*)ᵀ k*)

so that the new weight maps k* to v* exactly, and changes the output for any other key k in
proportion to kᵀ C⁻¹ k* (keys C-orthogonal to k* are untouched). A batch (`edit_batch`) is
applied one edit after another, as the paper's sequential use does. Retraction: exact, by
replaying the log from the base weights (`_locate/method.py`), or refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .. import layers
from ..config import setting
from ._common.loop import receipt
from ._locate.config import LocateConfig
from ._locate.lookup import keys_at
from ._locate.method import LocateEdit
from ._locate.values import optimise_value
from .base import EditReceipt, EditRequest


@dataclass(frozen=True)
class RomeConfig(LocateConfig):
    layer: int | None = setting(None, "layer whose mlp.out is edited (negative counts from the "
                                      "end); default: the model's edit layer (its causal "
                                      "trace's; the paper: layer 17 of GPT-2 XL from its trace)")


def rank_one(w: torch.Tensor, bias: torch.Tensor | None, cov: torch.Tensor, key: torch.Tensor,
             value: torch.Tensor, ridge: float) -> torch.Tensor:
    """ROME's ΔW (out, in) that makes `w` map `key` to `value` (bias included), weighted by
    C⁻¹ (float64 algebra)."""
    c = cov.double()
    c = c + ridge * c.diagonal().mean() * torch.eye(c.shape[0], dtype=c.dtype, device=c.device)
    k = key.double()
    u = torch.linalg.solve(c, k)
    current = w.double() @ k + (bias.double() if bias is not None else 0.0)
    return torch.outer(value.double() - current, u) / torch.dot(u, k)


class Rome(LocateEdit):
    """ROME. State: the edited weight and the log. Footprint: the edited weight's bytes."""

    name = "rome"
    Config = RomeConfig
    summary = "ROME: rank-one update of one MLP projection per edit, from key statistics"
    no_retraction = "rome with retract = \"unsupported\" cannot retract"

    def _layers(self, model: torch.nn.Module) -> list[int]:
        return [layers.layer_index(model, self.config.layer if self.config.layer is not None
                                   else layers.default_edit_layer(model))]

    def _apply(self, requests: Sequence[EditRequest]) -> list[EditReceipt]:
        name, module = self.names[0], self.modules[0]
        out = []
        for site in self.sites(requests):
            key = keys_at(self.lm, [name], [site])[name][0]
            _, value, result = optimise_value(self.lm, name, site, self.value_settings())
            with torch.no_grad():
                w = layers.weight_out_in(module)
                bias = getattr(module, "bias", None)
                delta = rank_one(w, bias, self.cov[name], key, value, self.config.ridge)
                w.add_(delta.to(w.dtype))
            out.append(receipt([result], self.config.stop_loss,
                               self.detail(site, update_norm=float(delta.norm()))))
        return out
