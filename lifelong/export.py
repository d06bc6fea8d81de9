"""`lifelong export STORE --run RUN_ID -o DIR`: the memory a run ended with, as a saved memory.

The store's `state` row of a run is its last resume point (for a complete run: the state
right after its final probe); `runs.config` says which method, settings, seed and base model
made it. Export rebuilds the method exactly as the runtime did (`build_method`, `attach`,
`load_state_dict`) and writes it with `Editor.save`, so `lifelong.load(DIR)` serves the run's
final outputs bit for bit. A method whose memory is a weight change (`Memory.memory_kind
= "weights"`: ft) is also written as a plain Hugging Face model with the edits merged in
(DIR/merged-model/); hook-based methods have no such model.

When the run's stream file is still there (and is the one the run replayed: its event ids
match the store's rows), the saved memory also gets the run's attach context (the unrelated
prompts the runtime gave the method) and its edit log with prompts and targets; otherwise the
log lists edit ids and facts only, and the context is empty.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from .errors import LifelongError, StoreError
from .methods import AttachContext, current_name

MERGED = "merged-model"


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote: the memory directory, the merged model (or None) and the lines
    the command prints (one fact each)."""

    out: Path
    merged: Path | None
    notes: tuple[str, ...]


@click.command()
@click.argument("store_path", metavar="STORE", type=click.Path(dir_okay=False))
@click.option("--run", "run_id", required=True, help="run id (`lifelong compare STORE` lists them)")
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False),
              help="directory to write the memory to (loadable by lifelong.load)")
@click.option("--allow-incomplete", is_flag=True,
              help="export an unfinished run's last resume point")
@click.option("--model", help="where the run's base model is now, if it moved (its weights "
                              "must be the same)")
@click.option("--overwrite", is_flag=True, help="replace a memory already in DIR")
def export(store_path, run_id, out, allow_incomplete, model, overwrite):
    """Write the memory run RUN_ID of STORE ended with to DIR (lifelong.load reads it); for
    weight-editing methods also DIR/merged-model/, a Hugging Face model with the edits in."""
    result = export_run(store_path, run_id, out, allow_incomplete=allow_incomplete,
                        model=model, overwrite=overwrite)
    for line in result.notes:
        click.echo(line)


def export_run(store_path: str | Path, run_id: str, out: str | Path, *,
               allow_incomplete: bool = False, model: str | None = None,
               overwrite: bool = False) -> ExportResult:
    """Export run `run_id` of the store at `store_path` to directory `out` (see the module
    docstring). Every refusal is one LifelongError line."""
    store, run = _open_run(Path(store_path), run_id)
    try:
        return _export(store, run, Path(out), allow_incomplete, model, overwrite)
    finally:
        store.close()


def _export(store, run: dict, out: Path, allow_incomplete: bool, model: str | None,
            overwrite: bool) -> ExportResult:
    from .api import attach, base_model
    from .model import load_model

    run_id = run["run_id"]
    if run["status"] != "complete" and not allow_incomplete:
        raise LifelongError(f"{store.path}: run {run_id} is {run['status']}, not complete; "
                            "--allow-incomplete exports its last resume point")
    saved = store.load_state(run_id)
    if saved is None:
        raise LifelongError(f"{store.path}: run {run_id} has no saved state (it stopped before "
                            "its first resume point)")
    position, state = saved
    config = json.loads(run["config"])
    out = _check_out(out, overwrite)
    ref = model or run["model"]
    try:
        lm = load_model(ref, "cpu")
    except LifelongError as exc:
        raise LifelongError(f"{exc} (the base model of run {run_id}; give --model where it is "
                            "now)") from None
    base = base_model(lm)
    unverified = _check_base(store, run, base.fingerprint, ref)
    seed = int(run["seed"])
    chunk_start = int(state["counters"]["extra"].get("chunk_start", 0))
    context, log, stream_note = _replay_info(store, run, config, seed, chunk_start, position,
                                             lm, base)
    source = {"store": str(store.path.resolve()), "run_id": run_id, "status": run["status"],
              "position": position, "events_total": run["events_total"],
              "chunk_start": chunk_start}
    settings = config["method"]["settings"]
    editor = attach(lm, current_name(run["method"], settings), settings, seed, context,
                    state["method"], log, source, base=base)
    if (out / MERGED).is_dir():  # --overwrite: a stale merged model must not outlive its memory
        shutil.rmtree(out / MERGED)
    editor.save(out, overwrite=True)  # emptiness was checked above
    notes = [(f"memory: {out} ({editor.method}, {len(editor.edits)} active edits; run {run_id} "
             f"{run['status']}, after event {position} of {run['events_total']})")]
    notes += [n for n in (unverified, stream_note) if n]
    notes += _chunk_notes(config, chunk_start, len(editor.edits))
    merged, note = _merged_model(editor, out)
    editor.close()
    return ExportResult(out=out, merged=merged, notes=tuple(notes + [note]))


# ---- checks -----------------------------------------------------------------------------------
def _open_run(path: Path, run_id: str):
    from .store import Store

    if not path.is_file():
        raise StoreError(f"{path}: no such store")
    store = Store(path)
    run = store.get_run(run_id)
    if run is None:
        ids = [r["run_id"] for r in store.runs()]
        listing = f"its runs: {', '.join(ids)}" if ids else "it holds no runs"
        store.close()
        raise StoreError(f"{path}: no run {run_id!r}; {listing}")
    return store, run


def _check_out(out: Path, overwrite: bool) -> Path:
    if out.exists() and not out.is_dir():
        raise LifelongError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise LifelongError(f"{out}: directory is not empty; choose another -o or --overwrite")
    return out


def _check_base(store, run: dict, fingerprint: str, ref: str) -> str | None:
    """Refuse a base model the run was not made on: the run records its model's fingerprint
    (runs recorded before that: the store keeps the pre-stream outputs of each model under
    "name:fingerprint"). None when verified, else a note."""
    recorded = run.get("model_fingerprint")
    if recorded:
        if recorded == fingerprint:
            return None
        raise LifelongError(f"{ref}: fingerprint {fingerprint} is not that of the model run "
                            f"{run['run_id']} was made on ({recorded}); give --model that model")
    if not store.db["reference"].exists():
        return "base model not verified: the store holds no reference outputs"
    keys = [r[0] for r in store.db.execute("select distinct model from reference")]
    mine = [k for k in keys if k.rsplit(":", 1)[0] == run["model"]] or keys
    if any(k.rsplit(":", 1)[-1] == fingerprint for k in mine):
        return None
    if not mine:
        return "base model not verified: the store holds no reference outputs"
    raise LifelongError(f"{ref}: fingerprint {fingerprint} is not that of the model run "
                        f"{run['run_id']} was made on ({', '.join(mine)}); give --model that model")


# ---- what the stream tells ------------------------------------------------------------------
def _replay_info(store, run: dict, config: dict, seed: int, chunk_start: int, position: int,
                 lm, base) -> tuple[AttachContext, list[dict], str | None]:
    """(attach context, edit log, note) of the memory: from the run's stream when it is
    there and unchanged, else a context without unrelated prompts and a log of ids and facts
    (with a note)."""
    from .api import model_context
    rows = sorted(store.rows("events", run["run_id"]), key=lambda r: r["seq"])
    events = _stream_events(config, rows, seed)
    if isinstance(events, str):
        log = _log_from_rows(rows, chunk_start, position)
        return model_context(lm, base, seed), log, events
    runtime, pool, loc = events
    # the runtime's own choice
    context = runtime._context(pool, loc, seed, chunk_start, base.fingerprint)
    return context, _log_from_stream(runtime.events, rows, chunk_start, position), None


def _stream_events(config: dict, rows: list[dict], seed: int) -> Any:
    """(runtime over the run's stream, locality pool, locality sample), or a note saying why
    the stream cannot be used."""
    from .config import from_mapping
    from .probes import locality_pool, locality_sample
    from .runtime import Runtime
    from .scenario import Scenario
    from .stream import parse_stream

    try:
        sc = from_mapping(Scenario, config["scenario"], where="runs.config.scenario")
        parsed = parse_stream(sc.stream.file, skip_bad=sc.stream.skip_bad, sort=sc.stream.sort)
    except LifelongError as exc:
        return (f"stream not used ({exc}): the edit log has ids and facts only and the "
                "memory has no unrelated prompts for later edits")
    runtime = Runtime(sc, parsed, store=None)  # only its events and `_context` are used
    runtime._order_for(seed)  # the order this seed replayed (`stream.order`)
    by_seq = {r["seq"]: r["event_id"] for r in rows if not r["event_id"].startswith("@")}
    if any(runtime.events[s].id != eid if s < len(runtime.events) else True
           for s, eid in by_seq.items()):
        return (f"stream not used ({sc.stream.file} changed since the run): the edit log has "
                "ids and facts only and the memory has no unrelated prompts for later edits")
    pool = locality_pool(runtime.events)
    return runtime, pool, locality_sample(pool, sc.schedule.locality_sample, seed)


def _log_from_stream(events, rows: list[dict], start: int, position: int) -> list[dict]:
    """The operations the memory saw since `start`, from the stream and the rows' outcomes."""
    from .stream import Edit, Merge, Retract

    outcome = {r["event_id"]: r["outcome"] for r in rows}
    merges = {r["seq"] for r in rows if r["event_id"].startswith("@merge")}
    log: list[dict] = []
    for i in range(start, position):
        ev = events[i]
        if isinstance(ev, Edit) and outcome.get(ev.id) in ("applied", "rejected"):
            log.append({"op": "edit", "edit_id": ev.id, "prompt": ev.prompt, "target": ev.target,
                        "fact": ev.fact, "subject": ev.subject, "previous": ev.previous})
        elif isinstance(ev, Retract) and outcome.get(ev.id) == "applied":
            log.append({"op": "retract", "edit_id": ev.edit_id})
        elif isinstance(ev, Merge):
            log.append({"op": "consolidate"})
        if i + 1 in merges:  # a merge fired by the schedule after event i
            log.append({"op": "consolidate"})
    return log


def _log_from_rows(rows: list[dict], start: int, position: int) -> list[dict]:
    """The same log from the store's rows alone (no prompts or targets)."""
    log: list[dict] = []
    for r in rows:
        scheduled = r["event_id"].startswith("@merge")
        if not (start < r["seq"] <= position if scheduled else start <= r["seq"] < position):
            continue
        if scheduled or r["kind"] == "merge":
            log.append({"op": "consolidate"})
        elif r["kind"] == "edit" and r["outcome"] in ("applied", "rejected"):
            log.append({"op": "edit", "edit_id": r["event_id"], "fact": r["fact"]})
        elif r["kind"] == "retract" and r["outcome"] == "applied":
            log.append({"op": "retract", "edit_id": r.get("target_id")})
    return log


# ---- notes and the merged model ------------------------------------------------------------
def _chunk_notes(config: dict, chunk_start: int, active: int) -> list[str]:
    every = int(config["scenario"]["schedule"].get("restart_every", 0))
    if not every:
        return []
    return [(f"chunked run (restart_every = {every}): the memory is its last chunk's only "
            f"(the events from {chunk_start} on, {active} active edits); each earlier chunk's "
            "memory was discarded when the next one started")]


def _merged_model(editor, out: Path) -> tuple[Path | None, str]:
    """Write DIR/merged-model/ for a method whose memory is a weight change."""
    kind = type(editor.memory).memory_kind
    name = editor.method
    if kind == "weights":
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a one-shard save needs no progress bar
        where = out / MERGED
        editor.lm.model.save_pretrained(where)
        editor.lm.tok.save_pretrained(where)
        return where, (f"merged model: {where} (the base model with the edits in its weights; "
                       "loads with transformers and `lifelong simulate --model`)")
    if kind == "nothing":
        return None, f"no merged model: {name} changes nothing (the base model is the edited model)"
    if kind == "hooks":
        return None, (f"no merged model: {name}'s memory is not a weight change (it serves "
                      "through hooks beside the weights); load it with lifelong.load")
    return None, f"no merged model: {name} declares an unknown memory kind {kind!r}"
