"""What one attach of ROME and AlphaEdit costs on the CounterFact organism, three attaches in
a row sharing one context (as the chunks of a `restart_every` run do), then a profile of a
fourth. One thread:

    python reports/table2-locate-ft/attach_cost.py

At T = 1 a run attaches once per edit, so an attach's cost is paid 200 times by a 200-edit
run. (Before the projection was shared, a draft of this script on the code of 814dd72, one
thread on a quiet machine, printed ~0.42 s for every AlphaEdit attach, 0.33 s of it in
`torch.linalg.eigh`.)
"""

import cProfile
import pstats
import time

import torch

from lifelong.config import from_mapping
from lifelong.methods import AttachContext, available_methods
from lifelong.methods.context import default_corpus
from lifelong.model import load_model

torch.set_num_threads(1)
ORGANISM = "lifelong/organisms/counterfact"
SETTINGS = {  # the sequential choices of scenarios/locate-seq-chosen-1000.toml
    "rome": {"key_position": "prompt_last", "prefixes": 0},
    "alphaedit": {"key_position": "prompt_last", "prefixes": 0, "null_threshold": 1.0, "l2": 3.0},
}

lm = load_model(ORGANISM)
ctx = AttachContext(seed=0, corpus=default_corpus(ORGANISM), model_fingerprint=lm.fingerprint())
for name, settings in SETTINGS.items():
    cls = available_methods()[name]
    for i in range(3):
        method = cls(from_mapping(cls.Config, settings), seed=0)
        began = time.perf_counter()
        method.attach(lm, ctx)
        print(f"{name} attach {i}: {1000 * (time.perf_counter() - began):.0f} ms")
        method.detach()
    profile = cProfile.Profile()
    profile.enable()
    method = cls(from_mapping(cls.Config, settings), seed=0)
    method.attach(lm, ctx)
    method.detach()
    profile.disable()
    pstats.Stats(profile).sort_stats("cumulative").print_stats(5)
