"""`none`: no editing at all. The floor every method is compared with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ..model import LM
from .base import AttachContext, EditReceipt, EditRequest, MemoryBase


@dataclass(frozen=True)
class NoEditConfig:
    """`none` has no settings."""


class NoEdit(MemoryBase):
    """Accepts every edit and changes nothing; retraction is trivially exact."""

    name = "none"
    Config = NoEditConfig
    summary = "no editing (the floor)"
    #: lifelong export: nothing changes (no merged model to write)
    memory_kind = "nothing"

    def attach(self, lm: LM, ctx: AttachContext) -> None:
        self.lm = lm

    def edit(self, requests: Sequence[EditRequest]) -> EditReceipt:
        return EditReceipt(applied=True, steps=0, detail={"note": "no-op"}, converged=None)

    def retract(self, edit_id: str) -> None:
        return None  # nothing was changed, so nothing to undo

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None

    def footprint(self) -> int:
        return 0

    def detach(self) -> None:
        return None
