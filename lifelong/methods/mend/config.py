"""MEND's settings (see `mend/__init__.py` for what they mean together and the table of
deviations). "paper:" gives the value of Mitchell et al. (ICLR 2022) and of the reference
code's GPT-2 XL / GPT-J configuration (github.com/eric-mitchell/mend; EasyEdit's
hparams/TRAINING/MEND/gpt2-xl.yaml repeats it) where the paper defers to it."""

from __future__ import annotations

from dataclasses import dataclass

from ...config import setting


@dataclass(frozen=True)
class MendConfig:
    layers: tuple[int, ...] | None = setting(None, "blocks whose MLP projections are edited "
                                                   "(negative counts from the end); default: "
                                                   "the last 3, fewer on a smaller model "
                                                   "(paper: the last 3 of GPT-2 XL / GPT-J)")
    parts: str = setting("in+out", "which MLP projections of those blocks: both ('in+out', "
                                   "paper: c_fc and c_proj of GPT-2; the reference also edits "
                                   "LLaMA's gate_proj, which has no family-neutral name here), "
                                   "only the output ('out') or only the input ('in')",
                         choices=("in+out", "out", "in"))
    rank: int = setting(1920, "rank of each editor layer's U V (paper: 1920); capped at "
                              "d_in + d_out, where it is full rank", min=1, max=100_000)
    n_hidden: int = setting(1, "hidden editor layers: the editor has n_hidden + 1 residual "
                               "low-rank layers (paper: 1)", min=0, max=8)
    shared: bool = setting(True, "one editor per weight shape, with a learned scale and offset "
                                 "per edited weight (paper: shared), or one editor per weight")
    norm: bool = setting(True, "normalise the editor's input [u, δ] to zero mean, unit "
                               "variance with statistics gathered in training (paper: yes)")
    edit_lr: float = setting(1e-4, "initial step size η of every edited weight, then learned "
                                   "(paper: 1e-4)", min=0.0)
    lr: float = setting(1e-4, "Adam learning rate of the editor networks (paper: 1e-6 for "
                              "GPT-2 XL / GPT-J; ours: at 1e-6 an editor of a small model does "
                              "not move within affordable training)", min=0.0)
    lr_lr: float = setting(1e-4, "Adam learning rate of the step sizes η (paper: 1e-4)",
                           min=0.0)
    c_edit: float = setting(0.1, "weight of the edit loss, the target's NLL on a rephrase "
                                 "after the edit (paper: 0.1)", min=0.0)
    c_loc: float = setting(1.0, "weight of the locality loss, KL(pre ‖ post) over a locality "
                                "prompt and its answer (paper: 1.0)", min=0.0)
    steps: int = setting(500, "editor updates in training, each over `accumulate` training "
                              "edits (paper: up to 100,000 edits, 10,000 updates, stopped "
                              "early on a validation split; ours: a fixed number, no "
                              "validation split)", min=1, max=1_000_000)
    accumulate: int = setting(10, "training edits whose gradients are summed per update "
                                  "(paper: 10, one edit per batch)", min=1, max=1000)
    grad_clip: float = setting(100.0, "the editor's gradient norm is clipped to this before "
                                      "each update (paper: 100)", min=0.0)
    editor_seed: int | None = setting(None, "seed of the editor's training (its V "
                                            "initialisation and the order of training edits); "
                                            "default: the run's seed (each seed trains, and "
                                            "caches, its own editor)", min=0)
    retract: str = setting("replay", "retraction: 'replay' (exact: restore the base weights "
                                     "and re-apply the log without the edit; costs every "
                                     "remaining edit again) or 'unsupported' (NotSupported)",
                           choices=("replay", "unsupported"))
