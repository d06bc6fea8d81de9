"""Edit streams drawn from a world's timeline (`lifelong streams make`).

A stream replays the world's history: the first change of a fact is its first edit, later
changes of the same fact are re-edits. Around the edits the generator places retractions
(undo an earlier edit) and queries (the stream asks a rephrase of an edited fact). A stream
draws from one split of the world's people (`dev` for choosing defaults, `test` for
reporting): the two splits share no fact.

Invariants (checked by tests/test_streamgen.py and accepted by `lifelong.stream`):
- deterministic from (world, spec);
- exactly `spec.edits` edits, of which round(edits * reedit_share) re-edits, plus
  round(edits * retract_share) retracts and round(edits * query_share) queries;
- every edited fact belongs to `spec.split`;
- every edit's `previous` is the fact's value just before it: the world's initial value for
  a first edit, the earlier edit's target for a re-edit;
- no generalization probe leaks: the edits of one fact use distinct templates, and no
  rephrase (in-distribution or out-of-distribution) of any edit of a fact is the prompt of
  any edit of that fact, earlier or later;
- portability probes are two-hop questions through the edited fact, answered with the new
  value's own (never-changing) fact;
- a retract targets the last edit of its fact, comes after it, and no edit of that fact
  follows (so "previous" stays true; after the retract the fact holds the edit's `previous`);
- locality items come from facts that never change in the world (and so are never edited),
  in templates the model was pretrained on: a random one of the split, the same subject's
  other facts (neighbours), and the same relation of a person sharing the subject's first
  name (near-miss subjects);
- a query asks an edited fact in a phrasing no edit of that fact uses, and `answer` is the fact's value at the query's
  position (edits and retracts before it applied);
- ids are unique (`e000001`, `r000001`, `q000001`), `t` is non-decreasing (ISO-8601 UTC).
"""

from __future__ import annotations

import datetime as dt
import json
import random
from dataclasses import dataclass
from pathlib import Path

from .config import setting
from .errors import ConfigError
from .world import SPLITS, Change, Fact, World


@dataclass(frozen=True)
class StreamSpec:
    """What stream to draw from a world."""

    edits: int = setting(1000, "number of edit events", min=1)
    split: str = setting("test", "which people's facts to edit: 'dev' (for choosing "
                         "defaults) or 'test' (for reported figures)", choices=SPLITS)
    reedit_share: float = setting(0.1, "share of edits that re-edit an already edited fact",
                                  min=0.0, max=0.9)
    retract_share: float = setting(0.02, "retract events, as a share of edits", min=0.0, max=0.5)
    query_share: float = setting(0.05, "query events, as a share of edits", min=0.0, max=10.0)
    spacing_seconds: float = setting(3600.0, "mean simulated time between events (exponential)",
                                     min=0.0, max=1e9)
    start: str = setting("2030-01-01T00:00:00Z", "timestamp of the first event (ISO-8601)")
    seed: int = setting(0, "seed of every choice the generator makes", min=0, max=2**63 - 1)
    n_rephrases: int = setting(3, "in-distribution rephrases per edit (templates no edit of "
                               "the fact uses)", min=0, max=7)
    ood_rephrases: bool = setting(True, "add the out-of-distribution phrasings of the fact "
                                  "(a family pretraining never showed) as `ood_rephrases`")
    portability: bool = setting(True, "add two-hop questions through the edited fact")
    neighbours: bool = setting(True, "add locality prompts about the subject's other facts "
                               "and about a person sharing its first name")
    n_locality_facts: int = setting(600, "never-edited facts of the split reserved for random "
                                    "locality items", min=1)

    def __post_init__(self) -> None:
        _parse_start(self.start)


def _parse_start(text: str) -> dt.datetime:
    try:
        t = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"start: {text!r} is not an ISO-8601 timestamp") from None
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


@dataclass(frozen=True)
class _Planned:
    """An edit before ids and times: the fact, which change of its timeline, whether it is a
    re-edit, and its template."""

    fact: Fact
    change: Change
    reedit: bool
    template: int = -1


def _feasible(n: int, share: float, extras: list[int], n_facts: int) -> bool:
    """Whether `n` edits with round(n * share) re-edits fit: re-edits drawn from the facts
    with the most further changes first (as `_choose_edits` does), each fact's first change a
    first edit."""
    n_re = round(n * share)
    n_first = n - n_re
    used, left = 0, n_re
    for extra in extras:  # descending
        if left <= 0:
            break
        used, left = used + 1, left - min(extra, left)
    return left <= 0 and used <= n_first <= n_facts


def max_edits(world: World, spec: StreamSpec) -> int:
    """The largest `edits` this world's split can supply at `spec.reedit_share`."""
    facts = [f for f in world if f.changes and world.split_of(f) == spec.split]
    extras = sorted((len(f.changes) - 1 for f in facts if len(f.changes) >= 2), reverse=True)
    total = sum(len(f.changes) for f in facts)
    return max((n for n in range(1, total + 1)
                if _feasible(n, spec.reedit_share, extras, len(facts))), default=0)


def _choose_edits(world: World, spec: StreamSpec, rng: random.Random) -> list[_Planned]:
    """Pick timeline changes of the split's facts: facts with >= 2 changes supply the
    re-edits (their first changes count as first edits), other changing facts the rest of
    the first edits. Returned in world-timeline order, so each fact's changes stay in order."""
    n_re = round(spec.edits * spec.reedit_share)
    facts = [f for f in world if f.changes and world.split_of(f) == spec.split]
    multi = [f for f in facts if len(f.changes) >= 2]
    single = [f for f in facts if len(f.changes) == 1]
    rng.shuffle(multi)
    rng.shuffle(single)
    multi.sort(key=lambda f: len(f.changes))  # stable: shuffled within a count; most last
    chosen: list[tuple[Fact, int]] = []  # (fact, how many of its changes)
    re_left = n_re
    while re_left > 0 and multi:
        fact = multi.pop()
        extra = min(len(fact.changes) - 1, re_left)
        chosen.append((fact, 1 + extra))
        re_left -= extra
    n_first = spec.edits - n_re
    others = multi + single
    rng.shuffle(others)
    if re_left or len(chosen) > n_first or len(others) < n_first - len(chosen):
        most = max_edits(world, spec)
        why = (f"at most {most} at re-edit share {spec.reedit_share}" if spec.edits > most else
               f"{n_re} re-edits need more first edits than {n_first}: lower reedit_share")
        raise ConfigError(f"the {spec.split} split cannot supply {spec.edits} edits with "
                          f"{n_re} re-edits; {why}")
    chosen += [(f, 1) for f in others[: n_first - len(chosen)]]
    planned = []
    for fact, n in chosen:  # distinct templates for the edits of one fact
        templates = rng.sample(range(len(world.templates(fact.relation))), n)
        planned += [_Planned(fact, fact.changes[i], i > 0, templates[i]) for i in range(n)]
    planned.sort(key=lambda p: (p.change.t, p.fact.key))
    return planned


def _trained_prompt(world: World, fact: Fact, rng: random.Random) -> dict:
    return {"prompt": world.prompt(fact, rng.choice(world.trained_templates(fact))),
            "answer": fact.value}


class _LocalityPlanner:
    """Locality items for an edit: one from a seeded pool of the split's never-changing
    facts (cycled), plus with `neighbours` one of the subject's own never-changing facts and
    one never-changing fact of the same relation about a person with the same first name."""

    def __init__(self, world: World, spec: StreamSpec, rng: random.Random):
        stable = world.stable_facts(spec.split)
        if len(stable) < spec.n_locality_facts:
            raise ConfigError(f"the {spec.split} split has {len(stable)} never-changing facts; "
                              f"n_locality_facts={spec.n_locality_facts} asks for more")
        self.world, self.spec, self.rng = world, spec, rng
        self.pool = [_trained_prompt(world, f, rng) for f in rng.sample(stable, spec.n_locality_facts)]
        self.by_entity: dict[str, list[Fact]] = {}
        self.by_first: dict[tuple[str, str], list[Fact]] = {}
        for f in stable:
            self.by_entity.setdefault(f.entity, []).append(f)
            self.by_first.setdefault((f.subject.split()[0], f.relation), []).append(f)
        self.count = 0

    def items(self, fact: Fact) -> list[dict]:
        out = [dict(self.pool[self.count % len(self.pool)])]
        self.count += 1
        if self.spec.neighbours:
            own = self.by_entity.get(fact.entity, [])
            near = [f for f in self.by_first.get((fact.subject.split()[0], fact.relation), [])
                    if f.entity != fact.entity]
            for group in (own, near):
                if group:
                    out.append(_trained_prompt(self.world, self.rng.choice(group), self.rng))
        return out


def _edit_event(world: World, p: _Planned, used: set[int], spec: StreamSpec,
                rng: random.Random, locality: list[dict]) -> dict:
    """An edit event. `used`: the templates of every edit of this fact in the stream."""
    fact = p.fact
    free = [t for t in range(len(world.templates(fact.relation))) if t not in used]
    rephrases = sorted(rng.sample(free, min(spec.n_rephrases, len(free))))
    ev = {"kind": "edit", "prompt": world.prompt(fact, p.template), "target": p.change.new,
          "subject": fact.subject, "fact": fact.key,
          "rephrases": [world.prompt(fact, t) for t in rephrases]}
    if spec.ood_rephrases:
        ev["ood_rephrases"] = [world.ood_prompt(fact, k)
                               for k in range(len(world.ood_templates(fact.relation)))]
    ev["locality"] = locality
    if spec.portability:
        port = [{"prompt": h["prompt"], "answer": h["answer"]}
                for h in world.two_hop(fact, p.change.new)]
        if port:
            ev["portability"] = port
    ev["previous"] = p.change.old
    ev["meta"] = {"relation": fact.relation, "template": p.template, "reedit": p.reedit,
                  "world_t": p.change.t, "split": spec.split}
    return ev


def _slots(n_edits: int, retract_after: dict[int, int], n_queries: int,
           rng: random.Random) -> list[list[tuple[str, int]]]:
    """For each edit position, the non-edit events that follow it: ("retract", edit index)
    or ("query", slot). Queries go to uniformly drawn positions."""
    slots: list[list[tuple[str, int]]] = [[] for _ in range(n_edits)]
    for edit_index, pos in retract_after.items():
        slots[pos].append(("retract", edit_index))
    for _ in range(n_queries):
        pos = rng.randrange(n_edits)
        slots[pos].append(("query", pos))
    for s in slots:
        rng.shuffle(s)
    return slots


def _plan_retracts(planned: list[_Planned], spec: StreamSpec,
                   rng: random.Random) -> dict[int, int]:
    """edit index -> position of the edit after which its retract comes. Only the last edit
    of each fact is retractable (see module invariants)."""
    last = {p.fact.key: i for i, p in enumerate(planned)}
    n = round(spec.edits * spec.retract_share)
    if n > len(last):
        raise ConfigError(f"retract_share asks for {n} retracts; only {len(last)} are possible")
    targets = rng.sample(sorted(last.values()), n)
    return {i: rng.randrange(i, len(planned)) for i in targets}


def _timestamps(n: int, spec: StreamSpec, rng: random.Random) -> list[str]:
    """Non-decreasing ISO-8601 UTC times: the first at `start`, then exponential gaps with
    mean `spacing_seconds`, in whole seconds."""
    t = _parse_start(spec.start).astimezone(dt.timezone.utc)
    out = []
    for i in range(n):
        if i and spec.spacing_seconds > 0:
            t += dt.timedelta(seconds=round(rng.expovariate(1.0 / spec.spacing_seconds)))
        out.append(t.strftime("%Y-%m-%dT%H:%M:%SZ"))
    return out


def make_stream(world: World, spec: StreamSpec) -> list[dict]:
    """The events of the stream `spec` draws from `world`, in replay (timestamp) order."""
    rng = random.Random(spec.seed)
    planned = _choose_edits(world, spec, rng)
    locality = _LocalityPlanner(world, spec, rng)
    retract_after = _plan_retracts(planned, spec, rng)
    slots = _slots(len(planned), retract_after, round(spec.edits * spec.query_share), rng)
    used: dict[str, set[int]] = {}
    for p in planned:
        used.setdefault(p.fact.key, set()).add(p.template)
    events: list[dict] = []
    edit_ids: list[str] = []
    current: dict[str, str] = {}  # fact -> value now, for query answers
    counts = {"e": 0, "r": 0, "q": 0}

    def next_id(prefix: str) -> str:
        counts[prefix] += 1
        return f"{prefix}{counts[prefix]:06d}"

    for i, p in enumerate(planned):
        ev = {"id": next_id("e"), **_edit_event(world, p, used[p.fact.key], spec, rng,
                                                locality.items(p.fact))}
        events.append(ev)
        edit_ids.append(ev["id"])
        current[p.fact.key] = p.change.new
        for what, ref in slots[i]:
            if what == "retract":
                events.append({"kind": "retract", "id": next_id("r"), "edit_id": edit_ids[ref]})
                current[planned[ref].fact.key] = planned[ref].change.old
            else:
                events.append(_query_event(world, events, used, current, rng, next_id("q")))
    for ev, t in zip(events, _timestamps(len(events), spec, rng)):
        ev["t"] = t
    return [_ordered(ev) for ev in events]


def _query_event(world: World, events: list[dict], used: dict[str, set[int]],
                 current: dict[str, str], rng: random.Random, qid: str) -> dict:
    """Ask one already-edited fact (of a random earlier edit) in a phrasing no edit of that
    fact uses."""
    fact = world.fact(rng.choice([e for e in events if e["kind"] == "edit"])["fact"])
    free = [t for t in range(len(world.templates(fact.relation))) if t not in used[fact.key]]
    return {"kind": "query", "id": qid, "prompt": world.prompt(fact, rng.choice(free)),
            "answer": current[fact.key], "fact": fact.key}


_ORDER = ("kind", "id", "t", "prompt", "target", "answer", "edit_id", "subject", "fact",
          "previous", "rephrases", "ood_rephrases", "locality", "portability", "meta")


def _ordered(ev: dict) -> dict:
    """Same event with keys in a fixed, readable order."""
    return {k: ev[k] for k in sorted(ev, key=_ORDER.index)}


def write_stream(events: list[dict], path: str | Path) -> None:
    """Write events as UTF-8 JSONL, one compact event per line, in the given order."""
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for ev in events:
            fh.write(json.dumps(ev, ensure_ascii=False, separators=(",", ":")) + "\n")
