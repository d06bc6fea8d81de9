"""`wise-faiss`'s settings (see `wise_faiss/__init__.py` for what they mean together, docs/wise.md for why)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ...config import setting
from .._common.facts import FACT_IDENTITY_HELP
from .._common.guard import CLAIM_POOL_HELP, CLAIM_RATE_HELP
from ..context import CALIBRATION_POOLS


@dataclass(frozen=True)
class WiseFaissConfig:
    layer: int | None = setting(None, "layer whose mlp.out gets the side memory (negative counts "
                                      "from the end); default: the late-middle layer")
    mode: Literal["merge", "retrieve"] = setting("merge", "one merged side memory while it has "
                                                 "room (WISE-Merge; see protect_share) or a new "
                                                 "one every memory_size edits (WISE-Retrieve)")
    router: Literal["activation", "faiss"] = setting("faiss", "pick the memory (or the main one) "
                                                     "by activation score (the paper) or by the "
                                                     "nearest edit key in a FAISS index")
    key_token: Literal["last", "mean"] = setting("last", "tokens the router reads: the last prompt "
                                                 "token or the mean over the prompt tokens")
    key_radius: float = setting(0.5, "FAISS router: a query within key_radius x |key| of its "
                                     "nearest edit key goes to that key's memory. 0.5: chosen on "
                                     "the built-in model's dev stream at its default layer "
                                     "(scenarios/dev/wise-radius.toml: the largest radius tried "
                                     "keeping locality >= 0.98)", min=0.0)
    claim_rate: float = setting(0.01, "FAISS router: " + CLAIM_RATE_HELP, min=0.0, max=1.0,
                                before=1.0)
    claim_pool: str = setting("stream+train", "FAISS router: " + CLAIM_POOL_HELP + ". "
                              "'stream+train': chosen on dev organisms "
                              "(sweeps/dev-claim-pool.toml)", choices=CALIBRATION_POOLS,
                              before="stream")
    measure_activation_router: bool = setting(False, "FAISS router: also record where the "
                                                "paper's activation router would send each "
                                                "probe (the margin terms stay off: they cost "
                                                "~8x the editing time)")
    faiss_check: bool = setting(False, "FAISS router: also require the activation score above "
                                       "the memory's threshold (the paper's test)")
    steps: int = setting(80, "most optimiser steps per edit", min=1)
    lr: float = setting(2.0, "learning rate of the side-memory delta. 2.0 with momentum 0.7: "
                             "chosen on three dev sets, the built-in model's dev stream and "
                             "the ZsRE and CounterFact dev organisms "
                             "(scenarios/dev/wise-faiss-masks*.toml); 4.0 with momentum 0.9 "
                             "before (chosen on the built-in model alone)", min=0.0)
    optimizer: Literal["sgd", "adam"] = setting("sgd", "optimiser of the delta: plain gradient "
                                                "steps (the paper; updates stay in the span of "
                                                "the edit's activations) or Adam")
    momentum: float = setting(0.7, "SGD momentum (restarted for every edit). 0.7 with lr 2.0: "
                                   "chosen on three dev sets (see lr; momentum 0.9 wins on the "
                                   "built-in model, 0-0.5 on the one-layer organisms); 0.9 "
                                   "before, 0 before that "
                                   "(scenarios/dev/wise-faiss-writing.toml)",
                              min=0.0, max=0.999)
    momentum_restart: bool = setting(False, "SGD momentum: drop it whenever a step raised the "
                                            "loss (adaptive restart, O'Donoghue and Candes "
                                            "2015), so momentum cannot carry a step past "
                                            "the minimum it overshot")
    mask_ratio: float = setting(0.2, "share of weight entries a shard may change", min=0.0, max=1.0)
    mask_unit: Literal["row", "entry"] = setting("entry", "what a mask keeps or drops: single "
                                                 "entries (the paper; with `protect` the "
                                                 "masked step is then projected, so it stays "
                                                 "in the null space but spreads along its "
                                                 "rows beyond the mask, and shards overlap) or "
                                                 "whole output rows (commutes with `protect`: a "
                                                 "step stays in its rows). entry: chosen on "
                                                 "three dev sets (see lr), where a shard's 20% "
                                                 "of the rows left the one-layer organisms "
                                                 "unable to write most edits; row before")
    disjoint_masks: bool = setting(True, "shards of a cycle of round(1 / mask_ratio) get "
                                         "disjoint masks (with row masks a TIES merge of them "
                                         "is then their sum; each shard also trains on top of "
                                         "the memory's current delta, unlike the paper)")
    shard_size: int = setting(50, "edits per knowledge shard", min=1)
    merge: Literal["ties", "linear", "dare"] = setting("linear", "how shards are merged: "
                                                       "linear is their sum (a merge folds the "
                                                       "shards into the memory and changes no "
                                                       "served weight). linear: chosen on the "
                                                       "built-in dev stream in merge mode, "
                                                       "where TIES's disjoint mean of the "
                                                       "overlapping entry-mask shards lost "
                                                       "0.08-0.09 reliability (scenarios/dev/"
                                                       "wise-faiss-masks-merge.toml); ties "
                                                       "before (the paper)")
    density: float = setting(1.0, "TIES: share of each shard kept by magnitude; DARE: 1 - drop "
                                  "(1.0 with disjoint row masks: a TIES merge is their sum; "
                                  "paper 0.53)",
                             min=0.0, max=1.0)
    merge_every: int = setting(0, "merge automatically every N edits (0: when asked)", min=0)
    memory_size: int = setting(250, "retrieve mode: edits per side memory", min=1)
    alpha: float = setting(0.5, "margin: unrelated scores below alpha x scale", min=0.0)
    beta: float = setting(2.0, "margin: edit scores above beta x scale", min=0.0)
    gamma: float = setting(1.0, "margin: edit minus unrelated score above gamma x scale", min=0.0)
    margin_weight: float = setting(1.0, "weight of the margin loss against the target loss", min=0.0)
    act_ratio: float = setting(0.5, "threshold = act_ratio x smallest edit score", min=0.0)
    negatives: int = setting(4, "unrelated prompts per edit for the margin loss", min=0)
    replay: int = setting(0, "earlier edits of the same memory whose targets are trained again "
                             "with each edit (rehearsal against overwriting; 0: the paper)", min=0)
    protect: bool = setting(True, "train each edit in the null space of the memory's earlier "
                                  "edit keys (AlphaEdit-style; not in the paper), so an edit "
                                  "cannot move the outputs of the edits before it")
    protect_positions: Literal["all", "last"] = setting(
        "all", "protect: the positions whose inputs are protected, every real token of the "
               "edit's prompt and target ('all': where the delta applies on the edit's own "
               "rows) or its last prompt token only ('last', the variant before v0.2: exact only "
               "for one-token rows)", before="last")
    protect_share: float = setting(0.5, "protect: a memory is full once its protected keys "
                                        "span protect_share x the key width, and the next edit "
                                        "opens a new one (both modes; near 1.0 the last edits "
                                        "find too little null space to be written). 0.5: "
                                        "chosen with momentum 0.9 on the built-in dev stream "
                                        "(scenarios/dev/wise-faiss-writing.toml), kept by "
                                        "every row of the later mask grid; 0.75 before",
                                   min=0.0, max=1.0)
    stop_loss: float = setting(0.1, "stop once the target loss is below this", min=0.0)
    retract: Literal["auto", "unroute", "rebuild", "unsupported"] = setting(
        "auto", "unroute: drop the edit's keys so its prompts go back to the main memory, and "
                "re-apply the fact's previous edit if one is left (FAISS router only); rebuild: "
                "retrain the edit's memory from its log without it (exact, costs one edit per "
                "edit of that memory); auto: unroute with the FAISS router, else rebuild")
    tombstone: bool = setting(True, "unroute: the retracted edit's key stays in the router as "
                                    "a tombstone that sends a query nearer to it than to any "
                                    "live key (within the radius) to the main memory, so the "
                                    "retracted prompt cannot reach the edit's trained step "
                                    "through another edit's key; a re-edit of the fact retires "
                                    "it (ties go to the live key)", before=False)
    use_fact_identity: bool = setting(True, FACT_IDENTITY_HELP + "; ours: on, so a re-edit "
                                            "replaces the fact's older key")
