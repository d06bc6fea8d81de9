"""The experiment store: one SQLite file, written through sqlite-utils.

Tables (all keyed so that re-running an event upserts instead of duplicating):

    runs         run_id                       resolved config, code version, seed, machine, status,
                                              model path and fingerprint
    events       (run_id, event_id)           every event's outcome and timing (merges fired by the
                                              schedule get ids like "@merge-000100")
    checkpoints  (run_id, checkpoint)         when probes ran: edits done, memory bytes, probe time
    probes       (run_id, checkpoint, item)   one scored prompt per row, both protocols
    reference    (model, prompt, answer)      the pre-stream model's outputs (locality baseline)
    timings      (run_id, op, key)            query latencies with and without the memory
    metrics      (run_id, name)               final metrics (a cache: reports recompute them)
    state        run_id                       the runtime's resume point: events done + method state

Crash safety: rows are buffered in memory and written together with the resume point in one
transaction (`commit`), so the file always holds a consistent prefix of the run. Rows written
after the resume point are simply overwritten when the run is resumed.

The file is in WAL mode while a command writes it (readers never block the run) and back in
rollback-journal mode once it is closed (`close`), so that a finished store can be opened
read-only where its directory is not writable (a WAL file needs a `-shm` file beside it).
Every SQLite failure (a damaged or foreign file, a read-only location, a full disk) is a
`StoreError` naming the file.

Column types: columns are added as rows bring them (`alter`), typed from `_TYPES` where the
first rows that bring a column may all hold NULL (`events.converged` is NULL for methods
without a notion of convergence), so that later integers and floats are stored as numbers.
`runs.model_fingerprint` was added after schema 1 was fixed: a store made before it gains the
column with its next run (old rows hold NULL: model unknown beyond its path), and readers
treat a missing column as NULL.
"""

from __future__ import annotations

import functools
import io
import json
import sqlite3
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import sqlite_utils
import torch

from .errors import StoreError

SCHEMA_VERSION = 1

_PKS = {
    "events": ("run_id", "event_id"),
    "checkpoints": ("run_id", "checkpoint"),
    "probes": ("run_id", "checkpoint", "item"),
    "reference": ("model", "prompt", "answer"),
    "timings": ("run_id", "op", "key"),
    "metrics": ("run_id", "name"),
}


#: declared types of columns that may first arrive holding only NULL (see the module docstring)
_TYPES: dict[str, dict[str, type]] = {
    "events": {"converged": int, "loss_before": float, "loss_after": float, "steps": int,
               "tf_acc": float, "gen_exact": int, "gen_text": str, "answer": str,
               "target_id": str, "error": str, "ms": float},
    "probes": {"routed_ok": int, "nll": float, "tf_acc": float, "gen_exact": int},
}

F = TypeVar("F", bound=Callable[..., Any])


def _sqlite_errors(fn: F) -> F:
    """Turn SQLite failures inside a Store method into one-line `StoreError`s."""
    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        try:
            return fn(self, *args, **kwargs)
        except sqlite3.Error as exc:
            raise StoreError(_explain(self.path, exc)) from None
    return wrapper  # type: ignore[return-value]


def _explain(path: Path, exc: BaseException) -> str:
    text = str(exc)
    if "malformed" in text or "not a database" in text:
        return f"{path}: not a usable lifelong store ({text}); it is damaged or another kind of file"
    if "readonly" in text or "unable to open" in text:
        return f"{path}: cannot write the store here ({text}); give a writable --db"
    return f"{path}: store error ({text})"


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


class Store:
    """An experiment file. Use `buffer(table, rows)` then `commit(...)` to write atomically."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            if self.path.parent and not self.path.parent.exists():
                self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot create the store's directory "
                             f"({exc.strerror or exc})") from None
        if self.path.is_dir():
            raise StoreError(f"{self.path}: is a directory, not a store file")
        self._pending: dict[str, list[dict]] = {}
        self._open()

    @_sqlite_errors
    def _open(self) -> None:
        self.db = sqlite_utils.Database(str(self.path))
        self.db.enable_wal()
        self._ensure_schema()

    def close(self) -> None:
        """Leave WAL mode (so the file reads without a `-shm` beside it) and close. Safe to
        call twice, and on a store whose file is damaged (it then only closes)."""
        db = getattr(self, "db", None)
        if db is None:
            return
        try:
            db.execute("PRAGMA journal_mode=DELETE")
        except sqlite3.Error:
            pass  # a damaged or read-only file: nothing to switch, just close it
        db.conn.close()
        self.db = None

    @_sqlite_errors
    def is_empty(self) -> bool:
        """True when the store holds no run (it may hold reference rows)."""
        return not self.db["runs"].exists() or self.db["runs"].count == 0

    # ---- schema -------------------------------------------------------------------------
    def _ensure_schema(self) -> None:
        meta = self.db["meta"]
        if not meta.exists() and self.db.table_names():
            raise StoreError(f"{self.path}: not a lifelong store (an SQLite file with tables "
                             f"{', '.join(self.db.table_names()[:5])} and no meta table)")
        if not meta.exists():
            meta.insert({"key": "schema_version", "value": str(SCHEMA_VERSION)}, pk="key")
        else:
            row = {r["key"]: r["value"] for r in meta.rows}
            if int(row.get("schema_version", 0)) != SCHEMA_VERSION:
                raise StoreError(f"{self.path}: store schema {row.get('schema_version')} is not "
                                 f"{SCHEMA_VERSION}; use a new --db")
        if not self.db["runs"].exists():
            self.db["runs"].create({"run_id": str, "label": str, "method": str, "seed": int,
                                    "scenario": str, "config": str, "code_version": str,
                                    "machine": str, "model": str, "model_fingerprint": str,
                                    "stream": str, "status": str,
                                    "error": str, "started_at": float, "finished_at": float,
                                    "events_total": int, "edits_total": int}, pk="run_id")
        if not self.db["state"].exists():
            self.db["state"].create({"run_id": str, "position": int, "blob": bytes,
                                     "saved_at": float}, pk="run_id")

    # ---- runs ---------------------------------------------------------------------------
    @_sqlite_errors
    def get_run(self, run_id: str) -> dict | None:
        rows = list(self.db["runs"].rows_where("run_id = ?", [run_id]))
        return rows[0] if rows else None

    @_sqlite_errors
    def runs(self) -> list[dict]:
        return list(self.db["runs"].rows) if self.db["runs"].exists() else []

    @_sqlite_errors
    def start_run(self, row: dict) -> None:
        """Create or replace a run's header row (configs are stored as JSON text); a column
        the row brings and an older store lacks (`model_fingerprint`) is added."""
        row = {k: (_json(v) if isinstance(v, (dict, list)) else v) for k, v in row.items()}
        with self.db.conn:
            self.db["runs"].upsert(row, pk="run_id", alter=True)

    @_sqlite_errors
    def set_status(self, run_id: str, status: str, error: str | None = None) -> None:
        fields: dict[str, Any] = {"status": status, "error": error}
        if status in ("complete", "failed"):
            fields["finished_at"] = time.time()
        with self.db.conn:
            self.db["runs"].update(run_id, fields)

    @_sqlite_errors
    def delete_run(self, run_id: str) -> None:
        """Remove every row of a run (used when a run is started afresh)."""
        with self.db.conn:
            for table in list(_PKS) + ["state", "runs"]:
                if table != "reference" and self.db[table].exists():
                    self.db[table].delete_where("run_id = ?", [run_id])

    # ---- buffered rows + resume point -----------------------------------------------------
    def buffer(self, table: str, rows: Iterable[dict]) -> None:
        if table not in _PKS:
            raise KeyError(table)
        self._pending.setdefault(table, []).extend(rows)

    def discard_pending(self) -> None:
        self._pending.clear()

    @_sqlite_errors
    def commit(self, run_id: str | None = None, position: int | None = None,
               state: dict | None = None) -> None:
        """Write buffered rows, and the resume point if given, in one transaction."""
        with self.db.conn:
            for table, rows in self._pending.items():
                if rows:
                    self._add_typed_columns(table, rows)
                    self.db[table].upsert_all(rows, pk=_PKS[table], alter=True,
                                              columns=self._types_of(table, rows))
            if run_id is not None and position is not None:
                buf = io.BytesIO()
                torch.save(state or {}, buf)
                self.db["state"].upsert({"run_id": run_id, "position": position,
                                         "blob": buf.getvalue(), "saved_at": time.time()},
                                        pk="run_id")
        self._pending.clear()

    def _types_of(self, table: str, rows: list[dict]) -> dict[str, type]:
        keys = {k for r in rows for k in r}
        return {k: t for k, t in _TYPES.get(table, {}).items() if k in keys}

    def _add_typed_columns(self, table: str, rows: list[dict]) -> None:
        """Add the declared columns these rows bring before sqlite-utils would add them
        typed by their (possibly all-NULL) values."""
        t = self.db[table]
        if not t.exists():
            return
        have = {c.lower() for c in t.columns_dict}
        for name, tp in self._types_of(table, rows).items():
            if name.lower() not in have:
                t.add_column(name, tp)

    @_sqlite_errors
    def load_state(self, run_id: str) -> tuple[int, dict] | None:
        """The run's resume point (events done, state), or None. A blob that does not load
        is a StoreError: the run cannot be resumed from this file."""
        rows = list(self.db["state"].rows_where("run_id = ?", [run_id]))
        if not rows:
            return None
        try:
            with warnings.catch_warnings():  # a damaged blob makes torch warn before failing
                warnings.simplefilter("ignore")
                state = torch.load(io.BytesIO(rows[0]["blob"]), weights_only=True)
            position = int(rows[0]["position"])
        except Exception as exc:  # noqa: BLE001  (pickle, zip and torch errors alike: a damaged blob)
            raise StoreError(f"{self.path}: the resume point of run {run_id} is unreadable "
                             f"({type(exc).__name__}); it cannot be resumed: run it again "
                             "into another --db") from None
        if not isinstance(state, dict):
            raise StoreError(f"{self.path}: the resume point of run {run_id} is not a saved "
                             "state; it cannot be resumed: run it again into another --db")
        return position, state

    # ---- reading ------------------------------------------------------------------------
    @_sqlite_errors
    def rows(self, table: str, run_id: str | None = None) -> list[dict]:
        if not self.db[table].exists():
            return []
        if run_id is None:
            return list(self.db[table].rows)
        return list(self.db[table].rows_where("run_id = ?", [run_id]))

    @_sqlite_errors
    def reference(self, model: str) -> dict[tuple[str, str], dict]:
        if not self.db["reference"].exists():
            return {}
        out = {}
        for r in self.db["reference"].rows_where("model = ?", [model]):
            r["tf_pred"], r["gen_ids"] = json.loads(r["tf_pred"]), json.loads(r["gen_ids"])
            out[(r["prompt"], r["answer"])] = r
        return out
