"""`lifelong bench`: micro-benchmarks of the key index and of GRACE.

``lifelong bench index`` times `lifelong.index.KeyIndex` lookups, exact (flat) against
approximate (HNSW), at several sizes and key widths, on deterministic synthetic keys:
clustered, anisotropic Gaussians (activation-like: a few hundred clusters, a decaying
spectrum), queried with stored keys plus small noise (a rephrase lands near its edit's key).
It reports build time, batch-1 and batch-32 latency (p50/p95 ms per call), recall@1 of HNSW
against the exact answer, and the bytes held. Memory: the keys alone take
``n * dim * 4`` bytes per index, twice over while flat and HNSW are compared (100k keys of
4096 floats: 1.6 GB each), plus HNSW's links (``n * M * 8`` bytes); combinations above
``--max-mb`` are skipped (and listed) unless the limit is raised.

``lifelong bench grace`` (`lifelong.bench_grace`) times GRACE's edits and queries at growing
codebook sizes against its bare training cost and the bare model.

``lifelong bench edit`` (`lifelong.bench_edit`) times any registered method: attach (with
what it says it computed or read), per-edit time, footprint, and query overhead.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import click
import numpy as np

from .index import KeyIndex


def _ints(text: str) -> list[int]:
    try:
        return [int(float(x)) for x in text.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}") from None


def synthetic_keys(n: int, dim: int, seed: int, clusters: int = 256) -> np.ndarray:
    """`n` clustered, anisotropic float32 keys of width `dim` (deterministic from `seed`)."""
    rng = np.random.default_rng(seed)
    scale = (1.0 / np.sqrt(np.arange(1, dim + 1))).astype(np.float32)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32) * scale
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 8192):  # chunked: no n x dim float64 temporaries
        m = min(8192, n - start)
        which = rng.integers(0, clusters, m)
        out[start:start + m] = centres[which] + 0.3 * rng.standard_normal((m, dim), dtype=np.float32) * scale
    return out


def _pct(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"p50": round(float(np.percentile(a, 50)), 4), "p95": round(float(np.percentile(a, 95)), 4)}


def _time_lookups(index: KeyIndex, queries: np.ndarray, batch: int, repeats: int) -> list[float]:
    ms = []
    index.search(queries[:batch], 1)  # warm-up
    for r in range(repeats):
        q = queries[(r * batch) % len(queries):][:batch]
        if len(q) < batch:
            q = queries[:batch]
        t0 = time.perf_counter()
        index.search(q, 1)
        ms.append((time.perf_counter() - t0) * 1e3)
    return ms


def bench_index(sizes: list[int], dims: list[int], seed: int = 0, queries: int = 200,
                max_mb: float = 1024, hnsw_m: int = 32, ef_construction: int = 64,
                ef_search: int = 64, echo=print) -> dict[str, Any]:
    """Rows of the index benchmark (see the module docstring)."""
    rows, skipped = [], []
    for dim in dims:
        for n in sizes:
            mb = 2 * n * dim * 4 / 2**20
            if mb > max_mb:
                skipped.append({"n": n, "dim": dim, "mb": round(mb)})
                echo(f"skip n={n} dim={dim}: ~{mb:.0f} MB of keys > --max-mb {max_mb:g}")
                continue
            keys = synthetic_keys(n, dim, seed)
            rng = np.random.default_rng(seed + 1)
            pick = rng.integers(0, n, queries)
            noise = 0.05 * rng.standard_normal((queries, dim), dtype=np.float32) / np.sqrt(np.arange(1, dim + 1, dtype=np.float32))
            qs = np.ascontiguousarray(keys[pick] + noise)
            ids = np.arange(n, dtype=np.int64)
            exact_top = None
            for kind in ("flat", "hnsw"):
                t0 = time.perf_counter()
                index = KeyIndex(dim, approximate_above=0 if kind == "flat" else 1, hnsw_m=hnsw_m,
                                 ef_construction=ef_construction, ef_search=ef_search)
                index.add(keys, ids)
                build_s = time.perf_counter() - t0
                top = index.search(qs, 1)[1][:, 0]
                if kind == "flat":
                    exact_top = top
                b1 = _time_lookups(index, qs, 1, queries)
                b32 = _time_lookups(index, qs, 32, max(10, queries // 8))
                row = {"n": n, "dim": dim, "index": kind, "build_s": round(build_s, 3),
                       "batch1_ms": _pct(b1), "batch32_ms": _pct(b32),
                       "recall_at_1": round(float(np.mean(top == exact_top)), 4),
                       "self_recall_at_1": round(float(np.mean(top == pick)), 4),
                       "mb": round(index.nbytes() / 2**20, 1)}
                rows.append(row)
                echo(_index_line(row))
                del index
    return {"rows": rows, "skipped": skipped, "seed": seed, "queries": queries,
            "hnsw": {"M": hnsw_m, "ef_construction": ef_construction, "ef_search": ef_search}}


def _index_line(r: dict) -> str:
    return (f"{r['n']:>7} {r['dim']:>5} {r['index']:>5} {r['build_s']:>8.2f} "
            f"{r['batch1_ms']['p50']:>8.3f} {r['batch1_ms']['p95']:>8.3f} "
            f"{r['batch32_ms']['p50']:>8.3f} {r['batch32_ms']['p95']:>8.3f} "
            f"{r['recall_at_1']:>7.3f} {r['mb']:>8.1f}")


INDEX_HEADER = (f"{'keys':>7} {'dim':>5} {'index':>5} {'build_s':>8} {'b1 p50':>8} {'b1 p95':>8} "
                f"{'b32 p50':>8} {'b32 p95':>8} {'rec@1':>7} {'MB':>8}")


def model_world(model: str | None, command: str, device: str = "cpu"):
    """The model (default: the built-in one), on `device`, and the world it was trained on,
    which the GRACE and WISE benchmarks draw their edits and queries from."""
    from .model import load_model
    from .world import World
    lm = load_model(model, device)
    wpath = Path(lm.path) / "world.json"
    if not wpath.exists():
        raise click.ClickException(f"{wpath}: bench {command} needs the model's world.json")
    return lm, World.from_json(wpath)


def time_bare_vs_memory(lm, prompts: list[str], targets: list[str],
                        bare: Callable[[], AbstractContextManager], rounds: int = 3) -> dict[str, Any]:
    """Query latency with the method's memory against the bare model (inside `bare()`, e.g.
    a hook-based method's `bypassed()`: its hooks removed), each prompt alone and in batches
    of 32 (`rounds` times), the two interleaved, in alternating order, so that load on the
    machine hits both alike.
    Leaves the memory serving."""
    import contextlib

    import torch

    from .scoring import encode_pairs, forward_logits
    out: dict[str, dict[str, list[float]]] = {m: {"b1": [], "b32": []} for m in ("bare", "memory")}
    batches = [("b1", encode_pairs(lm, [p], [t])[:3]) for p, t in zip(prompts, targets)]
    batches += [("b32", encode_pairs(lm, prompts[s:s + 32], targets[s:s + 32])[:3])
                for s in range(0, len(prompts) - 31, 32) for _ in range(rounds)]
    with torch.no_grad():
        forward_logits(lm, *batches[0][1])
        for i, (kind, batch) in enumerate(batches):
            # the order flips from one batch to the next, so neither runs second (on warmer
            # caches) every time
            for mode in ("bare", "memory") if i % 2 == 0 else ("memory", "bare"):
                with bare() if mode == "bare" else contextlib.nullcontext(), \
                        lm.stopwatch() as clock:
                    forward_logits(lm, *batch)
                out[mode][kind].append(clock.ms)
    return {m: {"batch1_ms": _pct(v["b1"]), "batch32_ms": _pct(v["b32"])} for m, v in out.items()}


@click.group()
def bench() -> None:
    """Micro-benchmarks: the FAISS key index; GRACE's and WISE's edit and query cost; any
    method's attach, edit and query cost (`edit`); probing cost (`scoring`)."""


@bench.command("index")
@click.option("--sizes", default="1000,10000,100000", show_default=True, help="numbers of keys")
@click.option("--dims", default="128,4096", show_default=True, help="key widths")
@click.option("--queries", default=200, show_default=True, type=click.IntRange(min=32))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--max-mb", default=1024.0, show_default=True,
              help="skip combinations whose keys (flat + HNSW copies) exceed this many MB")
@click.option("--hnsw-m", default=32, show_default=True, type=click.IntRange(min=4))
@click.option("--ef-construction", default=64, show_default=True, type=click.IntRange(min=8))
@click.option("--ef-search", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="also write the rows as JSON")
def bench_index_cmd(sizes, dims, queries, seed, max_mb, hnsw_m, ef_construction, ef_search, json_path):
    """Lookup latency and recall of the key index: flat against HNSW."""
    click.echo(INDEX_HEADER)
    out = bench_index(_ints(sizes), _ints(dims), seed, queries, max_mb, hnsw_m, ef_construction,
                      ef_search, echo=click.echo)
    if json_path:
        Path(json_path).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
        click.echo(f"json: {json_path}")


@bench.command("grace")
@click.option("--model", default=None, help="'builtin' (default) or a model directory with a world.json")
@click.option("--sizes", default="1000,10000", show_default=True, help="codebook sizes")
@click.option("--edits", default=20, show_default=True, type=click.IntRange(min=1), help="edits timed per size")
@click.option("--queries", default=64, show_default=True, type=click.IntRange(min=32), help="prompts timed per size")
@click.option("--pool", default=300, show_default=True, type=click.IntRange(min=0),
              help="unrelated prompts GRACE calibrates its radii on (0: none)")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="also write the results as JSON")
@click.option("--hnsw-ef", default="", help="also measure how often an HNSW index (efSearch "
              "values, comma-separated) gives the exact lookup's answer, and its cost")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="torch device for the model (timings wait for the device)")
def bench_grace_cmd(model, sizes, edits, queries, pool, seed, json_path, hnsw_ef, device):
    """GRACE per-edit time (against its value training alone) and query overhead against
    the bare model."""
    from .bench_grace import bench_grace
    out = bench_grace(model, _ints(sizes), edits, queries, seed, echo=click.echo, pool=pool,
                      hnsw_ef=_ints(hnsw_ef) if hnsw_ef else [], device=device)
    if json_path:
        Path(json_path).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
        click.echo(f"json: {json_path}")


@bench.command("wise")
@click.option("--model", default=None, help="'builtin' (default) or a model directory with a world.json")
@click.option("--edits", default=50, show_default=True, type=click.IntRange(min=1), help="edits timed")
@click.option("--memories", default="1,8,32", show_default=True,
              help="numbers of side memories for the routing-cost measurement")
@click.option("--queries", default=64, show_default=True, type=click.IntRange(min=32), help="prompts timed")
@click.option("--mode", type=click.Choice(["merge", "retrieve"]), default="merge", show_default=True)
@click.option("--method", "methods", type=click.Choice(["both", "wise", "wise-faiss"]),
              default="both", show_default=True,
              help="wise: the paper's method; wise-faiss: the FAISS-routed variant")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="also write the results as JSON")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="torch device for the model (timings wait for the device)")
@click.option("--keys", default=None, help="comma-separated router sizes: time wise-faiss's "
              "FAISS router holding that many keys of world prompts (untrained; module "
              "docstring of bench_wise), instead of the other measurements")
def bench_wise_cmd(model, edits, memories, queries, mode, seed, methods, json_path, device, keys):
    """`wise` (the paper's method) and `wise-faiss` (the FAISS-routed variant): per-edit
    time, merge time, and query latency against the bare model, each under its name; with
    --keys, `wise-faiss`'s router at that many keys instead."""
    from .bench_wise import bench_router_keys, bench_wise
    if keys:
        out: dict = {"wise-faiss router keys": bench_router_keys(
            model, _ints(keys), seed, echo=click.echo, device=device)}
    else:
        names = ("wise", "wise-faiss") if methods == "both" else (methods,)
        out = {name: bench_wise(model, edits, tuple(_ints(memories)), queries, seed,
                                {"mode": mode}, echo=click.echo, method=name, device=device)
               for name in names}
    if json_path:
        Path(json_path).write_text(json.dumps(out, indent=2, default=str) + "\n", encoding="utf-8")
        click.echo(f"json: {json_path}")


@bench.command("scoring")
@click.option("--model", default=None, help="'builtin' (default) or a model directory")
@click.option("--stream", "stream_file", required=True, type=click.Path(exists=True, dir_okay=False),
              help="a stream file: its first edits' prompts and targets, and their locality pairs")
@click.option("--probes", "n", default=200, show_default=True, type=click.IntRange(min=1),
              help="edit prompts scored (and at most as many locality pairs)")
@click.option("--rounds", default=3, show_default=True, type=click.IntRange(min=1))
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="also write the results as JSON")
def bench_scoring_cmd(model, stream_file, n, rounds, device, json_path):
    """Probing cost with the output projection computed only at the positions a figure reads,
    against every position, and whether the figures agree."""
    from .bench_scoring import bench_scoring
    out = bench_scoring(model, stream_file, n, rounds, device, echo=click.echo)
    if json_path:
        Path(json_path).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
        click.echo(f"json: {json_path}")


@bench.command("edit")
@click.option("--method", "methods", multiple=True, required=True,
              help="a registered method (repeat for several; `lifelong methods` lists them)")
@click.option("--model", default=None, help="'builtin' (default) or a model directory with a world.json")
@click.option("--edits", default=20, show_default=True, type=click.IntRange(min=1), help="edits timed")
@click.option("--batch", default=1, show_default=True, type=click.IntRange(min=1),
              help="edits per call (one joint update for a batch-editing method)")
@click.option("--queries", default=64, show_default=True, type=click.IntRange(min=32),
              help="prompts timed against the bare model (hook-based methods)")
@click.option("--settings", default=None, help='JSON settings for every method, or per method: '
              '{"rome": {...}, "ft": {...}} (default: each method\'s defaults)')
@click.option("--train-file", type=click.Path(exists=True, dir_okay=False),
              help="a stream file: the train split for methods that learn before the stream (mend)")
@click.option("--cache-dir", default=None, type=click.Path(file_okay=False),
              help="the statistics / editor cache (default: $LIFELONG_CACHE or ~/.cache/lifelong)")
@click.option("--fresh-cache", is_flag=True,
              help="a temporary cache per method: statistics and editors are computed, not read")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="torch device for the model and the methods (timings wait for the device)")
@click.option("--query-at", "query_at", multiple=True, type=click.IntRange(min=1),
              help="also time the queries (and read the footprint) after this many edits "
                   "(repeat for several): how query cost grows with the memory")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="also write the results as JSON")
def bench_edit_cmd(methods, model, edits, batch, queries, settings, train_file, cache_dir,
                   fresh_cache, seed, device, query_at, json_path):
    """Attach cost (statistics, editors), per-edit time, footprint and query overhead of
    each method, on a model's own world facts."""
    from .bench_edit import bench_edit, write_json
    out = bench_edit(methods, model, edits, batch, queries, settings, train_file, fresh_cache,
                     cache_dir, seed, echo=click.echo, query_at=query_at, device=device)
    if json_path:
        write_json(out, json_path)
        click.echo(f"json: {json_path}")
