"""Median norm of WISE's edit keys (the input of `layers.{L}.mlp.out` at the last prompt token)
at every layer of a model, over the first N edit prompts of streams/edits-1000.jsonl, and the
SGD learning rate that gives each layer the effective step the default lr 1.0 gives the
built-in model (an SGD step moves the edit's output by lr x |key|^2 x the output gradient):

    OMP_NUM_THREADS=1 python reports/wise-layers/key_norms.py [MODEL_DIR] [N]

Used for scenarios/wise-layers.toml (reports/wise-layers/README.md).
"""

import json
import statistics
import sys
from pathlib import Path

import torch

from lifelong import layers
from lifelong.methods._sidememory import router_tokens
from lifelong.model import load_model
from lifelong.nethook import Trace
from lifelong.scoring import encode_pairs, forward_logits

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]


def median_key_norm(lm, layer: int, prompts: list[str]) -> float:
    _, module = layers.edit_target(lm.model, layer)
    with torch.no_grad(), Trace(module, capture="input") as tr:
        ids, mask, end, _, _ = encode_pairs(lm, prompts, ["x"] * len(prompts))
        forward_logits(lm, ids, mask, end)
    last = router_tokens(mask, end, "last")
    return statistics.median(tr.input[last].norm(dim=-1).tolist())


model_dir = sys.argv[1] if len(sys.argv) > 1 else None
n = int(sys.argv[2]) if len(sys.argv) > 2 else 300
events = [json.loads(line) for line in (ROOT / "streams/edits-1000.jsonl").open()]
prompts = [e["prompt"] for e in events if e["kind"] == "edit"][:n]
reference = median_key_norm(load_model(None), 0, prompts)
lm = load_model(model_dir)
print(f"built-in model, layer 0: median key norm {reference:.2f} (lr 1.0)")
for layer in range(layers.num_layers(lm.model)):
    norm = median_key_norm(lm, layer, prompts)
    print(f"{model_dir or 'built-in'}, layer {layer}: median key norm {norm:.2f}, "
          f"lr for the same step {(reference / norm) ** 2:.2f}")
