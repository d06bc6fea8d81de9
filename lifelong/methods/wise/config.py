"""`wise`'s settings: the paper's method (Wang et al. 2024, arXiv 2405.14768) as its
reference implementation (EasyEdit's WISE) runs it. Each help text gives the paper's /
reference value ("paper: ...") where ours differs; see `wise/__init__.py` for how they fit
together and docs/wise.md for the FAISS-routed variant (`wise-faiss`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ...config import setting
from ..context import CALIBRATION_POOLS


@dataclass(frozen=True)
class WiseConfig:
    layer: int | None = setting(None, "layer whose mlp.out (FFN down/out projection) gets the "
                                      "side memory (negative counts from the end); default: "
                                      "the model's lifelong_edit_layer or the late-middle layer "
                                      "(paper: a late layer's down_proj, 27 of 32 on LLaMA-2-7B)")
    mode: Literal["merge", "retrieve"] = setting("merge", "WISE-Merge (one side memory, shards "
                                                 "merged into it) or WISE-Retrieve (a new side "
                                                 "memory every memory_size edits, top-1 "
                                                 "activation routing among them)")
    steps: int = setting(70, "most optimiser steps per edit (paper: 70)", min=1)
    lr: float = setting(1.0, "SGD learning rate of the side memory (paper: 1.0; not tuned on "
                             "our models)", min=0.0)
    stop_loss: float = setting(0.1, "stop once the target loss is below this and every margin "
                                    "term is met (paper: an early-stop meter on the loss)",
                               min=0.0)
    mask_ratio: float = setting(0.2, "rho: share of the side memory's entries a shard's random "
                                     "gradient mask lets train (paper: 0.2, entry level)",
                                min=0.0, max=1.0)
    shard_size: int = setting(100, "edits per knowledge shard (paper: save_freq 500 on "
                                   "LLaMA-2-7B; shorter for our shorter streams)", min=1)
    shard_start: Literal["main", "merged"] = setting(
        "main", "where every shard starts: the main weights (the reference: its side weight "
                "is reset to the original after each shard) or the memory's merged weights "
                "at the start of the cycle; either way never on top of the cycle's other shards")
    merge: Literal["ties", "linear", "dare", "sum"] = setting(
        "ties", "how a cycle's shards are merged (paper: ties); 'linear' and 'dare' weight "
                "them as merged_weight says, 'sum' adds every shard and the merged memory at "
                "weight 1 (no trim, no sign vote, no averaging: the control that shows what "
                "TIES buys)")
    density: float = setting(0.53, "TIES: share of each shard's entries kept by magnitude; "
                                   "DARE: 1 - drop (paper: 0.53)", min=0.01, max=1.0)
    merged_weight: float = setting(0.6, "weight of the already merged memory against the new "
                                         "shards, which share 1 - merged_weight (paper: 0.6 "
                                         "against 0.4)", min=0.0, max=1.0)
    merge_every: int = setting(0, "merge automatically every N edits (0: when asked, e.g. by "
                                  "the scenario's merge events; paper: merge_freq 1000)", min=0)
    memory_size: int = setting(250, "retrieve mode: edits per side memory (paper: save_freq "
                                    "500; the reference also merges groups of memories, not "
                                    "done here)", min=1)
    alpha: float = setting(0.5, "margin: unrelated inputs' scores below alpha x scale, scale = "
                                "median norm of the projection's output on unrelated prompts "
                                "(paper: 5, absolute, on LLaMA-2-7B)", min=0.0)
    beta: float = setting(2.0, "margin: edit scores above beta x scale (paper: 20, absolute)",
                          min=0.0)
    gamma: float = setting(1.0, "margin: edit minus unrelated score at least gamma x scale "
                                "(paper: 10, absolute)", min=0.0)
    act_ratio: float = setting(0.88, "a memory serves a row whose score exceeds act_ratio x the "
                                     "smallest score an edit of it reached (paper: 0.88)",
                               min=0.0)
    score_tokens: Literal["mean", "last"] = setting(
        "mean", "tokens a score averages: every prompt token or the last one (paper: the mean "
                "over the input's tokens; ours never reads target or generated tokens)")
    negatives: int = setting(4, "unrelated prompts per edit for the margin loss (paper: one "
                                "irrelevant input per edit)", min=1)
    negative_pool: str = setting(
        "stream-or-train", "where the margin loss's unrelated prompts (and the scale's) come "
                           "from: the stream's locality prompts never probed while the method "
                           "is attached ('stream'); those topped up with the train split's "
                           "locality prompts ('stream+train'); or the train split's only when "
                           "the stream leaves none, as in a chunk holding the whole stream "
                           "('stream-or-train'). Never a probed prompt (paper: a locality "
                           "record from a separate split)", choices=CALIBRATION_POOLS,
        before="stream")
    prefixes: int = setting(4, "prefixes each edit prompt is also trained with (paper: 10, "
                               "the reference's five starts at two lengths; ours: 4, for "
                               "cost)", min=0)
    prefix_source: Literal["generated", "random"] = setting(
        "generated", "generated: the model's own greedy continuations of the reference's "
                     "starts ('I', 'You', 'Because', 'Yes', 'Q:'), prefix i from start i mod 5, "
                     "prefix_tokens long for the first five and twice that for the next five, "
                     "written once by the unedited model and shared by every edit (the "
                     "reference); random: random vocabulary tokens drawn per edit (ours before)",
        before="random")
    prefix_tokens: int = setting(5, "tokens the model writes after a start, or random tokens "
                                    "per prefix (paper: 5 and 10)", min=1)
    retract: Literal["rebuild", "unsupported"] = setting(
        "rebuild", "rebuild: retrain the edit's memory from its log without it (exact; costs "
                   "every edit of that memory again, so a stream with many retractions into "
                   "one large memory is slow); unsupported: refuse (the paper has no "
                   "retraction)")
    norm_constraint: float | None = setting(1.0, "clamp every side-memory entry within +/- "
                                                 "this of the main weight's (paper: 1.0; "
                                                 "None: no clamp)", min=0.0)
