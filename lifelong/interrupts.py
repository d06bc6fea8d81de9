"""Ctrl-C as a request, not a crash: long work (a run's event loop, a sweep) polls a count of
presses between units of work and stops cleanly, keeping what it has recorded."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator


@contextlib.contextmanager
def counting_interrupts(raise_after: int | None = None) -> Iterator[list[int]]:
    """Yield `[presses]`, the Ctrl-C presses so far, counted instead of raised; with
    `raise_after`, the press after that many raises KeyboardInterrupt at once (a second
    Ctrl-C aborts a loop that is slow to reach its next check). Outside the main thread
    nothing is installed and the count stays 0. The previous handler is restored on exit."""
    presses = [0]

    def handler(signum, frame):
        if raise_after is not None and presses[0] >= raise_after:
            raise KeyboardInterrupt
        presses[0] += 1

    try:
        old = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: keep the default behaviour
        yield presses
        return
    try:
        yield presses
    finally:
        signal.signal(signal.SIGINT, old)
