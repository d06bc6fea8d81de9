"""Records that hold several edits (MQuAKE's cases): edits shared between records, and the
probes that need all of a record's edits.

Every record converts to a `Unit`: its edits (one for most formats) and the probes that
depend on all of them together (MQuAKE's multi-hop questions; none for most formats). Edits
of different records that are the same edit (the converter gives them the same private
`_share` key: same subject, relation and target) become one edit, the first in file order;
the stream places it with the first record that uses it in stream order. A unit's probes go
on its edit placed last, with `needs` = the ids of all its edits, so that every id in
`needs` is an earlier edit or the probe's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..stream import MAX_ITEMS


@dataclass
class Unit:
    """One record's edits (dicts being built) and the probes that need all of them."""

    record: int
    case_id: Any
    edits: list[dict]
    probes: list[dict]
    left_out: list[str]

    @property
    def label(self) -> Any:
        """The case id, or the record number of a record without one."""
        return self.record if self.case_id is None else self.case_id

    def has_probes(self) -> bool:
        return bool(self.probes) or any(e.get("locality") or e.get("portability") for e in self.edits)


def share_edits(units: list[Unit]) -> int:
    """Make the edits with the same `_share` key one edit (the first, in file order: its id
    and fields), listing every record that has it in its meta.case_ids. Returns how many
    edits are shared by more than one record."""
    first: dict[Any, dict] = {}
    shared: set[int] = set()
    for u in units:
        for i, ev in enumerate(u.edits):
            key = ev.get("_share")
            if key is None:
                continue
            one = first.setdefault(key, ev)
            if one is ev:
                continue
            u.edits[i] = one
            cases = one["meta"].setdefault("case_ids", [one["meta"].get("case_id", one["meta"]["record"])])
            if u.label not in cases:
                cases.append(u.label)
            shared.add(id(one))
        u.edits = list({id(e): e for e in u.edits}.values())  # a rewrite twice in one record
    return len(shared)


def unique_edits(units: list[Unit]) -> list[dict]:
    """Every edit once, in the order of the units."""
    return list({id(e): e for u in units for e in u.edits}.values())


def place(units: list[Unit], source: str, notes: list[str]) -> list[dict]:
    """The edits in stream order (units in the given order, each unit's edits not placed
    yet in its own order), each unit's probes on its edit placed last with `needs`, and
    counted per case in that edit's meta.portability_groups. Probes that would take an edit
    past the stream format's MAX_ITEMS portability probes are dropped with a note."""
    where: dict[int, int] = {}
    events: list[dict] = []
    for u in units:
        for ev in u.edits:
            if id(ev) not in where:
                where[id(ev)] = len(events)
                events.append(ev)
        if not u.probes:
            continue
        mine = sorted(u.edits, key=lambda e: where[id(e)])
        host = mine[-1]
        port = host.setdefault("portability", [])
        if len(port) + len(u.probes) > MAX_ITEMS:
            notes.append(f"{source}:{u.record}: portability: {len(u.probes)} probe(s) dropped: their edit "
                         f"{host['id']} carries {len(port)} already (the stream format's limit is {MAX_ITEMS})")
            continue
        needs = [e["id"] for e in mine]
        port += [{**p, "needs": needs} for p in u.probes]
        groups = host["meta"].setdefault("portability_groups", {})
        groups[f"case {u.label}"] = groups.get(f"case {u.label}", 0) + len(u.probes)
    return events
