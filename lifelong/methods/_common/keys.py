"""Where a row's key is read and which positions a method's value changes.

A row's key token is its last *prompt* token (`ForwardInfo.prompt_end - 1`), both while a
prompt+target pair is scored teacher-forced and while tokens are generated, so a row's key
never depends on its target or on what was generated. Without a ForwardInfo describing the
batch (a bare ``model(...)`` call) it is the row's last token. Functions take the batch's
`ForwardInfo` (`lm.forward_info` inside a hook, `batch_info` after a captured forward).
"""

from __future__ import annotations

import numpy as np
import torch

from ...model import ForwardInfo


def batch_info(batch) -> ForwardInfo:
    """The ForwardInfo `forward_logits` exposes for an `encode_pairs` batch."""
    _, mask, prompt_end, _, _ = batch
    return ForwardInfo(attention_mask=mask, prompt_end=prompt_end)


def key_positions(info: ForwardInfo | None, batch: int, width: int,
                  device: torch.device) -> torch.Tensor:
    """Index of each row's key token (the last token when `info` describes another batch)."""
    if info is None or info.prompt_end.shape[0] != batch:
        return torch.full((batch,), width - 1, dtype=torch.long, device=device)
    return (info.prompt_end.to(device).long() - 1).clamp(0, width - 1)


def position_mask(info: ForwardInfo | None, mode: str, key_pos: torch.Tensor,
                  width: int) -> torch.Tensor:
    """(batch, width) bool: the positions a row's value changes: the key token and every
    later one ("from_key"), the key token only ("key"), the prompt span ("prompt"), every
    real token ("all")."""
    pos = torch.arange(width, device=key_pos.device).unsqueeze(0)
    kp = key_pos.unsqueeze(1)
    real = torch.ones((key_pos.shape[0], width), dtype=torch.bool, device=key_pos.device)
    if info is not None and info.attention_mask.shape == real.shape:
        real = info.attention_mask.to(key_pos.device).bool()
    if mode == "key":
        return pos == kp
    if mode == "from_key":
        return pos >= kp
    if mode == "prompt":
        return (pos <= kp) & real
    return real


def read_keys(source: torch.Tensor, key_pos: torch.Tensor, info: ForwardInfo | None,
              how: str) -> torch.Tensor:
    """Each row's key from activations (B, T, d): at its key token ("last") or the mean over
    its prompt tokens ("mean")."""
    rows = torch.arange(source.shape[0], device=source.device)
    if how == "last":
        return source[rows, key_pos]
    span = position_mask(info, "prompt", key_pos, source.shape[1]).to(source.dtype)
    return (source * span.unsqueeze(-1)).sum(1) / span.sum(1, keepdim=True).clamp(min=1)


def router_tokens(attention_mask: torch.Tensor, prompt_end: torch.Tensor,
                  which: str, device: torch.device | None = None) -> torch.Tensor:
    """(B, T) bool: the tokens a router reads: every real prompt token ('mean') or only the
    last one ('last'). Positions at or after `prompt_end` (the target, generated tokens) are
    never read, so a row's route does not depend on its target. On `device` (default: the
    mask's): an `encode_pairs` batch is on the CPU, the activations it is read with may not."""
    if device is not None:
        attention_mask, prompt_end = attention_mask.to(device), prompt_end.to(device)
    pos = torch.arange(attention_mask.shape[1], device=attention_mask.device).unsqueeze(0)
    prompt = (attention_mask > 0) & (pos < prompt_end.unsqueeze(1))
    if which == "mean":
        return prompt
    return pos == (prompt_end.unsqueeze(1) - 1)


def row_keys(x: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """(B, in) float32: each row's key, the mean of its masked tokens' activations."""
    m = mask.unsqueeze(-1).to(x.dtype)
    return ((x * m).sum(1) / m.sum(1).clamp_min(1)).detach().float().cpu().numpy()


def forward_router_tokens(info: ForwardInfo | None, x: torch.Tensor, which: str) -> torch.Tensor:
    """(B, T) bool: `router_tokens` of the batch being served (`lm.forward_info` inside a
    hook); every token a prompt token when `info` describes another batch."""
    if info is None or info.attention_mask.shape != x.shape[:2]:
        return router_tokens(torch.ones(x.shape[:2], dtype=torch.long, device=x.device),
                             torch.full((x.shape[0],), x.shape[1], device=x.device), which)
    return router_tokens(info.attention_mask.to(x.device), info.prompt_end.to(x.device), which)


def serve_routed(x: torch.Tensor, y: torch.Tensor, route: torch.Tensor,
                 deltas: list[torch.Tensor]) -> torch.Tensor:
    """`y` with each row routed to memory m >= 0 (`route`, (B,)) given its delta's output
    ``x @ deltas[m].T`` at every token; rows routed to -1 are returned bit for bit."""
    memories = set(route.tolist())
    if all(m < 0 for m in memories):
        return y
    if len(memories) == 1:  # one memory serves every row (batch 1): no copy, no row gathers
        return y + x @ deltas[memories.pop()].T
    out = y.clone()
    for m in sorted(memories):
        if m >= 0:
            rows = (route == m).to(y.device)
            out[rows] = y[rows] + x[rows] @ deltas[m].T
    return out
