"""CaliNET's settings (see `calinet/__init__.py` for what they mean together).

"paper:" gives the value of Dong et al. (Findings of EMNLP 2022) and of their reference code
(github.com/dqxiu/CaliNet, `train_calinet/bash/t5_train_kb_f.sh`: T5-base, 100 facts) where
the paper defers to it; a setting the paper does not have says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...config import setting


@dataclass(frozen=True)
class CaliNetConfig:
    layers: tuple[int, ...] = setting((-1,), "transformer blocks whose FFN gets calibration slots, "
                                             "each its own (negative counts from the end; paper: "
                                             "the last FFN layers work best, the reference script "
                                             "uses the last decoder FFN of T5-base, layer 11)",
                                      min=-10_000, max=10_000)
    slots: int = setting(64, "calibration memory slots per layer (the side FFN's width) in the "
                             "memory, or per block with memory = 'blocks' (paper: 64 for a set of "
                             "100 facts)", min=1, max=1_000_000)
    memory: str = setting("shared", "how slots are allocated over the stream: 'shared' - one "
                                    "memory of `slots` slots per layer, trained further by each "
                                    "edit on that edit alone (later edits interfere with earlier "
                                    "ones); 'blocks' - a new block of `slots` slots per edit (per "
                                    "batch with schedule.edit_batch), earlier blocks frozen and "
                                    "serving (the memory grows with the stream) (paper: one "
                                    "memory trained once on the whole set of facts; no stream)",
                          choices=("shared", "blocks"))
    activation: str = setting("gelu", "activation of the slots: 'gelu' or 'relu' (paper: the "
                                      "FFN's own; the reference code mirrors T5's FFN: ReLU, or "
                                      "gated GELU for T5 v1.1; here an ungated slot in every "
                                      "family)", choices=("gelu", "relu"))
    steps: int = setting(100, "most Adam steps per edit (paper: Adafactor, 5000 steps over the "
                              "whole calibration set, batches of 2048 sentences)",
                         min=1, max=100_000)
    lr: float = setting(1e-2, "learning rate (paper: 1e-2, constant, with Adafactor)", min=0.0)
    stop_loss: float = setting(0.05, "stop once the edit's mean target loss is below this "
                                     "(paper: no early stop, a fixed number of steps)", min=0.0)
    retract: str = setting("replay", "'replay': exact (drop the edit and re-train the memory "
                                     "from where it entered, as if it had never been made: with "
                                     "memory = 'shared' every remaining edit is re-trained, with "
                                     "'blocks' only the later ones); 'unsupported': refuse "
                                     "(paper: no retraction)", choices=("replay", "unsupported"))

    def __post_init__(self) -> None:
        if not self.layers:
            raise ValueError("layers: name at least one layer")
        if len(set(self.layers)) != len(self.layers):
            raise ValueError(f"layers: {list(self.layers)} names a layer twice")
