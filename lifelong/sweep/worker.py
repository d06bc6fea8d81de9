"""One planned run in one process: its own store, a lock, an attempt row, the runtime.

`python -m lifelong.sweep TASK.json` (`__main__.py`) is what the local pool starts, one
process per run; a Ray task calls `run_task` in its worker. A task is plain JSON: `run_id`,
`scenario` (the resolved single-run scenario), `store` (the run's own store file),
`threads`, `executor`, `worker`, `sweep_hash`.

Invariants:
- a run's store is written by one process at a time: an exclusive lock on `STORE.lock`,
  which the OS releases when the process ends, `kill -9` included (a second process finding
  it held does nothing and reports "busy");
- a run is resumed exactly when its store already holds its row, so fault injection
  (`[faults]`) strikes the first attempt only, as with `simulate --resume`; a complete run
  is skipped only when its last attempt ran the same configuration (`run_key`), otherwise
  the runtime decides (it refuses a run started with another configuration);
- a run's own failure is recorded in its store (status, error; a run that failed before
  the runtime wrote its row gets a row saying so, replaced by the next attempt), never
  raised: the caller learns the outcome from the store;
- every attempt is a row of `sweep_attempts` in the run's store (where, which process, code
  version, resumed from which event, how it ended); an attempt left "running" by a process
  that died is marked "died" by the next one.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

ATTEMPTS = "sweep_attempts"
#: the worker process's exit status for each outcome (the pool reads the store; these
#: tell it only whether the process ended normally, and "busy")
EXIT = {"complete": 0, "failed": 1, "interrupted": 130, "busy": 75}


@contextlib.contextmanager
def locked(store: Path) -> Iterator[bool]:
    """Hold `STORE.lock` exclusively; yields False (holding nothing) when another process has it."""
    import fcntl  # (POSIX: imported here so that `lifelong` itself imports anywhere)
    store.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(store.with_name(store.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing releases the lock


def run_task(task: dict) -> str:
    """Run (or resume, or skip when complete) one planned run; returns its status:
    complete, failed, interrupted or busy."""
    from ..store import Store
    path = Path(task["store"])
    with locked(path) as mine:
        if not mine:
            return "busy"
        store = Store(path)
        try:
            return _attempt(store, task)
        finally:
            store.close()


def _attempt(store, task: dict) -> str:
    run_id = task["run_id"]
    existing = _prepare(store, run_id)
    if existing is not None and existing["status"] == "complete" and \
            _last_key(store, run_id) == task.get("run_key"):
        return "complete"  # (completed with another configuration: the runtime decides)
    n = _begin(store, task, resumed=existing is not None)
    t0 = time.monotonic()
    status, error = _execute(store, task, resume=existing is not None)
    _end(store, run_id, n, status, error, time.monotonic() - t0)
    return status


def _prepare(store, run_id: str) -> dict | None:
    """The run's row if it may be continued. A row recorded for a run that failed before
    the runtime started it is removed (the run starts afresh); attempts left running by a
    process that died are marked so (this process holds the lock)."""
    _ensure_attempts(store)
    with store.db.conn:
        store.db.execute(f"update {ATTEMPTS} set status = 'died', error = 'the worker process "
                         "ended without finishing the attempt (killed?)' where run_id = ? and "
                         "status = 'running'", [run_id])
    run = store.get_run(run_id)
    if run is not None and json.loads(run["config"] or "{}").get("setup_failed"):
        store.delete_run(run_id)
        return None
    return run


def _last_key(store, run_id: str) -> str | None:
    """The configuration hash the run's last attempt ran with."""
    row = store.db.execute(f"select run_key from {ATTEMPTS} where run_id = ? order by attempt "
                           "desc limit 1", [run_id]).fetchone()
    return row[0] if row else None


def _ensure_attempts(store) -> None:
    if not store.db[ATTEMPTS].exists():
        store.db[ATTEMPTS].create({
            "run_id": str, "attempt": int, "executor": str, "host": str, "worker": str,
            "pid": int, "threads": int, "code_version": str, "sweep_hash": str, "run_key": str,
            "resumed": int, "from_event": int, "started_at": float, "finished_at": float,
            "wall_s": float, "status": str, "error": str}, pk=("run_id", "attempt"))


def _begin(store, task: dict, resumed: bool) -> int:
    """Record the attempt as running; returns its number (1, 2, ...)."""
    from ..provenance import code_version
    run_id = task["run_id"]
    n = 1 + (store.db.execute(f"select max(attempt) from {ATTEMPTS} where run_id = ?",
                              [run_id]).fetchone()[0] or 0)
    state = list(store.db["state"].rows_where("run_id = ?", [run_id], select="position"))
    with store.db.conn:
        store.db[ATTEMPTS].insert({
            "run_id": run_id, "attempt": n, "executor": task.get("executor", ""),
            "host": socket.gethostname(), "worker": task.get("worker") or f"pid {os.getpid()}",
            "pid": os.getpid(), "threads": task["threads"], "code_version": code_version(),
            "sweep_hash": task.get("sweep_hash", ""), "run_key": task.get("run_key"),
            "resumed": int(resumed),
            "from_event": state[0]["position"] if state else 0, "started_at": time.time(),
            "finished_at": None, "wall_s": None, "status": "running", "error": None})
    return n


def _end(store, run_id: str, n: int, status: str, error: str | None, wall: float) -> None:
    with store.db.conn:
        store.db[ATTEMPTS].update((run_id, n), {"status": status, "error": error,
                                                "finished_at": time.time(), "wall_s": wall})


def _execute(store, task: dict, resume: bool) -> tuple[str, str | None]:
    """Run the runtime; returns how the attempt ended, (status, error): as the run's row
    says, or the refusal itself where the runtime refused before touching the row."""
    import torch

    from ..errors import LifelongError, StreamError
    from ..progress import Reporter
    from ..runtime import Runtime
    from ..stream import parse_stream
    before = store.get_run(task["run_id"])
    status, error = "complete", None
    try:
        torch.set_num_threads(max(1, int(task["threads"])))  # a scenario's `threads` wins
        sc = _scenario(task)
        parsed = parse_stream(sc.stream.file, skip_bad=sc.stream.skip_bad, sort=sc.stream.sort)
        Runtime(sc, parsed, store, Reporter(quiet=True)).run_all(resume=resume)
    except StreamError as exc:
        status, error = "failed", "; ".join([str(exc), *exc.problems[:3]])
    except KeyboardInterrupt:
        status, error = "interrupted", "interrupted before the run started"
    except LifelongError as exc:
        status = "interrupted" if type(exc).__name__ == "Interrupted" else "failed"
        error = str(exc)
    except Exception as exc:  # noqa: BLE001  (a method's bug: recorded, the sweep goes on)
        traceback.print_exc()  # into the run's log file
        status, error = "failed", f"{type(exc).__name__}: {exc}"
    run = store.get_run(task["run_id"])
    if run is None:
        _failed_before_start(store, task, error or "no run row was recorded", status)
        return status, error
    if error is not None and run == before:  # refused before the runtime touched its row
        return status, error
    return run["status"], run["error"]


def _scenario(task: dict):
    from ..config import from_mapping
    from ..scenario import Scenario
    return from_mapping(Scenario, task["scenario"], where=task["run_id"])


def _failed_before_start(store, task: dict, error: str, status: str) -> None:
    """Where the runtime wrote no row (setup refused: model, stream, settings), write one
    saying why, so the gathered store and its reports show the run and its error."""
    from ..provenance import code_version, machine
    sc, method = task["scenario"], task["scenario"]["methods"][0]
    now = time.time()
    store.start_run({
        "run_id": task["run_id"], "label": method["label"] or method["name"],
        "method": method["name"], "seed": sc["seeds"][0], "scenario": sc["name"],
        "config": {"scenario": sc, "method": method, "seed": sc["seeds"][0],
                   "stream": {"path": sc["stream"]["file"]}, "setup_failed": True},
        "code_version": code_version(), "machine": machine(), "model": sc["model"],
        "stream": {"path": sc["stream"]["file"]}, "status": status, "error": error,
        "started_at": now, "finished_at": now, "events_total": None, "edits_total": None})
