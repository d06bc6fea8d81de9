"""Progress display: a rich progress bar on a terminal, a plain line every few seconds
otherwise (CI logs, pipes). Everything goes to stderr so stdout stays machine-readable."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class Reporter:
    """`start(label, total)`, `update(done, status)`, `note(text)`, `stop()`.

    quiet=True prints nothing (tests)."""

    def __init__(self, quiet: bool = False, every_seconds: float = 5.0):
        self.quiet = quiet
        self.console = Console(stderr=True)
        self.live = (not quiet) and sys.stderr.isatty()
        self.every = every_seconds
        self._bar: Progress | None = None
        self._task = None
        self._last = 0.0
        self._label = ""
        self._total = 0
        self._unit = "events"

    def start(self, label: str, total: int, done: int = 0, unit: str = "events") -> None:
        self._label, self._total, self._last, self._unit = label, total, 0.0, unit
        if self.live:
            self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(),
                                 TextColumn("{task.fields[status]}"), console=self.console)
            self._bar.start()
            self._task = self._bar.add_task(label, total=total, completed=done, status="")
        self.update(done, "starting", force=True)

    def update(self, done: int, status: str = "", force: bool = False) -> None:
        if self.quiet:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=done, status=status)
            return
        now = time.monotonic()
        if force or now - self._last >= self.every:
            self._last = now
            print(f"[{self._label}] {done}/{self._total} {self._unit}  {status}", file=sys.stderr,
                  flush=True)

    def note(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
