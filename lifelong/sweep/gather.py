"""Gathering: every run's own store copied into the sweep's one store, `OUT/sweep.db`.

The gathered file is an ordinary lifelong store (`store.Store` creates it): `lifelong report`,
`compare` and `export` read it as they read a `simulate` store, and a label run under
several seeds is reported as mean ± std. Rows are copied verbatim with plain SQL (ATTACH +
INSERT ... SELECT): every table keyed by `run_id` (runs, events, checkpoints, probes,
timings, metrics, state, sweep_attempts), and the `reference` rows (keyed by model, shared
by runs of one model). Columns a run's store has and the gathered one lacks are added first.

Provenance: the `sweep` table, one row per run: the sweep's name, file and hash, the run's
configuration hash, its store, its sweep-level status, and where its last attempt ran
(executor, host, worker, process id, code version, wall time, attempts); `sweep_attempts`
holds every attempt.

Invariants: a run is gathered in one transaction (all of its rows replaced, or none); runs
never collide (run ids are unique within a sweep); gathering a run again is idempotent; a
source store is only read (opened through ATTACH, never written).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import StoreError
from .spec import PlannedRun, Sweep
from .worker import ATTEMPTS

SWEEP_TABLE = "sweep"
_NOT_PER_RUN = {"meta", "reference"}
_SWEEP_COLUMNS = {
    "run_id": str, "position": int, "sweep": str, "sweep_file": str, "sweep_hash": str,
    "run_key": str, "scenario_file": str, "store": str, "status": str, "error": str,
    "executor": str, "host": str, "worker": str, "pid": int, "code_version": str,
    "attempts": int, "started_at": float, "finished_at": float, "wall_s": float,
    "source_size": int, "source_mtime_ns": int, "gathered_at": float}


@dataclass(frozen=True)
class Outcome:
    """A run's state as its own store records it. `status`: complete, failed, interrupted,
    died (its process ended mid-run: resumable), busy (another process holds it) or new
    (nothing recorded)."""

    run_id: str
    status: str
    error: str | None = None
    attempt: dict | None = None  # the last attempt's row
    attempts: int = 0
    wall_s: float | None = None  # as the executor saw it (process start to end), if known


def read_outcome(path: Path, run_id: str, busy: bool = False) -> Outcome:
    """What the store at `path` says of `run_id` (read-only; no store file: status new)."""
    if busy:
        return Outcome(run_id, "busy", "another process holds the run's lock")
    if not path.is_file():
        return Outcome(run_id, "new")
    con = _read_only(path)
    try:
        tables = {r[0] for r in con.execute("select name from sqlite_master where type='table'")}
        run = _one(con, "select status, error from runs where run_id = ?", run_id) \
            if "runs" in tables else None
        attempts = [dict(r) for r in con.execute(
            f"select * from {ATTEMPTS} where run_id = ? order by attempt", [run_id])] \
            if ATTEMPTS in tables else []
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path}: cannot read the run's store ({exc})") from None
    finally:
        con.close()
    last = attempts[-1] if attempts else None
    status, error = (run["status"], run["error"]) if run else ("new", None)
    if last and last["status"] == "failed":  # (also: refused at its start, row untouched)
        status, error = "failed", last["error"]
    if status == "running":  # read after its process ended: it died mid-run
        status, error = "died", (last or {}).get("error") or "the worker process ended mid-run"
    return Outcome(run_id, status, error, last, len(attempts))


def _read_only(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    return con


def _one(con: sqlite3.Connection, sql: str, *args) -> dict | None:
    row = con.execute(sql, list(args)).fetchone()
    return dict(row) if row else None


class Gatherer:
    """Copies run stores into the sweep's store, `OUT/sweep.db` (created as a `Store`;
    rows are copied on a connection of its own that reads sources through read-only URIs).
    `close()` leaves the file as `Store.close` does."""

    def __init__(self, sweep: Sweep, out: Path, executor: str):
        from ..store import Store
        self.sweep, self.out, self.executor = sweep, out, executor
        self.position = {r.run_id: i for i, r in enumerate(sweep.runs)}
        self.store = Store(out / "sweep.db")
        if not self.store.db[SWEEP_TABLE].exists():
            self.store.db[SWEEP_TABLE].create(_SWEEP_COLUMNS, pk="run_id")
        self.con = sqlite3.connect(self.store.path.resolve().as_uri(), uri=True)

    def close(self) -> None:
        self.con.close()
        self.store.close()

    def up_to_date(self, run: PlannedRun) -> bool:
        """True when the run's store is gathered as it is now (same size and time)."""
        src = self.out / "runs" / run.store
        rows = list(self.store.db[SWEEP_TABLE].rows_where("run_id = ?", [run.run_id]))
        if not src.is_file() or not rows:
            return not src.is_file()
        st = src.stat()
        return (rows[0]["source_size"], rows[0]["source_mtime_ns"]) == (st.st_size, st.st_mtime_ns)

    def gather(self, run: PlannedRun, outcome: Outcome) -> None:
        """Replace the run's rows in the sweep's store with its own store's (one transaction)."""
        src = self.out / "runs" / run.store
        if not src.is_file():
            return
        con = self.con
        con.execute("attach database ? as src", [f"{src.resolve().as_uri()}?mode=ro"])
        try:
            tables = self._prepare_tables(con)
            with con:
                for t in tables:
                    self._copy(con, t, run.run_id)
                self._provenance(con, run, outcome, src)
        except sqlite3.Error as exc:
            raise StoreError(f"{src}: cannot gather it into {self.store.path} ({exc})") from None
        finally:
            con.execute("detach database src")

    def _prepare_tables(self, con: sqlite3.Connection) -> list[str]:
        """Create the source's tables the sweep's store lacks, add missing columns; returns
        the source's tables, in name order."""
        src = {name: sql for name, sql in con.execute(
            "select name, sql from src.sqlite_master where type = 'table' order by name")}
        main = {r[0] for r in con.execute("select name from main.sqlite_master where type='table'")}
        for name, sql in src.items():
            if name not in main:
                con.execute(sql)
                continue
            have = {r[1].lower() for r in con.execute(f"pragma main.table_info([{name}])")}
            for _, col, ctype, *_ in con.execute(f"pragma src.table_info([{name}])"):
                if col.lower() not in have:
                    con.execute(f"alter table main.[{name}] add column [{col}] {ctype}")
        con.commit()
        return [t for t in src if t != "meta"]

    def _copy(self, con: sqlite3.Connection, table: str, run_id: str) -> None:
        cols = ", ".join(f"[{r[1]}]" for r in con.execute(f"pragma src.table_info([{table}])"))
        if table in _NOT_PER_RUN:
            con.execute(f"insert or ignore into main.[{table}] ({cols}) "
                        f"select {cols} from src.[{table}]")
            return
        con.execute(f"delete from main.[{table}] where run_id = ?", [run_id])
        con.execute(f"insert into main.[{table}] ({cols}) select {cols} from src.[{table}] "
                    "where run_id = ?", [run_id])

    def _provenance(self, con: sqlite3.Connection, run: PlannedRun, o: Outcome,
                    src: Path) -> None:
        a, st = o.attempt or {}, src.stat()
        row = {"run_id": run.run_id, "position": self.position.get(run.run_id),
               "sweep": self.sweep.name, "sweep_file": str(self.sweep.path.resolve()),
               "sweep_hash": self.sweep.digest, "run_key": run.key,
               "scenario_file": run.scenario_file, "store": f"runs/{run.store}",
               "status": o.status, "error": o.error, "executor": a.get("executor") or self.executor,
               "host": a.get("host"), "worker": a.get("worker"), "pid": a.get("pid"),
               "code_version": a.get("code_version"), "attempts": o.attempts,
               "started_at": a.get("started_at"), "finished_at": a.get("finished_at"),
               "wall_s": a.get("wall_s"), "source_size": st.st_size,
               "source_mtime_ns": st.st_mtime_ns, "gathered_at": time.time()}
        names = ", ".join(f"[{k}]" for k in row)
        con.execute(f"insert or replace into main.[{SWEEP_TABLE}] ({names}) values "
                    f"({', '.join('?' * len(row))})", list(row.values()))

    def order_runs(self) -> None:
        """Rewrite the `runs` rows in the sweep's order (reports list runs in row order;
        gathering follows completion order, which parallel workers make vary). Runs no
        longer in the sweep file keep their order, after the others."""
        con = self.con
        with con:
            con.execute("create temp table _order (run_id text primary key, pos integer)")
            con.executemany("insert into _order values (?, ?)", self.position.items())
            con.execute("create temp table _runs as select runs.* from runs left join _order "
                        "using (run_id) order by coalesce(_order.pos, 1e18), runs.rowid")
            con.execute("delete from runs")
            con.execute("insert into runs select * from _runs")
            con.execute("drop table _runs")
            con.execute("drop table _order")


def statuses(store, runs: Sequence[PlannedRun]) -> dict[str, dict]:
    """The `sweep` rows of these runs in the sweep's store (run id -> row)."""
    if not store.db[SWEEP_TABLE].exists():
        return {}
    ids = {r.run_id for r in runs}
    return {r["run_id"]: r for r in store.db[SWEEP_TABLE].rows if r["run_id"] in ids}


def describe_error(error: str | None) -> str:
    """An error as one short line (the first line, at most 200 characters)."""
    text = (error or "").strip().splitlines()[0] if error else ""
    return text if len(text) <= 200 else text[:197] + "..."


__all__ = ["Gatherer", "Outcome", "describe_error", "read_outcome", "statuses"]
