"""Activation statistics methods share: the output scale of a projection."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ...model import LM
from ...nethook import Trace
from ...scoring import encode_pairs, forward_logits


def output_scale(lm: LM, module: torch.nn.Module, prompts: Sequence[str]) -> float:
    """Median norm of `module`'s output over the real tokens of `prompts` (1.0 without
    prompts, or when it is 0): the unit of margins that should mean the same at any width."""
    if not prompts:
        return 1.0
    with torch.no_grad(), Trace(module, capture="output", stop=True) as tr:
        ids, mask, end, _, _ = encode_pairs(lm, list(prompts), ["x"] * len(prompts))
        forward_logits(lm, ids, mask, end)
    norms = tr.output.norm(dim=-1)[mask.bool()]
    return float(norms.median()) or 1.0
