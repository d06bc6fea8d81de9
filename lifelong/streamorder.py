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
