"""A method's serving hooks as one suspendable set of `lifelong.nethook` contexts.

A hook-based method serves through contexts it opens at attach (`Hooks.open`) and closes at
detach (`Hooks.close`). Capturing keys and training open *other* contexts in their place
(`with hooks.suspended(), Trace(...)`): a method's mode is which context is open, never a
flag its hook reads, and the bare model (benchmarks) is `with hooks.suspended():`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator


class Hooks:
    """Invariant: while open, exactly the contexts `enter` opened are active; `close` and
    `suspended` leave no hook behind, also when the block raises."""

    def __init__(self, enter: Callable[[contextlib.ExitStack], None]):
        self._enter = enter
        self._stack: contextlib.ExitStack | None = None

    @property
    def is_open(self) -> bool:
        return self._stack is not None

    def open(self) -> None:
        if self._stack is not None:
            return
        stack = contextlib.ExitStack()
        try:
            self._enter(stack)
        except BaseException:
            stack.close()
            raise
        self._stack = stack

    def close(self) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()

    @contextlib.contextmanager
    def suspended(self) -> Iterator[None]:
        """A block in which the serving hooks are removed (reopened after it, if they were
        open before)."""
        was_open = self.is_open
        self.close()
        try:
            yield
        finally:
            if was_open:
                self.open()


class Served:
    """Mixin of hook-based methods: `hooks` serve the memory; `detach` removes them (the
    model is left as it was: nothing else is changed) and `bypassed()` is a block in which
    the bare model runs (benchmarks time the memory against it)."""

    hooks: Hooks

    def bypassed(self) -> contextlib.AbstractContextManager:
        return self.hooks.suspended()

    def detach(self) -> None:
        self.hooks.close()
