"""Where GRACE's query overhead goes: per-part medians of a codebook filled as
`lifelong bench grace` fills it (issue 17, device check of stop 38).

    python prof_grace.py DEVICE SIZES [OUT.json]     # e.g. cuda 1000,10000 prof.json
    PROF_OLD=1 python prof_grace.py ...              # with the old sketch (bench_old.py)

Per batch size (1, 32): the bare forward, the forward with GRACE, `_serve` alone, the
lookup alone (queries on the device and on the CPU), the sketch's bounds, and the lookup
and forwards with torch at one thread.
"""
import json
import os
import sys

import numpy as np
import torch

from lifelong.bench import model_world
from lifelong.bench_grace import fill
from lifelong.methods import AttachContext, build_method
from lifelong.methods._common.keys import key_positions, read_keys
from lifelong.nethook import Trace
from lifelong.scoring import encode_pairs, forward_logits


def median_ms(lm, fn, n: int = 30) -> float:
    fn()
    ms = []
    for _ in range(n):
        with lm.stopwatch() as clock:
            fn()
        ms.append(clock.ms)
    return round(float(np.median(ms)), 3)


def parts(lm, g, batch, b: int) -> dict:
    """Medians (ms) of the parts of one query batch of size `b`."""
    t = {}
    with g.bypassed():
        t[f"bare_b{b}"] = median_ms(lm, lambda: forward_logits(lm, *batch))
        with Trace(g.module, capture="both") as tr:
            forward_logits(lm, *batch)
    t[f"mem_b{b}"] = median_ms(lm, lambda: forward_logits(lm, *batch))
    s, o, info = tr.input, tr.output, lm.forward_info
    t[f"serve_b{b}"] = median_ms(lm, lambda: g._serve(s, o))
    kpos = key_positions(info, o.shape[0], o.shape[1], o.device)
    keys = read_keys(s, kpos, info, g.config.key_token).detach().float()
    qc, book = keys.cpu(), g.book
    t[f"lookup_b{b}"] = median_ms(lm, lambda: book.lookup(keys))
    t[f"lookup_cpu_b{b}"] = median_ms(lm, lambda: book.lookup(qc))
    t[f"bounds_b{b}"] = median_ms(lm, lambda: book._sketch.lower_bounds(
        book.keys[:book.n], book.alive[:book.n], qc))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t[f"lookup_cpu_1thr_b{b}"] = median_ms(lm, lambda: book.lookup(qc))
    t[f"mem_1thr_b{b}"] = median_ms(lm, lambda: forward_logits(lm, *batch))
    with g.bypassed():
        t[f"bare_1thr_b{b}"] = median_ms(lm, lambda: forward_logits(lm, *batch))
    torch.set_num_threads(threads)
    return t


def main(device: str, sizes: list[int], out: str | None) -> None:
    lm, world = model_world(None, "grace", device)
    pairs = [(f, t) for f in world for t in range(len(world.templates(f.relation)))]
    order = np.random.default_rng(0).permutation(len(pairs))
    need = max(sizes) + 64
    chosen = [pairs[i] for i in order[:need]]
    unrelated = tuple(world.prompt(*pairs[i]) for i in order[need:need + 300])
    probe = [(world.prompt(f, t), f.value) for f, t in chosen[-64:]]
    result = {"device": device, "threads": torch.get_num_threads()}
    for size in sizes:
        g = build_method("grace", {}, 0)
        g.attach(lm, AttachContext(seed=0, unrelated_prompts=unrelated))
        fill(g, world, chosen[:size])
        g.book.factor()
        row = {"keys": len(g.book.index)}
        with torch.no_grad():
            for b in (1, 32):
                batch = encode_pairs(lm, [p for p, _ in probe[:b]], [a for _, a in probe[:b]])[:3]
                row.update(parts(lm, g, batch, b))
        print(json.dumps(row), flush=True)
        result[str(size)] = row
        g.detach()
    if out:
        with open(out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    if os.environ.get("PROF_OLD"):
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from bench_old import use_old_sketch
        use_old_sketch()
    main(sys.argv[1], [int(s) for s in sys.argv[2].split(",")], sys.argv[3] if len(sys.argv) > 3 else None)
