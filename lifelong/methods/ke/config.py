"""KE's settings (see `ke/__init__.py` for what they mean together and the table of
deviations). "paper:" gives the value of De Cao, Aziz and Titov (EMNLP 2021) and of their
reference code (github.com/nicola-decao/KnowledgeEditor, BART on zsRE) where the paper defers
to it; "EasyEdit:" the value of EasyEdit's hparams/TRAINING/KE/gpt2-xl.yaml where it differs
and matters for a GPT-style model."""

from __future__ import annotations

from dataclasses import dataclass

from ...config import setting


@dataclass(frozen=True)
class KeConfig:
    layers: tuple[int, ...] | None = setting(None, "blocks whose MLP projections are edited "
                                                   "(negative counts from the end); default: "
                                                   "the last 3, fewer on a smaller model "
                                                   "(paper: every weight matrix of BERT / BART "
                                                   "but embeddings, norms and biases; "
                                                   "EasyEdit: the last 3 blocks of GPT-2 XL)")
    parts: str = setting("in+out", "which MLP projections of those blocks: both ('in+out', "
                                   "EasyEdit: c_fc and c_proj), only the output ('out') or only "
                                   "the input ('in') (paper: every matrix)",
                         choices=("in+out", "out", "in"))
    hidden: int = setting(128, "width of the LSTM (per direction) and of each weight's head "
                               "(paper: 128; EasyEdit: 512)", min=1, max=100_000)
    cond_dim: int = setting(1024, "width of the edit's encoding that conditions every head "
                                  "(paper: 1024; EasyEdit: 768)", min=1, max=100_000)
    max_scale: float = setting(1.0, "a constant factor on every update (paper: 1; EasyEdit: 1)",
                               min=0.0)
    constraint: str = setting("lagrangian", "how locality is enforced in training: "
                                            "'lagrangian' (paper: min edit loss s.t. KL <= "
                                            "margin, a learned multiplier) or 'weighted' "
                                            "(EasyEdit: c_edit * edit loss + c_loc * KL)",
                              choices=("lagrangian", "weighted"))
    margin: float = setting(1e-3, "the KL constraint's margin at the start of training "
                                  "(paper: 1e-3)", min=0.0)
    margin_min: float = setting(1e-5, "the margin is multiplied by 0.8 after every pass over "
                                      "the train split whose edits succeeded on more than 90%, "
                                      "down to this (paper: 1e-5, judged on a validation split; "
                                      "ours: on the train split's own edits)", min=0.0)
    lr: float = setting(3e-4, "learning rate of the hyper-network, centered RMSprop (paper: "
                              "3e-4, after 1,000 warm-up updates; on the built-in model 1e-2 "
                              "was chosen on held-out dev edits, scenarios/dev/"
                              "trained-editors.toml)", min=0.0)
    lr_lambda: float = setting(0.1, "learning rate of the Lagrange multiplier, which ascends "
                                    "(paper: 0.1)", min=0.0)
    c_edit: float = setting(0.1, "'weighted' only: weight of the edit loss (paper: none, it "
                                  "constrains instead; EasyEdit: 0.1)",
                            min=0.0)
    c_loc: float = setting(1.0, "'weighted' only: weight of the KL (paper: none, it "
                                 "constrains instead; EasyEdit: 1.0)", min=0.0)
    kl_inputs: int = setting(16, "inputs per training edit whose predictions must not change: "
                                 "the record's locality pairs, then other training prompts with "
                                 "the model's own predictions (paper: the 63 other inputs of a "
                                 "64-row batch)", min=1, max=1024)
    steps: int = setting(1000, "hyper-network updates in training, each over `accumulate` "
                               "training edits (paper: up to 200,000 updates, best checkpoint "
                               "on a validation split; ours: a fixed number)",
                         min=1, max=1_000_000)
    accumulate: int = setting(1, "training edits whose gradients are summed per update (paper: "
                                 "1; EasyEdit: 10)", min=1, max=1000)
    editor_seed: int | None = setting(None, "seed of the hyper-network's training (its "
                                            "initialisation and the order of training edits); "
                                            "default: the run's seed (each seed trains, and "
                                            "caches, its own hyper-network; paper: not a "
                                            "setting, its script seeds the global RNG)", min=0)
    retract: str = setting("replay", "retraction: 'replay' (exact: restore the base weights "
                                     "and re-apply the log without the edit; costs every "
                                     "remaining edit again) or 'unsupported' (NotSupported) "
                                     "(paper: edits are never retracted)",
                           choices=("replay", "unsupported"))
