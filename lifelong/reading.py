"""Reading sequences: what teaches a model organism to read a fact written before its input,
in the token format IKE writes (`lifelong.methods.ike`), so that in-context editing can be
measured on a model that learns in context (a pretrained LLM does; an organism trained on
facts alone does not).

Built from a train split (a stream file of edits: never the stream the organism is edited
with), each record ``prompt -> new`` with its rephrases and locality pairs. A sequence is

    [context] fact(prompt, NEW) probe answer [EOS]

with `fact` written exactly as IKE writes a stored edit (`conditioning.fact_ids`: the
prompt's ids, the target's ids, the separator's ids) and the probe right after it, as IKE
writes a query after its new fact. The loss falls on the answer and the EOS only. Kinds:

* copy: the record's own prompt, answered with NEW;
* update: each of its rephrases, answered with NEW;
* retain: a prompt the fact is not about, answered as the organism knows it: the record's
  own locality prompts (same relation, other subject: the hard case) and one known pair
  drawn from everything the organism learns (its stream's pairs, the split's own facts).

NEW is drawn at random, for each sequence, from the split's targets and previous values
other than the record's true value: a sequence's answer cannot be recalled from the prompt,
only read from the context, so what is learned is reading, not the split's targets.

Context: before the fact, items from other records until the sequence would pass a length
drawn uniformly up to the model's context (so every position the context holds is trained):
each item either a bare stored edit (`fact`, as IKE writes further stored edits) or one of
IKE's copy / update / retain demonstrations (written by `ike.bank.record_demos`: a fact
then a probe and its answer, with the record's own target). Nothing of the edit stream's targets is ever
written.

Invariant: the rows are a pure function of the split, the known pairs, the tokenizer and
the settings (`seed` included); `held` records give rows that are never trained, only
monitored (the organism's reading accuracy on records it has not read).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from .methods._common.conditioning import fact_ids
from .methods.context import TrainRecord
from .methods.ike.bank import record_demos
from .scoring import pair_ids

#: Kinds of reading sequences, in report order.
KINDS: tuple[str, ...] = ("copy", "update", "retain")

Pair = tuple[str, str]


def _about(r: TrainRecord, subject: str) -> tuple[str, tuple[str, ...]]:
    """A record's prompt and rephrases with its subject replaced by `subject` (rephrases that
    do not name its subject are left out; the prompt always kept)."""
    old, prompt = r.request.subject or "", r.request.prompt
    if not old or old not in prompt:
        return prompt, r.rephrases
    return prompt.replace(old, subject), tuple(q.replace(old, subject) for q in r.rephrases if old in q)


def reading_texts(records: Sequence[TrainRecord]) -> list[str]:
    """Every text of the split (for the organism's vocabulary)."""
    out: list[str] = []
    for r in records:
        q = r.request
        out += [q.prompt, q.target, *([q.previous] if q.previous else []), *r.rephrases]
        out += [t for pair in r.locality for t in pair]
    return out


def split_facts(records: Sequence[TrainRecord]) -> list[Pair]:
    """What the organism learns of the split itself, so a written fact overrides a value it
    knows (as an edit does): each prompt and rephrase -> its true value (records with one),
    each locality prompt -> its answer."""
    out: list[Pair] = []
    for r in records:
        if r.request.previous is not None:
            out += [(p, r.request.previous) for p in (r.request.prompt, *r.rephrases)]
        out += list(r.locality)
    return out


@dataclass(frozen=True)
class Reading:
    """Rows for training and monitoring, each with its kind (one of KINDS)."""

    rows: list[tuple[list[int], list[float]]]
    kinds: list[str]

    def of(self, kind: str) -> list[tuple[list[int], list[float]]]:
        return [r for r, k in zip(self.rows, self.kinds) if k == kind]

    def counts(self) -> dict[str, int]:
        return {k: self.kinds.count(k) for k in KINDS}


class _Writer:
    """Token ids of facts, demonstrations and probes, memoised (the same text, the same ids)."""

    def __init__(self, tok, separator: str):
        self.tok, self.separator = tok, separator
        self._facts: dict[Pair, list[int]] = {}
        self._pairs: dict[Pair, tuple[list[int], list[int]]] = {}

    def fact(self, prompt: str, target: str) -> list[int]:
        key = (prompt, target)
        if key not in self._facts:
            self._facts[key] = fact_ids(self.tok, prompt, target, self.separator)
        return self._facts[key]

    def pair(self, prompt: str, answer: str) -> tuple[list[int], list[int]]:
        key = (prompt, answer)
        if key not in self._pairs:
            self._pairs[key] = pair_ids(self.tok, prompt, answer)
        return self._pairs[key]

    def item(self, r: TrainRecord, rng: random.Random) -> list[int]:
        """A context item of record `r`: its bare fact, or one of the demonstrations IKE's
        bank writes of it (`ike.bank.record_demos`, the same ids)."""
        if rng.random() < 0.5:
            return self.fact(r.request.prompt, r.request.target)
        return rng.choice(record_demos(r, self.fact))


def build_reading(records: Sequence[TrainRecord], known: Sequence[Pair], tok, *,
                  separator: str, variants: int, limit: int, seed: int | str,
                  context: Sequence[TrainRecord] | None = None, swap: float = 0.0) -> Reading:
    """`variants` rows of every kind a record has data for, for each of `records`; context
    items drawn from `context` (default: `records`), never the row's own record. `known`:
    the pairs retain rows may probe. With probability `swap` a variant is about another
    record's subject (`_about`): a prompt the organism was never taught, so
    reading cannot be tied to the split's own prompts. Rows longer than `limit` tokens lose
    context first and are dropped (counted by their absence) when even the bare row does
    not fit."""
    rng = random.Random(seed)
    w = _Writer(tok, separator)
    pool = sorted({t for r in records for t in (r.request.target, r.request.previous)
                   if t is not None})
    subjects = sorted({r.request.subject for r in records if r.request.subject})
    context = list(records if context is None else context)
    rows: list[tuple[list[int], list[float]]] = []
    kinds: list[str] = []
    for r in records:
        for _ in range(variants):
            new = rng.choice([t for t in pool if t != r.request.previous] or pool)
            prompt, rephrases = r.request.prompt, r.rephrases
            if subjects and rng.random() < swap:
                prompt, rephrases = _about(r, rng.choice(subjects))
            probes = [("copy", prompt, new), *(("update", q, new) for q in rephrases),
                      *(("retain", p, a) for p, a in r.locality)]
            if known:
                p, a = rng.choice(known)
                if p not in (prompt, *rephrases):
                    probes.append(("retain", p, a))
            for kind, probe, answer in probes:
                row = _row(w, w.fact(prompt, new), probe, answer, r, context, limit, rng)
                if row is not None:
                    rows.append(row)
                    kinds.append(kind)
    return Reading(rows, kinds)


def _row(w: _Writer, fact: list[int], prompt: str, answer: str, own: TrainRecord,
         context: list[TrainRecord], limit: int, rng: random.Random):
    """One row: context items up to a length drawn in [bare row, limit], the fact, the probe
    and its answer, EOS; the loss on the answer and the EOS. None when the bare row is longer
    than `limit`."""
    p_ids, a_ids = w.pair(prompt, answer)
    core = fact + p_ids + a_ids + [w.tok.eos_token_id]
    if len(core) > limit:
        return None
    budget = rng.randint(len(core), limit) - len(core)
    ctx: list[int] = []
    for _ in range(64 if context else 0):  # bounded: a draw of the row's own record is skipped
        other = rng.choice(context)
        if other is own:
            continue
        item = w.item(other, rng)
        if len(ctx) + len(item) > budget:
            break
        ctx = item + ctx
    ids = ctx + core
    start = len(ctx) + len(fact) + len(p_ids)  # first answer token
    return ids, [0.0] * (start - 1) + [1.0] * (len(a_ids) + 1)
