"""SERAC's scope classifier: a bi-encoder over the frozen base model, trained on a train split.

A text's features are the output of one block of the base model (`layer`) at the text's last
prompt token or averaged over its prompt tokens (`pool`; `_common.features.block_features`, pooled over the tokens
`_common.keys.router_tokens` names: never a target or generated token, so a row's route does
not depend on its continuation). Its
embedding is ``((f - mu) / sd) W^T``: standardised with the train split's statistics, then a
learned projection W (``embed_dim x width``). The probability that input x is in the scope
of edit e is ``exp(-scale * |emb(x) - emb(e)|^2)`` with a learned ``scale`` (the reference
code's embedding classifier for GPT models: squared Euclidean distance, learned scale); x is
in scope when it exceeds `threshold` (0.5 in the paper), so ``scale`` is the learned
threshold: in scope within the radius ``sqrt(-ln threshold / scale)``. An edit's own prompt
is at distance 0 of itself: probability 1.

Training (`train_classifier`): binary cross-entropy, the paper's objective, over a batch of
training edits per update: positives are each edit's rephrases, negatives its locality
prompts (hard) and the prompts and rephrases of the batch's other edits (easy; an edit of the
same fact is neither). Features are computed once (the base model is frozen); only W and the
scale learn. Deterministic from the seed (W's initialisation, the order of edits).

Invariants: `embed` and `log_prob` are pure functions of the tensors in `tensors()`; those
change only in `fit_norm` and training.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ...progress import Reporter
from .._common.checkpoint import Checkpoint, Passes
from .._common.features import standard_stats
from .._common.loop import Step, optimise
from .._common.rng import seeded_rng
from ..context import TrainRecord


class ScopeClassifier(nn.Module):
    """Standardisation (``mu``, ``sd``), projection ``proj`` (k x d), ``log_scale``."""

    def __init__(self, width: int, dim: int, seed: int):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(max(width, dim), min(width, dim), generator=gen))
        # orthonormal rows (dim <= width) or columns: distances start as the features' own
        self.proj = nn.Parameter((q.T if dim <= width else q).contiguous())
        self.log_scale = nn.Parameter(torch.zeros(()))
        self.register_buffer("mu", torch.zeros(width))
        self.register_buffer("sd", torch.ones(width))

    def fit_norm(self, feats: torch.Tensor) -> None:
        """Standardisation statistics from the training texts' features
        (`_common.features.standard_stats`)."""
        if feats.shape[0] == 0:
            return
        mu, sd = standard_stats(feats)
        with torch.no_grad():
            self.mu.copy_(mu)
            self.sd.copy_(sd)

    def embed(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, k) embeddings of (B, d) features."""
        z = (feats.float().to(self.mu.device) - self.mu) / self.sd
        return z @ self.proj.T

    def log_prob(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """(B, N): log of the in-scope probability of each query embedding for each key,
        ``-scale * d^2``, from exact pairwise differences (identical embeddings: exactly 0)."""
        d = torch.cdist(queries, keys, compute_mode="donot_use_mm_for_euclid_dist")
        return -self.log_scale.exp() * d.square()

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"proj": self.proj.detach(), "log_scale": self.log_scale.detach(),
                "mu": self.mu, "sd": self.sd}

    @torch.no_grad()
    def load_tensors(self, saved: dict[str, torch.Tensor]) -> None:
        for name, t in self.tensors().items():
            t.copy_(saved[name])

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())


class _Labels:
    """The training texts (unique) and, per training edit, its prompt's index, its positives
    (rephrases) and hard negatives (locality prompts), and the texts that stand for it as an
    easy negative of other edits (its prompt and rephrases)."""

    def __init__(self, records: Sequence[TrainRecord]):
        self.texts: list[str] = []
        index: dict[str, int] = {}

        def at(text: str) -> int:
            if text not in index:
                index[text] = len(self.texts)
                self.texts.append(text)
            return index[text]

        self.prompt = [at(r.request.prompt) for r in records]
        self.pos = [{at(x) for x in r.rephrases} - {p} for r, p in zip(records, self.prompt)]
        self.hard = [{at(x) for x, _ in r.locality} - self.pos[i] - {self.prompt[i]}
                     for i, r in enumerate(records)]
        self.own = [{p} | s for p, s in zip(self.prompt, self.pos)]
        self.fact = [r.request.fact for r in records]

    def batch(self, rows: Sequence[int]) -> tuple[list[int], torch.Tensor]:
        """The query texts of a batch of edits and a (len(rows), len(queries)) label matrix:
        1 in scope, 0 out of scope, -1 neither (an edit's own prompt; a same-fact edit's)."""
        queries = sorted(set().union(*(self.own[i] | self.hard[i] for i in rows)))
        col = {q: k for k, q in enumerate(queries)}
        labels = torch.full((len(rows), len(queries)), -1.0)
        for a, i in enumerate(rows):
            for b, j in enumerate(rows):
                if b != a and self.fact[j] != self.fact[i]:
                    for q in self.own[j] - self.own[i]:
                        labels[a, col[q]] = 0.0
            for q in self.hard[i]:
                labels[a, col[q]] = 0.0
            for q in self.pos[i]:
                labels[a, col[q]] = 1.0
        return queries, labels


def bce(log_p: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean of the positives' -log p plus mean of the negatives' -log(1 - p) (each term only
    when the batch has such pairs)."""
    pos, neg = labels == 1, labels == 0
    loss = log_p.sum() * 0.0  # keeps the graph when the batch has no labelled pair
    if bool(pos.any()):
        loss = loss - log_p[pos].mean()
    if bool(neg.any()):
        loss = loss - torch.log((-torch.expm1(log_p[neg])).clamp(min=1e-12)).mean()
    return loss


def train_classifier(clf: ScopeClassifier, featurize: Callable[[list[str]], torch.Tensor],
                     records: Sequence[TrainRecord], steps: int, lr: float, batch_size: int,
                     seed: int, checkpoint: Checkpoint | None = None) -> list[float]:
    """Fit the standardisation, initialise the scale (probability 1/2 at the median squared
    distance of the labelled pairs), then `steps` Adam updates of the BCE (module
    docstring). Returns the loss of each update (empty: nothing to learn from). With a
    `checkpoint`, resumes from its saved state (the set-up above is deterministic and is
    redone), saves as it goes and once more at the end (`_common.checkpoint`)."""
    labels = _Labels(records)
    feats = featurize(labels.texts)
    clf.fit_norm(feats)
    rows = list(range(len(records)))
    usable = [i for i in rows if labels.pos[i] or labels.hard[i]] or rows
    queries, lab = labels.batch(usable[:256])
    with torch.no_grad():
        d2 = -clf.log_prob(clf.embed(feats[[labels.prompt[i] for i in usable[:256]]]),
                           clf.embed(feats[queries]))
        known = d2[(lab >= 0).to(d2.device)]
        if known.numel() == 0:
            return []
        median = float(known.median())
        clf.log_scale.fill_(math.log(math.log(2.0) / median) if median > 0 else 0.0)
    draws = Passes(len(rows), seeded_rng(seed, "serac-classifier"))
    opt = torch.optim.Adam(clf.parameters(), lr=lr)
    ck = checkpoint or Checkpoint()
    losses = [float(x) for x in ck.resume(clf, opt, draws).get("losses", [])]

    def step() -> Step:
        picked = draws.take(min(batch_size, len(rows)))
        qs, lb = labels.batch(picked)
        log_p = clf.log_prob(clf.embed(feats[[labels.prompt[i] for i in picked]]),
                             clf.embed(feats[qs]))
        loss = bce(log_p, lb.to(log_p.device))
        losses.append(float(loss.detach()))
        report.update(len(losses), f"loss {losses[-1]:.4f}")
        return Step(loss, losses[-1])

    def state() -> dict:
        return ck.state(clf, opt, draws, losses=list(losses))

    if steps > len(losses):
        report = Reporter(every_seconds=10.0)
        report.start("serac scope classifier training", steps, unit="updates")
        if losses:
            report.update(len(losses), f"resumed at update {len(losses)}")
        try:
            with torch.enable_grad():
                optimise(opt, step, steps - len(losses), fresh_last=False,
                         after_update=lambda: ck.at_update(state))
        finally:
            report.stop()
        ck.save(state())  # the phase is done: a later interruption does not redo it
    return losses
