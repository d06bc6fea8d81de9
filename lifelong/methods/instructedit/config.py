"""InstructEdit's settings: MEND's (`mend/config.py`, the editor and its training) and the
two that say which instruction goes before a stream's edits."""

from __future__ import annotations

from dataclasses import dataclass

from ...config import setting
from ..mend.config import MendConfig
from .instructions import TASK_NAMES


@dataclass(frozen=True)
class InstructEditConfig(MendConfig):
    task: str = setting("zsre", "the stream's task: its instruction goes before every edit's "
                                "prompt, and train records that name no task (no meta.task) "
                                "are taken as this task's (paper: each test set edited under "
                                "its own task's instruction; ZsRE held out of training)",
                        choices=TASK_NAMES)
    instruction: str = setting("seen", "which of the task's instructions goes before the "
                                       "stream's edits: 'seen' (its first description, one "
                                       "training draws from), 'held-out' (its last, never "
                                       "used in training: the paper's unseen-instruction "
                                       "check), or 'in-stream': none added, the stream's "
                                       "prompts carry it (`lifelong streams instruct`: the "
                                       "reference code's evaluation, whose probes are "
                                       "instructed too)", choices=("seen", "held-out", "in-stream"))
