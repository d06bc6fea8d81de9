"""Serving a row from a model conditioned on text written before it (SERAC's counterfactual
model given an edit, IKE's base model given demonstrations): the conditioned input and the
logits it serves in place of the served model's.

Conditioned input (`conditioned`): a prefix of token ids (an edit as `edit_prefix` writes it:
``prompt + target`` as `scoring.tokenize_pair` splits them, then the separator's tokens),
then the row's own token ids, unchanged. The row is appended as ids, never re-tokenised with
the prefix, so its tokens are the ones the served model sees and position j of a served row
is position ``len(prefix) + j`` of its conditioned input. When the two do not fit the model's
context (`max_positions`), the prefix is cut from the left (its last tokens are kept
longest); the row is never cut.

Serving (`replace_rows`): for every row given a prefix, the row's real tokens (left padding
skipped: the attention mask says which) are conditioned on it, the conditioned rows run
through the answering model as one left-padded batch, and the row's logits at every real
position are replaced by that model's at the same token (rows are right aligned in both
batches: a row's k-th token from the end is the conditioned input's k-th from the end). Rows
without a prefix are returned bit for bit; padding positions are left as they were.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ...model import LM
from ...nethook import Trace, replace_output
from ...scoring import forward_logits, left_pad, pair_ids
from .editlog import EditLog
from .hooks import Served


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
    return fact_ids(lm.tok, prompt, target, separator)


def fact_ids(tok, prompt: str, target: str, separator: str) -> list[int]:
    """`edit_prefix` with the tokenizer alone (an organism taught to read facts is trained
    on exactly the ids IKE writes)."""
    p_ids, t_ids = pair_ids(tok, prompt, target)
    sep = tok(separator, add_special_tokens=False)["input_ids"] if separator else []
    return list(p_ids) + list(t_ids) + list(sep)


def conditioned(prefix: Sequence[int], row: Sequence[int], limit: int | None) -> list[int]:
    """`prefix` + `row`, the prefix cut from the left to fit `limit` positions (the row is
    never cut)."""
    keep = len(prefix) if limit is None else max(0, min(len(prefix), limit - len(row)))
    return list(prefix[len(prefix) - keep:]) + list(row)


def forward_rows(lm: LM, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(attention mask, prompt end) of a forward's batch of `ids`: the scoring batch's own
    (`LM.forward_info`) when it describes this batch, else every token a real prompt token
    (a bare forward)."""
    batch, width = ids.shape
    info = lm.forward_info
    if info is not None and tuple(info.attention_mask.shape) == (batch, width):
        return info.attention_mask.to(ids.device), info.prompt_end.to(ids.device).long()
    return (torch.ones_like(ids),
            torch.full((batch,), width, device=ids.device, dtype=torch.long))


@torch.no_grad()
def replace_rows(model: LM, logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor,
                 prompt_end: torch.Tensor, prefixes: dict[int, Sequence[int]],
                 limit: int | None) -> torch.Tensor:
    """`logits` (B, W_out, V) of a batch of `ids` (B, W) with rows ``i in prefixes`` served by
    `model` conditioned on ``prefixes[i]`` (module docstring). W_out < W (a forward that
    keeps only the last logits) is aligned on the right. The caller makes sure `model` runs
    bare (a method serving through hooks on `model` itself suspends them around this call)."""
    if not prefixes:
        return logits
    rows = sorted(prefixes)
    real = mask.bool()
    tokens = [ids[i][real[i]].tolist() for i in rows]
    conts = [int((real[i] & (torch.arange(ids.shape[1], device=ids.device)
                             >= prompt_end[i])).sum()) for i in rows]
    cond = [conditioned(prefixes[i], t, limit) for i, t in zip(rows, tokens)]
    c_ids, c_mask = left_pad(cond, int(model.tok.pad_token_id or 0))
    c_end = torch.tensor([c_ids.shape[1] - n for n in conts])
    c_logits = forward_logits(model, c_ids, c_mask, c_end)
    out = logits.clone()
    offset = ids.shape[1] - logits.shape[1]
    for j, (i, t) in enumerate(zip(rows, tokens)):
        pos = real[i].nonzero().squeeze(1)
        vals = c_logits[j, c_ids.shape[1] - len(t):].to(out.device, out.dtype)
        keep = pos >= offset
        out[i, pos[keep] - offset] = vals[keep.to(vals.device)]
    return out


class RowServed(Served):
    """Mixin of methods that serve whole rows from a conditioned input (SERAC, IKE): the
    serving hooks read the batch's token ids at `embedding` and the hidden state at `block`,
    and hand both with the logits at `head` to the method's `_serve(ids, hidden, logits)`,
    whose result replaces the logits. A method sets the three modules at attach and opens
    `Hooks(self._serving)`."""

    embedding: nn.Module
    block: nn.Module
    head: nn.Module
    memory: EditLog

    def _serving(self, stack: contextlib.ExitStack) -> None:
        ids = stack.enter_context(Trace(self.embedding, capture="input"))
        hidden = stack.enter_context(Trace(self.block, capture="output"))
        stack.enter_context(replace_output(self.head,
                                           lambda y: self._serve(ids.input, hidden.output, y)))

    def _serve(self, ids: Any, hidden: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """The served logits (each method writes its own)."""
        raise NotImplementedError

    def memory_of(self, edit_id: str) -> int | None:
        """The served entry answering the edit (`EditLog.serving`)."""
        return self.memory.serving(edit_id)
