"""Training one edit into a shard: SGD on the shard's masked delta with the target loss and
the paper's margin loss, through the shared edit loop, the base model frozen.

Loss (paper Eq. 5, as the reference computes it): the target NLL of the edit prompt and its
random-prefix copies, plus three hinge terms on the activation score Delta(x) =
||A(x) (W_side - W_main)^T|| (the mean over the scored tokens): unrelated inputs' scores
below alpha, the edit rows' above beta, and each edit row at least gamma above each
unrelated input; each term is the mean of its positive parts (0 when all are met).
After every update the delta is clamped within +/- norm_constraint (the reference clamps
each entry of the side weight around the main weight's).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...model import LM
from ...nethook import rewrite_output
from ...scoring import batch_target_loss
from .._common.hooks import Hooks
from .._common.loop import LoopResult, Step, frozen, optimise
from ..wise_faiss.memory import activation_score
from .config import WiseConfig
from .memory import Shard, clamp


@dataclass(frozen=True)
class Inputs:
    """What one edit trains on: the encoded prompt+target batch (the edit and its prefixed
    copies), the projection's input and score mask of those rows and of the negatives."""

    batch: tuple
    x_edit: torch.Tensor
    m_edit: torch.Tensor
    x_neg: torch.Tensor
    m_neg: torch.Tensor


def positive_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of the positive entries of `t` (0 when none is positive), as the reference's
    hinge terms."""
    pos = t > 0
    return (t * pos).sum() / pos.sum() if bool(pos.any()) else t.new_zeros(())


def margin_loss(s_edit: torch.Tensor, s_neg: torch.Tensor, a: float, b: float,
                g: float) -> torch.Tensor:
    """The paper's three hinge terms (in score units)."""
    gap = s_neg.unsqueeze(1) - s_edit.unsqueeze(0) + g
    return positive_mean(gap) + positive_mean(s_neg - a) + positive_mean(b - s_edit)


def train_shard(lm: LM, module: torch.nn.Module, hooks: Hooks, cfg: WiseConfig, scale: float,
                shard: Shard, inp: Inputs) -> tuple[LoopResult, torch.Tensor, float]:
    """Optimise `shard`'s delta on one edit; returns the loop's result, the new delta (masked
    update, clamped) and the score of the edit's own prompt (row 0) under it. While training every
    row goes through the delta being trained (serving suspended, a training context open)."""
    base = shard.delta.detach()
    mask = shard.mask.to(base.dtype)
    p = torch.zeros_like(base, requires_grad=True)
    opt = torch.optim.SGD([p], lr=cfg.lr)
    a, b, g = cfg.alpha * scale, cfg.beta * scale, cfg.gamma * scale
    current = [base]

    def delta() -> torch.Tensor:
        return base + p * mask

    def step() -> Step:
        d = delta()
        current[0] = d
        nll = batch_target_loss(lm, inp.batch)
        margin = margin_loss(activation_score(inp.x_edit, inp.m_edit, d),
                             activation_score(inp.x_neg, inp.m_neg, d), a, b, g)
        value = float(nll.detach())
        return Step(nll + margin, value, value < cfg.stop_loss and float(margin.detach()) == 0.0)

    def constrain() -> None:
        with torch.no_grad():
            p.copy_((clamp(delta(), cfg.norm_constraint) - base) * mask)

    with frozen(lm.model), hooks.suspended(), \
            rewrite_output(module, lambda x, y: y + x @ current[0].T):
        result = optimise(opt, step, cfg.steps, fresh_last=False,
                          after_update=constrain if cfg.norm_constraint is not None else None)
    with torch.no_grad():
        final = delta().detach().clone()
        score = float(activation_score(inp.x_edit[:1], inp.m_edit[:1], final)[0])
    return result, final, score
