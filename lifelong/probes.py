"""What to probe at a checkpoint, and probing it.

`Ledger` is the stream's truth so far: a pure function of the events replayed (never of a
method's outcomes: a retraction the method cannot perform still changes what is true).
`plan` turns it into probe items; `run_probes` scores them against the live model and, for
items judged against the pre-stream model, against the stored reference outputs.

Roles (the `role` column of the probes table):
    rel       newest edit of a fact: its prompt -> its target           (reliability)
    gen       a rephrase of that edit -> its target                     (generalization)
    gen_ood   an out-of-distribution rephrase of that edit -> its target
    port      a portability probe of that edit -> its answer            (portability)
    conflict  an older edit's prompt of a re-edited fact -> the newest value
    stale     the newest edit's prompt scored against a superseded value
    retract   a retracted fact with no active edit left: its prompt, compared with the
              pre-stream model                                          (retraction restores)
    loc       a locality prompt, compared with the pre-stream model    (locality)

A portability probe that names the edits it depends on (`Probe.needs`: MQuAKE's multi-hop
questions) is asked only while all of them are applied and current (`needs_met`); in the
chunked protocol, only in a chunk that holds them all. A portability probe with aliases
(`Probe.aliases`) is one item with several acceptable
answers (`ProbeItem.answers`): teacher-forced it scores as its best answer, generated it
matches when the greedy output reproduces any of them (`lifelong.scoring.score_answers`). Its
row keeps `target` = the canonical answer and adds `tf_answer` (the answer whose teacher-
forced figures the row holds) and `gen_answer` (the answer generated, NULL if none); rows of
items with one answer leave both NULL. Items compared with the pre-stream model (loc,
retract) have one answer: a locality probe's aliases are not used, since what is compared is
the model's output over the canonical answer's positions, not the answer itself.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .model import LM
from .scoring import score_answers, score_pairs
from .stream import Edit, Event, Probe, Retract


@dataclass(frozen=True)
class ProbeItem:
    item: str
    role: str
    prompt: str
    target: str
    edit_id: str = ""
    fact: str = ""
    edit_index: int = -1
    against_base: bool = False
    aliases: tuple[str, ...] = ()  # further acceptable answers (portability probes)

    @property
    def answers(self) -> tuple[str, ...]:
        """Every acceptable answer, `target` first; just `target` for items against the base."""
        return (self.target,) if self.against_base else (self.target, *self.aliases)


@dataclass
class Ledger:
    """Edits applied so far, per fact, and which were retracted. Build with `replay`."""

    edits: dict[str, Edit]
    order: dict[str, int]          # edit id -> index among edits (0-based, stream order)
    by_fact: dict[str, list[str]]  # fact -> edit ids in stream order
    retracted: set[str]

    @classmethod
    def replay(cls, events: Iterable[Event]) -> Ledger:
        led = cls({}, {}, {}, set())
        for ev in events:
            led.add(ev)
        return led

    def add(self, ev: Event) -> None:
        """Account for one more replayed event (queries and merges change no truth)."""
        if isinstance(ev, Edit):
            self.order[ev.id] = len(self.edits)
            self.edits[ev.id] = ev
            self.by_fact.setdefault(ev.fact, []).append(ev.id)
        elif isinstance(ev, Retract):
            self.retracted.add(ev.edit_id)

    def active(self, fact: str) -> list[Edit]:
        return [self.edits[i] for i in self.by_fact[fact] if i not in self.retracted]

    def newest(self, fact: str) -> Edit | None:
        act = self.active(fact)
        return act[-1] if act else None


def locality_pool(events: Sequence[Event]) -> list[Probe]:
    """Every distinct locality probe of the stream, in stream order."""
    seen, pool = set(), []
    for ev in events:
        if isinstance(ev, Edit):
            for p in ev.locality:
                if (p.prompt, p.answer) not in seen:
                    seen.add((p.prompt, p.answer))
                    pool.append(p)
    return pool


def chunk_locality(led: Ledger) -> list[Probe]:
    """The locality probes of the edits in `led` (a chunk of the WISE-paper protocol judges
    each edit's own locality prompts), as `locality_pool` dedups them."""
    return locality_pool(list(led.edits.values()))


def locality_sample(pool: list[Probe], size: int, seed: int) -> list[Probe]:
    """A fixed seeded sample (the same at every checkpoint, so curves compare like with like)."""
    if size <= 0 or size >= len(pool):
        return list(pool)
    idx = sorted(random.Random(f"loc-{seed}").sample(range(len(pool)), size))
    return [pool[i] for i in idx]


def retract_probe(first: Edit, last: Edit) -> tuple[str, str]:
    """(prompt, answer) judged against the pre-stream model once every edit of a fact is
    retracted: the last edit's prompt, and the value before the stream (the first edit's
    `previous`) where the stream says it; only the answer's length matters for the comparison."""
    return last.prompt, first.previous or last.previous or last.target


def reference_pairs(events: Sequence[Event]) -> list[tuple[str, str]]:
    """Every (prompt, answer) a retraction probe of this stream may need, known up front."""
    led = Ledger.replay(events)
    pairs = []
    for ids in led.by_fact.values():
        first = led.edits[ids[0]]
        pairs += [retract_probe(first, led.edits[i]) for i in ids]
    return pairs


def trained_prompts(led: Ledger, fact: str) -> set[str]:
    """Every prompt an edit of `fact` in the ledger was made with (retracted ones too: the
    method trained on them)."""
    return {led.edits[i].prompt for i in led.by_fact[fact]}


def leaked_rephrases(led: Ledger) -> int:
    """Rephrases (in- and out-of-distribution) of the facts' newest edits that are the prompt
    of some edit of the same fact: `plan` drops them, since a method trained on them. Honest
    streams have none (streamgen guarantees it for the bundled ones)."""
    n = 0
    for fact in led.by_fact:
        new = led.newest(fact)
        if new is not None:
            seen = trained_prompts(led, fact)
            n += sum(p in seen for p in (*new.rephrases, *getattr(new, "ood_rephrases", ())))
    return n


def needs_met(led: Ledger, needs: Sequence[str]) -> bool:
    """Whether a portability probe that depends on the edits `needs` (a multi-hop question
    over several rewrites) can be asked now: every one of them is in the ledger (in the
    chunked protocol: in this chunk), not retracted, and still its fact's newest edit (a
    later re-edit changes the answer the probe expects). A probe without `needs` always can."""
    for edit_id in needs:
        edit = led.edits.get(edit_id)
        if edit is None or edit_id in led.retracted or led.newest(edit.fact) is not edit:
            return False
    return True


def _fact_items(led: Ledger, fact: str) -> list[ProbeItem]:
    ids = led.by_fact[fact]
    new = led.newest(fact)
    if new is None:  # every edit of this fact was retracted: it must behave as before
        last = led.edits[ids[-1]]
        prompt, answer = retract_probe(led.edits[ids[0]], last)
        return [ProbeItem(f"retract:{last.id}", "retract", prompt, answer, last.id, fact,
                          led.order[last.id], against_base=True)]
    n = led.order[new.id]
    items = [ProbeItem(f"rel:{new.id}", "rel", new.prompt, new.target, new.id, fact, n)]
    trained = trained_prompts(led, fact)
    items += [ProbeItem(f"gen:{new.id}:{k}", "gen", p, new.target, new.id, fact, n)
              for k, p in enumerate(new.rephrases) if p not in trained]
    items += [ProbeItem(f"gen_ood:{new.id}:{k}", "gen_ood", p, new.target, new.id, fact, n)
              for k, p in enumerate(getattr(new, "ood_rephrases", ())) if p not in trained]
    items += [ProbeItem(f"port:{new.id}:{k}", "port", p.prompt, p.answer, new.id, fact, n,
                        aliases=p.aliases) for k, p in enumerate(new.portability)
              if needs_met(led, p.needs)]
    older = [led.edits[i] for i in ids if i != new.id and led.order[i] < n]
    for old in older:
        if old.id not in led.retracted:
            items.append(ProbeItem(f"conflict:{old.id}", "conflict", old.prompt, new.target,
                                   new.id, fact, n))
    # stale: any other value this fact was given, older or retracted, must not come out;
    # keyed by index (ids and values may contain any character)
    others = {led.edits[i].target for i in ids if i != new.id} - {new.target}
    for k, value in enumerate(sorted(others)):
        items.append(ProbeItem(f"stale:{new.id}:{k}", "stale", new.prompt, value, new.id, fact, n))
    return items


def in_sample(fact: str, rate: float, seed: int) -> bool:
    """Whether `fact` belongs to the fixed probe sample of rate `rate`: a seeded hash of the
    fact below the rate. The same facts at every checkpoint (so an edit group is followed
    through time on the same facts), about `rate` of them."""
    digest = hashlib.sha256(f"probe|{seed}|{fact}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < rate


def plan(led: Ledger, loc: Sequence[Probe], *, sample: int = 0, seed: int = 0,
         total_facts: int = 0) -> list[ProbeItem]:
    """Probe items for one checkpoint. With `sample` > 0 and fewer than `total_facts` (the
    stream's distinct facts), a fixed seeded sample of about `sample` facts over the whole
    stream (`in_sample`): the same facts at every checkpoint. Otherwise every edited fact.
    Rephrases that are the prompt of an edit of the same fact are never probed."""
    facts = list(led.by_fact)
    if 0 < sample < total_facts:
        facts = [f for f in facts if in_sample(f, sample / total_facts, seed)]
    items = [it for f in facts for it in _fact_items(led, f)]
    items += [ProbeItem(f"loc:{k}", "loc", p.prompt, p.answer, against_base=True)
              for k, p in enumerate(loc)]
    return items


def reference_rows(lm: LM, model_key: str, pairs: Sequence[tuple[str, str]],
                   batch_size: int) -> list[dict]:
    """The pre-stream model's outputs for (prompt, answer) pairs, as `reference` rows."""
    scores = score_pairs(lm, [p for p, _ in pairs], [a for _, a in pairs], batch_size)
    return [{"model": model_key, "prompt": p, "answer": a, "tf_pred": list(s.tf_pred),
             "gen_ids": list(s.gen_ids), "gen_text": s.gen_text}
            for (p, a), s in zip(pairs, scores)]


def run_probes(lm: LM, items: Sequence[ProbeItem], reference: dict, batch_size: int) -> list[dict]:
    """Score `items`. Items against the base compare token for token with `reference`:
    tf_acc = share of argmax tokens equal to the base's, gen_exact = same greedy output.
    Items with aliases score against every answer (see the module docstring)."""
    scores = score_answers(lm, [i.prompt for i in items], [i.answers for i in items], batch_size)
    rows = []
    for it, s in zip(items, scores):
        row = {"item": it.item, "role": it.role, "edit_id": it.edit_id, "fact": it.fact,
               "edit_index": it.edit_index, "prompt": it.prompt, "target": it.target,
               "gen_text": s.gen_text, "against_base": int(it.against_base), "nll": s.nll}
        if it.against_base:
            ref = reference[(it.prompt, it.target)]
            base_tf, base_gen = tuple(ref["tf_pred"]), tuple(ref["gen_ids"])
            agree = sum(a == b for a, b in zip(s.tf_pred, base_tf))
            row.update(tf_acc=agree / max(len(base_tf), 1), tf_exact=int(s.tf_pred == base_tf),
                       gen_exact=int(s.gen_ids == base_gen))
        else:
            row.update(tf_acc=s.tf_acc, tf_exact=int(s.tf_exact), gen_exact=int(s.gen_exact))
        if len(it.answers) > 1:
            row.update(tf_answer=it.answers[s.tf_alias],
                       gen_answer=None if s.gen_alias is None else it.answers[s.gen_alias])
        rows.append(row)
    return rows


def add_routing(method, rows: list[dict], batch_size: int) -> None:
    """For a method that routes (`lifelong.methods.Routing`; others are left alone), record
    where each rel/gen/loc probe went: `routed` (memory index, -1 = main memory) and
    `routed_ok` (rel/gen: the memory holding the edit; loc: the main memory), and for each of
    its `shadow_routers` (measured, not serving) `routed_ok_<router>`."""
    from .methods import Routing
    if not isinstance(method, Routing):
        return
    todo = [r for r in rows if r["role"] in ("rel", "gen", "loc")]
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        prompts = [r["prompt"] for r in chunk]
        want = [None if r["role"] == "loc" else method.memory_of(r["edit_id"]) for r in chunk]
        for row, dest, w in zip(chunk, method.route(prompts), want):
            row["routed"] = -1 if dest is None else int(dest)
            row["routed_ok"] = int(dest == w)
        for name in method.shadow_routers:
            for row, dest, w in zip(chunk, method.route(prompts, router=name), want):
                row[f"routed_ok_{name}"] = int(dest == w)
