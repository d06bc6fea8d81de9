"""The base of methods that edit weights in place by deterministic updates and retract by
replay (ROME, MEMIT, AlphaEdit, MEND, KE).

Invariant the subclasses keep: the edited weights are a pure function of the base weights,
what the method built at attach (statistics, a trained editor) and the log (the edit batches,
in order): an edit draws nothing at random. So `retract` (restore the base weights, forget
what the edits accumulated besides them, re-apply the log without the edit) gives bit for bit
the weights of a stream that never made the edit. It costs one replay of every remaining
edit; a config with `retract = "unsupported"` refuses instead.

A subclass sets, at attach, `lm`, `names` and `modules` (the edited projections), `base`
(their weights, (out, in), cloned) and `log = []`; it implements `edit_batch` (which appends
its requests to `log`), and for state of its own `_reset` / `_extra_state` / `_load_extra` /
`_extra_bytes`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ... import layers
from ...errors import NotSupported
from ..base import BatchEditing, EditReceipt, EditRequest, MemoryBase, Retractable, UnknownEdit, tensor_bytes


class ReplayedWeights(MemoryBase, BatchEditing, Retractable):
    """Weights edited in place, a log of edit batches, exact retraction by replay, state =
    the weights + the log (+ the subclass's), `detach` = the base weights back."""

    memory_kind = "weights"
    #: why one edit cannot be taken out of the weights (the refusal's reason)
    entangled = "its updates share the edited weights"

    def __init__(self, config: Any, seed: int = 0):
        super().__init__(config, seed)
        self.log: list[list[EditRequest]] = []

    # ---- what a subclass may add ------------------------------------------------------------
    def _reset(self) -> None:
        """Forget what edits accumulated besides the weights (before a replay)."""

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra(self, state: dict[str, Any]) -> None:
        """Restore `_extra_state` output."""

    def _extra_bytes(self) -> int:
        return 0

    # ---- editing ------------------------------------------------------------------------------
    def weights(self) -> list[torch.Tensor]:
        """The edited weights, (out, in), views of the modules' parameters."""
        return [layers.weight_out_in(m) for m in self.modules]

    def edit_batch(self, requests: Sequence[EditRequest]) -> list[EditReceipt]:
        raise NotImplementedError

    def edit(self, requests: Sequence[EditRequest]) -> EditReceipt:
        """One call's receipt: the request's own, or for several the first loss before, the
        last after, the steps summed, converged when every request converged (None when the
        method has no convergence test)."""
        receipts = self.edit_batch(requests)
        if len(receipts) == 1:
            return receipts[0]
        conv = [r.converged for r in receipts]
        return EditReceipt(applied=all(r.applied for r in receipts),
                           loss_before=receipts[0].loss_before,
                           loss_after=receipts[-1].loss_after,
                           steps=sum(r.steps for r in receipts),
                           detail={**receipts[0].detail, "batch": len(receipts)},
                           converged=None if None in conv else all(conv))

    # ---- retraction -----------------------------------------------------------------------------
    def retract(self, edit_id: str) -> None:
        """Restore the base weights and replay the log without the edit (exact)."""
        if self.retraction is None:
            raise NotSupported(f"{self.name} with retract = \"unsupported\" cannot retract: "
                               f"{self.entangled}")
        if not any(r.edit_id == edit_id for batch in self.log for r in batch):
            raise UnknownEdit(f"{self.name}: no active edit {edit_id!r} to retract")
        kept = [[r for r in batch if r.edit_id != edit_id] for batch in self.log]
        self._restore_base()
        self.log = []
        for batch in kept:
            if batch:
                self.edit_batch(batch)

    @torch.no_grad()
    def _restore_base(self) -> None:
        for w, b in zip(self.weights(), self.base, strict=True):
            w.copy_(b)
        self._reset()

    # ---- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"weights": [w.detach().clone() for w in self.weights()],
                "log": [[vars(r).copy() for r in batch] for batch in self.log],
                **self._extra_state()}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        for w, saved in zip(self.weights(), state["weights"], strict=True):
            w.copy_(saved)
        self.log = [[EditRequest(**r) for r in batch] for batch in state["log"]]
        self._load_extra(state)

    def footprint(self) -> int:
        """Bytes of the edited weights (what a merged export writes) and of what the method
        keeps besides them."""
        return tensor_bytes(*self.weights()) + self._extra_bytes()

    def detach(self) -> None:
        self._restore_base()
