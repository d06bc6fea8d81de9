"""T-Patcher's settings (see `t_patcher/__init__.py` for what they mean together).

"paper:" gives the value of Huang et al. (ICLR 2023) and of their reference code
(github.com/ZeroYuHuang/Transformer-Patcher, zsRE/generation defaults) where the paper defers to it;
a setting the paper does not have says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...config import setting


@dataclass(frozen=True)
class TPatcherConfig:
    layer: int = setting(-1, "transformer block whose FFN gets the patches (negative counts from "
                             "the end; paper: the last FFN, -1)")
    neurons_per_edit: int = setting(5, "most neurons one edit adds: one per target token the "
                                       "model mispredicts (teacher-forced), the first N of them; "
                                       "an edit the model already gets right adds none (paper: one "
                                       "neuron per mistake, 1 for a classification edit; the "
                                       "reference code caps a generation edit at 5)",
                                    min=1, max=64)
    activation: str = setting("gelu", "the patch neuron's activation: 'gelu' (paper: the FFN's "
                                      "own, GELU in BERT/BART; also used for gated/SiLU MLPs, "
                                      "where the patch is an ungated neuron) or 'relu' (an "
                                      "inactive patch then adds exactly zero)",
                              choices=("gelu", "relu"))
    steps: int = setting(200, "most Adam steps per edit (paper: up to 2000, stopping once the "
                              "edit is fixed)", min=1, max=100_000)
    lr: float = setting(1e-2, "Adam learning rate of the patch (paper: 1e-2)", min=0.0)
    value_scale: float = setting(10.0, "the value vector is this constant times its trained "
                                       "parameter, a larger step for the value than for the "
                                       "key (paper: 10, the reference code's `amplify_con`, "
                                       "there a trained scale over a random value; here fixed, "
                                       "over a value initialised at zero)", min=0.0)
    act_weight: float = setting(1.0, "weight of the activation loss exp(act_margin - a_edit) "
                                     "(paper: 1)", min=0.0)
    act_margin: float = setting(0.0, "the patch's pre-activation at the edit's positions is "
                                     "pushed above this (paper: 0)")
    memory_weight: float = setting(10.0, "weight of the memory loss (paper: 10 for QA/zsRE, 5 "
                                         "for fact checking)", min=0.0)
    memory_margin: float = setting(-3.0, "the patch's pre-activation on memory inputs is pushed "
                                         "below this: exp(a_mem - margin) (paper: -3)")
    memory_gap: float = setting(3.0, "... and below the edit's own pre-activation by this: "
                                     "exp(a_mem - a_edit + gap) (paper: 3)", min=0.0)
    memory_top: int = setting(1000, "each memory term averages its largest N values (paper: "
                                    "top 1000)", min=1, max=10_000_000)
    memory_prompts: int = setting(1024, "unrelated prompts (AttachContext.unrelated_prompts, "
                                        "every token of each) keyed into the memory at attach; "
                                        "earlier edits' prompt+target tokens are always added "
                                        "(paper: hidden states of 40,000 training inputs, plus "
                                        "every edit's)", min=0, max=10_000_000)
    stop_loss: float = setting(0.05, "stop once the target loss is below this, every target "
                                     "token is predicted, every edit activation is above "
                                     "act_margin and every memory activation below "
                                     "memory_margin (paper: stop once the edit is fixed)",
                               min=0.0)
    retract: str = setting("replay", "'replay': exact (drop the edit's patches, re-train every "
                                     "later edit in order, as if it had never been made; costs "
                                     "those edits again); 'unsupported': refuse (paper: no "
                                     "retraction)", choices=("replay", "unsupported"))
