"""Ctrl-C is counted, not raised, while long work polls it; with `raise_after` the next press
aborts at once; the previous handler is back afterwards (lifelong.interrupts)."""

from __future__ import annotations

import os
import signal

import pytest

from lifelong.interrupts import counting_interrupts


def _press() -> None:
    os.kill(os.getpid(), signal.SIGINT)  # delivered to the main thread before kill returns


@pytest.mark.parametrize("raise_after", [None, 1, 2])
def test_presses_are_counted_then_raised_after_the_allowed_number(raise_after):
    before = signal.getsignal(signal.SIGINT)
    allowed = 3 if raise_after is None else raise_after
    with counting_interrupts(raise_after) as presses:
        for n in range(1, allowed + 1):
            _press()
            assert presses[0] == n
        if raise_after is not None:
            with pytest.raises(KeyboardInterrupt):
                _press()
            assert presses[0] == raise_after
    assert signal.getsignal(signal.SIGINT) is before
