"""The one edit loop methods share, and `frozen(model)`.

A method gives `optimise` its optimiser (over its own parameters) and a `step` function that
runs the model once and returns the loss to minimise, the figure its receipt reports (the
target loss) and whether to stop now; the loop does the rest: at most `max_steps` updates,
the first and last reported figure, the number of updates taken.

Two conventions exist in the field and in this code base, and `fresh_last` picks one:

* ``fresh_last=False`` (FT-L, WISE): at most `max_steps` evaluations; the loop ends after
  the `max_steps`-th update without evaluating again, so `last` is the figure measured just
  before that update;
* ``fresh_last=True`` (GRACE, DEFER): after the last update the model is evaluated once
  more, so `last` is the figure the edit ends with (at most `max_steps + 1` evaluations).

Invariant: `steps` counts optimiser updates; a run that stops at its first evaluation took 0.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..base import EditReceipt


@contextlib.contextmanager
def frozen(model: nn.Module, trainable: Iterable[nn.Parameter] = ()) -> Iterator[None]:
    """Inside the block no parameter of `model` requires a gradient except `trainable` ones
    (a method that fine-tunes a weight of the model names it); every flag is restored on
    exit, also when the block raises. Freezing changes no output, only what autograd keeps:
    the backward pass of an edit reaches the method's parameters and nothing else."""
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    train = {id(p) for p in trainable}
    try:
        for p in params:
            p.requires_grad_(id(p) in train)
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


@dataclass(frozen=True)
class Step:
    """One evaluation: `loss` is minimised, `value` reported (the target loss), `stop` ends
    the loop before updating (converged, or the method's own stall test)."""

    loss: torch.Tensor
    value: float
    stop: bool = False


@dataclass(frozen=True)
class LoopResult:
    """What one optimisation did: the first and last reported figures and the updates taken."""

    first: float | None
    last: float | None
    steps: int


def optimise(optimizer: torch.optim.Optimizer, step: Callable[[], Step], max_steps: int, *,
             fresh_last: bool, after_update: Callable[[], None] | None = None) -> LoopResult:
    """Run the edit loop (module docstring). `after_update` runs after every optimiser step
    (e.g. a projection back onto a constraint)."""
    first = last = None
    taken = 0
    while True:
        optimizer.zero_grad(set_to_none=True)
        s = step()
        last = s.value
        first = last if first is None else first
        if s.stop or (fresh_last and taken >= max_steps):
            break
        s.loss.backward()
        optimizer.step()
        if after_update is not None:
            after_update()
        taken += 1
        if not fresh_last and taken >= max_steps:
            break
    return LoopResult(first, last, taken)


def receipt(results: Sequence[LoopResult], stop_loss: float, detail: dict) -> EditReceipt:
    """The receipt of one `edit` call that ran one optimisation per request: the first
    request's first figure, the last one's last, the updates summed; converged when every
    request ended below `stop_loss`."""
    return EditReceipt(applied=True, loss_before=results[0].first if results else None,
                       loss_after=results[-1].last if results else None,
                       steps=sum(r.steps for r in results), detail=detail,
                       converged=bool(results) and all(r.last is not None and r.last < stop_loss
                                                       for r in results))
