"""`ft-m`: FT-M, EasyEdit's masked fine-tuning of one MLP projection per edit.

What FT-M is (EasyEdit, `easyeditor/models/ft/ft_main.py`, `objective_optimization` in
`hparams/FT/*.yaml`): the prompt and the target are fed together and the loss is the
cross-entropy of the target tokens only, the prompt's own token predictions masked out
(``target_new``); each row's loss is the mean over its target tokens, rows are averaged.
EasyEdit's FT-L (``prompt_last``, ROME's FT baseline) instead feeds the prompt alone and
scores every target token against the logits of the last prompt position (a bag of tokens
at one position; the first target token for a one-token target).

`ft` (`lifelong/methods/ft.py`) already trains on exactly this masked objective
(`scoring.batch_target_loss`), so the objective of `ft-m` is the same loss, reused through
subclassing. What makes `ft-m` EasyEdit's FT-M rather than our bounded `ft` are its defaults,
each taken from EasyEdit's FT hyper-parameters (`hparams/FT/llama-7b.yaml`,
`gpt-j-6B.yaml`):

* no L-infinity bound (``norm_constraint: false``; `ft` bounds at 2e-2);
* Adam at lr 5e-4, weight decay 0 (`ft`: 1e-2);
* 25 steps at most, stopping once the loss is below 1e-2 (`ft`: 0.05);
* the optimiser's loop, the masking and the batch (one joint optimisation of the batch's
  mean loss, `BatchEditing`) are `ft`'s.

Invariants (inherited from `FineTune`): only the weight of `layers.{layer}.{module}` changes
and only it receives a gradient; `state_dict` is that weight and the edit count; `detach`
restores the pre-stream weight bit for bit. Not Retractable: the edits share one matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import setting
from .ft import FineTune


@dataclass(frozen=True)
class FTMConfig:
    """FT-M's settings, with EasyEdit's FT-M values as defaults (module docstring)."""

    layer: int | None = setting(None, "layer to edit (negative counts from the end); default: "
                                      "the model's late-middle layer (reference: a fixed layer "
                                      "per model, e.g. 21 of 32 for Llama-2-7b, 21 of 28 for "
                                      "GPT-J)")
    module: str = setting("mlp.out", "which projection of the layer to fine-tune (reference: "
                                     "the MLP down projection, mlp.out)",
                          choices=("mlp.out", "mlp.in", "attn.out"))
    steps: int = setting(25, "maximum Adam steps per edit (reference: num_steps 25)",
                         min=1, max=10_000)
    lr: float = setting(5e-4, "Adam learning rate, no weight decay (reference: 5e-4, tuned "
                              "for 7B models; `ft` uses 1e-2)", min=0.0)
    norm_constraint: float | None = setting(None, "L-infinity bound on each weight entry's "
                                                  "change against its pre-stream value (none: "
                                                  "unbounded, as the reference's FT-M; "
                                                  "reference, when set: the bound is against "
                                                  "the weight before each edit)")
    stop_loss: float = setting(1e-2, "stop early once the edit's target loss is below this "
                                     "(reference: 1e-2)", min=0.0)


class FineTuneMasked(FineTune):
    """FT-M: `FineTune` with EasyEdit's FT-M defaults; the training loop, the masked target
    loss, the state and the restore on detach are `FineTune`'s."""

    name = "ft-m"
    Config = FTMConfig
    summary = "FT-M: fine-tune one MLP projection on the masked target loss, unbounded"
    no_retraction = ("ft-m cannot retract one edit: its change is entangled with every other "
                     "edit in the same weight")
