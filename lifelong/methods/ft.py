"""`ft`: FT-L, constrained fine-tuning of one MLP output projection per edit.

Each edit runs a few optimiser steps on the target loss of that edit only, updating only the
weight of `layers.{layer}.{module}`; an optional L-infinity bound keeps the weight within
`norm_constraint` of its pre-stream value (Zhu et al. 2020, as used as a baseline by ROME).
Edits accumulate in the shared weight, so they interfere: this is the field's classic
forgetting baseline. It cannot retract a single edit: the change is entangled with every
other edit in the same matrix, so `retract` raises NotSupported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from .. import layers
from ..config import setting
from ..errors import NotSupported
from ..model import LM
from ..scoring import batch_target_loss, encode_pairs
from .base import AttachContext, EditReceipt, EditRequest, MemoryBase, tensor_bytes


@dataclass(frozen=True)
class FTConfig:
    layer: int | None = setting(None, "layer to edit (negative counts from the end); "
                                      "default: the model's late-middle layer")
    module: str = setting("mlp.out", "which projection of the layer to fine-tune",
                          choices=("mlp.out", "mlp.in", "attn.out"))
    steps: int = setting(25, "maximum optimiser steps per edit", min=1, max=10_000)
    lr: float = setting(1e-2, "Adam learning rate", min=0.0)
    norm_constraint: float | None = setting(2e-2, "L-infinity bound on the change of each weight "
                                                  "entry against its pre-stream value (none: "
                                                  "unbounded; unbounded FT-L wrecks the built-in "
                                                  "model within a few edits)")
    stop_loss: float = setting(0.05, "stop early once the edit's target loss is below this", min=0.0)


class FineTune(MemoryBase):
    """FT-L. State: the fine-tuned weight. Footprint: the bytes of that weight."""

    name = "ft"
    Config = FTConfig
    summary = "FT-L: fine-tune one MLP projection per edit (no retraction)"
    #: lifelong export: the memory is a weight change (a merged model is written)
    memory_kind = "weights"

    def attach(self, lm: LM, ctx: AttachContext) -> None:
        self.lm = lm
        self.layer_name, self.module = layers.edit_target(lm.model, self.config.layer,
                                                          self.config.module)
        self.weight: torch.nn.Parameter = self.module.weight
        self.original = self.weight.detach().clone()
        # only the edited weight learns; the flags are restored by detach()
        self.grad_flags = {n: p.requires_grad for n, p in lm.model.named_parameters()}
        for p in lm.model.parameters():
            p.requires_grad_(False)
        self.weight.requires_grad_(True)
        self.n_edits = 0

    def edit(self, requests: Sequence[EditRequest]) -> EditReceipt:
        prompts = [r.prompt for r in requests]
        targets = [r.target for r in requests]
        opt = torch.optim.Adam([self.weight], lr=self.config.lr)
        first = last = None
        steps = 0
        batch = encode_pairs(self.lm, prompts, targets)  # once: the loop only re-runs the model
        for steps in range(1, self.config.steps + 1):
            opt.zero_grad(set_to_none=True)
            loss = batch_target_loss(self.lm, batch)
            last = float(loss.detach())
            first = last if first is None else first
            if last < self.config.stop_loss:
                steps -= 1
                break
            loss.backward()
            opt.step()
            self._constrain()
        self.n_edits += len(requests)
        return EditReceipt(applied=True, loss_before=first, loss_after=last, steps=steps,
                           detail={"layer": self.layer_name},
                           converged=last is not None and last < self.config.stop_loss)

    @torch.no_grad()
    def _constrain(self) -> None:
        eps = self.config.norm_constraint
        if eps is not None:
            delta = (self.weight - self.original).clamp_(-eps, eps)
            self.weight.copy_(self.original + delta)

    def retract(self, edit_id: str) -> None:
        raise NotSupported("ft cannot retract one edit: its change is entangled with every "
                           "other edit in the same weight")

    def state_dict(self) -> dict[str, Any]:
        return {"weight": self.weight.detach().clone(), "n_edits": self.n_edits}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.weight.copy_(state["weight"])
        self.n_edits = int(state["n_edits"])

    def footprint(self) -> int:
        return tensor_bytes(self.weight)

    @torch.no_grad()
    def detach(self) -> None:
        self.weight.copy_(self.original)
        for n, p in self.lm.model.named_parameters():
            p.requires_grad_(self.grad_flags[n])
