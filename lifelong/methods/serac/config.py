"""SERAC's settings (see `serac/__init__.py` for what they mean together and the table of
deviations). "paper:" gives the value of Mitchell et al. (ICML 2022) and of their reference
configuration for GPT-2 XL (repeated in EasyEdit's hparams/TRAINING/SERAC/gpt2-xl.yaml)
where the paper defers to it."""

from __future__ import annotations

from dataclasses import dataclass

from ...config import setting
from .._common.facts import FACT_IDENTITY_HELP


@dataclass(frozen=True)
class SeracConfig:
    layer: int | None = setting(None, "block whose output the scope classifier reads (negative "
                                      "counts from the end); default: the last block (paper: a "
                                      "separate distilBERT encoder's embedding of the text)")
    pool: str = setting("last", "which of a prompt's tokens the classifier reads: its last one "
                                "('last') or the mean over all of them ('mean'). 'last': on the "
                                "built-in model's dev split, rephrases routed to their edit 0.94 "
                                "vs 0.80 and locality prompts kept out 0.99 vs 0.42 (100 edits "
                                "held; paper: distilBERT's [CLS] embedding)",
                        choices=("last", "mean"))
    embed_dim: int | None = setting(None, "width of the classifier's learned projection; "
                                          "default: the model's width (paper: distilBERT's "
                                          "768)", min=1, max=65_536)
    threshold: float = setting(0.5, "an input is in the scope of its nearest edit when the "
                                    "classifier's probability exp(-scale * d^2) exceeds this "
                                    "(paper: 0.5)", min=0.0, max=1.0)
    claim_rate: float = setting(0.01, "the largest share of the unrelated pool (the stream's "
                                      "locality prompts never probed while the method is "
                                      "attached) the scope may claim: the scope radius "
                                      "sqrt(-ln threshold / scale) is scaled by one common "
                                      "factor (at most 1) until at most this share of the pool "
                                      "lies within it of an edit's key. 0.01: chosen on dev "
                                      "subword organisms (sweeps/dev-serac-claim-rate.toml); "
                                      "1: off (paper: no such guard)", min=0.0, max=1.0,
                                before=1.0)
    cls_steps: int = setting(2000, "Adam updates of the scope classifier (projection and scale) "
                                  "at attach (paper: trained jointly with the counterfactual "
                                  "model, up to 100,000 updates, stopped early on a "
                                  "validation split)", min=0, max=1_000_000)
    cls_lr: float = setting(1e-2, "Adam learning rate of the classifier (paper: 1e-5 for the "
                                  "whole distilBERT; ours trains a projection only)", min=0.0)
    cf_steps: int = setting(1000, "Adam updates of the counterfactual model at attach (paper: "
                                  "up to 100,000, stopped early). 1000 with cf_lr 1e-3: on the "
                                  "built-in model trained on streams/dev/edits-3000.jsonl, held-"
                                  "out edits' targets exact (teacher-forced) given the edit 0.73 "
                                  "on a rephrase after 900 updates, 0.22 after 300",
                          min=0, max=1_000_000)
    cf_lr: float = setting(1e-3, "Adam learning rate of the counterfactual model (paper: 1e-5 "
                                 "for a pretrained GPT-2 small over 100,000 updates; a small "
                                 "model that has to learn to copy from its context needs more)",
                           min=0.0)
    batch_size: int = setting(10, "training edits per update, for both parts (paper: 10)",
                              min=1, max=10_000)
    separator: str = setting(".", "text between the edit and the input in the counterfactual "
                                  "model's input, '{prompt} {target}{separator}' followed by "
                                  "the input's tokens (paper: a space between the edit text "
                                  "and the input)")
    train_seed: int | None = setting(None, "seed of training (initialisation, order of the "
                                           "training edits); default: the run's seed (each "
                                           "seed trains, and caches, its own parts; paper: "
                                           "the global RNG)", min=0)
    use_fact_identity: bool = setting(False, FACT_IDENTITY_HELP)
