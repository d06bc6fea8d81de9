"""Key statistics: C = E[k kᵀ] of the input of MLP output projections, over a text corpus.

ROME, MEMIT and AlphaEdit all weigh their updates by the uncentred second moment of the keys
the edited projection sees on ordinary text ("mom2" in the papers: 100,000 Wikipedia samples).
Here the text is `AttachContext.corpus_texts()` (the built-in model's pretraining text, an
organism's training text, or the file a scenario names). A sample of `n_texts` texts is
drawn with a fixed generator (seed 0, never the run's seed: every run of a model shares one
statistic), each text truncated to the model's context length, and every real token's key
counts once.

Cache: one file per (model fingerprint, layer, corpus sample): the entry's name carries the
corpus file's identity (path, size, modification time: read without parsing the corpus) or,
for texts given as data, a hash of the sampled texts, and the sample size, so a different
corpus or sample size is another entry. The layers are computed together, in one pass over
the corpus, whenever one of them is missing. The
cost (seconds, tokens) is saved beside the statistic and reported whether it was computed
now or read back.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ... import layers
from ...errors import LifelongError
from ...model import LM
from ...nethook import TraceDict
from ...progress import Reporter
from ..context import AttachContext, Cache

BATCH = 32


def sample_texts(texts: Sequence[str], n: int) -> list[str]:
    """`n` texts (all when there are fewer), drawn with a fixed generator, in corpus order."""
    if len(texts) <= n:
        return list(texts)
    picked = sorted(random.Random(0).sample(range(len(texts)), n))
    return [texts[i] for i in picked]


def stats_texts(ctx: AttachContext, n: int, fallback: bool) -> tuple[list[str], str]:
    """The texts to measure and where they come from: the context's corpus, or (with
    `fallback`, when the context has none) its unrelated prompts."""
    try:
        return sample_texts(ctx.corpus_texts(), n), "corpus"
    except LifelongError:
        if not fallback:
            raise
    if not ctx.unrelated_prompts:
        return [], "identity (no corpus, no unrelated prompts)"
    return sample_texts(ctx.unrelated_prompts, n), "unrelated prompts (no corpus)"


def context_length(lm: LM) -> int:
    cfg = lm.model.config
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return min(value, 512)
    return 512


@torch.no_grad()
def _measure(lm: LM, names: list[str], texts: list[str], label: str
             ) -> tuple[dict[str, torch.Tensor], int]:
    """Sum of k kᵀ per layer and the token count, in one pass over `texts`."""
    width = context_length(lm)
    sums: dict[str, torch.Tensor] = {}
    tokens = 0
    report = Reporter(every_seconds=10.0)
    report.start(f"key statistics {label}", len(texts), unit="texts")
    try:
        for start in range(0, len(texts), BATCH):
            rows = [lm.tok(t, add_special_tokens=False)["input_ids"][:width] or
                    [lm.tok.pad_token_id] for t in texts[start:start + BATCH]]
            n = max(len(r) for r in rows)
            ids = torch.full((len(rows), n), lm.tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(rows), n), dtype=torch.long)
            for i, r in enumerate(rows):
                ids[i, n - len(r):], mask[i, n - len(r):] = torch.tensor(r), 1
            ids, mask = ids.to(lm.device), mask.to(lm.device)
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            with TraceDict(lm.model, names, capture="input", stop=True) as td:
                lm.model(input_ids=ids, attention_mask=mask, position_ids=pos)
            real = mask.bool()
            for name in names:
                k = td[name].input[real].double()
                sums[name] = sums.get(name, 0) + k.T @ k
            tokens += int(real.sum())
            report.update(min(start + BATCH, len(texts)), f"{tokens} tokens")
    finally:
        report.stop()
    return sums, tokens


def corpus_key(ctx: AttachContext) -> str | None:
    """A name for the context's corpus that needs no reading: for a corpus file its resolved
    path, size and modification time (the built-in model's world.json is 2-3 s to parse, once
    per attach of a chunked run); None for texts given as data or no corpus."""
    src = ctx.corpus
    if not (isinstance(src, str) and src and Path(src).is_file()):
        return None
    st = Path(src).stat()
    name = f"{Path(src).resolve()}|{st.st_size}|{st.st_mtime_ns}"
    return "file-" + hashlib.sha256(name.encode()).hexdigest()[:12]


def _read(lm: LM, cache: Cache, names: Sequence[str], what: str
          ) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    saved = {n: cache.load(n, what) for n in names}
    if not all(v is not None for v in saved.values()):
        return None
    first = next(iter(saved.values()))
    texts = int(first["texts"]) if "texts" in first else None  # saved before it was kept
    info: dict[str, Any] = {"source": "corpus", "texts": texts, "entry": what,
                            "cached": True, "layers": {}}
    for n, v in saved.items():
        info["layers"][n] = {"read": True, "tokens": int(v["tokens"]),
                             "seconds": float(v["seconds"])}
    return {n: v["mom2"].to(lm.device) for n, v in saved.items()}, info


def key_covariances(lm: LM, ctx: AttachContext, names: Sequence[str], n_texts: int,
                    fallback: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """C = E[k kᵀ] (float32, on the model's device) of the input of each module in `names`
    (family-independent names, in forward order), read from the cache or computed (then
    saved); the identity when `fallback` found no text at all. Info: source, texts, tokens,
    seconds of the computation, whether it was cached. The cache entry is named by the
    corpus file (`corpus_key`) and the sample size, or else by a hash of the sampled texts."""
    cache = ctx.cache_if_known()  # None: computed every time, never saved
    key = corpus_key(ctx)
    if cache is not None and key is not None:
        found = _read(lm, cache, names, f"mom2-{key}-n{n_texts}")
        if found is not None:
            return found
    texts, source = stats_texts(ctx, n_texts, fallback)
    if not texts and not fallback:
        raise LifelongError("key statistics: the corpus has no texts")
    if not texts:  # the fallback found nothing to measure
        eye = {n: torch.eye(layers.in_out_features(layers.resolve(lm.model, n))[0],
                            device=lm.device) for n in names}
        return eye, {"source": source}
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:12]
    what = (f"mom2-{key}-n{n_texts}" if key is not None and source == "corpus"
            else f"mom2-{digest}-n{len(texts)}")
    if cache is not None:
        found = _read(lm, cache, names, what)
        if found is not None:
            return found[0], {**found[1], "source": source}
    out: dict[str, torch.Tensor] = {}
    info: dict[str, Any] = {"source": source, "texts": len(texts), "entry": what,
                            "cached": cache is not None, "layers": {}}
    began = time.perf_counter()
    sums, tokens = _measure(lm, list(names), texts, f"{', '.join(names)} ({len(texts)} texts)")
    seconds = time.perf_counter() - began
    for name in names:
        mom2 = (sums[name] / max(tokens, 1)).float().cpu()
        if cache is not None:
            cache.save(name, what, {"mom2": mom2, "tokens": torch.tensor(tokens),
                                    "seconds": torch.tensor(seconds),
                                    "texts": torch.tensor(len(texts))})
        out[name] = mom2.to(lm.device)
        info["layers"][name] = {"read": False, "tokens": tokens, "seconds": seconds}
    return out, info
