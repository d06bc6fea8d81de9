"""`none`: no editing at all. The floor every method is compared with."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..model import LM
from .base import (
    BatchEditing,
    EditReceipt,
    EditRequest,
    MemoryBase,
    Retractable,
    UnknownEdit,
)
from .context import AttachContext


@dataclass(frozen=True)
class NoEditConfig:
    """`none` has no settings."""


class NoEdit(MemoryBase, Retractable, BatchEditing):
    """Accepts every edit and changes nothing; retraction is trivially exact. It keeps the
    ids of its active edits (bookkeeping, not memory: its footprint stays 0) so that an
    unknown id is refused like every other method refuses it."""

    name = "none"
    Config = NoEditConfig
    summary = "no editing (the floor)"
    memory_kind = "nothing"
    retraction = "exact"

    def attach(self, lm: LM, ctx: AttachContext) -> None:
        self.lm = lm
        self.active: list[str] = []
        self._any_id = False

    def edit(self, requests: Sequence[EditRequest]) -> EditReceipt:
        self.active += [r.edit_id for r in requests]
        return EditReceipt(applied=True, steps=0, detail={"note": "no-op"}, converged=None)

    def edit_batch(self, requests: Sequence[EditRequest]) -> list[EditReceipt]:
        return [self.edit([r]) for r in requests]

    def retract(self, edit_id: str) -> None:
        if edit_id in self.active:
            self.active.remove(edit_id)
        elif not self._any_id:
            raise UnknownEdit(f"none: no active edit {edit_id!r} to retract")
        # nothing was changed, so nothing to undo

    def state_dict(self) -> dict[str, Any]:
        return {"active": list(self.active)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.active = list(state.get("active", []))
        # a state saved before ids were kept ({}) cannot tell an unknown id from a known one
        self._any_id = "active" not in state

    def footprint(self) -> int:
        return 0

    def detach(self) -> None:
        return None
