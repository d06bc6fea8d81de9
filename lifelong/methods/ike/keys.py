"""IKE's retrieval keys: the frozen base model's own hidden state, nothing trained.

A text's feature is the output of one block (`IkeConfig.layer`, default the last) at the
text's last *prompt* token (`_common.keys`: never a target or generated token, so a row's
key does not depend on its continuation). Its key is the feature standardised per
dimension, ``(f - mu) / sd`` (`Standardiser`), so that the few high-magnitude dimensions of a
transformer's residual stream do not decide every Euclidean distance alone.

The statistics are fitted once at attach (`standardisation_texts`): on the attach context's
unrelated prompts and train-split prompts (prompt-shaped texts, as queries are), else on the
corpus, else none (mu 0, sd 1: the raw feature). They are part of the method's state, so a
loaded state reads keys exactly as the saved one did.

Invariant: `Standardiser.apply` is a pure function of ``mu`` and ``sd``, which change only in
`fit` and `load_tensors`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ...errors import LifelongError
from ...model import LM
from ...nethook import Trace
from ...scoring import encode_pairs, forward_logits
from .._common.keys import batch_info, key_positions, read_keys
from ..context import AttachContext

#: a dimension's standard deviation is floored at this share of the mean over dimensions
STD_FLOOR = 1e-2
#: at most this many texts fit the standardisation
NORM_TEXTS = 2000


@torch.no_grad()
def prompt_features(lm: LM, block: nn.Module, prompts: Sequence[str],
                    batch: int = 128) -> torch.Tensor:
    """(len(prompts), width) float32 on the CPU: `block`'s output at each prompt's last token,
    one forward per batch stopped right after `block` (the caller suspends any hook that would
    change it)."""
    out = []
    for start in range(0, len(prompts), batch):
        chunk = list(prompts[start:start + batch])
        enc = encode_pairs(lm, chunk, ["x"] * len(chunk))
        with Trace(block, capture="output", stop=True) as tr:
            forward_logits(lm, *enc[:3])
        pos = key_positions(batch_info(enc), len(chunk), enc[0].shape[1], tr.output.device)
        out.append(read_keys(tr.output, pos, None, "last").float().cpu())
    return torch.cat(out) if out else torch.zeros((0, 0))


def standardisation_texts(ctx: AttachContext) -> list[str]:
    """The texts the statistics are fitted on (module docstring), at most `NORM_TEXTS`;
    empty when the context has fewer than two."""
    texts = list(dict.fromkeys([*ctx.unrelated_prompts,
                                *(r.request.prompt for r in ctx.train_records())]))
    if len(texts) < 2:
        try:
            texts = list(dict.fromkeys(ctx.corpus_texts()))
        except LifelongError:
            texts = []
    return texts[:NORM_TEXTS] if len(texts) >= 2 else []


class Standardiser:
    """Per-dimension ``mu`` and ``sd`` (float32, CPU, (width,)); identity until fitted."""

    def __init__(self, width: int):
        self.mu = torch.zeros(width)
        self.sd = torch.ones(width)

    def fit(self, feats: torch.Tensor) -> None:
        """Mean and standard deviation over the rows of `feats` (at least two rows; each
        deviation floored at `STD_FLOOR` x their mean, all ones when that mean is 0)."""
        if feats.shape[0] < 2:
            return
        sd = feats.std(0, unbiased=False)
        scale = float(sd.mean())
        self.mu = feats.mean(0).clone()
        self.sd = sd.clamp(min=STD_FLOOR * scale) if scale > 0 else torch.ones_like(sd)

    def apply(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, width) float32 CPU keys of (B, width) features."""
        return (feats.detach().float().cpu() - self.mu) / self.sd

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"mu": self.mu.clone(), "sd": self.sd.clone()}

    def load_tensors(self, saved: dict[str, torch.Tensor]) -> None:
        if saved["mu"].shape != self.mu.shape or saved["sd"].shape != self.sd.shape:
            raise ValueError(f"saved standardisation of width {tuple(saved['mu'].shape)}, "
                             f"this model's keys: {tuple(self.mu.shape)}")
        self.mu, self.sd = saved["mu"].float().clone(), saved["sd"].float().clone()

    def nbytes(self) -> int:
        return 4 * (self.mu.numel() + self.sd.numel())
