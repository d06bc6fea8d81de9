"""SERAC's counterfactual model: a copy of the base model fine-tuned to answer an input given
an edit, and the logits it serves in place of the base model's. The conditioning and the
serving of rows are method-neutral and live in `_common/conditioning.py` (also IKE's).

Conditioned input (`conditioned`): the edit's tokens ``prompt + target`` (as
`scoring.tokenize_pair` splits them) and the separator's tokens (`separator`, "." by
default), then the input's own token ids, unchanged. The input is appended as ids, never
re-tokenised with the edit, so its tokens are the ones the base model sees and position j of a
served row is position ``len(prefix) + j`` of its conditioned input. When the two do not fit
the model's context (`max_positions`), the edit part is cut from the left (its last tokens,
the target and separator, are kept longest).

Serving (`replace_rows`): for every row routed to an edit, the row's real tokens (left
padding skipped: the attention mask says which) are conditioned on the edit, the routed rows
run through the counterfactual model as one left-padded batch, and the row's logits at every
real position are replaced by the counterfactual model's at the same token (rows are right
aligned in both batches: a row's k-th token from the end is the conditioned input's k-th from
the end). Rows not routed are returned bit for bit; padding positions are left as they were.

Training (`train_counterfactual`): the paper's objective, the target's negative
log-likelihood given the edit and an in-scope input (the edit's prompt or one of its
rephrases), `batch_size` such examples per Adam update over every weight of the copy.
Deterministic from the seed (the order of examples); resumable at any update boundary
(`_common.checkpoint`), to the same weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ...model import LM
from ...progress import Reporter
from ...scoring import batch_target_loss, left_pad, tokenize_pair
from .._common.checkpoint import Checkpoint, Passes
from .._common.conditioning import conditioned, edit_prefix, max_positions
from .._common.loop import Step, optimise
from .._common.rng import seeded_rng
from ..context import TrainRecord


def train_counterfactual(cf: LM, lm: LM, records: Sequence[TrainRecord], separator: str,
                         steps: int, lr: float, batch_size: int, seed: int,
                         checkpoint: Checkpoint | None = None) -> list[float]:
    """Fine-tune every weight of `cf` in place (module docstring), tokenising with `lm`'s
    tokenizer; returns the loss of each update. With a `checkpoint`, resumes from its saved
    state and saves as it goes (`_common.checkpoint`)."""
    limit = max_positions(cf.model)
    examples: list[tuple[list[int], list[int]]] = []  # (conditioned prompt, target ids)
    for r in records:
        req = r.request
        prefix = edit_prefix(lm, req.prompt, req.target, separator)
        for x in dict.fromkeys((req.prompt, *r.rephrases)):
            p_ids, t_ids = tokenize_pair(lm, x, req.target)
            full = conditioned(prefix, list(p_ids) + list(t_ids), limit)
            examples.append((full[:len(full) - len(t_ids)], list(t_ids)))
    if steps <= 0 or not examples:
        return []
    draws = Passes(len(examples), seeded_rng(seed, "serac-counterfactual"))
    pad = int(lm.tok.pad_token_id or 0)
    opt = torch.optim.Adam(list(cf.model.parameters()), lr=lr)
    ck, weights = checkpoint or Checkpoint(), Weights(cf.model)
    losses = [float(x) for x in ck.resume(weights, opt, draws).get("losses", [])]

    def step() -> Step:
        picked = [examples[i] for i in draws.take(min(batch_size, len(examples)))]
        ids, mask = left_pad([p + t for p, t in picked], pad)
        tlens = torch.tensor([len(t) for _, t in picked])
        loss = batch_target_loss(cf, (ids, mask, ids.shape[1] - tlens, tlens,
                                      [t for _, t in picked]))
        losses.append(float(loss.detach()))
        report.update(len(losses), f"loss {losses[-1]:.4f}")
        return Step(loss, losses[-1])

    report = Reporter(every_seconds=10.0)
    report.start("serac counterfactual model training", steps, unit="updates")
    if losses:
        report.update(len(losses), f"resumed at update {len(losses)}")
    cf.model.requires_grad_(True)
    try:
        with torch.enable_grad():
            if steps > len(losses):
                optimise(opt, step, steps - len(losses), fresh_last=False,
                         after_update=lambda: ck.at_update(
                             lambda: ck.state(weights, opt, draws, losses=list(losses))))
    finally:
        cf.model.requires_grad_(False)
        report.stop()
        cf.model.zero_grad(set_to_none=True)
    return losses


class Weights:
    """Every parameter of a model as one saved network (`Checkpoint.resume` / `state`)."""

    def __init__(self, model: nn.Module):
        self.model = model

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in parameters_of(self.model).items()}

    @torch.no_grad()
    def load_tensors(self, saved: dict[str, torch.Tensor]) -> None:
        for name, p in parameters_of(self.model).items():
            p.copy_(saved[name])


def parameters_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's parameters by name, each once (tied weights under their first name)."""
    return {name: p.detach() for name, p in model.named_parameters()}
