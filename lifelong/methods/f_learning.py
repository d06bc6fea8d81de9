"""`f-learning`: F-Learning, forgetting before learning (Ni et al. 2023, arXiv 2311.08011),
its full-fine-tuning variant, on one MLP projection.

An edit whose request knows the fact's value before it (`EditRequest.previous`) is made in
three steps on the weight W of `layers.{layer}.{module}` (the same module `ft` edits):

1. fine-tune W on (prompt -> previous) for `forget_steps` Adam steps: W_old;
   delta_old = W_old - W (the model's weight is trained in place and then reset to W, so
   the fine-tuned-on-old weight never stays in the model);
2. forget: W <- W - lam * delta_old (parametric arithmetic: the change that learning the old
   value would make, negated);
3. learn: fine-tune W on (prompt -> target) exactly as `ft` does (this class is `ft`'s
   `FineTune` with a forgetting step before its own `edit`).

A request without a previous value (a fact edited for the first time, where the stream does
not know what the model held) is learnt by step 3 alone; its forgetting is skipped and
counted (`detail["forget_skipped"]`, `n_forget_skipped`). With `forget = false` every edit is
step 3 alone: `ft` with the same settings, bit for bit, which is the control "F-Learning
against its own learning step alone" (same optimiser, same steps, no forgetting).

Invariants: the weight after step 2 is exactly `W - lam * (W_old - W)` (as computed here, in
the weight's dtype); nothing outside the edited weight changes or gets a gradient; with
`lam = 0` the edit equals `forget = false`; `state_dict` holds the weight and the counters
and loads bit-identical; `detach` restores the pre-stream weight.

Where it differs from the paper (`setting` help says "paper: ..."):
* the paper fine-tunes the whole model on a data set of old facts, then on the new ones; here
  one projection, one edit (or one batch, `BatchEditing` as in `ft`) at a time;
* step 1 never stops early (`stop_loss` is for step 3): the old value is usually what the
  model already answers, so a loss threshold would end the fine-tune before it moved W and
  there would be nothing to subtract;
* `norm_constraint` (as `ft`) bounds W against its pre-stream value after every learning
  update (after step 2 itself when step 3 makes none), so it also bounds what step 2
  removed; the paper has no bound;
* lambda: the paper's own value was not found in the sources reachable here (the abstract
  and summaries only), so `lam = 1` (the whole fine-tuning delta negated, as task-arithmetic
  negation does) with step 1 scaled so its delta is the size of `ft`'s L-infinity box
  (Adam moves each entry about `forget_lr` per step: 10 x 2e-3 = 2e-2).

`tuner = "lora"` is the paper's LoRA variant (LoRA forgetting, then LoRA learning), on the
same projection, with `lora`'s `LoraAdapter` (peft, an optional extra; rank 8, alpha 32,
dropout 0.1: the `lora` method's defaults): step 1 trains a fresh adapter on the old values
(`forget_steps`, `forget_lr`) and step 2 subtracts lam times its delta from the weight the
learning adapter is added to; step 3 trains the learning adapter, one for the whole stream
(as `lora`), merged into the weight after every edit. `norm_constraint` does not apply
(the rank bounds the change). State: also the adapter and its shifted base weight.

`forget_tuner = "lora"` with `tuner = "full"` is the paper's third variant, LoRA forgetting
then full learning: step 1 trains a fresh adapter (the same rank, alpha and dropout) on the
weight as it is now, step 2 subtracts lam times its delta from the weight itself, step 3 is
`ft`'s. FT forgetting with LoRA learning is not one of the paper's variants and is refused.
Not retractable: forgetting and learning both land in the shared weight.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from ..config import setting
from ..errors import ConfigError
from ..model import LM
from ..scoring import batch_target_loss, encode_pairs
from ._common.loop import LoopResult, Step, frozen, optimise
from .base import EditReceipt, EditRequest
from .context import AttachContext
from .ft import FineTune
from .lora import LoraAdapter, LoRAConfig, require_peft


@dataclass(frozen=True)
class FLearningConfig:
    layer: int | None = setting(None, "layer to edit (negative counts from the end); default: "
                                      "the model's late-middle layer (paper: every layer)")
    module: str = setting("mlp.out", "which projection of the layer to fine-tune (paper: every "
                                     "weight of the model)",
                          choices=("mlp.out", "mlp.in", "attn.out"))
    tuner: str = setting("full", "what forgets and learns: full, the projection's weight itself; "
                                 "lora, a LoRA adapter on it (rank 8, alpha 32, dropout 0.1, as "
                                 "the `lora` method; needs peft) (paper: both)",
                         choices=("full", "lora"))
    forget_tuner: str | None = setting(None, "what forgets: full, a fine-tune of the weight; "
                                             "lora, a fresh LoRA adapter whose delta is "
                                             "subtracted; unset (default): the same as tuner (paper: "
                                             "full/full, lora/lora and lora forgetting with full "
                                             "learning)", choices=("full", "lora"))
    forget: bool = setting(True, "forget the previous value before learning the new one; false: "
                                 "the learning step alone (`ft` with the same settings, the "
                                 "control; tuner lora: LoRA learning alone)")
    forget_steps: int = setting(10, "Adam steps fine-tuning on (prompt -> previous value), all "
                                    "of them: no early stop (paper: fine-tunes on the whole "
                                    "old-knowledge set)", min=1, max=10_000)
    forget_lr: float = setting(2e-3, "Adam learning rate of the forgetting fine-tune (default: "
                                     "its delta about as large as norm_constraint)", min=0.0)
    lam: float = setting(1.0, "forget by W <- W - lam x (W fine-tuned on the previous value - W)"
                              "; 0: nothing subtracted (paper: lambda, its value not found "
                              "here; 1 negates the whole delta)", min=0.0)
    steps: int = setting(25, "maximum optimiser steps of the learning fine-tune (as ft)",
                         min=1, max=10_000)
    lr: float = setting(1e-2, "Adam learning rate of the learning fine-tune (as ft)", min=0.0)
    norm_constraint: float | None = setting(2e-2, "L-infinity bound on the change of each weight "
                                                  "entry against its pre-stream value, applied "
                                                  "after every learning update as in ft (none: "
                                                  "unbounded, as in the paper; unbounded "
                                                  "fine-tuning wrecks the built-in model within "
                                                  "a few edits; tuner lora: not applied)")
    stop_loss: float = setting(0.05, "stop the learning fine-tune once the edit's target loss is "
                                     "below this (as ft)", min=0.0)

    def __post_init__(self) -> None:
        if self.tuner == "lora" and self.forget_tuner == "full":
            raise ConfigError('forget_tuner = "full" with tuner = "lora" (FT forgetting, LoRA '
                              "learning) is not one of F-Learning's variants; the paper's: "
                              "full/full, lora/lora, lora forgetting with full learning")

    @property
    def forgets_with(self) -> str:
        """The forgetting tuner in effect."""
        return self.forget_tuner or self.tuner


class FLearning(FineTune):
    """F-Learning (module docstring). State: the edited weight, the number of edits, of
    requests whose old value was forgotten and of those whose forgetting was skipped (tuner
    lora: also the adapter). Footprint: the bytes of the weight, and the adapter's (the
    forgetting fine-tune's copies are transient)."""

    name = "f-learning"
    Config = FLearningConfig
    summary = ("F-Learning: subtract a fine-tune on the old value, then fine-tune on the new "
               "(one MLP projection; no retraction)")
    no_retraction = ("f-learning cannot retract one edit: its forgetting and learning changes "
                     "are entangled with every other edit in the same weight")

    def attach(self, lm: LM, ctx: AttachContext) -> None:
        super().attach(lm, ctx)
        self.n_forgotten = 0
        self.n_forget_skipped = 0
        self.adapter = self._lora_adapter("tuner") if self.config.tuner == "lora" else None
        if self.config.forgets_with == "lora":
            require_peft('f-learning with forget_tuner = "lora"')  # at attach, not mid-stream

    def _lora_adapter(self, which: str) -> LoraAdapter:
        """A LoRA adapter (the `lora` method's rank, alpha and dropout) on the edited
        projection, added to its weight as it is now."""
        d = LoRAConfig()
        return LoraAdapter(self.lm.model, [self.layer_name], rank=d.rank, alpha=d.alpha,
                           dropout=d.dropout, seed=self.seed,
                           who=f'f-learning with {which} = "lora"')

    def edit(self, requests: Sequence[EditRequest]) -> EditReceipt:
        """Forget the previous values the requests carry, then learn the targets as `ft`
        (one joint optimisation per step, as `ft` does for a batch)."""
        cfg = self.config
        old = [r for r in requests if r.previous] if cfg.forget else []
        skipped = len(requests) - len(old) if cfg.forget else 0
        detail: dict[str, Any] = {"forget": cfg.forget, "forget_skipped": skipped}
        if old:
            detail.update(self._forget(old))
        learnt = super().edit(requests)
        if old and learnt.steps == 0:
            self._constrain()  # no learning update projected the subtraction back
        self.n_forgotten += len(old)
        self.n_forget_skipped += skipped
        return replace(learnt, detail={**learnt.detail, **detail})

    def _forget(self, old: Sequence[EditRequest]) -> dict[str, Any]:
        """Steps 1 and 2: W <- W - lam * (W fine-tuned on the old values - W); with LoRA,
        the learning adapter's base weight <- itself - lam * (a fresh adapter's delta)."""
        batch = encode_pairs(self.lm, [r.prompt for r in old], [r.previous for r in old])

        def step() -> Step:
            loss = batch_target_loss(self.lm, batch)
            return Step(loss, float(loss.detach()))  # a fixed number of steps: no stop

        cfg = self.config
        key = "forget:" + ",".join(r.edit_id for r in old)
        if self.adapter is not None:
            fit = self.adapter.subtract_fitted(step, cfg.forget_steps, cfg.forget_lr, cfg.lam, key)
        elif cfg.forgets_with == "lora":
            fit = self._lora_adapter("forget_tuner").subtract_fitted(
                step, cfg.forget_steps, cfg.forget_lr, cfg.lam, key)
        else:
            fit = self._forget_full(step)
        with torch.no_grad():
            old_loss = float(batch_target_loss(self.lm, batch))
        return {"forget_steps": fit.steps, "old_loss_before": fit.first,
                "old_loss_after_forget": old_loss}

    def _forget_full(self, step: Callable[[], Step]) -> LoopResult:
        """Whatever happens in the fine-tune, W is reset before the subtraction (or the error)."""
        weight = self.weight
        before = weight.detach().clone()
        opt = torch.optim.Adam([weight], lr=self.config.forget_lr)
        try:
            with frozen(self.lm.model, trainable=[weight]):
                fit = optimise(opt, step, self.config.forget_steps, fresh_last=False)
            delta_old = weight.detach() - before
        finally:
            with torch.no_grad():
                weight.copy_(before)
            weight.grad = None
        with torch.no_grad():
            weight.copy_(before - self.config.lam * delta_old)
        return fit

    def _tuning(self, requests: Sequence[EditRequest]
                ) -> contextlib.AbstractContextManager[list[torch.nn.Parameter]]:
        if self.adapter is None:
            return super()._tuning(requests)
        return self.adapter.tuning("learn:" + ",".join(r.edit_id for r in requests))

    def _constrain(self) -> None:
        if self.adapter is None:
            super()._constrain()

    def state_dict(self) -> dict[str, Any]:
        adapter = {} if self.adapter is None else {"adapter": self.adapter.state_dict()}
        return {**super().state_dict(), "n_forgotten": self.n_forgotten,
                "n_forget_skipped": self.n_forget_skipped, **adapter}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if self.adapter is not None:
            self.adapter.load_state_dict(state["adapter"])
        self.n_forgotten = int(state["n_forgotten"])
        self.n_forget_skipped = int(state["n_forget_skipped"])

    def footprint(self) -> int:
        return super().footprint() + (0 if self.adapter is None else self.adapter.nbytes())
