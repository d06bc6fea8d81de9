"""The memory-subsystem Protocol every editing method implements.

A method is one class in one file of `lifelong/methods/`, with a class attribute `name` and a
frozen-dataclass `Config`. The runtime never needs to know more: adding a method means adding
a file (see `registry.available_methods`).

Lifecycle, as the runtime drives it:

    m = Method(config, seed)
    m.attach(lm, ctx)              # install hooks / copies; the model is pristine here
    m.edit([request, ...])         # -> EditReceipt
    m.retract(edit_id)             # or raise NotSupported
    m.consolidate()                # merge, where the method has something to merge
    m.state_dict() / m.load_state_dict(state)   # exact resume
    m.footprint()                  # bytes the method holds
    m.detach()                     # the model is bit-identical to before attach

Inference is the ordinary model forward with the method's hooks or weights in place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, Sequence, runtime_checkable

from ..errors import NotSupported
from ..model import LM


@dataclass(frozen=True)
class EditRequest:
    """What a method may use to make an edit. Rephrases and locality probes are deliberately
    absent: they are evaluation data, and training on them would inflate the metrics."""

    edit_id: str
    prompt: str
    target: str
    fact: str
    subject: str | None = None
    previous: str | None = None


@dataclass(frozen=True)
class EditReceipt:
    """What an edit did: whether it was applied, the target loss before/after, steps taken.

    converged: whether the method's own training met its stop criterion (its target loss
    fell below the method's threshold) for every request, so the edit was learnt; False when
    it ran out of steps or stalled first (the edit is applied all the same, and recorded as
    such); None for a method with no notion of it (no training, e.g. `none`)."""

    applied: bool = True
    loss_before: float | None = None
    loss_after: float | None = None
    steps: int = 0
    detail: dict[str, Any] = field(default_factory=dict)
    converged: bool | None = None


@dataclass(frozen=True)
class AttachContext:
    """What the runtime hands a method when attaching it.

    unrelated_prompts: prompts known not to be edited (e.g. the stream's locality pool or a
    data set's train split), for methods that train against unrelated inputs (WISE, DEFER).
    """

    seed: int
    unrelated_prompts: tuple[str, ...] = ()


@runtime_checkable
class Memory(Protocol):
    """The memory-subsystem Protocol (see the module docstring for the lifecycle)."""

    name: ClassVar[str]
    Config: ClassVar[type]

    def attach(self, lm: LM, ctx: AttachContext) -> None: ...
    def edit(self, requests: Sequence[EditRequest]) -> EditReceipt: ...
    def retract(self, edit_id: str) -> None: ...
    def consolidate(self) -> dict[str, Any] | None: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
    def footprint(self) -> int: ...
    def detach(self) -> None: ...


class MemoryBase:
    """Optional defaults for the Protocol: no retraction, nothing to consolidate.

    Subclasses set `name`, `Config`, and implement `attach`, `edit`, `state_dict`,
    `load_state_dict`, `footprint`, `detach`.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type]
    #: one line for `lifelong methods`
    summary: ClassVar[str] = ""
    #: what a successful `retract` restores: "exact" (the model as if the edit had never been
    #: made) or "own" (the retracted edit's own prompts behave as before it; the edits made
    #: with it may keep traces of it)
    retraction: str = "exact"

    def __init__(self, config: Any, seed: int = 0):
        self.config = config
        self.seed = seed

    def retract(self, edit_id: str) -> None:
        raise NotSupported(f"{self.name} cannot retract an edit")

    def consolidate(self) -> dict[str, Any] | None:
        return None


def tensor_bytes(*tensors) -> int:
    """Bytes held by tensors (None entries ignored)."""
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)
