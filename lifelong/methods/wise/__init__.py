"""`wise`: WISE (Wang et al. 2024, arXiv 2405.14768) as the paper and its reference
implementation (EasyEdit's WISE) describe it. The FAISS-routed variant is `wise-faiss`.

Side memory: a delta on one FFN down/out projection (`layers.{L}.mlp.out`, L the model's
`lifelong_edit_layer` or the late-middle layer); the main weight never changes, the base
model is frozen while an edit trains (`_common.loop.frozen`).

Router: the activation score Delta(x) = ||A(x) (W_side - W_main)^T||, the mean over the
prompt's tokens (never a target or generated token); a row goes to the memory with the
highest score if that score exceeds act_ratio x the smallest score an edit of it reached
(WISE-Retrieve's top-1 routing; in merge mode the candidates are the merged memory and the
shards not merged yet, as the reference routes between its merged and its current weight).
Training adds the margin loss (unrelated below alpha, edits above beta, gap gamma; in units
of the projection's median output norm) and prefixes of the edit prompt that the unedited
model writes from the reference's five starts (`prefix_source`).

Knowledge shards (`memory.py`): every `shard_size` edits a new shard starts from the same
start (the main weights, as the reference; or the merged memory, `shard_start`) under its
own random entry mask (rho = mask_ratio); `consolidate()` merges a memory's shards with TIES
at density 0.53, each shard weighted 1/k, against the memory merged so far (0.6 vs 0.4).
Every entry of the side weight stays within +/- norm_constraint of the main weight's.

WISE-Retrieve (`mode = "retrieve"`): a new side memory every `memory_size` edits.
Retraction: the edit's memory is rebuilt from its log without it, merged where it was
merged (exact). Layout: `config.py`, `memory.py` (side memories, masks, merge, clamp),
`trainer.py` (one edit's optimisation), `method.py` (serving, editing, merging, state).
"""

from .config import WiseConfig
from .memory import Shard, SideMemory
from .method import Wise

__all__ = ["Shard", "SideMemory", "Wise", "WiseConfig"]
