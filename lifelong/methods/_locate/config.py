"""Settings ROME, MEMIT and AlphaEdit share (each method's Config extends these, and
overrides a default where its paper differs). Paper values are the reference code's
hyper-parameters for GPT-2 XL (ROME, AlphaEdit) and GPT-J (MEMIT)."""

from __future__ import annotations

from dataclasses import dataclass

from ...config import setting


@dataclass(frozen=True)
class LocateConfig:
    key_position: str = setting("subject_last", "token whose key is edited: the subject's last "
                                                "token ('subject_last', the papers; a request "
                                                "without a subject falls back to the prompt's "
                                                "last token, and its receipt says so) or the "
                                                "prompt's last ('prompt_last': where the built-in "
                                                "model recalls, per its causal trace; the only "
                                                "one that reaches the answer when the edited "
                                                "layer is the model's last block, as in a "
                                                "one-layer organism)",
                                choices=("subject_last", "prompt_last"))
    steps: int = setting(20, "maximum Adam steps of the value optimisation (paper: 20 for "
                             "GPT-2 XL, 25 for GPT-J)", min=1, max=10_000)
    lr: float = setting(0.5, "Adam learning rate of the value (paper: 0.5)", min=0.0)
    kl_factor: float = setting(0.0625, "weight of the KL term on '{subject} is a' (paper: "
                                       "0.0625)", min=0.0)
    weight_decay: float = setting(0.5, "weight of ‖δ‖²/‖v0‖² in the value loss (paper: 0.5 on "
                                       "GPT-2 XL and GPT-J; the reference code divides ‖δ‖ "
                                       "rather than ‖δ‖² by ‖v0‖²)", min=0.0)
    clamp: float = setting(4.0, "‖δ‖ is clamped to this times ‖v0‖ after every step (paper: 4 "
                                "for ROME, 0.75 for MEMIT and AlphaEdit)", min=0.0)
    stop_loss: float = setting(0.05, "stop the value optimisation once the target NLL is below "
                                     "this (paper: 0.05)", min=0.0)
    prefixes: int = setting(10, "random prefix contexts the model writes, over which the key is "
                                "averaged and the value trained (paper: 10 of 5 tokens and 10 of "
                                "10 tokens for ROME, 10 of 10 for MEMIT)", min=0, max=100)
    prefix_tokens: int = setting(5, "length of each prefix in tokens (paper: 5 and 10; ours 5: the "
                                    "built-in model has 48 positions)", min=1, max=64)
    covariance: str = setting("corpus", "C in the update: E[kkᵀ] over the corpus ('corpus', the "
                                        "papers) or the identity ('identity': no statistics, "
                                        "ROME's mom2_adjustment = false)",
                              choices=("corpus", "identity"))
    stats_texts: int = setting(100_000, "corpus texts sampled for C (paper: 100,000 Wikipedia "
                                        "texts; the built-in model's corpus has 76,160, so all)",
                               min=1)
    stats_fallback: bool = setting(False, "where the context has no corpus (no world.json or "
                                          "organism.json beside the model and no scenario "
                                          "`corpus`), measure C on the unrelated prompts instead "
                                          "of refusing (tests and tiny models only)")
    ridge: float = setting(1e-6, "ridge added to C before it is inverted, times C's mean "
                                 "diagonal (paper: none; ours keeps a C measured on little text "
                                 "invertible)", min=0.0)
    retract: str = setting("replay", "retraction: 'replay' (exact: restore the base weights and "
                                     "replay the log without the edit; costs every remaining "
                                     "edit again) or 'unsupported' (NotSupported)",
                           choices=("replay", "unsupported"))
