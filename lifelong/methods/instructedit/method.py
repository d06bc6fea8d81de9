"""The `instructedit` method: MEND's editor, trained on instructed prompts, editing with
the stream's task instruction (`instructedit/__init__.py`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from ...errors import LifelongError
from ...scoring import tokenize_pair
from .._common.conditioning import max_positions
from ..base import EditRequest
from ..context import TrainRecord
from ..mend.method import Mend
from .config import InstructEditConfig
from .instructions import HELD_OUT, TASK_NAMES, instruction, training_description


class InstructEdit(Mend):
    """InstructEdit. Invariants: MEND's (`mend/method.py`), with every training record's
    prompt instructed by its own task (a description drawn from (seed, record id), never
    the held-out one) and every stream edit's by `config.task` (`config.instruction`).
    Where instruction, prompt and target do not fit the model's context, the instruction's
    words are cut from its start until they do (as IKE cuts its demonstrations); the
    prompt and target are never cut."""

    name = "instructedit"
    Config = InstructEditConfig
    summary = ("InstructEdit: MEND's editor trained across tasks, a task instruction before "
               "each edit's prompt")
    no_retraction = "instructedit with retract = \"unsupported\" cannot retract"
    cache_folder = "instructedit"
    test_time_settings = ("task", "instruction")

    def training_records(self, records: Sequence[TrainRecord]) -> tuple[TrainRecord, ...]:
        """Each record with its prompt instructed by its task (`config.task` where it names
        none); LifelongError for a task with no instructions."""
        out = []
        for r in records:
            task = r.task or self.config.task
            if task not in TASK_NAMES:
                raise LifelongError(f"instructedit: train record {r.request.edit_id!r} is of task "
                                    f"{task!r}, which has no instructions; known tasks: "
                                    f"{', '.join(TASK_NAMES)}")
            which = training_description(task, self.train_seed, r.request.edit_id)
            prompt = self._behind(instruction(task, which, r.request.subject or ""), r.request)
            out.append(dataclasses.replace(r, request=dataclasses.replace(r.request, prompt=prompt)))
        return tuple(out)

    def edit_prompt(self, request: EditRequest) -> str:
        if self.config.instruction == "in-stream":  # the stream's prompt carries it
            return request.prompt
        which = 0 if self.config.instruction == "seen" else HELD_OUT
        return self._behind(instruction(self.config.task, which, request.subject or ""), request)

    def _behind(self, text: str, request: EditRequest) -> str:
        """`request`'s prompt behind the instruction `text`, the instruction's first words
        dropped while the whole does not fit the model's context with the target."""
        limit, words = max_positions(self.lm.model), text.split()
        while words and limit is not None:
            ids = tokenize_pair(self.lm, f"{' '.join(words)} {request.prompt}", request.target)
            if len(ids[0]) + len(ids[1]) <= limit:
                break
            words = words[1:]
        return f"{' '.join(words)} {request.prompt}" if words else request.prompt
