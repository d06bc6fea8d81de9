"""`lifelong bench grace`: GRACE's edit and query cost at growing codebook sizes.

For each size, a GRACE codebook is filled with keys and values of the model's own world
prompts (untrained values: this measures lookup and placement cost, not editing quality),
attached with ``pool`` unrelated prompts (its radius calibration, as in real runs). Then:

* real edits are timed, and each edit's value training alone (the bare cost the per-edit
  time is set against);
* query forwards with the codebook are timed against the bare model (the hook
  short-circuited), batch 1 and 32, interleaved so that machine load hits both alike;
* with ``hnsw_ef``, how often an HNSW index over the same keys (efSearch each value) gives
  the exact lookup's answer, on prompts the codebook holds, their other phrasings and the
  probe prompts, and what its lookups cost.

Every prompt the bench edits, queries or calibrates on is a distinct (fact, template) pair.
"""

from __future__ import annotations

import time
from typing import Any

import click
import numpy as np
import torch

from .bench import _pct, model_world, time_bare_vs_memory
from .index import KeyIndex


def bench_grace(model: str | None, sizes: list[int], edits: int = 20, queries: int = 64,
                seed: int = 0, settings: dict | None = None, echo=print, pool: int = 300,
                hnsw_ef: list[int] | None = None, device: str = "cpu") -> dict[str, Any]:
    """Per-edit time (against its value training alone) and query overhead of GRACE at each
    codebook size (module docstring), with the model on `device`."""
    from .methods import AttachContext, build_method

    lm, world = model_world(model, "grace", device)
    rng = np.random.default_rng(seed)
    pairs = [(f, t) for f in world for t in range(len(world.templates(f.relation)))]
    order = rng.permutation(len(pairs))
    need = max(sizes) + edits + queries
    if need + pool > len(pairs):
        raise click.ClickException(f"the world has {len(pairs)} prompts; sizes need {need + pool}")
    chosen = [pairs[i] for i in order[:need]]
    unrelated = tuple(world.prompt(*pairs[i]) for i in order[need:need + pool])
    probe = [(world.prompt(f, t), f.value) for f, t in chosen[-queries:]]
    edit_pairs = chosen[-queries - edits:-queries]

    rows = []
    for size in sizes:
        g = build_method("grace", settings or {}, seed)
        g.attach(lm, AttachContext(seed=seed, unrelated_prompts=unrelated))
        t0 = time.perf_counter()
        fill(g, world, chosen[:size])
        g.book.factor()  # the radius calibration over the filled codebook, once
        fill_s = time.perf_counter() - t0
        row = {"keys": len(g.book.index), "fill_s": round(fill_s, 2),
               **time_edits(g, world, edit_pairs)}
        q = time_bare_vs_memory(lm, [p for p, _ in probe], [a for _, a in probe], g.bypassed)
        bare, mem = q["bare"], q["memory"]
        row.update(q, overhead_batch1=round(mem["batch1_ms"]["p50"] / bare["batch1_ms"]["p50"] - 1, 4),
                   overhead_batch32=round(mem["batch32_ms"]["p50"] / bare["batch32_ms"]["p50"] - 1, 4),
                   footprint_mb=round(g.footprint() / 2**20, 2))
        echo(f"{row['keys']:>6} keys: edit p50 {row['edit_ms']['p50']:.1f} ms (mean {row['edit_ms_mean']:.1f}, "
             f"{row['steps_mean']:.1f} steps; {row['edit_over_train']:.2f}x its training alone); "
             f"query p50 batch-1 {mem['batch1_ms']['p50']:.2f} ms vs bare "
             f"{bare['batch1_ms']['p50']:.2f} ({row['overhead_batch1']:+.1%}), batch-32 "
             f"{mem['batch32_ms']['p50']:.2f} vs {bare['batch32_ms']['p50']:.2f} ms "
             f"({row['overhead_batch32']:+.1%}); {row['footprint_mb']} MB")
        if hnsw_ef:
            held = chosen[:size][:: max(1, size // queries)][:queries]
            prompts = {"held": [world.prompt(f, t) for f, t in held],
                       "rephrased": [world.prompt(f, (t + 1) % len(world.templates(f.relation)))
                                     for f, t in held],
                       "probe": [p for p, _ in probe]}
            row["hnsw"] = lookup_agreement(g, prompts, hnsw_ef)
            for r in row["hnsw"]:
                echo(f"        HNSW efSearch {r['ef_search']}: same answer as exact on "
                     + ", ".join(f"{k} {v:.3f}" for k, v in r["agree"].items())
                     + f"; lookup p50 batch-1 {r['batch1_ms']:.3f} ms, batch-32 {r['batch32_ms']:.3f} "
                     f"(exact {r['exact_batch1_ms']:.3f}, {r['exact_batch32_ms']:.3f})")
        g.detach()
        rows.append(row)
    return {"model": lm.name, "rows": rows, "threads": torch.get_num_threads(), "pool": pool,
            "device": device}


def fill(g, world, pairs) -> None:
    """Insert one untrained entry per (fact, template) pair, keyed by its prompt."""
    for s in range(0, len(pairs), 256):
        chunk = pairs[s:s + 256]
        prompts = [world.prompt(f, t) for f, t in chunk]
        keys, outs, tids, _ = g.keys_of(prompts, [f.value for f, _ in chunk])
        for i, (f, t) in enumerate(chunk):
            g.insert_item({"edit_id": f"fill{s + i}", "fact": f"{f.key}#{t}", "target": f.value,
                           "target_ids": list(tids[i]), "prompts": [prompts[i]],
                           "keys": keys[i:i + 1], "values": outs[i:i + 1]})


def time_edits(g, world, pairs) -> dict[str, Any]:
    """Each pair edited to another object of its relation: per-edit wall time, and the same
    edit's value training alone (`Grace._train`, no placement, no calibration)."""
    from .methods import EditRequest
    edit_ms, train_ms, steps = [], [], []
    for k, (f, t) in enumerate(pairs):
        new = next(o for o in world.objects(f.relation) if o != f.value)
        with g.lm.stopwatch() as clock:
            g._train([world.prompt(f, t)], [new])
        train_ms.append(clock.ms)
        with g.lm.stopwatch() as clock:
            rc = g.edit([EditRequest(f"bench{k}", world.prompt(f, t), new, f.key, f.subject)])
        edit_ms.append(clock.ms)
        steps.append(rc.steps)
    return {"edit_ms": _pct(edit_ms), "edit_ms_mean": round(float(np.mean(edit_ms)), 2),
            "steps_mean": float(np.mean(steps)), "train_ms": _pct(train_ms),
            "edit_over_train": round(float(np.median(edit_ms)) / float(np.median(train_ms)), 3)}


def lookup_agreement(g, prompts: dict[str, list[str]], efs: list[int], m: int = 32,
                     repeats: int = 50) -> list[dict[str, Any]]:
    """Per efSearch: the share of each prompt set's lookups whose (entry, hit) equals the
    exact lookup's, and lookup p50 ms at batch 1 and 32 (the codebook's own `lookup`, its
    index swapped for an HNSW one over the same keys, then restored)."""
    book = g.book
    keys = {name: g._prompt_keys(ps) for name, ps in prompts.items()}
    every = torch.cat(list(keys.values()))
    exact = {name: book.lookup(q)[0] for name, q in keys.items()}
    timing = {"exact_batch1_ms": _lookup_ms(book, every[:1], repeats),
              "exact_batch32_ms": _lookup_ms(book, every[:32], repeats)}
    alive = book.alive[:book.n]
    rows = torch.arange(book.n)[alive].numpy()
    exact_index, out = book.index, []
    try:
        for ef in efs:
            hnsw = KeyIndex(book.key_dim, approximate_above=1, hnsw_m=m, ef_search=ef)
            hnsw.add(book.keys[:book.n][alive].numpy(), rows)
            book.index = hnsw
            agree = {name: float((book.lookup(q)[0] == exact[name]).float().mean())
                     for name, q in keys.items()}
            out.append({"ef_search": ef, "hnsw_m": m, "approximate": book.index.approximate,
                        "agree": agree,
                        "batch1_ms": _lookup_ms(book, every[:1], repeats),
                        "batch32_ms": _lookup_ms(book, every[:32], repeats), **timing})
    finally:
        book.index = exact_index
    return out


def _lookup_ms(book, q: torch.Tensor, repeats: int) -> float:
    book.lookup(q)
    ms = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        book.lookup(q)
        ms.append((time.perf_counter() - t0) * 1e3)
    return round(float(np.median(ms)), 4)
