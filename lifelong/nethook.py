"""Hooks on modules through small context managers (in the style of ROME's ``nethook``).

* :class:`Trace` records a module's input and/or output during forwards run inside it.
* :class:`TraceDict` does the same for several modules addressed by family-independent names
  (see :mod:`lifelong.layers`), and is a read-only mapping from name to :class:`Trace`.
* :func:`replace_output` / :func:`replace_input` rewrite a module's output / input.

Every hook is installed on ``__enter__`` and removed on ``__exit__``, also when the body
raises, so a model is never left hooked; contexts nest freely (hooks on the same module run in
the order they were entered). There is no module-level mutable state.

Conventions: a module's "input" is its first positional argument, or when it was called with
keywords only (e.g. LLaMA attention, called as ``self_attn(hidden_states=...)``) its
``hidden_states`` keyword, else its first tensor keyword. A module's "output" is what it
returns, or the first element when it returns a tuple/list (or a ``ModelOutput``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from . import layers

if TYPE_CHECKING:
    from typing_extensions import Self

Capture = Literal["output", "input", "both"]
TensorFn = Callable[[torch.Tensor], torch.Tensor]


class StopForward(Exception):
    """Raised by a ``Trace(..., stop=True)`` right after its module ran, to skip the rest of
    the forward; the Trace (or TraceDict) that raised it swallows it on exit."""

    def __init__(self, owner: object):
        super().__init__("forward stopped by a Trace(stop=True)")
        self.owner = owner


def _first_output(output: Any) -> Any:
    """The main tensor of a module's output (first element of a tuple/list/ModelOutput)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return output[0] if output else None
    to_tuple = getattr(output, "to_tuple", None)
    if callable(to_tuple):
        items = to_tuple()
        return items[0] if items else None
    return output


def _input_key(args: tuple, kwargs: dict) -> int | str | None:
    """Where a module's main input is: index 0 of args, a keyword name, or None if absent."""
    if args:
        return 0
    if "hidden_states" in kwargs:
        return "hidden_states"
    for key, value in kwargs.items():
        if isinstance(value, torch.Tensor):
            return key
    return None


def _first_input(args: tuple, kwargs: dict) -> Any:
    key = _input_key(args, kwargs)
    if key is None:
        return None
    return args[0] if key == 0 else kwargs[key]


def _keep(value: Any, detach: bool, clone: bool) -> Any:
    if isinstance(value, torch.Tensor):
        if detach:
            value = value.detach()
        if clone:
            value = value.clone()
    return value


class Trace(contextlib.AbstractContextManager):
    """Record a module's input and/or output during the forwards run inside the block.

    ``capture``: ``"output"`` (default), ``"input"`` or ``"both"``. After a forward,
    ``.output`` / ``.input`` hold the module's output / input (see the module docstring); the
    last call wins, and they are ``None`` until the module runs. ``detach`` (default True)
    stores ``tensor.detach()``; ``clone`` stores a copy, needed when the model later modifies
    the tensor in place. ``stop=True`` aborts the forward right after the module (the
    :class:`StopForward` is swallowed by this Trace), to compute an inner activation cheaply.

    >>> with Trace(layers.resolve(model, "layers.3.mlp.out"), capture="both") as t:
    ...     model(input_ids)
    >>> keys, values = t.input, t.output
    """

    def __init__(self, module: nn.Module, capture: Capture = "output", detach: bool = True,
                 clone: bool = False, stop: bool = False):
        if capture not in ("output", "input", "both"):
            raise ValueError(f"capture must be 'output', 'input' or 'both', got {capture!r}")
        self.module = module
        self.capture = capture
        self.detach = detach
        self.clone = clone
        self.stop = stop
        self.input: Any = None
        self.output: Any = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._stop_owner: object = self

    def _pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.input = _keep(_first_input(args, kwargs), self.detach, self.clone)

    def _hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        if self.capture in ("output", "both"):
            self.output = _keep(_first_output(output), self.detach, self.clone)
        if self.stop:
            raise StopForward(self._stop_owner)

    def __enter__(self) -> Self:
        if self._handles:
            raise RuntimeError("this Trace is already active; create a new one to nest")
        try:
            if self.capture in ("input", "both"):
                self._handles.append(self.module.register_forward_pre_hook(
                    self._pre_hook, with_kwargs=True))
            if self.capture in ("output", "both") or self.stop:
                self._handles.append(self.module.register_forward_hook(self._hook))
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Remove the hooks (idempotent); ``__exit__`` calls it."""
        while self._handles:
            self._handles.pop().remove()

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.close()
        return isinstance(exc, StopForward) and exc.owner is self._stop_owner


class TraceDict(Mapping[str, Trace], contextlib.AbstractContextManager):
    """Several :class:`Trace` s, one per family-independent layer name; a mapping from name to
    Trace. Names are resolved (and checked: ConfigError) on construction; duplicates are kept
    once. With ``stop=True`` the forward is aborted after the module of the *last* name runs
    (list the names in forward order).

    >>> with TraceDict(model, ["layers.0.mlp.out", "layers.-1"]) as td:
    ...     model(input_ids)
    >>> td["layers.-1"].output.shape
    """

    def __init__(self, model: nn.Module, names: list[str] | tuple[str, ...],
                 capture: Capture = "output", detach: bool = True, clone: bool = False,
                 stop: bool = False):
        if isinstance(names, str):
            names = [names]
        self._traces: dict[str, Trace] = {}
        for name in dict.fromkeys(names):
            self._traces[name] = Trace(layers.resolve(model, name), capture=capture,
                                       detach=detach, clone=clone)
        if stop and self._traces:
            last = self._traces[next(reversed(self._traces))]
            last.stop = True
            last._stop_owner = self

    def __getitem__(self, name: str) -> Trace:
        return self._traces[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._traces)

    def __len__(self) -> int:
        return len(self._traces)

    def __enter__(self) -> Self:
        entered: list[Trace] = []
        try:
            for trace in self._traces.values():
                trace.__enter__()
                entered.append(trace)
        except BaseException:
            for trace in entered:
                trace.close()
            raise
        return self

    def close(self) -> None:
        """Remove all hooks (idempotent); ``__exit__`` calls it."""
        for trace in self._traces.values():
            trace.close()

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.close()
        return isinstance(exc, StopForward) and exc.owner is self


def _replace_first_output(output: Any, fn: TensorFn) -> Any:
    if isinstance(output, torch.Tensor):
        return fn(output)
    if isinstance(output, tuple) and output:
        return (fn(output[0]),) + tuple(output[1:])
    if isinstance(output, list) and output:
        return [fn(output[0])] + list(output[1:])
    raise TypeError(f"replace_output: cannot replace the output of type {type(output).__name__}")


@contextlib.contextmanager
def replace_output(module: nn.Module, fn: TensorFn) -> Iterator[None]:
    """Within the block, `module`'s output ``y`` becomes ``fn(y)`` (for a tuple output, its
    first element is replaced and the rest kept). `fn` must not modify its argument in place
    unless that is intended for the caller's graph; return a new tensor."""
    handle = module.register_forward_hook(
        lambda _mod, _args, output: _replace_first_output(output, fn))
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def replace_input(module: nn.Module, fn: TensorFn) -> Iterator[None]:
    """Within the block, `module`'s input ``x`` (first positional argument, or the
    ``hidden_states`` / first tensor keyword) becomes ``fn(x)``; other arguments are kept."""

    def pre_hook(_mod: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        key = _input_key(args, kwargs)
        if key is None:
            raise TypeError(f"replace_input: {type(_mod).__name__} was called without a "
                            f"tensor input")
        if key == 0:
            return (fn(args[0]),) + tuple(args[1:]), kwargs
        return args, {**kwargs, key: fn(kwargs[key])}

    handle = module.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


__all__ = ["StopForward", "Trace", "TraceDict", "replace_input", "replace_output"]


InOutFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@contextlib.contextmanager
def rewrite_output(module: nn.Module, fn: InOutFn) -> Iterator[None]:
    """Within the block, `module`'s output ``y`` becomes ``fn(x, y)`` where ``x`` is its input
    (see the module docstring for which argument that is). For modules whose new output
    depends on what went in, e.g. a side memory that re-projects the same activations."""

    def hook(_mod: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        x = _first_input(args, kwargs)
        return _replace_first_output(output, lambda y: fn(x, y))

    handle = module.register_forward_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
