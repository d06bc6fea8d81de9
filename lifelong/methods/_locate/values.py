"""The value optimisation of ROME (v*) and MEMIT/AlphaEdit (z): a vector δ added to one
module's output at the lookup token, trained so that the model outputs the target.

Loss (Meng et al. 2022, eq. 4; MEMIT and AlphaEdit use the same):

    NLL(target | context_j + prompt), averaged over the bare prompt and its prefix contexts
    + kl_factor · KL(p(· | "{subject} is a") with δ ‖ without δ)   (essence drift)
    + weight_decay · ‖δ‖² / ‖v0‖²

with v0 the module's output at the bare prompt's lookup token; after every Adam step δ is
clamped to ‖δ‖ ≤ clamp · ‖v0‖; the loop stops once the NLL is below `stop_loss`. Only δ
learns (`frozen(model)`). The result is v0 + δ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ... import layers
from ...model import LM
from ...nethook import replace_output
from ...scoring import forward_logits, next_token_logp
from .._common.loop import LoopResult, Step, frozen, optimise
from .lookup import Site, encode_rows, subject_last


@dataclass(frozen=True)
class ValueSettings:
    steps: int
    lr: float
    kl_factor: float
    weight_decay: float
    clamp: float
    stop_loss: float


def kl_prompt(site: Site) -> str | None:
    """ROME's essence prompt "{subject} is a"; None for a request without a subject (no KL
    term then)."""
    subject = site.request.subject
    return f"{subject} is a" if subject else None


def optimise_value(lm: LM, name: str, site: Site, s: ValueSettings
                   ) -> tuple[torch.Tensor, torch.Tensor, LoopResult]:
    """(v0, v0 + δ, the loop's result) for one request at module `name`'s output."""
    module = layers.resolve(lm.model, name)
    prompts = list(site.prompts)
    where: list[int | None] = [site.from_end] * len(prompts)
    essence = kl_prompt(site)
    if essence is not None:  # its lookup: the subject's last token, or its own last token
        where.append(subject_last(lm, essence, site.request.subject)
                     if site.from_end is not None else None)
        prompts.append(essence)
    rows = encode_rows(lm, prompts, [site.request.target] * len(prompts), where)
    ids, mask, end, tlens, _ = rows.batch
    n = len(site.prompts)
    dev = lm.device
    width = ids.shape[1]
    at = torch.zeros((len(prompts), width, 1), device=dev)
    at[torch.arange(len(prompts)), rows.lookup.to(dev)] = 1.0
    positions = torch.arange(width - 1, device=dev).unsqueeze(0)
    in_target = (positions >= (width - 1 - tlens.to(dev)).unsqueeze(1))[:n]
    kl_pos = int(end[-1]) - 1

    with torch.no_grad():
        captured: dict[str, torch.Tensor] = {}

        def grab(y: torch.Tensor) -> torch.Tensor:
            captured["y"] = y[0, int(rows.lookup[0])].detach().float().clone()
            return y

        with replace_output(module, grab):
            logits = forward_logits(lm, ids, mask, end)
        v0 = captured["y"]
        kl_ref = (torch.log_softmax(logits[-1, kl_pos].float(), -1)
                  if essence is not None else None)

    delta = torch.zeros_like(v0, requires_grad=True)
    v0_norm = float(v0.norm()) or 1.0
    opt = torch.optim.Adam([delta], lr=s.lr)

    def step() -> Step:
        with replace_output(module, lambda y: y + at.to(y.dtype) * delta.to(y.dtype)):
            logits = forward_logits(lm, ids, mask, end)
        tok_logp = next_token_logp(logits, ids)[:n]
        nll = (-(tok_logp * in_target).sum(-1) / tlens[:n].to(dev)).mean()
        loss = nll + s.weight_decay * delta.pow(2).sum() / v0_norm ** 2
        if kl_ref is not None and s.kl_factor:
            cur = torch.log_softmax(logits[-1, kl_pos].float(), -1)
            loss = loss + s.kl_factor * torch.sum(cur.exp() * (cur - kl_ref))
        value = float(nll.detach())
        return Step(loss, value, value < s.stop_loss)

    @torch.no_grad()
    def clamp() -> None:
        limit = s.clamp * v0_norm
        norm = float(delta.norm())
        if norm > limit:
            delta.mul_(limit / norm)

    with frozen(lm.model):
        result = optimise(opt, step, s.steps, fresh_last=True, after_update=clamp)
    return v0, v0 + delta.detach(), result
