"""Applying stream events to a method, and the `events` rows they leave (the runtime's
dispatch, apart from its loop).

Edit batching: with `schedule.edit_batch` N > 1 and a method that declares `BatchEditing`,
consecutive edit events go to the method N at a time (one `edit_batch` call, one receipt and
one row per edit); every other method gets them one by one. A batch never crosses a
retraction, query or merge event, nor a schedule point (a scheduled merge, checkpoint or
chunk end fires after exactly the edits it counts), so a batch is a pure function of where
it starts and the schedule: a resumed run (which resumes at a batch boundary) forms the same
batches. A batch's rows share its wall time (each row: the call's time / N), and with
`eval_after_edit` each edit's prompt is scored after the whole batch.

Outcomes: "applied" / "rejected" (edits), "applied" (a retraction or merge that did
something), "nothing" (a merge with nothing to merge; a retraction of an edit the method does
not hold: `UnknownEdit`, or of one made in an earlier chunk), "unsupported" (NotSupported).
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import NotSupported
from .methods import (
    EditReceipt,
    EditRequest,
    Memory,
    UnknownEdit,
    consolidate_memory,
    edit_batch,
    retract_edit,
)
from .model import LM
from .scenario import Schedule
from .scoring import score_pairs
from .stream import Edit, Event, Merge, Query, Retract


def truncate(events: Sequence[Event], max_edits: int) -> list[Event]:
    """The events up to and including the `max_edits`-th edit (all when 0)."""
    if max_edits <= 0:
        return list(events)
    out, n = [], 0
    for ev in events:
        if isinstance(ev, Edit):
            if n == max_edits:
                break
            n += 1
        out.append(ev)
    return out


def settled_position(events: Sequence[Event]) -> int:
    """The position after the last event that changes the model (only queries follow it)."""
    return max((i + 1 for i, e in enumerate(events) if not isinstance(e, Query)), default=0)


def base_row(run_id: str, ev: Event, seq: int, edits: int) -> dict:
    """The columns every event row has (`seq`: its position; `edits`: edits before it)."""
    return {"run_id": run_id, "event_id": ev.id, "seq": seq, "kind": ev.kind, "t": ev.t,
            "fact": getattr(ev, "fact", None), "edit_index": edits, "scheduled": 0,
            "outcome": "applied", "error": None}


def request(ev: Edit) -> EditRequest:
    return EditRequest(ev.id, ev.prompt, ev.target, ev.fact, ev.subject, ev.previous)


def edit_count(events: Sequence[Event], start: int, edits: int, sched: Schedule,
               batching: bool) -> int:
    """How many events from `start` go to the method in one call: 1, or with `batching` the
    consecutive edits (at most `edit_batch`) up to the first schedule point among them."""
    if not batching or not isinstance(events[start], Edit):
        return 1
    n = 0
    while n < sched.edit_batch and start + n < len(events) and isinstance(events[start + n], Edit):
        n += 1
        done = edits + n
        if any(every and done % every == 0 for every in
               (sched.merge_every, sched.checkpoint_every, sched.restart_every)):
            break
    return n


def _receipt_columns(receipt: EditReceipt) -> dict:
    return {"loss_before": receipt.loss_before, "loss_after": receipt.loss_after,
            "steps": receipt.steps,
            "converged": None if receipt.converged is None else int(receipt.converged),
            "outcome": "applied" if receipt.applied else "rejected"}


def _scored(lm: LM, ev: Edit) -> dict:
    s = score_pairs(lm, [ev.prompt], [ev.target])[0]
    return {"tf_acc": s.tf_acc, "gen_exact": int(s.gen_exact), "gen_text": s.gen_text}


def apply_edits(lm: LM, method: Memory, events: Sequence[Edit], rows: list[dict],
                eval_after: bool) -> None:
    """One `edit_batch` call for `events`; fills their rows (module docstring)."""
    clock = lm.stopwatch().start()
    try:
        receipts = edit_batch(method, [request(ev) for ev in events])
    except NotSupported as exc:
        for row in rows:
            row.update(ms=clock.elapsed_ms() / len(events), outcome="unsupported", error=str(exc))
        return
    ms = clock.elapsed_ms() / len(events)
    for row, receipt in zip(rows, receipts):
        row.update(ms=ms, **_receipt_columns(receipt))
    if eval_after:
        for ev, row in zip(events, rows):
            row.update(_scored(lm, ev))


def apply_event(lm: LM, method: Memory, ev: Event, row: dict, eval_after: bool,
                outside: bool = False) -> None:
    """Apply one event and fill its row. `outside`: a retraction of an edit made in an
    earlier chunk (`restart_every`), which the fresh method never saw: recorded, not sent."""
    if outside:
        row.update(fact=None, ms=0.0, target_id=ev.edit_id, outcome="nothing",
                   error="the edit was made in an earlier chunk")
        return
    clock = lm.stopwatch().start()  # a GPU's queued work counts to the event that queued it
    try:
        if isinstance(ev, Edit):
            receipt = method.edit([request(ev)])
            row.update(ms=clock.elapsed_ms(), **_receipt_columns(receipt))
            if eval_after:
                row.update(_scored(lm, ev))
        elif isinstance(ev, Retract):  # target first: a refused retraction names it too
            row.update(fact=None, target_id=ev.edit_id)
            retract_edit(method, ev.edit_id)
            row["ms"] = clock.elapsed_ms()
        elif isinstance(ev, Query):
            answer = ev.answer or ""
            s = score_pairs(lm, [ev.prompt], [answer or "?"])[0]
            row.update(ms=clock.elapsed_ms(), gen_text=s.gen_text, answer=ev.answer,
                       tf_acc=s.tf_acc if answer else None,
                       gen_exact=int(s.gen_exact) if answer else None)
        elif isinstance(ev, Merge):
            info = consolidate_memory(method)
            row.update(ms=clock.elapsed_ms(), outcome="applied" if info is not None else "nothing")
    except NotSupported as exc:
        row.update(ms=clock.elapsed_ms(), outcome="unsupported", error=str(exc))
    except UnknownEdit as exc:
        row.update(ms=clock.elapsed_ms(), outcome="nothing", error=str(exc))


def merge_row(lm: LM, run_id: str, method: Memory, position: int, edits: int) -> dict:
    """Consolidate as the schedule says, and the row that records it."""
    clock = lm.stopwatch().start()
    info = consolidate_memory(method)
    return {"run_id": run_id, "event_id": f"@merge-{edits:06d}", "seq": position,
            "kind": "merge", "t": None, "fact": None, "edit_index": edits, "scheduled": 1,
            "outcome": "applied" if info is not None else "nothing", "error": None,
            "ms": clock.elapsed_ms()}
