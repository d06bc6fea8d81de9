"""`ft-ewc`: fine-tuning of one MLP projection with elastic weight consolidation.

FT-EWC is the regularised fine-tuning baseline of the GRACE and WISE papers (EWC:
Kirkpatrick et al. 2017). Each edit runs `ft`'s loop on

    loss = target NLL + lambda / 2 * sum_i F_i (w_i - w*_i)^2

over the entries of the edited weight `w` only, where `F` is a diagonal Fisher and `w*` an
anchor. The variant is online EWC (Schwarz et al. 2018; Huszar 2018): one running Fisher and
one anchor instead of a (Fisher, anchor) pair per past task, so the memory stays two copies
of one weight however long the stream is, and a resumed run needs nothing else.

* At attach, on the pristine model: F = the empirical Fisher of unrelated text, the mean over
  `fisher_samples` texts of the squared gradient of each text's own next-token NLL (mean over
  its tokens) with respect to `w`; texts from `ctx.corpus_texts()` (the model's pretraining
  text), or the context's unrelated prompts when there is no corpus (`_locate.stats`'s
  fixed-seed sample, so every run of a model gets the same F). Anchor w* = the pre-stream
  weight.
* After each edit: every request's own Fisher (the squared gradient of its target NLL at the
  weights the edit ended with) is added to F, and the anchor moves to those weights.

The reference code (GRACE's `grace/editors/ft_ewc.py`) differs: it recomputes F before each
edit from the last 10 edits only, with no term for the pre-stream model, and anchors at the
current weights; the WISE paper's own implementation was not found.

With `ewc_lambda` 0 the method is `ft` with the same settings, update for update: the penalty
adds an exact zero to the gradient. Invariants: only the edited weight changes and receives
a gradient (the Fisher is taken with `torch.autograd.grad`, leaving no `.grad`); the state is
the weight, F, w* and the edit count, and loading it restores all four exactly; `detach`
restores the pre-stream weight. Not Retractable: the edits share one matrix, and F and w*
carry every edit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..config import setting
from ..model import LM
from ..scoring import batch_target_loss, encode_pairs, forward_logits, next_token_logp
from ._common.loop import frozen
from ._locate.stats import context_length, stats_texts
from .base import EditRequest, tensor_bytes
from .context import AttachContext
from .ft import FineTune


@dataclass(frozen=True)
class FTEWCConfig:
    """FT-EWC's settings; the names shared with `ft` mean what they mean there."""

    layer: int | None = setting(None, "layer to edit (negative counts from the end); default: "
                                      "the model's late-middle layer (reference: GRACE's "
                                      "ft_ewc on GPT2-XL edits layer 35 of 48, the same place)")
    module: str = setting("mlp.out", "which projection of the layer to fine-tune (reference: "
                                     "GRACE's ft_ewc edits mlp.in, the c_fc of GPT2-XL; ours: "
                                     "mlp.out, as `ft`)",
                          choices=("mlp.out", "mlp.in", "attn.out"))
    steps: int = setting(100, "maximum Adam steps per edit (reference: GRACE's n_iter 100)",
                         min=1, max=10_000)
    lr: float = setting(1e-2, "Adam learning rate (reference: GRACE's edit_lr 1e-2)", min=0.0)
    norm_constraint: float | None = setting(None, "L-infinity bound on each weight entry's "
                                                  "change against its pre-stream value, as "
                                                  "`ft`'s (none: unbounded, as the reference)")
    stop_loss: float = setting(0.05, "stop early once the edit's target loss is below this "
                                     "(ours, as `ft`; reference: stop once every target token "
                                     "is the argmax)", min=0.0)
    ewc_lambda: float = setting(0.2, "EWC strength: the loss adds lambda/2 * sum F (w - w*)^2 "
                                     "(reference: GRACE's ewc_lambda 0.1 on sum F (w - w*)^2 "
                                     "without the 1/2, i.e. 0.2 here; 0: plain `ft`)", min=0.0)
    fisher_samples: int = setting(64, "unrelated texts whose empirical Fisher is the pre-stream "
                                      "F (ours; reference: none, its F comes from the last 10 "
                                      "edits only; 0: F starts at zero)", min=0, max=100_000)


class FineTuneEWC(FineTune):
    """FT-EWC: `FineTune` whose edit loss adds the EWC penalty. State: the weight, the running
    Fisher `fisher` (float32, the weight's shape) and the anchor `anchor` (the weight's dtype).
    Footprint: the bytes of all three."""

    name = "ft-ewc"
    Config = FTEWCConfig
    summary = "FT-EWC: fine-tune one MLP projection with an online EWC penalty (no retraction)"
    no_retraction = ("ft-ewc cannot retract one edit: its change is entangled with every "
                     "other edit in the same weight, and in the Fisher and anchor they share")

    def attach(self, lm: LM, ctx: AttachContext) -> None:
        super().attach(lm, ctx)
        texts, source = stats_texts(ctx, self.config.fisher_samples, fallback=True)
        texts = texts[:self.config.fisher_samples]
        self.fisher_source = source if texts else "none"
        self.fisher = self._text_fisher(texts)
        self.anchor = self.original.clone()

    # ---- the Fisher: squared gradients of one loss per sample, w.r.t. the edited weight -----
    def _squared_grad(self, loss: torch.Tensor) -> torch.Tensor:
        (grad,) = torch.autograd.grad(loss, [self.weight])
        return grad.detach().float().pow(2)

    def _text_fisher(self, texts: Sequence[str]) -> torch.Tensor:
        """Mean squared gradient of each text's mean next-token NLL (zeros when no text has
        two tokens)."""
        total = torch.zeros(self.weight.shape, dtype=torch.float32, device=self.weight.device)
        width, used = context_length(self.lm), 0
        with frozen(self.lm.model, trainable=[self.weight]):
            for text in texts:
                ids = self.lm.tok(text, add_special_tokens=False)["input_ids"][:width]
                if len(ids) < 2:
                    continue
                row = torch.tensor([ids])
                mask = torch.ones_like(row)
                logits = forward_logits(self.lm, row, mask, torch.tensor([len(ids)]))
                total += self._squared_grad(-next_token_logp(logits, row).mean())
                used += 1
        return total / max(used, 1)

    def _edit_fisher(self, requests: Sequence[EditRequest]) -> torch.Tensor:
        """Sum over the requests of the squared gradient of each one's target NLL."""
        total = torch.zeros_like(self.fisher)
        with frozen(self.lm.model, trainable=[self.weight]):
            for r in requests:
                batch = encode_pairs(self.lm, [r.prompt], [r.target])
                total += self._squared_grad(batch_target_loss(self.lm, batch))
        return total

    def penalty(self) -> torch.Tensor:
        """sum F (w - w*)^2 over the edited weight (float32; gradients flow to `w`)."""
        return (self.fisher * (self.weight.float() - self.anchor.float()).pow(2)).sum()

    # ---- editing: `ft`'s loop, with the penalty added and F and the anchor updated after ----
    def _penalty(self) -> torch.Tensor:
        return self.config.ewc_lambda / 2 * self.penalty()

    def _after_edit(self, requests: Sequence[EditRequest]) -> dict[str, Any]:
        """F grows by the requests' Fisher and the anchor moves to the new weights."""
        self.fisher = self.fisher + self._edit_fisher(requests)
        self.anchor = self.weight.detach().clone()
        return {"fisher_sum": float(self.fisher.sum()), "fisher_source": self.fisher_source}

    # ---- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "fisher": self.fisher.clone(),
                "anchor": self.anchor.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.fisher = state["fisher"].to(self.fisher.device, self.fisher.dtype).clone()
        self.anchor = state["anchor"].to(self.weight.device, self.weight.dtype).clone()

    def footprint(self) -> int:
        return tensor_bytes(self.weight, self.fisher, self.anchor)
