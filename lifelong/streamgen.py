"""Edit streams drawn from a world's timeline (`lifelong streams make`).

A stream replays the world's history: the first change of a fact is its first edit, later
changes of the same fact are re-edits. Around the edits the generator places retractions
(undo an earlier edit) and queries (the stream asks a rephrase of an edited fact).

Invariants (checked by tests/test_streamgen.py and accepted by `lifelong.stream`):
- deterministic from (world, spec);
- exactly `spec.edits` edits, of which round(edits * reedit_share) re-edits, plus
  round(edits * retract_share) retracts and round(edits * query_share) queries;
- every edit's `previous` is the fact's value just before it: the world's initial value for
  a first edit, the earlier edit's target for a re-edit;
- a retract targets the last edit of its fact, comes after it, and no edit of that fact
  follows (so "previous" stays true; after the retract the fact holds the edit's `previous`);
- locality items come from `n_locality_facts` facts that never change in the world (and so
  are never edited), cycled in a seeded order, in templates the model was pretrained on;
- a query asks a template other than its edit's, and `answer` is the fact's value at the
  query's position (edits and retracts before it applied);
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
from .world import Change, Fact, World


@dataclass(frozen=True)
class StreamSpec:
    """What stream to draw from a world."""

    edits: int = setting(1000, "number of edit events", min=1)
    reedit_share: float = setting(0.1, "share of edits that re-edit an already edited fact",
                                  min=0.0, max=0.5)
    retract_share: float = setting(0.02, "retract events, as a share of edits", min=0.0, max=0.5)
    query_share: float = setting(0.05, "query events, as a share of edits", min=0.0, max=10.0)
    spacing_seconds: float = setting(3600.0, "mean simulated time between events (exponential)",
                                     min=0.0)
    start: str = setting("2030-01-01T00:00:00Z", "timestamp of the first event (ISO-8601)")
    seed: int = setting(0, "seed of every choice the generator makes")
    locality_per_edit: int = setting(1, "locality prompts attached to each edit", min=0)
    n_locality_facts: int = setting(1000, "never-edited facts reserved for locality items",
                                    min=1)
    n_rephrases: int | None = setting(None, "rephrases per edit (default: every other template)",
                                      min=0)

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
    """An edit before ids and times: the fact, which change of its timeline, and whether it
    is a re-edit."""

    fact: Fact
    change: Change
    reedit: bool


def _choose_edits(world: World, spec: StreamSpec, rng: random.Random) -> list[_Planned]:
    """Pick timeline changes: facts with >= 2 changes supply the re-edits (their first
    changes count as first edits), other changing facts the rest of the first edits.
    Returned in world-timeline order, so each fact's changes stay in order."""
    n_re = round(spec.edits * spec.reedit_share)
    multi = [f for f in world if len(f.changes) >= 2]
    single = [f for f in world if len(f.changes) == 1]
    rng.shuffle(multi)
    rng.shuffle(single)
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
        raise ConfigError(f"the world's timeline cannot supply {spec.edits} edits with "
                          f"{n_re} re-edits ({sum(1 for f in world if f.changes)} facts change)")
    chosen += [(f, 1) for f in others[: n_first - len(chosen)]]
    planned = [_Planned(f, f.changes[i], i > 0) for f, n in chosen for i in range(n)]
    planned.sort(key=lambda p: (p.change.t, p.fact.key))
    return planned


def _locality_pool(world: World, spec: StreamSpec, rng: random.Random) -> list[dict]:
    """One {prompt, answer} per reserved fact, each in a template pretraining used."""
    stable = world.stable_facts()
    if len(stable) < spec.n_locality_facts:
        raise ConfigError(f"the world has {len(stable)} never-changing facts; "
                          f"n_locality_facts={spec.n_locality_facts} asks for more")
    reserved = rng.sample(stable, spec.n_locality_facts)
    return [{"prompt": world.prompt(f, rng.choice(world.trained_templates(f))), "answer": f.value}
            for f in reserved]


def _edit_event(world: World, p: _Planned, spec: StreamSpec, rng: random.Random,
                locality: list[dict]) -> dict:
    fact = p.fact
    n_templates = len(world.templates(fact.relation))
    template = rng.randrange(n_templates)
    others = [t for t in range(n_templates) if t != template]
    if spec.n_rephrases is not None:
        others = sorted(rng.sample(others, min(spec.n_rephrases, len(others))))
    return {"kind": "edit", "prompt": world.prompt(fact, template), "target": p.change.new,
            "subject": fact.subject, "fact": fact.key,
            "rephrases": [world.prompt(fact, t) for t in others], "locality": locality,
            "previous": p.change.old,
            "meta": {"relation": fact.relation, "template": template, "reedit": p.reedit,
                     "world_t": p.change.t}}


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
    pool = _locality_pool(world, spec, rng)
    retract_after = _plan_retracts(planned, spec, rng)
    slots = _slots(len(planned), retract_after, round(spec.edits * spec.query_share), rng)
    events: list[dict] = []
    edit_ids: list[str] = []
    current: dict[str, str] = {}  # fact -> value now, for query answers
    counts = {"e": 0, "r": 0, "q": 0}

    def next_id(prefix: str) -> str:
        counts[prefix] += 1
        return f"{prefix}{counts[prefix]:06d}"

    for i, p in enumerate(planned):
        loc = [dict(pool[(i * spec.locality_per_edit + k) % len(pool)])
               for k in range(spec.locality_per_edit)]
        ev = {"id": next_id("e"), **_edit_event(world, p, spec, rng, loc)}
        events.append(ev)
        edit_ids.append(ev["id"])
        current[p.fact.key] = p.change.new
        for what, ref in slots[i]:
            if what == "retract":
                events.append({"kind": "retract", "id": next_id("r"), "edit_id": edit_ids[ref]})
                current[planned[ref].fact.key] = planned[ref].change.old
            else:
                events.append(_query_event(world, events, current, rng, next_id("q")))
    for ev, t in zip(events, _timestamps(len(events), spec, rng)):
        ev["t"] = t
    return [_ordered(ev) for ev in events]


def _query_event(world: World, events: list[dict], current: dict[str, str],
                 rng: random.Random, qid: str) -> dict:
    """Ask one already-edited fact in a template other than its (random earlier) edit's."""
    edit = rng.choice([e for e in events if e["kind"] == "edit"])
    fact = world.fact(edit["fact"])
    n_templates = len(world.templates(fact.relation))
    template = rng.choice([t for t in range(n_templates) if t != edit["meta"]["template"]])
    return {"kind": "query", "id": qid, "prompt": world.prompt(fact, template),
            "answer": current[fact.key]}


_ORDER = ("kind", "id", "t", "prompt", "target", "answer", "edit_id", "subject", "fact",
          "previous", "rephrases", "locality", "meta")


def _ordered(ev: dict) -> dict:
    """Same event with keys in a fixed, readable order."""
    return {k: ev[k] for k in sorted(ev, key=_ORDER.index)}


def write_stream(events: list[dict], path: str | Path) -> None:
    """Write events as UTF-8 JSONL, one compact event per line, in the given order."""
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for ev in events:
            fh.write(json.dumps(ev, ensure_ascii=False, separators=(",", ":")) + "\n")
