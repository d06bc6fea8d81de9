"""`lifelong bench wise`: the editing, merging and query cost of `wise` (the paper's
method) and `wise-faiss` (the FAISS-routed variant) on 2 cores; each result names its method.

Three measurements per method on a model with a world (default: the built-in one), each
edit a real fact of the world set to another object of its relation:

1. editing: `edits` edits with the given settings (default: the method's defaults, merge mode),
   wall time per edit (mean, p50, p95) and optimiser steps; then one merge of the shards
   (`consolidate`), timed;
2. queries with that memory against the bare model (the hook bypassed), batch 1 and
   batch 32, interleaved so that machine load hits both alike;
3. routing cost against the number of side memories: retrieve mode with `memories` side
   memories of a few cheap edits each (quality is not the point here), query latency with
   `wise-faiss`'s FAISS router (one search per batch) and activation router, and with `wise`'s
   activation router (one score per memory, and per shard not merged yet);
4. with `keys` (`wise-faiss` only): the FAISS router's cost against the number of edit keys it
   holds, without training that many edits: a memory of 4 real edits, its key table filled
   with the keys of `size` distinct world prompts (fact, template) labelled with that memory
   (untrained: the lookup's cost, not its quality, as `bench grace` fills GRACE's codebook),
   attached with 300 unrelated prompts for the radius calibration; queries of 32 prompts it
   holds (routed to the memory) and 32 it does not, against the bare model.
"""

from __future__ import annotations

from typing import Any

import click
import numpy as np
import torch

from .bench import _pct, model_world, time_bare_vs_memory


def _world_edits(world, n: int, seed: int) -> list[tuple[str, str, str, str]]:
    """(prompt, new object, fact key, subject) for n distinct facts of the model's world."""
    facts = list(world)
    order = np.random.default_rng(seed).permutation(len(facts))[:n]
    out = []
    for i in order:
        f = facts[int(i)]
        new = next(o for o in world.objects(f.relation) if o != f.value)
        out.append((world.prompt(f, world.trained_templates(f)[0]), new, f.key, f.subject))
    return out


def _time_queries(lm, method, prompts: list[str]) -> dict[str, Any]:
    return time_bare_vs_memory(lm, prompts, ["x"] * len(prompts), method.bypassed)


#: cheap retrieve-mode settings for the routing-cost measurement, per method and router
ROUTING = {"wise-faiss": {"faiss": {"router": "faiss", "negatives": 0},
                          "activation": {"router": "activation", "negatives": 0}},
           "wise": {"activation": {"negatives": 1, "prefixes": 0}}}


def bench_wise(model: str | None, edits: int = 50, memories: tuple[int, ...] = (1, 8, 32),
               queries: int = 64, seed: int = 0, settings: dict | None = None,
               echo=print, method: str = "wise-faiss", device: str = "cpu") -> dict[str, Any]:
    """The three measurements of the module docstring, for `method`, the model on `device`."""
    from .methods import AttachContext, EditRequest, build_method
    lm, world = model_world(model, "wise", device)
    pool = _world_edits(world, edits + queries + 4 * max(memories), seed)
    probe = [p for p, _, _, _ in pool[edits:edits + queries]]
    unrelated = tuple(p for p, _, _, _ in pool[edits + queries:])
    echo(f"method: {method}")
    w = build_method(method, settings or {}, seed)
    w.attach(lm, AttachContext(seed=seed, unrelated_prompts=unrelated))
    ms, steps = [], []
    for k, (prompt, new, fact, subject) in enumerate(pool[:edits]):
        with lm.stopwatch() as clock:
            rc = w.edit([EditRequest(f"b{k}", prompt, new, fact, subject)])
        ms.append(clock.ms)
        steps.append(rc.steps)
    with lm.stopwatch() as clock:
        shards = (w.consolidate() or {}).get("shards_merged", 0)
    merge_ms = clock.ms
    served = _time_queries(lm, w, [p for p, _, _, _ in pool[:edits]][:queries] + probe)
    w.detach()
    out = {"method": method, "model": lm.name, "threads": torch.get_num_threads(), "device": device,
           "settings": dict(w.config.__dict__),
           "edits": edits, "edit_ms": _pct(ms), "edit_ms_mean": float(np.mean(ms)),
           "steps_mean": float(np.mean(steps)), "merge": {"shards": shards, "ms": merge_ms},
           "queries": served, "routing": []}
    echo(f"edit: mean {out['edit_ms_mean']:.0f} ms, p50 {out['edit_ms']['p50']:.0f}, p95 "
         f"{out['edit_ms']['p95']:.0f} ({out['steps_mean']:.0f} steps); merge of {shards} shards "
         f"{merge_ms:.1f} ms")
    echo(_query_line("queries", served))
    for m in memories:
        for router, extra in ROUTING[method].items():
            r = build_method(method, {"mode": "retrieve", "memory_size": 4, "steps": 3, **extra},
                             seed)
            r.attach(lm, AttachContext(seed=seed))
            for k, (prompt, new, fact, subject) in enumerate(pool[edits + queries:][:4 * m]):
                r.edit([EditRequest(f"r{k}", prompt, new, fact, subject)])
            t = _time_queries(lm, r, probe)
            r.detach()
            out["routing"].append({"memories": len(r.memories), "router": router, **t})
            echo(_query_line(f"{len(r.memories):>3} memories, {router:<10}", t))
    return out


def bench_router_keys(model: str | None, sizes: list[int], seed: int = 0, echo=print,
                      device: str = "cpu") -> list[dict[str, Any]]:
    """Measurement 4 of the module docstring: query latency against the bare model with the
    router holding each of `sizes` keys."""
    from .methods import AttachContext, EditRequest, build_method
    from .methods._common.keys import row_keys
    lm, world = model_world(model, "wise", device)
    pairs = [(f, t) for f in world for t in range(len(world.templates(f.relation)))]
    need = max(sizes) + 32 + 300
    if need > len(pairs):
        raise click.ClickException(f"the world has {len(pairs)} prompts; --keys needs {need}")
    order = np.random.default_rng(seed).permutation(len(pairs))[:need]
    prompts = [world.prompt(*pairs[int(i)]) for i in order]
    unrelated, strangers = tuple(prompts[-300:]), prompts[max(sizes):max(sizes) + 32]
    out = []
    for size in sizes:
        w = build_method("wise-faiss", {"mode": "retrieve", "negatives": 0}, seed)
        w.attach(lm, AttachContext(seed=seed, unrelated_prompts=unrelated))
        for k, (prompt, new, fact, subject) in enumerate(_world_edits(world, 4, seed)):
            w.edit([EditRequest(f"k{k}", prompt, new, fact, subject)])
        for s in range(0, size, 256):
            for i, key in enumerate(row_keys(*w._activations(prompts[s:min(size, s + 256)]))):
                w.table.add(key[None], 0, f"fill{s + i}")
        w._changed()  # the router's radius factor, recomputed over the filled table
        w.radius_factor()
        t = _time_queries(lm, w, prompts[:32] + strangers)
        routed = w.route(prompts[:32] + strangers)
        out.append({"keys": len(w.table), "held_routed": sum(r is not None for r in routed[:32]),
                    "strangers_routed": sum(r is not None for r in routed[32:]),
                    "footprint_mb": round(w.footprint() / 2**20, 2),
                    "threads": torch.get_num_threads(), "device": device, **t})
        echo(_query_line(f"{len(w.table):>6} router keys", t))
        w.detach()
    return out


def _query_line(label: str, t: dict[str, Any]) -> str:
    b, m = t["bare"], t["memory"]
    return (f"{label}: batch-1 p50 {m['batch1_ms']['p50']:.2f} ms vs bare {b['batch1_ms']['p50']:.2f} "
            f"(p95 {m['batch1_ms']['p95']:.2f} vs {b['batch1_ms']['p95']:.2f}); batch-32 p50 "
            f"{m['batch32_ms']['p50']:.2f} ms vs bare {b['batch32_ms']['p50']:.2f}")
