"""Quick WISE trial used while developing (docs/wise.md, "Development trials"):

    OMP_NUM_THREADS=1 python reports/wise-1000/trial.py N 'JSON settings'

Makes the first N edits of streams/edits-1000.jsonl with WISE on the built-in model (seed 0),
then one consolidate() (unless the settings say "consolidate": false), and prints the
teacher-forced exact-match share of the newest edit of each fact (rel), of its rephrases
(gen), of the edits' locality prompts answered with their stored answer (loc), and where
the router sends the edit prompts and the locality prompts. Settings take the *current*
defaults for what they do not name, so old rows of the table used other defaults.

The final consolidate() folds the shards cycle by cycle (since the fix for the merge of
overlapping mask cycles, docs/wise.md "Overwriting inside a memory"), so one late merge
equals scheduled ones; before it, merge-mode trials past 250 edits needed "merge_every": 250.
"""

import json
import sys
import time
from pathlib import Path

import torch

from lifelong.methods import AttachContext, EditRequest, build_method
from lifelong.model import load_model
from lifelong.scoring import score_pairs

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]
n, settings = int(sys.argv[1]), json.loads(sys.argv[2] if len(sys.argv) > 2 else "{}")
do_merge = settings.pop("consolidate", True)
lm = load_model(None)
events = [json.loads(line) for line in (ROOT / "streams/edits-1000.jsonl").open()]
edits = [e for e in events if e["kind"] == "edit"]
loc = [(p["prompt"], p["answer"]) for e in edits for p in e["locality"]]
wise = build_method("wise", settings, seed=0)
wise.attach(lm, AttachContext(seed=0, unrelated_prompts=tuple(p for p, _ in loc[n:n + 400])))
t0 = time.time()
for e in edits[:n]:
    wise.edit([EditRequest(e["id"], e["prompt"], e["target"], e["fact"])])
print(f"{(time.time() - t0) / n:.2f} s per edit")
if do_merge:
    print("merge:", wise.consolidate())
newest = list({e["fact"]: e for e in edits[:n]}.values())


def share(pairs):
    scores = score_pairs(lm, [p for p, _ in pairs], [t for _, t in pairs])
    return sum(s.tf_exact for s in scores) / len(scores)


print("rel", round(share([(e["prompt"], e["target"]) for e in newest]), 3),
      "gen", round(share([(p, e["target"]) for e in newest for p in e["rephrases"]]), 3),
      "loc", round(share(loc[:n]), 3))
for name, prompts in (("edits", [e["prompt"] for e in newest]), ("locality", [p for p, _ in loc[:n]])):
    routes = wise.route(prompts)
    print(f"{name} routed to a side memory: {sum(r is not None for r in routes) / len(routes):.3f}")
