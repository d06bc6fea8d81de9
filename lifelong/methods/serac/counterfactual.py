"""SERAC's counterfactual model: a copy of the base model fine-tuned to answer an input given
an edit, and the logits it serves in place of the base model's.

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
Deterministic from the seed (the order of examples).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ...model import LM
from ...scoring import batch_target_loss, forward_logits, tokenize_pair
from .._common.loop import Step, optimise
from .._common.rng import seeded_rng
from ..context import TrainRecord


def max_positions(model: nn.Module) -> int | None:
    """The model's context length (GPT-2 ``n_positions``, LLaMA-like
    ``max_position_embeddings``), or None when its config names none."""
    cfg = getattr(model, "config", None)
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def edit_prefix(lm: LM, prompt: str, target: str, separator: str) -> list[int]:
    """The token ids an edit is written as before an input: prompt, target, separator."""
    p_ids, t_ids = tokenize_pair(lm, prompt, target)
    sep = lm.tok(separator, add_special_tokens=False)["input_ids"] if separator else []
    return list(p_ids) + list(t_ids) + list(sep)


def conditioned(prefix: Sequence[int], row: Sequence[int], limit: int | None) -> list[int]:
    """`prefix` + `row`, the prefix cut from the left to fit `limit` positions (the row is
    never cut)."""
    keep = len(prefix) if limit is None else max(0, min(len(prefix), limit - len(row)))
    return list(prefix[len(prefix) - keep:]) + list(row)


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and attention mask of `rows`."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(list(r), dtype=torch.long)
            mask[i, width - len(r):] = 1
    return ids, mask


@torch.no_grad()
def replace_rows(cf: LM, logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor,
                 prompt_end: torch.Tensor, prefixes: dict[int, Sequence[int]],
                 limit: int | None) -> torch.Tensor:
    """`logits` (B, W_out, V) of a batch of `ids` (B, W) with rows ``i in prefixes`` served by
    the counterfactual model conditioned on ``prefixes[i]`` (module docstring). W_out < W
    (a forward that keeps only the last logits) is aligned on the right."""
    if not prefixes:
        return logits
    rows = sorted(prefixes)
    real = mask.bool()
    tokens = [ids[i][real[i]].tolist() for i in rows]
    conts = [int((real[i] & (torch.arange(ids.shape[1], device=ids.device)
                             >= prompt_end[i])).sum()) for i in rows]
    cond = [conditioned(prefixes[i], t, limit) for i, t in zip(rows, tokens)]
    c_ids, c_mask = left_pad(cond, int(cf.tok.pad_token_id or 0))
    c_end = torch.tensor([c_ids.shape[1] - n for n in conts])
    c_logits = forward_logits(cf, c_ids, c_mask, c_end)
    out = logits.clone()
    offset = ids.shape[1] - logits.shape[1]
    for j, (i, t) in enumerate(zip(rows, tokens)):
        pos = real[i].nonzero().squeeze(1)
        vals = c_logits[j, c_ids.shape[1] - len(t):].to(out.device, out.dtype)
        keep = pos >= offset
        out[i, pos[keep] - offset] = vals[keep.to(vals.device)]
    return out


def train_counterfactual(cf: LM, lm: LM, records: Sequence[TrainRecord], separator: str,
                         steps: int, lr: float, batch_size: int, seed: int) -> list[float]:
    """Fine-tune every weight of `cf` in place (module docstring), tokenising with `lm`'s
    tokenizer; returns the loss of each update."""
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
    rng, order, losses = seeded_rng(seed, "serac-counterfactual"), [], []
    pad = int(lm.tok.pad_token_id or 0)
    params = [p for p in cf.model.parameters()]
    opt = torch.optim.Adam(params, lr=lr)

    def step() -> Step:
        nonlocal order
        picked = []
        while len(picked) < min(batch_size, len(examples)):
            if not order:
                order = list(range(len(examples)))
                rng.shuffle(order)
            picked.append(examples[order.pop()])
        ids, mask = left_pad([p + t for p, t in picked], pad)
        tlens = torch.tensor([len(t) for _, t in picked])
        loss = batch_target_loss(cf, (ids, mask, ids.shape[1] - tlens, tlens,
                                      [t for _, t in picked]))
        losses.append(float(loss.detach()))
        return Step(loss, losses[-1])

    cf.model.requires_grad_(True)
    try:
        with torch.enable_grad():
            optimise(opt, step, steps, fresh_last=False)
    finally:
        cf.model.requires_grad_(False)
        cf.model.zero_grad(set_to_none=True)
    return losses


def parameters_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's parameters by name, each once (tied weights under their first name)."""
    return {name: p.detach() for name, p in model.named_parameters()}
