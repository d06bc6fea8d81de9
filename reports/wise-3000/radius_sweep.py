"""Post-hoc sweep of WISE's FAISS-router radius on a finished run's final memories:

    OMP_NUM_THREADS=1 python reports/wise-3000/radius_sweep.py STORE.db RUN_ID [RADII]

Loads the run's model and its final WISE state from the store, reads the final checkpoint's
rel / gen / loc probe prompts, and for each radius (share of the nearest key's norm) reports
routing accuracy as the runtime defines it (rel and gen probes sent to the memory holding
their edit; loc probes sent to the main memory). Only the routing decision is recomputed:
the memories were trained once, at the run's own radius; a different radius changes which
queries reach them, not what they learned.
"""

import json
import sys

import numpy as np
import torch

from lifelong.methods import AttachContext, build_method
from lifelong.methods._sidememory import router_tokens, row_keys
from lifelong.model import load_model
from lifelong.nethook import Trace
from lifelong.scoring import encode_pairs, forward_logits
from lifelong.store import Store

torch.set_num_threads(1)
store, run_id = Store(sys.argv[1]), sys.argv[2]
radii = [float(r) for r in (sys.argv[3] if len(sys.argv) > 3 else "0.15,0.2,0.25,0.3,0.35,0.4,0.45").split(",")]
run = store.get_run(run_id)
config = json.loads(run["config"])
lm = load_model(config["scenario"]["model"] if config["scenario"]["model"] != "builtin" else None)
wise = build_method("wise", config["method"]["settings"], run["seed"])
wise.attach(lm, AttachContext(seed=run["seed"]))
wise.load_state_dict(store.load_state(run_id)[1]["method"])
final = max(c["checkpoint"] for c in store.rows("checkpoints", run_id))
probes = [r for r in store.rows("probes", run_id) if r["checkpoint"] == final
          and r["role"] in ("rel", "gen", "loc")]

captured = []
wise.bypass = True  # read the keys only; the model's outputs do not matter here
with torch.no_grad():
    for s in range(0, len(probes), 256):
        chunk = [r["prompt"] for r in probes[s:s + 256]]
        ids, mask, end, _, _ = encode_pairs(lm, chunk, ["x"] * len(chunk))
        with Trace(wise.module, capture="input") as tr:
            forward_logits(lm, ids, mask, end)
        captured.append(row_keys(tr.input, router_tokens(mask, end, wise.config.key_token)))
keys = np.concatenate(captured)
dist, ids = wise.index.search(keys, k=1)
norms = np.array([wise.key_norm.get(int(i), np.inf) for i in ids[:, 0]])
ratio = np.sqrt(dist[:, 0]) / norms
want = [None if r["role"] == "loc" else wise.memory_of(r["edit_id"]) for r in probes]
nearest_mem = [wise.key_memory.get(int(i)) for i in ids[:, 0]]
print(f"{run_id}: {len(probes)} final probes; memories {len(wise.memories)}; keys {len(wise.index)}")
print(f"{'radius':>7} {'rel+gen':>8} {'rel':>6} {'gen':>6} {'loc->main':>9}")
for r in radii:
    got = [m if q <= r else None for m, q in zip(nearest_mem, ratio)]
    ok = {role: [g == w for g, w, p in zip(got, want, probes) if p["role"] == role] for role in ("rel", "gen", "loc")}
    edits = ok["rel"] + ok["gen"]
    print(f"{r:>7.2f} {np.mean(edits):>8.3f} {np.mean(ok['rel']):>6.3f} {np.mean(ok['gen']):>6.3f} {np.mean(ok['loc']):>9.3f}")
