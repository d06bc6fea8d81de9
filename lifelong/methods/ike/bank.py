"""IKE's demonstration bank: the paper's copy, update and retain demonstrations, built from a
data set's train split (never from the stream's edits or probes).

Each train record (a fact ``prompt -> target`` with its rephrases and locality pairs) gives
up to three demonstrations, each the record's fact written as a new fact followed by a probe
and the answer the model should give after reading it:

* copy: the fact's own prompt, answered with the new target;
* update: the record's first rephrase, answered with the new target (when it has one);
* retain: the record's first locality prompt, answered with its own, unchanged answer (when
  it has one): what shows the model when *not* to use a fact.

Written as token ids: ``prefix(fact prompt, target) + prefix(probe, answer)``, each part
``prompt target separator`` (`_common.conditioning.edit_prefix`). A record's key is its
prompt's key (the method's standardised feature); `nearest` returns the demonstrations of
the records nearest to a key, nearest record first, a record's own in the order copy,
update, retain, at most k of them.

Invariant: the bank is a pure function of the train split, the model and the settings;
it is rebuilt at attach, never part of a method's state. Both halves are computed once per
base model and read back from its cache, bit for bit: the prompts' block features
(`cached_block_features`) and the demonstrations' token ids (`cached_demos`; tokenising
the 9000 demonstrations of a 3000-record split took 3 s, paid at every attach of a chunked
run before).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .._common.guard import pool_digest
from ..context import Cache, TrainRecord

Prefix = Callable[[str, str], list[int]]


class DemoBank:
    def __init__(self, demos: list[list[list[int]]], keys: torch.Tensor):
        """`demos`: each record's demonstrations (`build_demos`); `keys`: (len(demos),
        width), the key of each record's prompt."""
        self.demos = demos
        self.keys = (keys.double() if len(demos)
                     else torch.zeros((0, 1), dtype=torch.float64))

    def __len__(self) -> int:
        """Number of demonstrations held."""
        return sum(len(d) for d in self.demos)

    def nearest(self, key: torch.Tensor, k: int) -> list[list[int]]:
        """At most k demonstrations of the records nearest to `key` (nearest record first;
        ties: the earlier record), as token ids."""
        if not k or not self.demos:
            return []
        dist = (self.keys - key.double().reshape(1, -1)).norm(dim=1)
        near = dist.topk(min(k, len(self.demos)), largest=False).indices.tolist()  # >= 1 each
        order = sorted(near, key=lambda i: (float(dist[i]), i))
        out: list[list[int]] = []
        for i in order:
            out += self.demos[i][:k - len(out)]
            if len(out) >= k:
                break
        return out

    def nbytes(self) -> int:
        tokens = sum(len(t) for d in self.demos for t in d)
        return tokens * 8 + self.keys.numel() * self.keys.element_size()


def _answer(answer) -> str:
    """A probe's answer (the canonical one of an alias list)."""
    return answer[0] if isinstance(answer, (list, tuple)) else str(answer)


def build_demos(records: Sequence[TrainRecord], prefix: Prefix) -> list[list[list[int]]]:
    """Each record's demonstrations, as token ids (`record_demos`)."""
    return [record_demos(r, prefix) for r in records]


def cached_demos(records: Sequence[TrainRecord], prefix: Prefix, separator: str,
                 cache: Cache | None, reader: str) -> list[list[list[int]]]:
    """`build_demos(records, prefix)`, tokenised once per base model: saved in `cache` under
    `reader`, named by a digest of every text a demonstration is written from and the
    separator, and read back from there (the same ids); computed every time without a
    cache. The cache is keyed by the model's weights, which fix its tokenizer."""
    if cache is None or not records:
        return build_demos(records, prefix)
    what = f"demos-{pool_digest(_texts(records, separator))}-n{len(records)}"
    saved = cache.load(reader, what)
    if saved is not None:
        return _unpack(saved)
    demos = build_demos(records, prefix)
    cache.save(reader, what, _pack(demos))
    return demos


def _texts(records: Sequence[TrainRecord], separator: str) -> list[str]:
    """Every text `record_demos` reads, in order (what names the cache entry)."""
    out = [separator]
    for r in records:
        loc = (r.locality[0][0], _answer(r.locality[0][1])) if r.locality else ("", "")
        out += [r.request.prompt, r.request.target, r.rephrases[0] if r.rephrases else "", *loc]
    return out


def _pack(demos: list[list[list[int]]]) -> dict[str, torch.Tensor]:
    """The ids flat, each demonstration's length, each record's number of demonstrations."""
    flat = [d for rec in demos for d in rec]
    return {"ids": torch.tensor([t for d in flat for t in d], dtype=torch.int64),
            "lengths": torch.tensor([len(d) for d in flat], dtype=torch.int64),
            "per_record": torch.tensor([len(rec) for rec in demos], dtype=torch.int64)}


def _unpack(saved: dict[str, torch.Tensor]) -> list[list[list[int]]]:
    """What `_pack` saved, as each record's demonstrations again."""
    ids = saved["ids"].tolist()
    flat, at = [], 0
    for n in saved["lengths"].tolist():
        flat.append(ids[at:at + n])
        at += n
    out, at = [], 0
    for n in saved["per_record"].tolist():
        out.append(flat[at:at + n])
        at += n
    return out


def record_demos(r: TrainRecord, prefix: Prefix) -> list[list[int]]:
    """A record's copy, update and retain demonstrations (those it has the data for), in
    that order; a reading organism's context items are written by it too (lifelong/reading.py)."""
    fact = prefix(r.request.prompt, r.request.target)
    probes = [(r.request.prompt, r.request.target)]
    if r.rephrases:
        probes.append((r.rephrases[0], r.request.target))
    if r.locality:
        probes.append((r.locality[0][0], _answer(r.locality[0][1])))
    return [fact + prefix(p, a) for p, a in probes]
