"""A seeded replay order of a stream: the same events, the facts' histories interleaved
differently, so that several seeds of one experiment see the stream in several orders.

Every fact's own events (its edits, the retractions of its edits, the queries that name it
in their `fact` field) keep their relative order, so re-edits still follow first edits,
retractions follow their edit, and a query's expected answer stays the fact's value at that
point. Events that belong to no fact (merges, queries without a `fact`) stay right after the
event they followed in the file. The interleaving of the facts' histories is uniformly random
given the seed. Timestamps are the file's, reassigned in order (the simulated clock still
moves forward).

Invariants (tests/test_streamorder.py): a permutation of the input; per-fact order kept;
deterministic in (events, seed); `t` non-decreasing.

`reedit_pairs` derives another stream: each re-edited fact's first edit directly followed by
its first re-edit, for replay in chunks of two (`restart_every = 2`: every pair on a fresh
model, so a re-edit meets the value the first edit just wrote).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

from .stream import Edit, Event, Query, Retract


def _units(events: Sequence[Event]) -> list[tuple[str | None, list[Event]]]:
    """(fact or None, [event, glued followers...]) in file order."""
    fact_of_edit: dict[str, str] = {}
    units: list[tuple[str | None, list[Event]]] = []
    for ev in events:
        if isinstance(ev, Edit):
            fact_of_edit[ev.id] = ev.fact
            units.append((ev.fact, [ev]))
        elif isinstance(ev, Retract):
            units.append((fact_of_edit.get(ev.edit_id), [ev]))
        elif isinstance(ev, Query) and ev.fact:
            units.append((ev.fact, [ev]))
        elif units:  # merges, queries that name no fact: stay after what they followed
            units[-1][1].append(ev)
        else:
            units.append((None, [ev]))
    return units


def seeded_order(events: Sequence[Event], seed: int) -> tuple[Event, ...]:
    """`events` in the replay order of `seed` (see the module docstring)."""
    units = _units(events)
    lead = []  # events before the first fact (a stream starting with a merge): kept first
    while units and units[0][0] is None:
        lead += units.pop(0)[1]
    chains: dict[str, list[list[Event]]] = {}
    for fact, group in units:
        chains.setdefault(fact or "", []).append(group)
    labels = [fact for fact, groups in chains.items() for _ in groups]
    random.Random(f"order-{seed}").shuffle(labels)
    cursor = {fact: 0 for fact in chains}
    out = list(lead)
    for fact in labels:
        out += chains[fact][cursor[fact]]
        cursor[fact] += 1
    times = sorted(ev.t for ev in events)
    return tuple(dataclasses.replace(ev, t=t) for ev, t in zip(out, times))


def reedit_pairs(events: Sequence[Event], limit: int = 0) -> tuple[Edit, ...]:
    """Every fact edited at least twice in `events`: its first edit, then its second, in the
    order of the facts' first edits (at most `limit` pairs; 0: all). Retractions, queries,
    merges and later re-edits are left out; the pair keeps the file's fields (the second's
    `previous` is what the stream said), and the pairs take the file's timestamps in order."""
    first: dict[str, tuple[int, Edit] | None] = {}  # fact -> (position, first edit); None: paired
    pairs: list[tuple[int, Edit, Edit]] = []
    for i, ev in enumerate(events):
        if not isinstance(ev, Edit):
            continue
        if ev.fact not in first:
            first[ev.fact] = (i, ev)
        elif first[ev.fact] is not None:
            at, edit = first[ev.fact]
            pairs.append((at, edit, ev))
            first[ev.fact] = None  # later re-edits are not used
    pairs.sort(key=lambda pair: pair[0])
    out = [ev for _, a, b in pairs[: limit or None] for ev in (a, b)]
    times = sorted(ev.t for ev in out)
    return tuple(dataclasses.replace(ev, t=t) for ev, t in zip(out, times))
