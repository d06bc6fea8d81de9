"""The runtime: a deterministic event loop over a simulated clock.

For each (method, seed) it loads a fresh model, records the pre-stream reference outputs
(once per model), attaches the method, and replays the stream: edits, retractions, queries
and merges go to the method; the schedule fires checkpoints (probes) and merges; every
operation is timed and recorded. It only records: metrics are computed afterwards from the
rows (`metrics.py`).

Setup before records: the model is checked and loaded (`runsetup.preflight`), the reference
outputs computed, the method attached and its saved state restored before the run's row is
written, so a run refused at setup leaves nothing to clean up and can simply be run again.

Events are applied by `dispatch.py`: one at a time, or, for a method that edits in batches
(`BatchEditing`), `schedule.edit_batch` consecutive edits per call; resume points fall only
between calls, so a batch is always replayed whole.

Resume: the resume point (events done, counters, the method's state, the RNG) is written in
the same transaction as the rows before it, at every checkpoint and every few seconds. A run
killed at any point restarts from its last resume point; events after it are replayed and
their rows upserted over, so a resumed run ends with the same rows as an uninterrupted one.
The tail is idempotent too: the final checkpoint is saved with its resume point and marked
in it (`Counters.extra["final"]`), so it is never probed twice; query timing, metrics and
the status are upserts that a resume simply redoes.

The final checkpoint: when the last scheduled checkpoint falls after the last event that
changes the model (only queries follow) and probes every fact, it *is* the final one (its row
says when = "final") instead of being probed a second time in the same state.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import to_dict
from .dispatch import (
    apply_edits,
    apply_event,
    base_row,
    edit_count,
    merge_row,
    settled_position,
    truncate,
)
from .errors import LifelongError, StoreError
from .health import Monitor, texts_for
from .interrupts import counting_interrupts
from .methods import AttachContext, BatchEditing, Routing, build_method
from .methods.context import default_corpus
from .metrics import compute_run_metrics
from .model import LM, builtin_dir, load_model
from .probes import (
    Ledger,
    add_routing,
    chunk_locality,
    leaked_rephrases,
    locality_pool,
    locality_sample,
    plan,
    reference_pairs,
    reference_rows,
    run_probes,
)
from .progress import Reporter
from .provenance import code_version, machine
from .querytiming import time_queries, timing_pairs
from .runsetup import Setup, preflight
from .scenario import MethodSpec, Scenario, check_methods, same_config
from .store import Store
from .stream import Edit, Event, ParsedStream, Probe, Retract
from .streamorder import seeded_order


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


class Runtime:
    """Replays one stream for every method and seed of a scenario into one store.

    `setup`: what `runsetup.preflight` returned, when the caller ran it before opening the
    store (the CLI does, so a refused run leaves no file); `run_all` runs it otherwise."""

    def __init__(self, scenario: Scenario, stream: ParsedStream, store: Store,
                 reporter: Reporter | None = None, setup: Setup | None = None):
        self.sc = scenario
        self.store = store
        self._stream_events = stream.events
        self.events = truncate(stream.events, scenario.stream.max_edits)
        self.stream_info = {"path": stream.path, "sha256": stream.sha256,
                            "events": len(self.events), "skipped_lines": len(stream.skipped)}
        self.reporter = reporter or Reporter(quiet=True)
        self.n_edits = sum(isinstance(e, Edit) for e in self.events)
        self.n_facts = len({e.fact for e in self.events if isinstance(e, Edit)})
        self._health: Monitor | None = None
        self._setup = setup
        self._spare: LM | None = None  # the preflight's pristine model, for the first run
        self._settled = settled_position(self.events)
        self._saved_position = 0
        self._crash_budget = scenario.faults.crash_after_events
        self._crash_point = scenario.faults.crash_at
        #: events replayed by the run in progress (fault-injection tests read it)
        self.position = 0

    # ---- public -------------------------------------------------------------------------
    def run_all(self, resume: bool = False) -> list[str]:
        if self.sc.threads:
            torch.set_num_threads(self.sc.threads)
        if resume:  # fault injection kills the first attempt only; a resumed one runs through
            self._crash_budget, self._crash_point = 0, ""
        check_methods(self.sc, None)  # every method's settings, before any run starts
        setup = self._setup or preflight(self.sc, self.events)
        self._setup, self._spare = None, setup.lm
        self.stream_info.update(setup.unknown)
        return [self.run(spec, seed, resume) for spec in self.sc.methods for seed in self.sc.seeds]

    def run_id(self, spec: MethodSpec, seed: int) -> str:
        return f"{spec.display}@seed{seed}"

    def _order_for(self, seed: int) -> None:
        """The events this seed replays: the file's order, or with `stream.order = "seeded"`
        the seed's interleaving of the facts' histories (then truncated to `max_edits`)."""
        if self.sc.stream.order == "seeded":
            self.events = truncate(seeded_order(self._stream_events, seed), self.sc.stream.max_edits)
            self._settled = settled_position(self.events)

    def run(self, spec: MethodSpec, seed: int, resume: bool = False) -> str:
        self._order_for(seed)
        run_id = self.run_id(spec, seed)

        def fresh():
            return build_method(spec.name, spec.settings, seed, where=f"methods[{spec.display}]")

        method = fresh()
        # the file's digest is kept out of the config (stores made before it was recorded
        # resume as they were) and checked on its own in _existing
        stream = {k: v for k, v in self.stream_info.items() if k != "sha256"}
        config = {"scenario": to_dict(self.sc), "method": {"name": spec.name, "label": spec.display,
                  "settings": to_dict(method.config)}, "seed": seed, "stream": stream}
        existing = self._existing(run_id, config, resume)
        if existing is not None and existing["status"] == "complete":
            self.reporter.note(f"{run_id}: already complete")
            return run_id
        # setup: nothing of the run is recorded until it has passed (see the module docstring)
        self._saved_position = 0
        torch.manual_seed(seed)
        lm, self._spare = self._spare or load_model(self.sc.model, self.sc.device), None
        fingerprint = lm.fingerprint()
        self._check_model(run_id, existing, fingerprint)
        model_key = f"{lm.name}:{fingerprint}"
        pool, loc = self._locality(seed)
        self._ensure_reference(lm, model_key, loc)
        sched = self.sc.schedule
        self._health = Monitor(lm, texts_for(lm.path, sched.health_corpus, sched.health_texts, loc),
                               sched.weight_norms)  # while the model is pristine
        saved = self.store.load_state(run_id) if existing else None
        chunk_start = saved[1]["counters"]["extra"].get("chunk_start", 0) if saved else 0

        memo: dict = {}  # one for the run's chunks: the train split and corpus are read once

        def context(start: int) -> AttachContext:
            return self._context(pool, loc, seed, start, fingerprint, memo)

        first = context(chunk_start)
        if not first.unrelated_prompts and not first.train_split:
            self.reporter.note(f"{run_id}: note: every locality prompt of the stream is probed, so "
                               "methods that calibrate on unrelated prompts (claim_rate) run "
                               "uncalibrated; name a train split (stream.train_file) or probe "
                               "fewer (schedule.locality_sample)")
        method.attach(lm, first)
        counters = self._restore(run_id, method, saved)
        self._mark_running(run_id, spec, seed, config, existing, fingerprint)
        try:
            self._loop(run_id, lm, (method, fresh, context), model_key, loc, counters, seed)
            self._finish(run_id, lm)
        except Interrupted:
            self._set_status(run_id, "interrupted")
            raise
        except KeyboardInterrupt:  # a second Ctrl-C, or one outside the event loop
            self.store.discard_pending()
            self._set_status(run_id, "interrupted", "KeyboardInterrupt")
            raise Interrupted(f"interrupted; {run_id} is saved at its last resume point (event "
                              f"{self._saved_position} of {len(self.events)}): run again with "
                              "--resume to continue") from None
        except BaseException as exc:
            self.store.discard_pending()
            self._set_status(run_id, "failed", f"{type(exc).__name__}: {exc}")
            raise
        finally:
            self.reporter.stop()
        return run_id

    def _finish(self, run_id: str, lm: LM) -> None:
        """The tail after the final checkpoint: query timing, metrics, status. Each step is
        its own commit and an upsert, so a resume after any of them redoes the rest."""
        self._fault("after_final_checkpoint")
        # The unedited copy is a fresh load of the same directory rather than a clone taken
        # before attach: a clone would double the model's memory for the whole run, a load
        # from local files takes under a second for the models run here, and both give the
        # pristine weights without the method's hooks.
        base = load_model(self.sc.model, self.sc.device)
        prompts, targets = timing_pairs(self.events, self.sc.schedule.latency_queries)
        self.store.buffer("timings", time_queries(lm, base, prompts, targets,
                                                  self.sc.schedule.latency_rounds, run_id))
        del base
        self.store.commit()
        self._fault("after_query_timing")
        self._save_metrics(run_id, compute_run_metrics(self.store, run_id))
        self._fault("after_metrics")
        self.store.set_status(run_id, "complete")
        self._fault("after_complete")

    def _set_status(self, run_id: str, status: str, error: str | None = None) -> None:
        """Record how a run ended, without masking why (a broken store fails this too)."""
        with contextlib.suppress(LifelongError):
            self.store.set_status(run_id, status, error=error)

    # ---- setup --------------------------------------------------------------------------
    def _existing(self, run_id: str, config: dict, resume: bool) -> dict | None:
        """The run's row when it exists and may be continued; StoreError when it may not."""
        existing = self.store.get_run(run_id)
        if existing and not resume:
            raise StoreError(f"{self.store.path}: run {run_id} already exists "
                             f"({existing['status']}); use --resume to continue it, or another --db")
        if existing and not same_config(json.loads(existing["config"]), config):
            raise StoreError(f"{self.store.path}: run {run_id} was started with another "
                             "configuration; use another --db")
        digest = json.loads(existing["stream"] or "{}").get("sha256") if existing else None
        if digest and self.stream_info["sha256"] and digest != self.stream_info["sha256"]:
            raise StoreError(f"{self.store.path}: run {run_id} was started on another version "
                             f"of {self.stream_info['path']} (its content changed since); "
                             "use another --db")
        return existing

    def _check_model(self, run_id: str, existing: dict | None, fingerprint: str) -> None:
        """Refuse to continue a run on a model whose weights differ from those it started on
        (a model rebuilt or replaced at the same path): its rows would not be one run's.
        Runs recorded before fingerprints were stored are not checked."""
        was = existing.get("model_fingerprint") if existing else None
        if was and was != fingerprint:
            raise StoreError(f"{self.store.path}: run {run_id} was started on another version "
                             f"of model {self.sc.model or 'builtin'} (fingerprint {was}, now "
                             f"{fingerprint}: its weights changed since); use another --db")

    def _mark_running(self, run_id: str, spec: MethodSpec, seed: int, config: dict,
                      existing: dict | None, fingerprint: str) -> None:
        """Setup passed: create the run's row, or mark the existing one running again."""
        if existing:
            self.store.set_status(run_id, "running")
            return
        self.store.start_run({"run_id": run_id, "label": spec.display, "method": spec.name,
                              "seed": seed, "scenario": self.sc.name, "config": config,
                              "code_version": code_version(), "machine": machine(),
                              "model": self.sc.model, "model_fingerprint": fingerprint,
                              "stream": self.stream_info,
                              "status": "running", "error": None, "started_at": time.time(),
                              "finished_at": None, "events_total": len(self.events),
                              "edits_total": self.n_edits})

    def attach_context(self, seed: int, fingerprint: str) -> AttachContext:
        """The context seed `seed`'s run attaches its method with at the start of the stream
        (its order, locality sample and held-out train records), for a model of
        `fingerprint`: what `lifelong train-editor --scenario` trains for."""
        self._order_for(seed)
        return self._context(*self._locality(seed), seed, 0, fingerprint)

    def _locality(self, seed: int) -> tuple[list[Probe], list[Probe]]:
        """(the stream's locality pool, the seed's probed sample of it), for the events this
        seed replays (`_order_for` first): what a run probes and what `_context` holds out."""
        pool = locality_pool(self.events)
        return pool, locality_sample(pool, self.sc.schedule.locality_sample, seed)

    def _context(self, pool, loc, seed: int, chunk_start: int,
                 fingerprint: str = "", memo: dict | None = None) -> AttachContext:
        """What a method is attached with. Methods that train against unrelated inputs get
        the locality prompts that are never probed while it is attached, so locality is never
        measured on what a method trained on: the stream's pool minus the probed sample, or,
        with `restart_every`, minus the locality prompts of the chunk starting at event
        `chunk_start` (the ones its end probes). The train split, corpus and a second model
        are named here and read only when the method asks (`AttachContext`); with
        `stream.train_exclude`, the subjects and facts of this run's edits are held out of
        the train split. `memo`: shared by the contexts of one run (`AttachContext.memo`)."""
        sc = self.sc
        if sc.schedule.restart_every:
            edits = [e for e in self.events[chunk_start:] if isinstance(e, Edit)]
            probed = {p.prompt for e in edits[:sc.schedule.restart_every] for p in e.locality}
        else:
            probed = {p.prompt for p in loc}
        unrelated = tuple(dict.fromkeys(p.prompt for p in pool if p.prompt not in probed))
        model_dir = builtin_dir() if sc.model in ("", "builtin") else Path(sc.model)
        held = ([e for e in self.events if isinstance(e, Edit)]
                if sc.stream.train_exclude == "edited-subjects" else [])
        return AttachContext(seed=seed, unrelated_prompts=unrelated,
                             train_split=sc.stream.train_file,
                             held_out_subjects=frozenset(e.subject for e in held if e.subject),
                             held_out_facts=frozenset(e.fact for e in held),
                             probed_prompts=frozenset(probed),
                             corpus=sc.corpus or default_corpus(model_dir),
                             cache_dir=sc.cache_dir, model_fingerprint=fingerprint,
                             device=sc.device,
                             model_factory=functools.partial(load_model, sc.model, sc.device),
                             memo={} if memo is None else memo)

    def _restore(self, run_id: str, method, saved) -> Counters:
        if saved is None:
            return Counters()
        position, state = saved
        try:
            method.load_state_dict(state["method"])
            torch.set_rng_state(state["rng"])
            c = Counters(**state["counters"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise StoreError(f"{self.store.path}: the resume point of run {run_id} does not fit "
                             f"this method ({type(exc).__name__}: {exc}); run it again into "
                             "another --db") from None
        self._saved_position = c.position
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
        with counting_interrupts(raise_after=1) as stop:
            while c.position < len(self.events):
                batching = sched.edit_batch > 1 and isinstance(method, BatchEditing)
                n = edit_count(self.events, c.position, c.edits, sched, batching)
                group = self.events[c.position:c.position + n]
                rows = self._apply(run_id, lm, method, group, c, ledger, batching)
                for i, (ev, row) in enumerate(zip(group, rows)):
                    ledger.add(ev)
                    c.position += 1
                    self.store.buffer("events", [row])
                    if isinstance(ev, Edit):
                        c.edits += 1
                        method, ledger, saved = self._scheduled(run_id, lm, method, ledger, loc,
                                                                reference, c, seed, fresh, context)
                        last_save = time.monotonic() if saved else last_save
                    # a resume point only between calls: a batch is resumed whole
                    if i == n - 1 and time.monotonic() - last_save >= sched.save_every_seconds:
                        self._save(run_id, method, c)
                        last_save = time.monotonic()
                    self.position = c.position
                    self._maybe_crash()
                    self.reporter.update(c.position, f"{c.edits} edits")
                if stop[0]:
                    self._save(run_id, method, c)
                    raise Interrupted(f"interrupted after event {c.position} of {len(self.events)}; "
                                      "run again with --resume to continue")
            if "final" not in c.extra:  # (a resume after the final checkpoint skips it)
                self._checkpoint(run_id, lm, method, ledger, loc, reference, c, seed, "final",
                                 probe=not chunk or bool(ledger.edits))

    def _is_final(self, c: Counters) -> bool:
        """A scheduled checkpoint is the final one when nothing after it changes the model
        and it probes every fact, as the final one would (see the module docstring)."""
        sample = self.sc.schedule.probe_edits
        return c.position >= self._settled and (not sample or sample >= self.n_facts)

    def _apply(self, run_id: str, lm: LM, method, group: Sequence[Event], c: Counters,
               ledger: Ledger, batching: bool) -> list[dict]:
        """Apply one event, or a batch of edits (`dispatch`), and return their rows. A
        retraction of an edit made in an earlier chunk (`restart_every`) is recorded, not
        sent: the fresh method never saw it."""
        rows = [base_row(run_id, ev, c.position + i, c.edits + i) for i, ev in enumerate(group)]
        eval_after = self.sc.schedule.eval_after_edit
        if batching and isinstance(group[0], Edit):
            apply_edits(lm, method, group, rows, eval_after)
            return rows
        ev = group[0]
        outside = bool(self.sc.schedule.restart_every) and isinstance(ev, Retract) \
            and ev.edit_id not in ledger.edits
        apply_event(lm, method, ev, rows[0], eval_after, outside)
        return rows

    def _scheduled(self, run_id, lm, method, ledger, loc, reference, c: Counters, seed: int,
                   fresh, context):
        """What the schedule fires after an edit: a merge, a checkpoint, the end of a chunk
        (a fresh method). Returns (method, ledger, whether a resume point was saved)."""
        sched = self.sc.schedule
        saved = False
        if sched.merge_every and c.edits % sched.merge_every == 0:
            c.merges += 1
            self.store.buffer("events", [merge_row(lm, run_id, method, c.position, c.edits)])
        if sched.checkpoint_every and c.edits % sched.checkpoint_every == 0:
            self._checkpoint(run_id, lm, method, ledger, loc, reference, c, seed,
                             "final" if self._is_final(c) else "checkpoint")
            saved = True
        if sched.restart_every and c.edits % sched.restart_every == 0:
            self._checkpoint(run_id, lm, method, ledger, loc, reference, c, seed, "chunk",
                             save=False)
            method.detach()
            method = fresh()
            method.attach(lm, context(c.position))
            ledger = Ledger.replay([])
            c.extra["chunk_start"] = c.position
            self._save(run_id, method, c)
            saved = True
        return method, ledger, saved

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
                     seed=seed, total_facts=self.n_facts) if probe else []
        self.reporter.update(c.position, f"probing {len(items)} prompts", force=True)
        with lm.stopwatch() as clock:
            rows = run_probes(lm, items, reference, sched.batch_size)
        probe_ms = clock.ms
        if isinstance(method, Routing):
            with torch.no_grad():
                add_routing(method, rows, sched.batch_size)
        for r in rows:
            r.update(run_id=run_id, checkpoint=c.checkpoints)
        if when == "final":  # saved with it: a resume never probes the final state twice
            c.extra["final"] = c.checkpoints
        self.store.buffer("probes", rows)
        self.store.buffer("checkpoints", [{
            "run_id": run_id, "checkpoint": c.checkpoints, "when": when,
            "edits_done": c.edits, "position": c.position, "memory_bytes": method.footprint(),
            "probe_ms": probe_ms, "n_items": len(rows), "leaked": leaked_rephrases(ledger),
            "t_sim": self.events[c.position - 1].t if c.position else None,
            **self._health.row(lm, method)}])
        if save:
            self._save(run_id, method, c)

    def _save(self, run_id: str, method, c: Counters) -> None:
        state = {"method": method.state_dict(), "rng": torch.get_rng_state(),
                 "counters": {"position": c.position, "edits": c.edits,
                              "checkpoints": c.checkpoints, "merges": c.merges, "extra": c.extra}}
        self.store.commit(run_id, c.position, state)
        self._saved_position = c.position

    def _save_metrics(self, run_id: str, metrics: dict[str, Any]) -> None:
        """Cache the final metrics (reports recompute them from the rows anyway)."""
        self.store.buffer("metrics", [{"run_id": run_id, "name": k, "value": json.dumps(v)}
                                      for k, v in metrics.items()])
        self.store.commit()

    def _maybe_crash(self) -> None:
        """Fault injection: die without cleanup, as `kill -9` would, after N events."""
        if self._crash_budget:
            self._crash_budget -= 1
            if self._crash_budget == 0:
                self._die()

    def _fault(self, point: str) -> None:
        """Fault injection at a named commit of the run's tail (`Faults.crash_at`)."""
        if self._crash_point == point:
            self._die()

    def _die(self) -> None:
        os._exit(137)
