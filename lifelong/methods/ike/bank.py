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
it is rebuilt at attach, never part of a method's state (the prompts' block features are
computed once per base model and read back from the cache: `cached_block_features`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..context import TrainRecord


class DemoBank:
    def __init__(self, records: Sequence[TrainRecord],
                 prefix: Callable[[str, str], list[int]], keys: torch.Tensor):
        """`keys`: (len(records), width), the key of each record's prompt."""
        self.demos: list[list[list[int]]] = [_demos(r, prefix) for r in records]
        self.keys = (keys.double() if len(records)
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


def _demos(r: TrainRecord, prefix: Callable[[str, str], list[int]]) -> list[list[int]]:
    """A record's copy, update and retain demonstrations (those it has the data for)."""
    fact = prefix(r.request.prompt, r.request.target)
    probes = [(r.request.prompt, r.request.target)]
    if r.rephrases:
        probes.append((r.rephrases[0], r.request.target))
    if r.locality:
        probes.append((r.locality[0][0], _answer(r.locality[0][1])))
    return [fact + prefix(p, a) for p, a in probes]
