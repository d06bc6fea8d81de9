"""A prompt's feature read from a frozen model's block (SERAC's scope classifier, IKE's
retrieval key), and the per-dimension standardisation both apply to it.

`block_features`: one forward per batch, stopped right after the block, pooled over the
prompt's tokens (`keys.router_tokens`: its last prompt token, or the mean over its prompt
tokens; never a target token). `cached_block_features`: the same, computed once per base
model and prompt list (IKE's train-split keys, re-read by every chunk of a chunked run).
`standard_stats`: the mean and standard deviation per dimension, each deviation floored at
`STD_FLOOR` x their mean so that a near-constant dimension does not dominate a distance (all
ones when every row is the same).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ...model import LM
from ...nethook import Trace
from ...scoring import encode_pairs, forward_logits
from ..context import Cache
from .guard import pool_digest
from .keys import router_tokens

#: a dimension's standard deviation is floored at this share of the mean over dimensions
STD_FLOOR = 1e-2


def pooled(hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """(B, d) float32: the mean of `hidden` (B, T, d) over each row's `tokens` (B, T) bool;
    zero for a row without tokens (one token: exactly that token's state)."""
    m = tokens.unsqueeze(-1).to(torch.float32)
    return (hidden.float() * m).sum(1) / m.sum(1).clamp(min=1.0)


@torch.no_grad()
def block_features(lm: LM, block: nn.Module, prompts: Sequence[str], pool: str,
                   batch: int = 128) -> torch.Tensor:
    """(len(prompts), d) float32 on the CPU: each prompt's feature (`pool`: 'last' or
    'mean'), one forward per batch stopped right after `block` (the caller suspends any hook
    that would change it)."""
    out = []
    for start in range(0, len(prompts), batch):
        chunk = list(prompts[start:start + batch])
        ids, mask, end, _, _ = encode_pairs(lm, chunk, ["x"] * len(chunk))
        with Trace(block, capture="output", stop=True) as tr:
            forward_logits(lm, ids, mask, end)
        tokens = router_tokens(mask.to(tr.output.device), end.to(tr.output.device), pool)
        out.append(pooled(tr.output, tokens).cpu())
    width = out[0].shape[1] if out else 0
    return torch.cat(out) if out else torch.zeros((0, width))


def cached_block_features(lm: LM, block: nn.Module, prompts: Sequence[str], pool: str,
                          cache: Cache | None, reader: str) -> torch.Tensor:
    """`block_features(lm, block, prompts, pool)`, computed once per base model: saved in
    `cache` under `reader` (it names the block) and an entry named by the pool and a digest
    of the prompts in order, and read back from there (the same float32 tensor, bit for
    bit); computed every time without a cache. The caller guarantees `lm` is the pristine
    model the cache is keyed by."""
    if cache is None:
        return block_features(lm, block, prompts, pool)
    what = f"features-{pool}-{pool_digest(prompts)}-n{len(prompts)}"
    saved = cache.load(reader, what)
    if saved is not None:
        return saved["features"]
    feats = block_features(lm, block, prompts, pool)
    cache.save(reader, what, {"features": feats})
    return feats


def standard_stats(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu, sd) per dimension of the rows of `feats` (at least one row; module docstring)."""
    sd = feats.std(0, unbiased=False) if feats.shape[0] > 1 else torch.zeros(feats.shape[1])
    scale = float(sd.mean())
    return (feats.mean(0).clone(),
            sd.clamp(min=STD_FLOOR * scale) if scale > 0 else torch.ones_like(sd))
