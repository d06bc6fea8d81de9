"""Progress of a whole sweep, in `lifelong/progress.py`'s style: a rich bar on a terminal, a
plain line every few seconds otherwise (CI logs, pipes), everything on stderr.

The bar counts runs that ended (complete, failed or stopped) out of the sweep's runs; the
status says how many are running (for Ray: started or waiting for a slot), failed and
stopped, and the time left, estimated from the wall time of the runs that completed in this
invocation (mean wall time x runs left / runs at once)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)


@dataclass
class Counts:
    """Runs by sweep-level state; `walls`: wall seconds of runs completed in this invocation."""

    total: int
    complete: int = 0
    failed: int = 0
    stopped: int = 0  # interrupted, died or busy: a re-run continues them
    running: int = 0
    walls: list[float] = field(default_factory=list)

    @property
    def ended(self) -> int:
        return self.complete + self.failed + self.stopped


def eta_seconds(c: Counts, slots: int) -> float | None:
    """Time left: mean wall time of completed runs x runs left / runs at once."""
    if not c.walls:
        return None
    left = c.total - c.ended
    return sum(c.walls) / len(c.walls) * left / max(1, min(slots, left or 1))


def clock(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def status_text(c: Counts, slots: int, elapsed: float | None = None) -> str:
    parts = [f"{c.complete} complete", f"{c.failed} failed"]
    if c.stopped:
        parts.append(f"{c.stopped} stopped")
    parts.append(f"{c.running} running")
    if elapsed is not None:
        parts.append(f"{clock(elapsed)} elapsed")
    eta = eta_seconds(c, slots)
    parts.append(f"~{clock(eta)} left" if eta is not None else "time left: after the first run")
    return ", ".join(parts)


class SweepProgress:
    """`start()`, `show(counts)` (as often as liked: it prints when due), `note(text)`,
    `stop()`. quiet=True prints nothing."""

    def __init__(self, total: int, slots: int, quiet: bool = False, every_seconds: float = 5.0):
        self.counts = Counts(total)
        self.slots, self.quiet, self.every = slots, quiet, every_seconds
        self.console = Console(stderr=True)
        self.live = (not quiet) and sys.stderr.isatty()
        self._bar: Progress | None = None
        self._task = None
        self._t0 = time.monotonic()
        self._last = 0.0

    def start(self) -> None:
        self._t0 = time.monotonic()
        if self.live:
            self._bar = Progress(TextColumn("[bold]sweep"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("{task.fields[status]}"),
                                 console=self.console)
            self._bar.start()
            self._task = self._bar.add_task("sweep", total=self.counts.total, status="")
        self.show(force=True)

    def show(self, force: bool = False) -> None:
        if self.quiet:
            return
        c = self.counts
        if self._bar is not None:
            self._bar.update(self._task, completed=c.ended, status=status_text(c, self.slots))
            return
        now = time.monotonic()
        if force or now - self._last >= self.every:
            self._last = now
            print(f"[sweep] {c.ended}/{c.total} runs ended: "
                  f"{status_text(c, self.slots, now - self._t0)}", file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text, markup=False, highlight=False)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
