"""Which activation separates facts on the built-in model (docs/wise.md, "Routing"):

    OMP_NUM_THREADS=1 python reports/wise-1000/keys.py [N]

For the first N (default 300) edits of streams/edits-1000.jsonl, takes candidate keys of each
edit prompt, of its rephrases and of the edits' locality prompts, and reports: the share of
rephrases whose nearest edit key is their own edit's, the median distance of a rephrase to
its own edit's key, the 2% quantile of a locality prompt's distance to its nearest edit key,
and the keys' median norm. Candidates: the MLP hidden activation (the input of
`layers.0.mlp.out`) at the last prompt token ("last") and averaged over the prompt ("mean").
"""

import json
import sys
from pathlib import Path

import torch

from lifelong.methods._sidememory import router_tokens
from lifelong.model import load_model
from lifelong.nethook import Trace
from lifelong import layers
from lifelong.scoring import encode_pairs, forward_logits

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]
n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
lm = load_model(None)
module = layers.resolve(lm.model, "layers.0.mlp.out")
events = [json.loads(line) for line in (ROOT / "streams/edits-1000.jsonl").open()]
edits = [e for e in events if e["kind"] == "edit"][:n]


@torch.no_grad()
def keys(prompts: list[str], which: str) -> torch.Tensor:
    out = []
    for s in range(0, len(prompts), 64):
        chunk = prompts[s:s + 64]
        ids, mask, end, _, _ = encode_pairs(lm, chunk, ["x"] * len(chunk))
        with Trace(module, capture="input") as tr:
            forward_logits(lm, ids, mask, end)
        m = router_tokens(mask, end, which).unsqueeze(-1).float()
        out.append((tr.input * m).sum(1) / m.sum(1))
    return torch.cat(out)


reph = [(i, p) for i, e in enumerate(edits) for p in e["rephrases"]]
own = torch.tensor([i for i, _ in reph])
loc = list(dict.fromkeys(p["prompt"] for e in edits for p in e["locality"]))
for which in ("last", "mean"):
    k = keys([e["prompt"] for e in edits], which)
    dr = torch.cdist(keys([p for _, p in reph], which), k)
    dl = torch.cdist(keys(loc, which), k).min(1).values
    print(f"{which}: rephrase nearest-key accuracy {(dr.argmin(1) == own).float().mean():.3f}, "
          f"distance to own key median {dr[torch.arange(len(own)), own].median():.2f}, "
          f"locality nearest-key distance 2% quantile {torch.quantile(dl, 0.02):.2f}, "
          f"key norm median {k.norm(dim=1).median():.2f}")
