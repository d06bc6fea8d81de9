"""`ft`: FT-L, constrained fine-tuning of one MLP output projection per edit.

Each edit runs a few optimiser steps on the target loss of that edit only, updating only the
weight of `layers.{layer}.{module}`; an optional L-infinity bound keeps the weight within
`norm_constraint` of its pre-stream value (Zhu et al. 2020, as used as a baseline by ROME).
Edits accumulate in the shared weight, so they interfere: this is the field's classic
forgetting baseline. It cannot retract a single edit: the change is entangled with every
other edit in the same matrix, so it is not Retractable (`no_retraction` says why).
A batch of edits (`BatchEditing`: `schedule.edit_batch` > 1) is learnt jointly: one
optimisation of the mean target loss of the batch, as batch FT-L does; each receipt reports
the batch's figures.

Deviation, named: the loss is the teacher-forced NLL of the target tokens with the prompt
masked (`scoring.batch_target_loss`), which is FT-M's objective (EasyEdit's ``target_new``;
`ft-m` is that objective unbounded, with EasyEdit's defaults). ROME's and EasyEdit's FT-L
(``prompt_last``) score every target token against the logits of the last prompt position
instead; that objective is not implemented yet. The two agree for one-token targets.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .. import layers
from ..config import setting
from ..model import LM
from ..scoring import batch_target_loss, encode_pairs
from ._common.loop import Step, frozen, optimise, receipt
from .base import (
    BatchEditing,
    EditReceipt,
    EditRequest,
    MemoryBase,
    shared_receipts,
    tensor_bytes,
)
from .context import AttachContext


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


class FineTune(MemoryBase, BatchEditing):
    """FT-L. State: the fine-tuned weight. Footprint: the bytes of that weight."""

    name = "ft"
    Config = FTConfig
    summary = ("FT-L's bounded fine-tuning of one MLP projection per edit, on the masked "
               "target loss (no retraction)")
    memory_kind = "weights"
    no_retraction = ("ft cannot retract one edit: its change is entangled with every other "
                     "edit in the same weight")

    def attach(self, lm: LM, ctx: AttachContext) -> None:
        self.lm = lm
        self.layer_name, self.module = layers.edit_target(lm.model, self.config.layer,
                                                          self.config.module)
        self.weight: torch.nn.Parameter = self.module.weight
        self.original = self.weight.detach().clone()
        self.n_edits = 0

    def edit(self, requests: Sequence[EditRequest]) -> EditReceipt:
        """One optimisation of the requests' mean target loss (only the edited weight learns)."""
        batch = encode_pairs(self.lm, [r.prompt for r in requests], [r.target for r in requests])

        def step() -> Step:
            loss = batch_target_loss(self.lm, batch)
            value = float(loss.detach())
            penalty = self._penalty()
            return Step(loss if penalty is None else loss + penalty, value,
                        value < self.config.stop_loss)

        with self._tuning(requests) as params:
            opt = torch.optim.Adam(params, lr=self.config.lr)
            with frozen(self.lm.model, trainable=params):
                result = optimise(opt, step, self.config.steps, fresh_last=False,
                                  after_update=self._constrain)
        self.n_edits += len(requests)
        return receipt([result], self.config.stop_loss,
                       {"layer": self.layer_name, **self._after_edit(requests)})

    @contextlib.contextmanager
    def _tuning(self, requests: Sequence[EditRequest]) -> Iterator[list[torch.nn.Parameter]]:
        """The parameters one edit optimises, for the span of its optimisation: here the
        edited weight itself; `lora`: an adapter's, injected for the span and merged into the
        weights when it ends."""
        yield [self.weight]

    def _penalty(self) -> torch.Tensor | None:
        """A term added to the target loss at every step (none here; `ft-ewc`: EWC). The
        receipt and the stop rule read the target loss alone."""
        return None

    def _after_edit(self, requests: Sequence[EditRequest]) -> dict[str, Any]:
        """Bookkeeping after an edit's optimisation; returns extra receipt detail."""
        return {}

    def edit_batch(self, requests: Sequence[EditRequest]) -> list[EditReceipt]:
        return shared_receipts(self.edit(requests), len(requests))

    @torch.no_grad()
    def _constrain(self) -> None:
        eps = self.config.norm_constraint
        if eps is not None:
            delta = (self.weight - self.original).clamp_(-eps, eps)
            self.weight.copy_(self.original + delta)

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
