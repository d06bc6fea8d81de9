"""The stream's ``fact`` field is an oracle: it tells a method which edits rewrite the same
fact, something no paper's method is told. A method that can use it (to displace a fact's
older entries on a re-edit, or re-train the fact's earlier prompts) takes a
``use_fact_identity`` setting and passes every request through `as_seen` first. Off, every
edit is its own fact: a re-edit meets the older edits of its fact only through the method's
own rules (GRACE: the key-distance conflict rule)."""

from __future__ import annotations

from dataclasses import replace

from ..base import EditRequest


def as_seen(req: EditRequest, use_fact_identity: bool) -> EditRequest:
    """`req` as the method may see it: unchanged with the oracle, else with ``fact`` set to
    its own ``edit_id`` (unique per edit, so no two edits share a fact)."""
    return req if use_fact_identity else replace(req, fact=req.edit_id)


FACT_IDENTITY_HELP = ("read the stream's `fact` field to recognise re-edits of one fact (an "
                      "oracle no paper's method has; off: every edit is its own fact and "
                      "re-edits meet through the method's own rules; paper: off)")
