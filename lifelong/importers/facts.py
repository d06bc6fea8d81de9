"""Fact identity of imported edits: `subject|relation`, and many-valued relations.

An importer names an edit's fact by its subject and relation (`subject|relation_id` in ROME
CounterFact and MQuAKE, `subject|prompt` where the prompt stands for the relation: EasyEdit
CounterFact, KnowEdit, zsRE), so that two edits of one fact are a re-edit and the later one
wins. That holds for relations with one value per subject (a birthplace), not for those with
several (the twin cities of a city, the official languages of a country): CounterFact's
"The twin city of Tirana is" Beijing -> Shanghai and Istanbul -> Budapest are two edits of
two different values, and neither replaces the other.

Which relations are many-valued is read from the data being imported: a relation is
many-valued when one subject has edits of it whose old values (`previous`, the data set's
true value) differ. A relation is named by `relation` (what the converter gives, else the
fact's key with the subject replaced by "{}"). Every edit of a many-valued relation that
has a `previous` gets the fact `subject|key|previous` (the value it replaces: edits of the
same old value stay re-edits of each other), except that an edit whose `previous` is the
target of an earlier edit of the same subject and relation continues that edit's fact (a
chain A -> B, B -> C stays one fact). Edits without a `previous` keep `subject|key`.

In the data under ../shared/data: counterfact-edit-1k has one such relation ("The twin city
of {} is": Tirana; its 8 edits get a fact per old value); in counterfact-train, 33
subject+prompt pairs have two or three different true values, under 12 prompts (938 edits):
twin cities (3 phrasings), official, spoken or understood languages, fields of work,
locations, countries of origin, and "{}, the", a prompt CounterFact uses for two relations
(Frank Lampard's sport and his position); its 3 other repeated pairs (BMW 3 Series twice,
Fraunces Tavern) have one old value and stay re-edits (conflicts), as do the 18 repeated
subject+question pairs of the KnowEdit ZsRE test split.
"""

from __future__ import annotations

import hashlib


def fact_id(subject: str, key: str, value: str | None = None) -> str:
    """`subject|key` (`subject|key|value` for a value of a many-valued relation); a key that
    would make it longer than 256 characters (a passage used as a prompt) is replaced by
    `sha1:` and 16 hex digits of its SHA-1 (of key and value: the same identity)."""
    fact = f"{subject}|{key}" + (f"|{value}" if value is not None else "")
    if len(fact) <= 256:
        return fact
    digest = hashlib.sha1((key if value is None else f"{key}\x00{value}").encode("utf-8"))
    return f"{subject}|sha1:{digest.hexdigest()[:16]}"


def relation_of(subject: str | None, key: str) -> str:
    """The relation a fact key stands for: the key with the subject replaced by "{}"."""
    return key.replace(subject, "{}", 1) if subject and subject in key else key


def split_many_valued(edits: list[dict]) -> dict[str, int]:
    """Give the edits of many-valued relations one fact per old value (see the module
    docstring), in place. `edits` are in file order, each with `subject`, `target`,
    optionally `previous`, and the private `_key` (the fact's key) and `_relation`.
    Returns relation -> number of its edits whose fact now names a value."""
    slots: dict[int, str] = {}  # id(edit) -> the old value its fact is about
    groups: dict[tuple[str, str], list[dict]] = {}
    for ev in edits:
        if ev.get("subject") and ev.get("previous"):
            groups.setdefault((ev["subject"], ev["_key"]), []).append(ev)
    many: set[str] = set()
    for group in groups.values():
        for i, ev in enumerate(group):
            earlier = next((e for e in reversed(group[:i]) if e["target"] == ev["previous"]), None)
            slots[id(ev)] = slots[id(earlier)] if earlier is not None else ev["previous"]
        if len({slots[id(ev)] for ev in group}) > 1:
            many.add(group[0]["_relation"])
    counts: dict[str, int] = {}
    for group in groups.values():
        for ev in group:
            if ev["_relation"] in many:
                ev["fact"] = fact_id(ev["subject"], ev["_key"], slots[id(ev)])
                counts[ev["_relation"]] = counts.get(ev["_relation"], 0) + 1
    return dict(sorted(counts.items()))
