"""The runtime: a deterministic event loop over a simulated clock.

For each (method, seed) it loads a fresh model, records the pre-stream reference outputs
(once per model), attaches the method, and replays the stream: edits, retractions, queries
and merges go to the method; the schedule fires checkpoints (probes) and merges; every
operation is timed and recorded. It only records: metrics are computed afterwards from the
rows (`metrics.py`).

Resume: the resume point (events done, counters, the method's state, the RNG) is written in
the same transaction as the rows before it, at every checkpoint and every few seconds. A run
killed at any point restarts from its last resume point; events after it are replayed and
their rows upserted over, so a resumed run ends with the same rows as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from . import __version__
from .config import to_dict
from .errors import LifelongError, NotSupported, StoreError
from .metrics import compute_run_metrics
from .methods import AttachContext, EditRequest, build_method
from .model import LM, load_model
from .probes import (Ledger, add_routing, chunk_locality, locality_pool, locality_sample, plan,
                     reference_pairs, reference_rows, run_probes)
from .progress import Reporter
from .scenario import MethodSpec, Scenario
from .scoring import encode_pairs, forward_logits, score_pairs
from .store import Store
from .stream import Edit, Event, Merge, ParsedStream, Query, Retract


class Interrupted(LifelongError):
    """The user pressed Ctrl-C; the run was saved at an event boundary."""


@dataclass
class Counters:
    """Runtime position, saved with every resume point."""

    position: int = 0      # events replayed
    edits: int = 0         # edit events replayed
    checkpoints: int = 0   # checkpoints probed
    merges: int = 0        # consolidations fired by the schedule
    extra: dict = field(default_factory=dict)


def code_version() -> str:
    """Package version plus the git commit when running from a checkout."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha, dirty = "", ""
    return f"{__version__}+{sha}{'.dirty' if dirty else ''}" if sha else __version__


def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(), "cuda": torch.cuda.is_available()}


def truncate(events: Sequence[Event], max_edits: int) -> list[Event]:
    """The events up to and including the `max_edits`-th edit (all when 0)."""
    if max_edits <= 0:
        return list(events)
    out, n = [], 0
    for ev in events:
        if isinstance(ev, Edit):
            if n == max_edits:
                break
            n += 1
        out.append(ev)
    return out


@contextlib.contextmanager
def graceful_interrupt() -> Iterator[list[bool]]:
    """First Ctrl-C sets a flag the loop checks between events; a second one aborts now."""
    flag = [False]

    def handler(signum, frame):
        if flag[0]:
            raise KeyboardInterrupt
        flag[0] = True

    try:
        old = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: keep the default behaviour
        yield flag
        return
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, old)


class Runtime:
    """Replays one stream for every method and seed of a scenario into one store."""

    def __init__(self, scenario: Scenario, stream: ParsedStream, store: Store,
                 reporter: Reporter | None = None):
        self.sc = scenario
        self.store = store
        self.events = truncate(stream.events, scenario.stream.max_edits)
        self.stream_info = {"path": stream.path, "events": len(self.events),
                            "skipped_lines": len(stream.skipped)}
        self.reporter = reporter or Reporter(quiet=True)
        self.n_edits = sum(isinstance(e, Edit) for e in self.events)
        self._crash_budget = scenario.faults.crash_after_events

    # ---- public -------------------------------------------------------------------------
    def run_all(self, resume: bool = False) -> list[str]:
        if self.sc.threads:
            torch.set_num_threads(self.sc.threads)
        if resume:  # fault injection kills the first attempt only; a resumed one runs through
            self._crash_budget = 0
        return [self.run(spec, seed, resume) for spec in self.sc.methods for seed in self.sc.seeds]

    def run_id(self, spec: MethodSpec, seed: int) -> str:
        return f"{spec.display}@seed{seed}"

    def run(self, spec: MethodSpec, seed: int, resume: bool = False) -> str:
        run_id = self.run_id(spec, seed)

        def fresh():
            return build_method(spec.name, spec.settings, seed, where=f"methods[{spec.display}]")

        method = fresh()
        config = {"scenario": to_dict(self.sc), "method": {"name": spec.name, "label": spec.display,
                  "settings": to_dict(method.config)}, "seed": seed, "stream": self.stream_info}
        if not self._prepare_run(run_id, spec, seed, config, resume):
            return run_id
        torch.manual_seed(seed)
        lm = load_model(self.sc.model, self.sc.device)
        model_key = f"{lm.name}:{lm.fingerprint()}"
        pool = locality_pool(self.events)
        loc = locality_sample(pool, self.sc.schedule.locality_sample, seed)
        self._ensure_reference(lm, model_key, loc)
        self._time_queries(run_id, lm, "query_base")
        saved = self.store.load_state(run_id) if resume else None
        chunk_start = saved[1]["counters"]["extra"].get("chunk_start", 0) if saved else 0

        def context(start: int) -> AttachContext:
            return self._context(pool, loc, seed, start)

        method.attach(lm, context(chunk_start))
        counters = self._restore(run_id, method, saved)
        try:
            self._loop(run_id, lm, (method, fresh, context), model_key, loc, counters, seed)
        except Interrupted:
            self.store.set_status(run_id, "interrupted")
            raise
        except BaseException as exc:
            self.store.discard_pending()
            self.store.set_status(run_id, "failed" if not isinstance(exc, KeyboardInterrupt)
                                  else "interrupted", error=f"{type(exc).__name__}: {exc}")
            raise
        finally:
            self.reporter.stop()
        self._time_queries(run_id, lm, "query")
        self.store.commit()
        self._save_metrics(run_id, compute_run_metrics(self.store, run_id))
        self.store.set_status(run_id, "complete")
        return run_id

    # ---- setup --------------------------------------------------------------------------
    def _prepare_run(self, run_id: str, spec: MethodSpec, seed: int, config: dict,
                     resume: bool) -> bool:
        """Create the run row, or check the existing one. False: nothing left to do."""
        existing = self.store.get_run(run_id)
        if existing and not resume:
            raise StoreError(f"{self.store.path}: run {run_id} already exists "
                             f"({existing['status']}); use --resume to continue it, or another --db")
        if existing:
            if json.loads(existing["config"]) != json.loads(json.dumps(config, default=str)):
                raise StoreError(f"{self.store.path}: run {run_id} was started with another "
                                 "configuration; use another --db")
            if existing["status"] == "complete":
                self.reporter.note(f"{run_id}: already complete")
                return False
            self.store.set_status(run_id, "running")
            return True
        self.store.start_run({"run_id": run_id, "label": spec.display, "method": spec.name,
                              "seed": seed, "scenario": self.sc.name, "config": config,
                              "code_version": code_version(), "machine": machine(),
                              "model": self.sc.model, "stream": self.stream_info,
                              "status": "running", "error": None, "started_at": time.time(),
                              "finished_at": None, "events_total": len(self.events),
                              "edits_total": self.n_edits})
        return True

    def _context(self, pool, loc, seed: int, chunk_start: int) -> AttachContext:
        """What a method is attached with. Methods that train against unrelated inputs get
        the locality prompts that are never probed while it is attached, so locality is never
        measured on what a method trained on: the stream's pool minus the probed sample, or,
        with `restart_every`, minus the locality prompts of the chunk starting at event
        `chunk_start` (the ones its end probes)."""
        if self.sc.schedule.restart_every:
            edits = [e for e in self.events[chunk_start:] if isinstance(e, Edit)]
            probed = {p.prompt for e in edits[:self.sc.schedule.restart_every] for p in e.locality}
        else:
            probed = {p.prompt for p in loc}
        unrelated = tuple(dict.fromkeys(p.prompt for p in pool if p.prompt not in probed))
        return AttachContext(seed=seed, unrelated_prompts=unrelated)

    def _restore(self, run_id: str, method, saved) -> Counters:
        if saved is None:
            return Counters()
        position, state = saved
        method.load_state_dict(state["method"])
        torch.set_rng_state(state["rng"])
        c = Counters(**state["counters"])
        self.reporter.note(f"{run_id}: resuming after event {position} of {len(self.events)}")
        return c

    def _ensure_reference(self, lm: LM, model_key: str, loc) -> None:
        """Pre-stream outputs for everything judged against the base model (computed once)."""
        have = self.store.reference(model_key)
        pairs = [(p.prompt, p.answer) for p in loc]
        if self.sc.schedule.restart_every:  # chunks probe their own edits' locality prompts
            pairs += [(p.prompt, p.answer) for p in locality_pool(self.events)]
        pairs += reference_pairs(self.events)
        todo = sorted({p for p in pairs if p not in have})
        if todo:
            self.store.buffer("reference", reference_rows(lm, model_key, todo,
                                                          self.sc.schedule.batch_size))
            self.store.commit()

    def _time_queries(self, run_id: str, lm: LM, op: str, rounds: int = 3) -> None:
        """Latency of single queries (batch 1) and of one batch, with whatever is attached.
        Each prompt is timed `rounds` times after a warm-up, so a busy machine's hiccups land
        in the tail (p95) rather than in the median."""
        edits = [e for e in self.events if isinstance(e, Edit)]
        k = self.sc.schedule.latency_queries
        prompts = [e.prompt for e in edits[:k]] or ["hello"]
        targets = [e.target for e in edits[:k]] or ["world"]
        rows = []
        with torch.no_grad():
            for _ in range(3):  # warm-up
                forward_logits(lm, *encode_pairs(lm, prompts[:1], targets[:1])[:3])
            for r in range(rounds):
                for i, (p, t) in enumerate(zip(prompts, targets)):
                    batch = encode_pairs(lm, [p], [t])[:3]
                    t0 = time.perf_counter()
                    forward_logits(lm, *batch)
                    rows.append({"run_id": run_id, "op": op, "key": f"b1:{r}:{i}",
                                 "ms": _ms(t0), "batch": 1})
                batch = encode_pairs(lm, prompts, targets)[:3]
                t0 = time.perf_counter()
                forward_logits(lm, *batch)
                rows.append({"run_id": run_id, "op": op, "key": f"b{len(prompts)}:{r}",
                             "ms": _ms(t0), "batch": len(prompts)})
        self.store.buffer("timings", rows)
        self.store.commit()

    # ---- the loop -----------------------------------------------------------------------
    def _loop(self, run_id, lm, methods, model_key, loc, c: Counters, seed: int) -> None:
        """Replay the events from `c.position`. `methods` = (the attached method, a factory of
        fresh ones, the attach context of a chunk starting at an event position): with
        `restart_every`, each chunk of edits gets a fresh method on the pristine model
        (detach restores it bit for bit)."""
        sched = self.sc.schedule
        method, fresh, context = methods
        chunk = sched.restart_every
        ledger = Ledger.replay(self.events[c.extra.get("chunk_start", 0):c.position])
        reference = self.store.reference(model_key)
        last_save = time.monotonic()
        self.reporter.start(run_id, len(self.events), c.position)
        with graceful_interrupt() as stop:
            while c.position < len(self.events):
                ev = self.events[c.position]
                outside = chunk and isinstance(ev, Retract) and ev.edit_id not in ledger.edits
                row = self._dispatch(run_id, lm, method, ev, c, outside)
                ledger.add(ev)
                c.position += 1
                self.store.buffer("events", [row])
                if isinstance(ev, Edit):
                    c.edits += 1
                    if sched.merge_every and c.edits % sched.merge_every == 0:
                        self._merge(run_id, method, c, scheduled=True)
                    if sched.checkpoint_every and c.edits % sched.checkpoint_every == 0:
                        self._checkpoint(run_id, lm, method, ledger, loc, reference, c, seed,
                                         "checkpoint")
                        last_save = time.monotonic()
                    if chunk and c.edits % chunk == 0:
                        self._checkpoint(run_id, lm, method, ledger, loc, reference, c, seed, "chunk",
                                         save=False)
                        method.detach()
                        method = fresh()
                        method.attach(lm, context(c.position))
                        ledger = Ledger.replay([])
                        c.extra["chunk_start"] = c.position
                        self._save(run_id, method, c)
                        last_save = time.monotonic()
                if time.monotonic() - last_save >= sched.save_every_seconds:
                    self._save(run_id, method, c)
                    last_save = time.monotonic()
                self._maybe_crash()
                self.reporter.update(c.position, f"{c.edits} edits")
                if stop[0]:
                    self._save(run_id, method, c)
                    raise Interrupted(f"interrupted after event {c.position} of {len(self.events)}; "
                                      "run again with --resume to continue")
            self._checkpoint(run_id, lm, method, ledger, loc, reference, c, seed, "final",
                             probe=not chunk or bool(ledger.edits))

    def _dispatch(self, run_id: str, lm: LM, method, ev: Event, c: Counters,
                  outside: bool = False) -> dict:
        """Apply one event and return its row. `outside`: a retraction of an edit made in an
        earlier chunk (`restart_every`), which the fresh method never saw: recorded, not sent."""
        row = {"run_id": run_id, "event_id": ev.id, "seq": c.position, "kind": ev.kind,
               "t": ev.t, "fact": getattr(ev, "fact", None), "edit_index": c.edits,
               "scheduled": 0, "outcome": "applied", "error": None}
        t0 = time.perf_counter()
        if outside:
            row.update(fact=None, ms=0.0, target_id=ev.edit_id, outcome="nothing",
                       error="the edit was made in an earlier chunk")
            return row
        try:
            if isinstance(ev, Edit):
                receipt = method.edit([EditRequest(ev.id, ev.prompt, ev.target, ev.fact,
                                                   ev.subject, ev.previous)])
                row.update(ms=_ms(t0), loss_before=receipt.loss_before,
                           loss_after=receipt.loss_after, steps=receipt.steps,
                           outcome="applied" if receipt.applied else "rejected")
                if self.sc.schedule.eval_after_edit:
                    s = score_pairs(lm, [ev.prompt], [ev.target])[0]
                    row.update(tf_acc=s.tf_acc, gen_exact=int(s.gen_exact), gen_text=s.gen_text)
            elif isinstance(ev, Retract):
                row["fact"] = None
                method.retract(ev.edit_id)
                row.update(ms=_ms(t0), target_id=ev.edit_id)
            elif isinstance(ev, Query):
                answer = ev.answer or ""
                s = score_pairs(lm, [ev.prompt], [answer or "?"])[0]
                row.update(ms=_ms(t0), gen_text=s.gen_text,
                           tf_acc=s.tf_acc if answer else None,
                           gen_exact=int(s.gen_exact) if answer else None)
            elif isinstance(ev, Merge):
                info = method.consolidate()
                row.update(ms=_ms(t0), outcome="applied" if info is not None else "nothing")
        except NotSupported as exc:
            row.update(ms=_ms(t0), outcome="unsupported", error=str(exc))
        return row

    def _merge(self, run_id: str, method, c: Counters, scheduled: bool) -> None:
        t0 = time.perf_counter()
        info = method.consolidate()
        c.merges += 1
        self.store.buffer("events", [{"run_id": run_id, "event_id": f"@merge-{c.edits:06d}",
                                      "seq": c.position, "kind": "merge", "t": None, "fact": None,
                                      "edit_index": c.edits, "scheduled": int(scheduled),
                                      "outcome": "applied" if info is not None else "nothing",
                                      "error": None, "ms": _ms(t0)}])

    def _checkpoint(self, run_id, lm, method, ledger, loc, reference, c: Counters, seed: int,
                    when: str, save: bool = True, probe: bool = True) -> None:
        """Probe and record a checkpoint. `when`: "checkpoint" (along the stream: a sample of
        facts when `probe_edits` says so), "chunk" (the end of a `restart_every` chunk: its
        edits and their own locality prompts) or "final". `probe` False records the row alone
        (a chunked run whose last chunk was already probed)."""
        c.checkpoints += 1
        sched = self.sc.schedule
        if when != "checkpoint" and sched.restart_every:
            loc = chunk_locality(ledger)
        items = plan(ledger, loc, sample=sched.probe_edits if when == "checkpoint" else 0,
                     seed=seed, checkpoint=c.checkpoints) if probe else []
        self.reporter.update(c.position, f"probing {len(items)} prompts", force=True)
        t0 = time.perf_counter()
        rows = run_probes(lm, items, reference, sched.batch_size)
        probe_ms = _ms(t0)
        if callable(getattr(method, "route", None)) and callable(getattr(method, "memory_of", None)):
            with torch.no_grad():
                add_routing(method, rows, sched.batch_size)
        for r in rows:
            r.update(run_id=run_id, checkpoint=c.checkpoints)
        self.store.buffer("probes", rows)
        self.store.buffer("checkpoints", [{
            "run_id": run_id, "checkpoint": c.checkpoints, "when": when,
            "edits_done": c.edits, "position": c.position, "memory_bytes": method.footprint(),
            "probe_ms": probe_ms, "n_items": len(rows),
            "t_sim": self.events[c.position - 1].t if c.position else None}])
        if save:
            self._save(run_id, method, c)

    def _save(self, run_id: str, method, c: Counters) -> None:
        state = {"method": method.state_dict(), "rng": torch.get_rng_state(),
                 "counters": {"position": c.position, "edits": c.edits,
                              "checkpoints": c.checkpoints, "merges": c.merges, "extra": c.extra}}
        self.store.commit(run_id, c.position, state)

    def _save_metrics(self, run_id: str, metrics: dict[str, Any]) -> None:
        """Cache the final metrics (reports recompute them from the rows anyway)."""
        self.store.buffer("metrics", [{"run_id": run_id, "name": k, "value": json.dumps(v)}
                                      for k, v in metrics.items()])
        self.store.commit()

    def _maybe_crash(self) -> None:
        """Fault injection: die without cleanup, as `kill -9` would."""
        if self._crash_budget:
            self._crash_budget -= 1
            if self._crash_budget == 0:
                os._exit(137)


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1e3
