"""IKE's retrieval keys: the frozen base model's own hidden state, nothing trained.

A text's feature is the output of one block (`IkeConfig.layer`, default the last) at the
text's last *prompt* token (`_common.features.block_features` with pool 'last': never a target or generated token, so a row's
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

import torch

from ...errors import LifelongError
from .._common.features import standard_stats
from ..context import AttachContext

#: at most this many texts fit the standardisation
NORM_TEXTS = 2000


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
        """Mean and standard deviation over the rows of `feats` (`standard_stats`); nothing
        from fewer than two rows."""
        if feats.shape[0] >= 2:
            self.mu, self.sd = standard_stats(feats)

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
