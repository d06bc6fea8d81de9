"""The contract every editing method honours: one small core Protocol plus optional,
explicitly declared capabilities.

A method is one class (in one module, or a module of one folder, of `lifelong/methods/`)
with a class attribute `name`, a frozen-dataclass `Config` (fields declared with
`lifelong.config.setting`) and a one-line `summary`; the registry finds it by its name
(`registry.available_methods`), so adding a method is adding a file
(docs/adding-a-method.md; `methods/_template.py` is a working one to copy).

Lifecycle, as the runtime and the Python API drive it:

    m = Method(config, seed)
    m.attach(lm, ctx)              # install hooks / copies; the model is pristine here
    m.edit([request, ...])         # -> one EditReceipt for the call
    m.state_dict() / m.load_state_dict(state)   # exact resume (tensors and plain data only)
    m.footprint()                  # bytes of memory the method holds
    m.detach()                     # the model is bit-identical to before attach

Inference is the ordinary model forward with the method's hooks (`lifelong.nethook`
contexts) or weights in place, so scoring and generation need no special path. What a method
is attached with (seed, unrelated prompts, train split, corpus, cache, a second model, the
device): `context.AttachContext`. What methods share (hooks, key capture, key tables,
`frozen(model)`, the edit loop and its receipt): `_common/`.

Optional capabilities, each an abstract mixin a method lists among its bases:

* `Retractable` - `retract(edit_id)` undoes one edit; `retraction` says what that restores:
  "exact" (the memory as if the edit had never been made) or "own" (the edit's own prompts
  answer as before it; edits made with it may keep traces of it), or None where this
  configuration refuses (its `retract` then raises NotSupported saying why). An id the
  method does not hold (never edited, or already retracted) raises `UnknownEdit`, for every
  method alike; the runtime records that as outcome "nothing". A method that is not
  Retractable is refused by `retract_edit` with NotSupported (its `no_retraction` text).
* `Consolidating` - `consolidate()` merges what the method keeps apart (WISE's shards);
  returns a dict saying what it did, or None when there was nothing to merge.
* `Routing` - `route(prompts, router=None)` names the memory each prompt is served by (None:
  the main model), `memory_of(edit_id)` the memory holding an edit; `shadow_routers` names
  routers measured beside the serving one (`probes.add_routing` records their choices).
* `BatchEditing` - `edit_batch(requests)` makes N edits in one call, one receipt per
  request (MEMIT-style joint updates); the runtime hands such a method `schedule.edit_batch`
  consecutive edits per call, and every other method gets them one by one.
* `WeightDeltas` - `weight_deltas()` names the weight changes a method keeps outside the
  model's weights (a side memory's copy of a projection), so that model health measures them
  as it measures changed weights (`side_weight_deltas`).

Why nominal mixins (explicit bases checked with `isinstance`) rather than
`typing.runtime_checkable` Protocols: a runtime-checkable Protocol only checks that names
exist, so a helper that happens to be called `route` would silently switch routing on, which
is the duck typing this contract replaces; a base class is declared where the method is
written (one line to read, one to grep), and its abstract methods make a missing piece fail
when the method is built (TypeError) instead of hours into a run. What a capability cannot
say statically (WISE configured with `retract = "unsupported"`) is said per instance, by
`retraction` being None. The platform reaches capabilities only through `isinstance` and the
helpers below (`retract_edit`, `consolidate_memory`, `edit_batch`), never through `getattr`.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    Literal,
    Protocol,
    runtime_checkable,
)

from ..errors import LifelongError, NotSupported
from ..model import LM

if TYPE_CHECKING:
    import torch

    from .context import AttachContext

Retraction = Literal["exact", "own"]
MemoryKind = Literal["weights", "hooks", "nothing"]


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


class UnknownEdit(LifelongError):
    """`retract` of an edit id the method does not hold (never made, or already retracted)."""


@runtime_checkable
class Memory(Protocol):
    """The core Protocol (see the module docstring for the lifecycle). `memory_kind` tells
    `lifelong export` what the memory is: a weight change ("weights": a merged model can be
    written), hooks beside the weights ("hooks"), or nothing at all ("nothing")."""

    name: ClassVar[str]
    Config: ClassVar[type]
    summary: ClassVar[str]
    memory_kind: ClassVar[MemoryKind]
    no_retraction: ClassVar[str]

    def attach(self, lm: LM, ctx: AttachContext) -> None: ...
    def edit(self, requests: Sequence[EditRequest]) -> EditReceipt: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
    def footprint(self) -> int: ...
    def detach(self) -> None: ...


class Retractable(abc.ABC):
    """Undo one edit by id (module docstring: what `retraction` means, unknown ids).

    `retraction` is the class's `exact_retraction` ("exact" or "own"), or None when the
    method's config has a `retract` setting set to "unsupported" (the one way a
    configuration refuses); a method whose kind depends on more overrides the property."""

    #: what this method's retraction is when its configuration allows one
    exact_retraction: Retraction = "exact"

    @property
    def retraction(self) -> Retraction | None:
        config = getattr(self, "config", None)
        return None if getattr(config, "retract", None) == "unsupported" \
            else self.exact_retraction

    @abc.abstractmethod
    def retract(self, edit_id: str) -> None:
        """Undo edit `edit_id`; NotSupported when `retraction` is None, UnknownEdit for an id
        the method does not hold."""


class Consolidating(abc.ABC):
    """Merge what the method keeps apart, when asked (a stream's merge event, the schedule)."""

    @abc.abstractmethod
    def consolidate(self) -> dict[str, Any] | None:
        """What was merged, or None when there was nothing to merge."""


class Routing(abc.ABC):
    """Serve each input from one of several memories (or the main model)."""

    #: routers measured beside the serving one (their choices are recorded, not served)
    shadow_routers: tuple[str, ...] = ()

    @abc.abstractmethod
    def route(self, prompts: Sequence[str], router: str | None = None) -> list[int | None]:
        """The memory each prompt goes to (None: the main model), by the serving router or
        by the one named (one of `shadow_routers`)."""

    @abc.abstractmethod
    def memory_of(self, edit_id: str) -> int | None:
        """The memory holding edit `edit_id` (None: none does)."""


class BatchEditing(abc.ABC):
    """Make several edits in one call (a joint update)."""

    @abc.abstractmethod
    def edit_batch(self, requests: Sequence[EditRequest]) -> list[EditReceipt]:
        """Apply `requests` together; one receipt per request, in order. One request gives
        what `edit([request])` would."""


class WeightDeltas(abc.ABC):
    """Keep edits as weight changes outside the model's weights (side memories)."""

    @abc.abstractmethod
    def weight_deltas(self) -> dict[str, torch.Tensor]:
        """{parameter name (`named_parameters`): the change the method makes to that weight
        where it serves, in the parameter's own layout}; a method with several memories for
        one weight gives the largest change (Frobenius norm): the most-changed weight any
        input meets. Empty while nothing is held."""


class MemoryBase:
    """What every method shares: the constructor and the class-level declarations.

    Subclasses set `name`, `Config`, `summary`, `memory_kind` and implement `attach`,
    `edit`, `state_dict`, `load_state_dict`, `footprint`, `detach`; capabilities are added by
    listing their mixins among the bases (`class Grace(MemoryBase, Retractable)`).
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type]
    #: one line for `lifelong methods`
    summary: ClassVar[str] = ""
    memory_kind: ClassVar[MemoryKind] = "hooks"
    #: why a method that is not Retractable cannot retract (the NotSupported message)
    no_retraction: ClassVar[str] = ""
    #: attach trains parts on the train split and caches them (`lifelong train-editor`
    #: trains them ahead of the runs)
    trains_at_attach: ClassVar[bool] = False

    def __init__(self, config: Any, seed: int = 0):
        self.config = config
        self.seed = seed


# ---- the platform's only way to reach a capability ----------------------------------------
def retract_edit(method: Memory, edit_id: str) -> None:
    """Retract through the capability: NotSupported for a method that is not Retractable
    (saying why), else the method's own `retract` (NotSupported / UnknownEdit as it says)."""
    if not isinstance(method, Retractable):
        raise NotSupported(type(method).no_retraction or f"{method.name} cannot retract an edit")
    method.retract(edit_id)


def consolidate_memory(method: Memory) -> dict[str, Any] | None:
    """`consolidate()` of a Consolidating method; None (nothing merged) for the others."""
    return method.consolidate() if isinstance(method, Consolidating) else None


def edit_batch(method: Memory, requests: Sequence[EditRequest]) -> list[EditReceipt]:
    """One receipt per request: one `edit_batch` call for a BatchEditing method, else one
    `edit` call per request, in order."""
    if not isinstance(method, BatchEditing):
        return [method.edit([r]) for r in requests]
    receipts = list(method.edit_batch(requests))
    if len(receipts) != len(requests):
        raise RuntimeError(f"{method.name}.edit_batch returned {len(receipts)} receipts for "
                           f"{len(requests)} requests")
    return receipts


def side_weight_deltas(method: Any) -> dict[str, torch.Tensor]:
    """`weight_deltas()` of a WeightDeltas method; {} for the others (their changes, if any,
    are in the model's own weights)."""
    return method.weight_deltas() if isinstance(method, WeightDeltas) else {}


def shared_receipts(receipt: EditReceipt, n: int) -> list[EditReceipt]:
    """`n` receipts for the `n` requests of one joint update that reports one figure: each
    carries the joint losses and steps, and says so (`detail["batch"]`)."""
    if n == 1:
        return [receipt]
    return [replace(receipt, detail={**receipt.detail, "batch": n}) for _ in range(n)]


def tensor_bytes(*tensors) -> int:
    """Bytes held by tensors (None entries ignored)."""
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


__all__ = ["BatchEditing", "Consolidating", "EditReceipt", "EditRequest", "Memory",
           "MemoryBase", "MemoryKind", "Retractable", "Retraction", "Routing", "UnknownEdit",
           "WeightDeltas", "consolidate_memory", "edit_batch", "retract_edit",
           "shared_receipts", "side_weight_deltas", "tensor_bytes"]
