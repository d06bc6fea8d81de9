"""The experiment store: one SQLite file, written through sqlite-utils.

Tables (all keyed so that re-running an event upserts instead of duplicating):

    runs         run_id                       resolved config, code version, seed, machine, status
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
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any, Iterable

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


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


class Store:
    """An experiment file. Use `buffer(table, rows)` then `commit(...)` to write atomically."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.parent and not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite_utils.Database(str(self.path))
        self.db.enable_wal()
        self._pending: dict[str, list[dict]] = {}
        self._ensure_schema()

    # ---- schema -------------------------------------------------------------------------
    def _ensure_schema(self) -> None:
        meta = self.db["meta"]
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
                                    "machine": str, "model": str, "stream": str, "status": str,
                                    "error": str, "started_at": float, "finished_at": float,
                                    "events_total": int, "edits_total": int}, pk="run_id")
        if not self.db["state"].exists():
            self.db["state"].create({"run_id": str, "position": int, "blob": bytes,
                                     "saved_at": float}, pk="run_id")

    # ---- runs ---------------------------------------------------------------------------
    def get_run(self, run_id: str) -> dict | None:
        rows = list(self.db["runs"].rows_where("run_id = ?", [run_id]))
        return rows[0] if rows else None

    def runs(self) -> list[dict]:
        return list(self.db["runs"].rows) if self.db["runs"].exists() else []

    def start_run(self, row: dict) -> None:
        """Create or replace a run's header row (configs are stored as JSON text)."""
        row = {k: (_json(v) if isinstance(v, (dict, list)) else v) for k, v in row.items()}
        with self.db.conn:
            self.db["runs"].upsert(row, pk="run_id")

    def set_status(self, run_id: str, status: str, error: str | None = None) -> None:
        fields: dict[str, Any] = {"status": status, "error": error}
        if status in ("complete", "failed"):
            fields["finished_at"] = time.time()
        with self.db.conn:
            self.db["runs"].update(run_id, fields)

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

    def commit(self, run_id: str | None = None, position: int | None = None,
               state: dict | None = None) -> None:
        """Write buffered rows, and the resume point if given, in one transaction."""
        with self.db.conn:
            for table, rows in self._pending.items():
                if rows:
                    self.db[table].upsert_all(rows, pk=_PKS[table], alter=True)
            if run_id is not None and position is not None:
                buf = io.BytesIO()
                torch.save(state or {}, buf)
                self.db["state"].upsert({"run_id": run_id, "position": position,
                                         "blob": buf.getvalue(), "saved_at": time.time()},
                                        pk="run_id")
        self._pending.clear()

    def load_state(self, run_id: str) -> tuple[int, dict] | None:
        rows = list(self.db["state"].rows_where("run_id = ?", [run_id]))
        if not rows:
            return None
        state = torch.load(io.BytesIO(rows[0]["blob"]), weights_only=True)
        return int(rows[0]["position"]), state

    # ---- reading ------------------------------------------------------------------------
    def rows(self, table: str, run_id: str | None = None) -> list[dict]:
        if not self.db[table].exists():
            return []
        if run_id is None:
            return list(self.db[table].rows)
        return list(self.db[table].rows_where("run_id = ?", [run_id]))

    def reference(self, model: str) -> dict[tuple[str, str], dict]:
        if not self.db["reference"].exists():
            return {}
        out = {}
        for r in self.db["reference"].rows_where("model = ?", [model]):
            r["tf_pred"], r["gen_ids"] = json.loads(r["tf_pred"]), json.loads(r["gen_ids"])
            out[(r["prompt"], r["answer"])] = r
        return out
