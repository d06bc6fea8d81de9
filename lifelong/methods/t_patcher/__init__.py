"""`t-patcher`: T-Patcher (Huang et al., ICLR 2023, "Transformer-Patcher: One Mistake Worth
One Neuron"): trained neurons added to one FFN, a few per edit, kept silent elsewhere.

Where: the FFN of block `layer` (default -1, the last block, as in the paper). A patch is one
neuron of that FFN: a key ``k`` and bias ``b`` over the FFN's input (the input of its first
projection, ``layers.{L}.mlp.in``: the normalised residual stream, model width) and a value
``v`` over its output (the output of ``layers.{L}.mlp.out``). The FFN output ``y`` becomes
``y + act(x . k + b) v`` (``x . k + b``: the patch's pre-activation ``a``).

Which positions: every position, as for any neuron of the FFN (the paper adds the neuron to
the layer itself); training decides where it fires. In the last block a position's FFN output
reaches only that position's logits, so a neuron matters where it is active, and in generation
the position that matters is the last token of the input. An edit's neurons are therefore
keyed to the positions that predict the target tokens the model gets wrong (teacher-forced):
the last prompt token for the first target token, each target token for the next; one neuron
per mistaken token, the first `neurons_per_edit` of them (paper: one neuron per mistake; one
for a classification edit, one per wrongly predicted token for generation, which the
reference code caps at 5). An edit the model already gets right adds no neuron.

Training (per edit; the model frozen with `frozen`, every earlier patch serving, the shared
`optimise` loop, Adam at `lr`), the paper's loss ``l_e + act_weight l_a + memory_weight l_m``:
  * ``l_e``: the target's NLL given the prompt, the new neurons on;
  * ``l_a``: each new neuron active at its own position: mean ``exp(act_margin - a_edit)``;
  * ``l_m``: silent on the memory: mean of the `memory_top` largest ``exp(a_mem -
    memory_margin)`` plus that of ``exp(a_mem - a_edit + memory_gap)``.
Initialisation (reference code): ``k = h / |h|^2`` and ``b = 0`` for the keyed input ``h``,
so ``a = 1`` there at the start. Training stops once the edit is fixed (every target token
predicted), its target loss is below `stop_loss`, every new neuron's ``a_edit`` exceeds
`act_margin` and every memory ``a_mem`` is below `memory_margin`; or after `steps` updates
(the receipt's ``converged`` says which).

The memory: the FFN inputs at every token of the first `memory_prompts` unrelated prompts
(`AttachContext.unrelated_prompts`, read once at attach) and at every prompt+target token of
each earlier active edit (the reference's ``update_memory``). FFN inputs are read before any
patch of that FFN acts, so the memory never depends on the patches.

Retraction (`retract = "replay"`: exact): removing an edit's neurons alone is exact only for
the newest edit. Every later edit was trained with the removed neurons serving (its ``l_e``
saw them, its mistaken positions were judged with them) and with the removed edit's tokens
in its memory, so its neurons are not those it would have had; and nothing guarantees that
they stay silent on the retracted prompt. So `retract` drops the edit and re-trains every
later edit in order; training draws nothing at random, so the result is the memory of a run
that never made the edit (tests/test_t_patcher.py checks it bit for bit). Cost: one training
per later edit. `retract = "unsupported"` refuses instead.

Deviations from the paper (and its reference code), each also in the setting's help:
  * memory: the attach context's unrelated prompts (all their tokens) instead of the hidden
    states of 40,000 training inputs; a memory row within 1e-4 (relative) of one of the
    edit's own keyed inputs is left out of that edit's memory (the same prompt edited or
    listed as unrelated before: silence there would contradict the edit);
  * value: initialised at zero and multiplied by a fixed `value_scale` (reference: a random
    value times a trained scale starting at 10), so no draw is needed and a new neuron
    changes nothing before it is trained;
  * stopping: the loss threshold and the margins are added to "the edit is fixed" (a bare
    argmax flip is easily undone by the next patch); no validation-set early stopping, no
    gradient clipping (reference: 5.0), no weight decay, no dropout-augmented copies of the
    edit example;
  * ``l_a`` averages over the edit's neurons (reference: its 5 least active, the same for at
    most 5 neurons); exponents above 30 continue linearly (finite losses and gradients);
  * a gated (SwiGLU) FFN gets an ungated neuron with `activation` (GELU by default): the
    paper edits GELU FFNs (BERT, BART);
  * `footprint` counts the neurons and the memory rows held to train later edits;
  * retraction and the Python-level state are this project's (the paper has neither).

Layout: `config.py` (settings), `patches.py` (the patch log, the patch function and the
losses: pure tensor code), `method.py` (hooks, memory capture, training, retraction).
"""

from .config import TPatcherConfig
from .method import TPatcher
from .patches import Edit, PatchLog

__all__ = ["Edit", "PatchLog", "TPatcher", "TPatcherConfig"]
