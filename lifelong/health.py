"""Model health: is the edited model still a working language model?

Two measures, taken at every checkpoint (the runtime records them, `metrics` reads them):

- *perplexity* on held-out text of the model's own world: sentences the stream never edits,
  never probes and pretraining never showed (for the built-in model: its never-changing
  facts in their held-out phrasings), scored on the part of the text the model learned to
  predict (the built-in model and the organisms are trained on the answers of their
  sentences, so there the perplexity is that of the answers given the sentence start). A
  collapse of general capability, the failure that sequential editing is known for, shows
  here first (the literature's collapse detector). A scenario may name a text file instead
  (`health_corpus`: every token after the first of each line). A model without a world
  (an organism, any other model) and without a corpus is measured on the stream's own
  locality probes, the answers scored: for an organism these are the one part of its
  training text that no edit of the stream touches.
- *weight change*: for every parameter that differs from the pre-stream model, the norm of
  the change and the norm of the weight, both relative to the pre-stream weight's norm.
  Methods that keep their edits as weights outside the model's (side memories) report them
  through the `WeightDeltas` capability (`methods.base`: name -> delta tensor, the change it
  makes to the named weight where it serves). Codebooks, adapters and added neurons have no
  weight-shaped change and are not measured here.

Invariants: pure measurements (no state is kept here; the snapshot is the caller's); the
same model and texts give the same perplexity; a pristine model changes no weight.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import LifelongError
from .methods.base import side_weight_deltas
from .model import LM
from .scoring import forward_logits, next_token_logp, tokenize_pair


@dataclass(frozen=True)
class HealthTexts:
    """The held-out texts perplexity is measured on, as (context, scored part) pairs, and
    where they came from. An empty context scores every token of the text after its first."""

    pairs: tuple[tuple[str, str], ...]
    source: str


def world_texts(world, n: int, seed: int = 0) -> HealthTexts:
    """`n` sentences of a world that streams never edit, probe or pretraining showed: its
    never-changing facts in a held-out phrasing (prompt, value), a seeded sample."""
    pairs = [(f, t) for f in world.stable_facts() for t in f.heldout]
    rng = random.Random(f"health-{seed}")
    chosen = rng.sample(pairs, min(n, len(pairs)))
    return HealthTexts(tuple((world.prompt(f, t), f.value) for f, t in chosen),
                       "world: held-out phrasings of never-changing facts (answers scored)")


def probe_texts(probes: Sequence[Any], n: int, seed: int = 0) -> HealthTexts | None:
    """`n` of the stream's locality probes (prompt -> the answer the stream records), a
    seeded sample in stream order; None when the stream has none. The runtime passes the
    run's probed locality sample, which a whole-stream run never hands to a method (methods
    that train on unrelated prompts get the rest of the pool); a chunked run hands each
    chunk the pool minus that chunk's probes, so such methods may have trained on some of
    these texts."""
    pairs = list(dict.fromkeys((p.prompt, p.answer) for p in probes))
    if not pairs:
        return None
    rng = random.Random(f"health-{seed}")
    chosen = sorted(rng.sample(range(len(pairs)), min(n, len(pairs))))
    return HealthTexts(tuple(pairs[i] for i in chosen),
                       "stream: locality probes, prompt -> recorded answer (answers scored)")


def file_texts(path: str | Path, n: int) -> HealthTexts:
    """The first `n` non-empty lines of a UTF-8 text file, every token scored."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise LifelongError(f"{path}: cannot read the health corpus ({exc})") from None
    texts = [x.strip() for x in lines if x.strip()][:n]
    if not texts:
        raise LifelongError(f"{path}: the health corpus has no text")
    return HealthTexts(tuple(("", t) for t in texts), f"{path} (every token scored)")


@torch.no_grad()
def perplexity(lm: LM, pairs: Sequence[tuple[str, str]], batch_size: int = 64) -> float:
    """exp(mean next-token NLL) over the scored tokens of every (context, text) pair: the
    tokens of `text` after `context` (`scoring.tokenize_pair`), or with an empty context
    every token of `text` after its first. Left padding never counts."""
    total, count = 0.0, 0
    for start in range(0, len(pairs), batch_size):
        rows, scored = [], []
        for context, text in pairs[start:start + batch_size]:
            if context:
                p_ids, t_ids = tokenize_pair(lm, context, text)
            else:
                ids = lm.tok(text, add_special_tokens=False)["input_ids"]
                p_ids, t_ids = ids[:1], ids[1:]
            if p_ids and t_ids:
                rows.append(p_ids + t_ids)
                scored.append(len(t_ids))
        if not rows:
            continue
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), lm.tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        keep = torch.zeros((len(rows), width - 1), dtype=torch.bool)
        for i, (r, k) in enumerate(zip(rows, scored)):
            ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = 1
            keep[i, width - 1 - k:] = True  # predictions of the last k tokens
        n = max(scored) + 1  # the positions that predict scored tokens, and the last
        logits = forward_logits(lm, ids, mask, torch.full((len(rows),), width), keep=n)
        logp = next_token_logp(logits, ids[:, -n:])
        total -= float(logp[keep[:, -(n - 1):].to(logp.device)].sum())
        count += int(keep.sum())
    return math.exp(total / count) if count else float("nan")


def snapshot(lm: LM) -> dict[str, torch.Tensor]:
    """A CPU copy of every parameter (the pre-stream weights)."""
    return {n: p.detach().to("cpu", copy=True) for n, p in lm.model.named_parameters()}


def weight_changes(lm: LM, base: dict[str, torch.Tensor], method: Any = None) -> dict[str, dict]:
    """{parameter name: {"delta": |W - W0| / |W0|, "norm": |W| / |W0|}} for every parameter
    that differs from `base`, plus the method's own `weight_deltas()` where it has them
    (`W = W0 + delta`). Frobenius norms; figures rounded to 6 significant digits."""
    out: dict[str, dict] = {}
    for name, p in lm.model.named_parameters():
        w0 = base[name]
        w = p.detach().to("cpu")
        if not torch.equal(w, w0):
            out[name] = _relative(w0, w - w0)
    for name, delta in side_weight_deltas(method).items():
        w0 = base.get(name)
        if w0 is not None and delta is not None and delta.shape == w0.shape:
            out[name] = _relative(w0, delta.detach().to("cpu", w0.dtype))
    return out


def _relative(w0: torch.Tensor, delta: torch.Tensor) -> dict[str, float]:
    n0 = float(w0.float().norm()) or 1.0
    return {"delta": float(f"{float(delta.float().norm()) / n0:.6g}"),
            "norm": float(f"{float((w0 + delta).float().norm()) / n0:.6g}")}


def texts_for(model_dir: str | Path, corpus: str, n: int,
              probes: Sequence[Any] = ()) -> HealthTexts | None:
    """The health texts of a run: `corpus` (a text file) when given, else the held-out text
    of the world beside the model (`world.json`, as the built-in model has), else the
    stream's locality `probes` (`probe_texts`), else None."""
    if n <= 0:
        return None
    if corpus:
        return file_texts(corpus, n)
    world_file = Path(model_dir) / "world.json"
    if world_file.exists():
        from .world import World
        try:
            return world_texts(World.from_json(world_file), n)
        except (ValueError, KeyError):  # a world of another format: the stream's probes
            pass
    return probe_texts(probes, n)


class Monitor:
    """Model health over one run: the texts and the pre-stream weights and perplexity, taken
    when the model is still pristine (construct it before attaching the method); `row` gives
    a checkpoint's health columns."""

    def __init__(self, lm: LM, texts: HealthTexts | None, weights: bool):
        self.texts = texts
        self.base = snapshot(lm) if weights else None
        self.base_ppl = perplexity(lm, texts.pairs) if texts else None

    def row(self, lm: LM, method: Any) -> dict[str, Any]:
        """{"health_ppl", "health_ppl_base", "health_source", "weight_change"} (JSON text of
        `weight_changes`, or None when weights are not followed)."""
        import json
        changes = weight_changes(lm, self.base, method) if self.base is not None else None
        return {"health_ppl": perplexity(lm, self.texts.pairs) if self.texts else None,
                "health_ppl_base": self.base_ppl,
                "health_source": self.texts.source if self.texts else None,
                "weight_change": None if changes is None else json.dumps(changes, sort_keys=True)}
