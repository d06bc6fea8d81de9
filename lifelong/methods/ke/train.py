"""One edit's update (the gradient, the conditioning text, the hyper-network) and the
hyper-network's training on a train split.

The update (`update`): the fine-tuning gradient of the target's mean NLL at the current
weights, ``∇_W L = Σ_rows δ uᵀ`` from MEND's factors (`mend.train.factors`: no parameter of
the model needs a gradient), and the condition of the edit's text: the token ids of the prompt
``x``, the model's greedy prediction ``y`` (as many tokens as the target, `predictions`) and
the target ``a``, joined by the tokenizer's end-of-sequence token (the paper's ``[x; y; a]``).

Training (`train_hypernet`, the paper's section 3): per training edit, the update at the base
weights is served through hooks (`mend.train.edited`: the model with ``W + ΔW``, its weights
untouched, differentiable in ΔW); the edit loss is the target's NLL on the prompt and on one
rephrase, the constraint the mean KL(pre ‖ post) over `kl_inputs` other inputs (the record's
locality pairs, then other training prompts continued by the base model's own predictions,
the paper's "other inputs x′ with their predictions y′"). 'lagrangian' minimises
``L_edit + λ (KL − m)`` over the hyper-network while λ ≥ 0 ascends (its gradient negated,
clamped at 0 after each update), the margin m shrinking by 0.8 after every pass over the split
on which more than 90% of the edits succeeded (every target token the argmax on the prompt),
down to `margin_min`; 'weighted' minimises ``c_edit L_edit + c_loc KL``. Centered RMSprop, one
update per `accumulate` edits (`_common.loop.optimise`). The model is under `frozen`, so only
the hyper-network (and λ) learn. Deterministic from the seed: the initialisation, the order of
edits (a seeded permutation per pass), the rephrase and the other inputs of each.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ... import layers
from ...model import LM
from ...progress import Reporter
from ...scoring import encode_pairs, forward_logits, next_token_logp, score_pairs, tokenize_pair
from .._common.checkpoint import Checkpoint, ResumableDraws
from .._common.loop import Step, frozen, optimise
from .._common.rng import seeded_rng
from ..base import EditRequest
from ..context import TrainRecord
from ..mend.train import edited, factors, kl_pre_post
from .config import KeConfig
from .hypernet import HyperNetwork

#: bump when what is cached changes meaning (invalidates older entries)
FORMAT = 1
#: the margin is multiplied by this after a pass whose edits succeeded on more than `ANNEAL_AT`
ANNEAL, ANNEAL_AT = 0.8, 0.9


def predictions(lm: LM, requests: Sequence[EditRequest]) -> list[tuple[tuple[int, ...], str]]:
    """Per request, the model's greedy continuation of its prompt as long as its target: the
    token ids and the text (`scoring.score_pairs`' generation)."""
    scores = score_pairs(lm, [r.prompt for r in requests], [r.target for r in requests])
    return [(s.gen_ids, s.gen_text) for s in scores]


def condition_ids(lm: LM, request: EditRequest, prediction: Sequence[int]) -> list[int]:
    """The token ids the hyper-network reads: ``x``, ``y`` and ``a``, joined by EOS."""
    x, a = tokenize_pair(lm, request.prompt, request.target)
    sep = [] if lm.tok.eos_token_id is None else [int(lm.tok.eos_token_id)]
    return [*x, *sep, *prediction, *sep, *a]


def update(lm: LM, modules: Sequence[nn.Module], net: HyperNetwork, request: EditRequest,
           prediction: Sequence[int]) -> list[torch.Tensor]:
    """ΔW of every module for one edit at the current weights (differentiable in `net`)."""
    _, facs = factors(lm, modules, encode_pairs(lm, [request.prompt], [request.target]))
    grads = [d.T @ u for u, d in facs]
    embedding = layers.resolve(lm.model, "embed").weight
    return net.deltas(net.condition(embedding, condition_ids(lm, request, prediction)), grads)


def edit_loss(lm: LM, batch) -> tuple[torch.Tensor, bool]:
    """The mean target NLL of an `encode_pairs` batch (as `scoring.batch_target_loss`) and
    whether every target token of its first row is the model's argmax."""
    ids, mask, prompt_end, tlens, _ = batch
    logits = forward_logits(lm, ids, mask, prompt_end)
    logp = next_token_logp(logits, ids)
    width = ids.shape[1]
    positions = torch.arange(width - 1, device=logp.device).unsqueeze(0)
    in_target = positions >= (width - 1 - tlens.to(logp.device)).unsqueeze(1)
    loss = (-(logp * in_target).sum(-1) / tlens.to(logp.device)).mean()
    right = logits[:, :-1].argmax(-1) == ids[:, 1:].to(logits.device)
    return loss, bool((right | ~in_target)[0].all())


@dataclass
class Training:
    """What training did: updates taken, seconds, and per update the mean edit NLL after the
    edit and the mean KL; the final margin and multiplier."""

    steps: int = 0
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)
    kls: list[float] = field(default_factory=list)
    margin: float = 0.0
    multiplier: float = 0.0


class _Draws(ResumableDraws):
    """The training edits in a seeded order (a fresh permutation per pass); per edit a
    rephrase (the prompt itself when it has none) and its other inputs (module docstring)."""

    def __init__(self, records: Sequence[TrainRecord], texts: Sequence[str], kl_inputs: int,
                 seed: int):
        self.records, self.texts, self.k = list(records), list(texts), kl_inputs
        self.rng, self.order = seeded_rng(seed, "ke-train"), []

    def next(self) -> tuple[int, str, list[tuple[str, str]]]:
        if not self.order:
            self.order = list(range(len(self.records)))
            self.rng.shuffle(self.order)
        i = self.order.pop()
        r = self.records[i]
        rephrase = self.rng.choice(r.rephrases) if r.rephrases else r.request.prompt
        others = [j for j in range(len(self.records)) if j != i]
        own = list(r.locality)[:self.k]
        drawn = self.rng.sample(others, min(len(others), self.k - len(own)))
        pairs = own + [(self.records[j].request.prompt,
                        self.texts[j] or self.records[j].request.target) for j in drawn]
        return i, rephrase, pairs or [(r.request.prompt, self.texts[i] or r.request.target)]


def train_hypernet(lm: LM, modules: Sequence[nn.Module], net: HyperNetwork, cfg: KeConfig,
                   records: Sequence[TrainRecord], seed: int, label: str = "ke",
                   checkpoint: Checkpoint | None = None) -> Training:
    """Train `net` in place (module docstring); the model's weights are not changed. With a
    `checkpoint`, the training resumes from its saved state and saves its own as it goes
    (`_common.checkpoint`: the same updates as an uninterrupted training)."""
    preds = predictions(lm, [r.request for r in records])
    draws = _Draws(records, [text for _, text in preds], cfg.kl_inputs, seed)
    multiplier = nn.Parameter(torch.ones((), device=lm.device))
    multiplier.register_hook(lambda g: -g)  # gradient ascent on λ
    opt = torch.optim.RMSprop([{"params": list(net.parameters()), "lr": cfg.lr},
                               {"params": [multiplier], "lr": cfg.lr_lambda}], centered=True)
    result, ck = Training(margin=cfg.margin), checkpoint or Checkpoint()
    saved = ck.resume(net, opt, draws)
    if saved:
        with torch.no_grad():
            multiplier.copy_(saved["multiplier"])
        result.margin = float(saved["margin"])
    result.losses = [float(x) for x in saved.get("losses", [])]
    result.kls = [float(x) for x in saved.get("kls", [])]
    hits = [bool(h) for h in saved.get("hits", [])]  # this pass's edits: did each succeed
    prior = float(saved.get("seconds", 0.0))
    resumed = len(result.losses)  # one loss per update taken (`fresh_last=False`)
    report = Reporter(every_seconds=10.0)
    report.start(f"{label} hyper-network training", cfg.steps, unit="updates")
    if resumed:
        report.update(resumed, f"resumed at update {resumed}")
    start = time.monotonic()

    def state() -> dict:
        return ck.state(net, opt, draws, multiplier=multiplier.detach().clone(),
                        losses=list(result.losses), kls=list(result.kls), margin=result.margin,
                        hits=list(hits), seconds=prior + time.monotonic() - start)

    def one(i: int, rephrase: str, pairs: list[tuple[str, str]]) -> tuple[torch.Tensor, float, float]:
        req = records[i].request
        deltas = update(lm, modules, net, req, preds[i][0])
        prompts = [req.prompt] + ([rephrase] if rephrase != req.prompt else [])
        batch = encode_pairs(lm, prompts, [req.target] * len(prompts))
        loc = encode_pairs(lm, [p for p, _ in pairs], [a for _, a in pairs])
        with torch.no_grad():
            pre = forward_logits(lm, *loc[:3])
        with edited(modules, deltas):
            l_edit, hit = edit_loss(lm, batch)
            kl = kl_pre_post(pre, forward_logits(lm, *loc[:3]), loc[1])
        hits.append(hit)
        if len(hits) == len(records):  # a pass: anneal the margin when it went well
            if sum(hits) > ANNEAL_AT * len(hits) and result.margin > cfg.margin_min:
                result.margin = max(result.margin * ANNEAL, cfg.margin_min)
            hits.clear()
        if cfg.constraint == "lagrangian":
            loss = l_edit + multiplier * (kl - result.margin)
        else:
            loss = cfg.c_edit * l_edit + cfg.c_loc * kl
        return loss, float(l_edit.detach()), float(kl.detach())

    def step() -> Step:
        # the first accumulate-1 edits are backpropagated here; the loop backpropagates the
        # last (gradients add up: it zeroed them before this call)
        edit_total = kl_total = 0.0
        for k in range(cfg.accumulate):
            loss, l_edit, kl = one(*draws.next())
            edit_total, kl_total = edit_total + l_edit, kl_total + kl
            loss = loss / cfg.accumulate
            if k < cfg.accumulate - 1:
                loss.backward()
        result.losses.append(edit_total / cfg.accumulate)
        result.kls.append(kl_total / cfg.accumulate)
        report.update(len(result.losses), f"edit loss {result.losses[-1]:.4f}, "
                                          f"KL {result.kls[-1]:.2e}")
        return Step(loss, result.losses[-1])

    def after_update() -> None:
        with torch.no_grad():
            multiplier.clamp_(min=0.0)
        ck.at_update(state)

    taken = 0
    try:
        with frozen(lm.model):
            if cfg.steps > resumed:
                taken = optimise(opt, step, cfg.steps - resumed, fresh_last=False,
                                 after_update=after_update).steps
    finally:
        report.stop()
    result.steps, result.seconds = resumed + taken, prior + time.monotonic() - start
    result.multiplier = float(multiplier.detach())
    return result
