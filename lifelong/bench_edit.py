"""`lifelong bench edit`: what a method costs to attach, per edit, in memory and per query.

For each method, on a fresh copy of a model with a world (default: the built-in one):

1. attach, timed (wall), with the context a `lifelong simulate` run of that model gives:
   the model's own corpus (`default_corpus`), the statistics cache keyed by the model's
   fingerprint (`--cache-dir`, else the default cache; `--fresh-cache`: a temporary one,
   so statistics and editors are computed, never read), the train split (`--train-file`),
   unrelated prompts (world prompts never edited nor timed here). Beside the wall time, what
   the method says its attach did (`attach_costs`: key statistics computed or read, a MEND
   editor trained or read);
2. `edits` edits, real facts of the world each set to another object of its relation
   (`bench_wise._world_edits`), in calls of `batch` (the runtime's way: one `edit_batch` call
   per batch for a BatchEditing method, one `edit` per request for the others): wall time
   per edit (a call's time over its edits; mean over all edits, p50 / p95 over calls),
   optimiser steps when the receipts count them, and `footprint()` after the last edit;
3. queries: a hook-based method (`Served`: it has `bypassed()`) is timed against the bare
   model with `bench.time_bare_vs_memory` (edited and unedited prompts); a method that edits
   weights has no query overhead (the model's own forward), and this is said, not timed.
   With `query_at` the queries are also timed (and the footprint read) after each of those
   edit counts, outside the edit timer: how query cost grows with the memory
   (`queries_by_edits`, the last entry the same as `queries`).

Invariants: every method gets a fresh, pristine model and the same edits in the same order
(seeded by `seed`); nothing here reads a method's internals except its `info` attribute,
through `attach_costs`; the result dict is JSON-able and records the command that made it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .bench import _pct, model_world, time_bare_vs_memory
from .bench_wise import _world_edits
from .errors import ConfigError

#: unrelated prompts handed to the attach context (WISE, DEFER train against them)
UNRELATED = 64


# ---- settings --------------------------------------------------------------------------------
def parse_settings(text: str | None, methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Settings per method from `--settings`: a JSON object applied to every method, or an
    object of objects keyed by method name when every key is one of `methods` (then a method
    it does not name gets its defaults). ConfigError (one line) when it is not such JSON."""
    if not text:
        return {m: {} for m in methods}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--settings: not JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--settings: expected a JSON object, got {type(data).__name__}")
    if data and set(data) <= set(methods) and all(isinstance(v, dict) for v in data.values()):
        return {m: dict(data.get(m, {})) for m in methods}
    return {m: dict(data) for m in methods}


# ---- what a method says its attach did ---------------------------------------------------------
def attach_costs(info: Any) -> list[dict[str, Any]]:
    """The attach costs a method's `info` attribute reports, in one shape.

    Two structures are read (no other method reports one today):

    * the locate family (ROME, MEMIT, AlphaEdit; `_locate/stats.py`): ``info["layers"][name] =
      {"read", "tokens", "seconds"}`` -> one entry per layer, ``{"what": "key statistics",
      "part": name, "how": "read" | "computed", "tokens", "seconds", "source", "entry"}``;
      an ``info`` with a ``source`` and no layers (identity statistics) -> one entry with
      ``how = "none"``;
    * MEND (`mend/method.py`): ``info["editor"]`` ("trained" or "read from the cache"),
      ``steps``, ``seconds`` -> ``{"what": "editor", "part": None, "how": "trained" | "read",
      "steps", "seconds", "entry"}``.

    Invariant: ``seconds`` is what producing the thing cost when it was produced (for a read
    entry, the figure saved beside it, not the time to read it); the locate family measures
    its layers in one pass, so its layers carry the same seconds and tokens (never add them
    up). Anything else (no `info`, another structure) gives [].
    """
    if not isinstance(info, dict):
        return []
    out: list[dict[str, Any]] = []
    layers = info.get("layers")
    if isinstance(layers, dict) and layers:
        for name, cost in layers.items():
            if isinstance(cost, dict) and {"read", "tokens", "seconds"} <= set(cost):
                out.append({"what": "key statistics", "part": name,
                            "how": "read" if cost["read"] else "computed",
                            "tokens": int(cost["tokens"]), "seconds": float(cost["seconds"]),
                            "source": info.get("source"), "entry": info.get("entry")})
    elif isinstance(info.get("source"), str) and "editor" not in info:
        out.append({"what": "key statistics", "part": None, "how": "none",
                    "source": info["source"]})
    if isinstance(info.get("editor"), str) and "seconds" in info:
        out.append({"what": "editor", "part": None,
                    "how": "read" if info["editor"].startswith("read") else "trained",
                    "steps": int(info.get("steps", 0)), "seconds": float(info["seconds"]),
                    "entry": info.get("entry")})
    return out


def cost_lines(method: str, costs: list[dict[str, Any]]) -> list[str]:
    """One line per thing an attach produced; layers measured in one pass share a line."""
    lines: list[str] = []
    groups: dict[tuple, list[str]] = {}  # layers measured together: (how, tokens, seconds)
    for c in costs:
        if c["what"] == "key statistics" and c["how"] != "none":
            groups.setdefault((c["how"], c["tokens"], c["seconds"]), []).append(c["part"])
        elif c["what"] == "key statistics":
            lines.append(f"  {method} attach: key statistics: {c['source']}")
        else:
            how = ("read from the cache (trained " if c["how"] == "read" else "trained (")
            lines.append(f"  {method} attach: editor {how}{c['steps']} steps, {c['seconds']:.2f} s)")
    stats = []
    for (how, tokens, seconds), parts in groups.items():
        when = "computed" if how == "computed" else "read from the cache (computed"
        stats.append(f"  {method} attach: key statistics of {', '.join(parts)} {when} in "
                     f"{seconds:.2f} s over {tokens} tokens{')' if how == 'read' else ''}")
    return stats + lines


# ---- one method ------------------------------------------------------------------------------
@contextlib.contextmanager
def _cache_dir(fresh: bool, given: str) -> Iterator[str]:
    """The cache dir for one method: a temporary one (removed after) when `fresh`."""
    if not fresh:
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="lifelong-bench-") as tmp:
        yield tmp


def _queries(method, lm, prompts: list[str], targets: list[str]) -> dict[str, Any]:
    """Query timing against the bare model for a hook-based method; what there is to say
    instead for the others."""
    from .methods._common.hooks import Served
    if isinstance(method, Served):
        t = time_bare_vs_memory(lm, prompts, targets, method.bypassed)
        b, m = t["bare"], t["memory"]
        return {"timed": True, **t,
                "overhead_batch1": round(m["batch1_ms"]["p50"] / b["batch1_ms"]["p50"] - 1, 4),
                "overhead_batch32": round(m["batch32_ms"]["p50"] / b["batch32_ms"]["p50"] - 1, 4)}
    note = {"weights": "no overhead: the model's own forward",
            "nothing": "no overhead: no memory, the model's own forward"}.get(
        method.memory_kind, "not timed: the method has no bypassed()")
    return {"timed": False, "note": note}


def bench_method(name: str, settings: dict[str, Any], model: str | None, pool: list,
                 n_edits: int, batch: int, probe: list[tuple[str, str]], seed: int,
                 cache_dir: str, fresh_cache: bool, train_file: str,
                 echo: Callable[[str], None] = print,
                 query_at: Sequence[int] = (), device: str = "cpu") -> dict[str, Any]:
    """Attach, edits and queries of one method (module docstring); prints its lines."""
    from .config import to_dict
    from .methods import AttachContext, BatchEditing, EditRequest, build_method, edit_batch
    from .methods.context import default_corpus
    from .model import load_model
    from .progress import Reporter

    method = build_method(name, settings, seed, where="--settings")
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    lm = load_model(model, device)
    load_s = time.perf_counter() - t0
    unrelated = tuple(p for p, _, _, _ in pool[n_edits + len(probe):][:UNRELATED])
    with _cache_dir(fresh_cache, cache_dir) as where:
        ctx = AttachContext(seed=seed, unrelated_prompts=unrelated, train_split=train_file,
                            corpus=default_corpus(lm.path), cache_dir=where,
                            model_fingerprint=lm.fingerprint(), device=str(lm.device),
                            model_factory=functools.partial(load_model, model, device))
        t0 = time.perf_counter()
        method.attach(lm, ctx)
        attach_s = time.perf_counter() - t0
        cache_root = str(ctx.cache().root)
    info = getattr(method, "info", None)
    costs = attach_costs(info)
    requests = [EditRequest(f"bench{k}", p, new, fact, subject)
                for k, (p, new, fact, subject) in enumerate(pool[:n_edits])]
    per_edit_ms, receipts, growth = [], [], []
    prompts, targets = [p for p, _ in probe], [t for _, t in probe]
    pending = sorted({k for k in query_at if k < n_edits})  # n_edits: timed below anyway
    report = Reporter(every_seconds=10.0)
    report.start(f"bench edit {name}", n_edits, unit="edits")
    try:
        for s in range(0, n_edits, batch):
            chunk = requests[s:s + batch]
            with lm.stopwatch() as clock:
                receipts += edit_batch(method, chunk)
            per_edit_ms.append(clock.ms / len(chunk))
            done = s + len(chunk)
            report.update(done)
            if pending and done >= pending[0]:  # a batch may pass several: timed once
                pending = [k for k in pending if k > done]
                growth.append(_grown(method, lm, prompts, targets, done))
    finally:
        report.stop()
    calls = [len(requests[s:s + batch]) for s in range(0, n_edits, batch)]
    steps = [r.steps for r in receipts]
    judged = [r.converged for r in receipts if r.converged is not None]
    edits = {"n": n_edits, "batch": batch, "calls": len(calls),
             "batched": isinstance(method, BatchEditing),
             "edit_ms_mean": round(float(np.dot(per_edit_ms, calls) / n_edits), 3),
             "edit_ms": _pct(per_edit_ms),
             "steps_mean": float(np.mean(steps)) if any(steps) else None,
             "converged": f"{sum(judged)}/{len(judged)}" if judged else None}
    footprint = int(method.footprint())
    queries = _queries(method, lm, prompts, targets)
    if query_at:
        growth.append({"after_edits": n_edits, "footprint_bytes": footprint, **queries})
    method.detach()
    out = {"method": name, "settings_given": settings, "settings": to_dict(method.config),
           "memory_kind": method.memory_kind, "load_s": round(load_s, 3),
           "cache_dir": cache_root if not fresh_cache else "(temporary)",
           "attach": {"wall_s": round(attach_s, 4), "costs": costs,
                      "info": json.loads(json.dumps(info, default=str)) if info else None},
           "edits": edits, "footprint_bytes": footprint, "queries": queries,
           "queries_by_edits": growth}
    echo(summary_line(out))
    for line in cost_lines(name, costs):
        echo(line)
    for g in growth:
        echo(growth_line(name, g))
    return out


def _grown(method, lm, prompts: list[str], targets: list[str], done: int) -> dict[str, Any]:
    """The footprint and query timing after `done` edits (one `queries_by_edits` entry)."""
    return {"after_edits": done, "footprint_bytes": int(method.footprint()),
            **_queries(method, lm, prompts, targets)}


def summary_line(r: dict[str, Any]) -> str:
    """The one line of a method's result."""
    e = r["edits"]
    steps = f", {e['steps_mean']:.1f} steps" if e["steps_mean"] is not None else ""
    return (f"{r['method']}: attach {r['attach']['wall_s']:.2f} s; {e['n']} edits in calls of "
            f"{e['batch']}: mean {e['edit_ms_mean']:.1f} ms/edit, p50 {e['edit_ms']['p50']:.1f}, "
            f"p95 {e['edit_ms']['p95']:.1f}{steps}; footprint {r['footprint_bytes'] / 2**20:.2f} MB; "
            + query_text(r["queries"]))


def query_text(q: dict[str, Any]) -> str:
    """What a query timing (`_queries`) found, as the end of a line."""
    if not q["timed"]:
        return f"queries: {q['note']}"
    b, m = q["bare"], q["memory"]
    return (f"queries p50 batch-1 {m['batch1_ms']['p50']:.2f} ms vs bare "
            f"{b['batch1_ms']['p50']:.2f} ({q['overhead_batch1']:+.1%}), batch-32 "
            f"{m['batch32_ms']['p50']:.2f} vs {b['batch32_ms']['p50']:.2f} ms "
            f"({q['overhead_batch32']:+.1%})")


def growth_line(method: str, g: dict[str, Any]) -> str:
    """One line of a `queries_by_edits` entry."""
    return (f"  {method} after {g['after_edits']} edits: footprint "
            f"{g['footprint_bytes'] / 2**20:.2f} MB; " + query_text(g))


# ---- the command -----------------------------------------------------------------------------
def command_line(methods: Sequence[str], model: str | None, edits: int, batch: int, queries: int,
                 settings: str | None, train_file: str | None, fresh_cache: bool,
                 cache_dir: str | None, seed: int, query_at: Sequence[int] = (),
                 device: str = "cpu") -> str:
    """The `lifelong bench edit` command that repeats this benchmark (every option explicit,
    `--json` left out)."""
    args = ["lifelong", "bench", "edit"]
    for m in methods:
        args += ["--method", m]
    args += ["--model", model or "builtin", "--edits", str(edits), "--batch", str(batch),
             "--queries", str(queries), "--seed", str(seed)]
    if device != "cpu":
        args += ["--device", device]
    for k in query_at:
        args += ["--query-at", str(k)]
    if settings:
        args += ["--settings", settings]
    if train_file:
        args += ["--train-file", train_file]
    if cache_dir:
        args += ["--cache-dir", cache_dir]
    if fresh_cache:
        args.append("--fresh-cache")
    return shlex.join(args)


def bench_edit(methods: Sequence[str], model: str | None = None, edits: int = 20, batch: int = 1,
               queries: int = 64, settings: str | None = None, train_file: str | None = None,
               fresh_cache: bool = False, cache_dir: str | None = None, seed: int = 0,
               echo: Callable[[str], None] = print,
               query_at: Sequence[int] = (), device: str = "cpu") -> dict[str, Any]:
    """The benchmark of the module docstring for each of `methods`, in order. Every method
    and its settings are checked before any model is loaded (ConfigError, one line).
    `query_at`: edit counts after which the queries are timed too (each 1..edits).
    `device`: where the model and the methods run ("cuda": timings wait for the GPU)."""
    import click

    from .methods import build_method
    from .provenance import code_version, machine
    per_method = parse_settings(settings, methods)
    for name in methods:
        build_method(name, per_method[name], seed, where="--settings")
    if fresh_cache and cache_dir:
        raise click.UsageError("--fresh-cache and --cache-dir exclude each other")
    query_at = sorted(set(query_at))
    if query_at and not 1 <= query_at[0] <= query_at[-1] <= edits:
        bad = query_at[0] if query_at[0] < 1 else query_at[-1]
        raise click.UsageError(f"--query-at {bad}: not between 1 and --edits {edits}")
    lm, world = model_world(model, "edit", device)
    n_other = queries - min(edits, queries // 2)
    pool = _world_edits(world, edits + n_other + UNRELATED, seed)
    if len(pool) < edits + n_other:
        raise click.ClickException(f"the world has {len(pool)} facts; --edits {edits} and "
                                   f"--queries {queries} need {edits + n_other}")
    probe = [(p, t) for p, t, _, _ in pool[:queries - n_other] + pool[edits:edits + n_other]]
    out: dict[str, Any] = {
        "command": command_line(methods, model, edits, batch, queries, settings, train_file,
                                fresh_cache, cache_dir, seed, query_at, device),
        "argv": list(sys.argv), "model": lm.name, "model_path": lm.path,
        "fingerprint": lm.fingerprint(), "threads": torch.get_num_threads(), "device": device,
        "gpu": torch.cuda.get_device_name(lm.device) if lm.device.type == "cuda" else None,
        "torch": torch.__version__, "code_version": code_version(), "machine": machine(),
        "edits": edits, "batch": batch, "queries": queries, "seed": seed,
        "fresh_cache": fresh_cache, "train_file": train_file or "", "query_at": query_at,
        "methods": []}
    del lm
    echo(f"bench edit: model {out['model']} ({out['fingerprint']}), {out['gpu'] or 'cpu'}, "
         f"{out['threads']} thread(s), "
         f"torch {out['torch']}; {edits} edits in calls of {batch}, {queries} queries, seed {seed}")
    for name in methods:
        out["methods"].append(bench_method(name, per_method[name], model, pool, edits,
                                           batch, probe, seed, cache_dir or "", fresh_cache,
                                           train_file or "", echo, query_at, device))
    return out


def write_json(out: dict[str, Any], path: str | Path) -> None:
    """The result as JSON (what does not serialise is written as its text)."""
    Path(path).write_text(json.dumps(out, indent=2, default=str) + "\n", encoding="utf-8")
