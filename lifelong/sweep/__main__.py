"""`python -m lifelong.sweep TASK.json`: one local-pool worker process running one task
(`worker.run_task`). The exit status says how the run ended (`worker.EXIT`); the outcome
itself is in the run's store, which is what the pool reads."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from .worker import EXIT, run_task


def main(argv: list[str]) -> int:
    task = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    task["worker"] = task.get("worker") or f"pool pid {os.getpid()}"
    return EXIT.get(run_task(task), 1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
