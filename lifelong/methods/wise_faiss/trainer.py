"""Training one edit into one side memory: a masked, optionally null-space-projected delta
optimised on the edit's target loss (plus the paper's margin terms when a router reads
activation scores), through the shared edit loop.

The margin terms (units of `scale`, the median norm of the projection's output on unrelated
prompts): unrelated inputs below alpha, the edit above beta, a gap gamma. With `protect`,
every step is projected off the span of the memory's earlier edit keys, so an edit cannot
move what the memory answers at the keys before it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...model import LM
from ...nethook import rewrite_output
from ...scoring import batch_target_loss
from .._common.hooks import Hooks
from .._common.loop import LoopResult, Step, frozen, optimise
from .config import WiseFaissConfig
from .memory import SideMemory, activation_score, masked_step


@dataclass(frozen=True)
class Inputs:
    """What one edit trains on: the encoded target batch (the edit and its rehearsals), the
    edit's activations and router mask, the negatives' (or None), the protected basis."""

    batch: tuple
    x_edit: torch.Tensor
    m_edit: torch.Tensor
    x_neg: torch.Tensor | None
    m_neg: torch.Tensor | None
    basis: torch.Tensor | None


def train_delta(lm: LM, module: torch.nn.Module, hooks: Hooks, cfg: WiseFaissConfig, scale: float,
                mem: SideMemory, inp: Inputs) -> tuple[LoopResult, torch.Tensor]:
    """Optimise a step of `mem`'s open shard; returns the loop's result and the step (full
    size, masked and projected). While training, every row goes to the delta being trained
    (the serving hooks are suspended and a training context is open instead)."""
    base = mem.delta().detach()
    mask = mem.mask.to(base.dtype)
    rows = mem.mask[:, 0].nonzero()[:, 0] if cfg.mask_unit == "row" else None
    # a row mask trains only its rows: a smaller parameter, and a cheaper projection
    p = torch.zeros((len(rows), base.shape[1]) if rows is not None else base.shape,
                    dtype=base.dtype, device=base.device, requires_grad=True)
    opt = (torch.optim.SGD([p], lr=cfg.lr, momentum=cfg.momentum) if cfg.optimizer == "sgd"
           else torch.optim.Adam([p], lr=cfg.lr))
    # the margin terms shape the activation score; with the FAISS router serving nothing
    # reads it, and they cost ~8x the steps (so no negatives are run through the model)
    shape_scores = cfg.router == "activation" or cfg.faiss_check
    a, b, g = cfg.alpha * scale, cfg.beta * scale, cfg.gamma * scale
    trained = [base]
    seen = [float("inf")]  # the last step's loss (momentum_restart)

    def step() -> Step:
        delta = base + masked_step(p, mask, rows, inp.basis)
        trained[0] = delta
        nll = batch_target_loss(lm, inp.batch)
        s_edit = activation_score(inp.x_edit, inp.m_edit, delta).mean()
        margin = torch.relu(b - s_edit) if shape_scores else nll.new_zeros(())
        if inp.x_neg is not None:
            s_neg = activation_score(inp.x_neg, inp.m_neg, delta)
            margin = margin + torch.relu(s_neg - a).mean() + torch.relu(g - (s_edit - s_neg)).mean()
        value = float(nll.detach())
        total = nll + cfg.margin_weight * margin
        if cfg.momentum_restart:
            restart_if_worse(opt, float(total.detach()), seen)
        return Step(total, value, value < cfg.stop_loss and float(margin.detach()) == 0.0)

    with frozen(lm.model), hooks.suspended(), \
            rewrite_output(module, lambda x, y: y + x @ trained[0].T):
        result = optimise(opt, step, cfg.steps, fresh_last=False)
    with torch.no_grad():  # the final parameter (the last evaluated step predates its update)
        return result, masked_step(p, mask, rows, inp.basis)


def restart_if_worse(opt: torch.optim.Optimizer, loss: float, seen: list[float]) -> None:
    """Adaptive restart (O'Donoghue and Candes 2015, the function scheme): when the loss
    went up since the last step, drop the momentum, so the next update is the plain
    gradient step. `seen` holds the last loss."""
    if loss > seen[0]:
        for state in opt.state.values():
            if "momentum_buffer" in state and state["momentum_buffer"] is not None:
                state["momentum_buffer"].zero_()
    seen[0] = loss
