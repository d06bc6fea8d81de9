"""Multi-task train splits: the edits of several data sets in one stream file, each line
naming its task (``meta.task``), for editors trained across tasks (`instructedit`; MEND,
KE and SERAC read the same file as one split and ignore the tag).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from .errors import LifelongError
from .events import Edit, Event

_NAME = re.compile(r"[A-Za-z0-9_-]+")


def parse_task_spec(spec: str) -> tuple[str, str]:
    """``NAME=FILE`` -> (name, file); LifelongError naming the spec otherwise."""
    name, sep, path = spec.partition("=")
    if not sep or not path or not _NAME.fullmatch(name):
        raise LifelongError(f"--task {spec!r}: expected NAME=FILE, NAME of letters, digits, "
                            "'_' and '-'")
    return name, path


def merge_tasks(sources: Sequence[tuple[str, Sequence[Event]]], balance: bool = True
                ) -> tuple[Edit, ...]:
    """The edits of each (task, events) source, in one stream: each tagged ``meta.task`` =
    its task and its id prefixed ``task/`` (ids stay unique across sources), interleaved
    round robin in the sources' order (the first edit of each, then the second, ...), at
    t = 0, 1, 2, ... seconds. `balance`: every source keeps its first n edits, n the
    smallest source's count, so each task weighs the same in training. Retractions,
    queries and merges are left out."""
    names = [name for name, _ in sources]
    if len(set(names)) != len(names):
        raise LifelongError(f"--task: a task is named twice ({', '.join(names)})")
    edits = {name: [e for e in events if isinstance(e, Edit)] for name, events in sources}
    empty = [name for name, es in edits.items() if not es]
    if empty:
        raise LifelongError(f"--task {empty[0]}: its file holds no edit")
    if balance:
        n = min(len(es) for es in edits.values())
        edits = {name: es[:n] for name, es in edits.items()}
    out: list[Edit] = []
    for k in range(max(len(es) for es in edits.values())):
        for name in names:
            if k < len(edits[name]):
                e = edits[name][k]
                out.append(dataclasses.replace(e, id=f"{name}/{e.id}", t=float(len(out)),
                                               meta={**(e.meta or {}), "task": name}))
    return tuple(out)


def instruct_stream(events: Sequence[Event], task: str, which: int) -> tuple[Event, ...]:
    """The stream as InstructEdit's reference code evaluates it: every edit's prompt,
    rephrases, out-of-distribution rephrases and portability prompts behind task `task`'s
    instruction number `which` (`methods/instructedit/instructions.py`; one instruction for
    the whole stream, the subject filled in per edit), its locality prompts left as they are
    (the reference leaves them plain), ``meta.instruction`` saying which. Other events are
    unchanged. Run `instructedit` on it with ``instruction = "in-stream"``."""
    from .methods.instructedit.instructions import TASK_NAMES, instruction
    if task not in TASK_NAMES:
        raise LifelongError(f"--task {task!r}: no instructions for it; known: {', '.join(TASK_NAMES)}")
    out: list[Event] = []
    for e in events:
        if isinstance(e, Edit):
            head = instruction(task, which, e.subject or "")
            e = dataclasses.replace(
                e, prompt=f"{head} {e.prompt}",
                rephrases=tuple(f"{head} {r}" for r in e.rephrases),
                ood_rephrases=tuple(f"{head} {r}" for r in e.ood_rephrases),
                portability=tuple(dataclasses.replace(p, prompt=f"{head} {p.prompt}")
                                  for p in e.portability),
                meta={**(e.meta or {}), "instruction": {"task": task, "which": which}})
        out.append(e)
    return tuple(out)
