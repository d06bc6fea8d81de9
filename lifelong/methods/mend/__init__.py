"""`mend`: MEND (Mitchell et al., ICLR 2022, "Fast Model Editing at Scale"): a small editor
network, meta-trained before the stream, maps an edit's fine-tuning gradient to a weight
update of the last MLPs.

Where: the MLP input and output projections (``layers.{L}.mlp.in`` / ``mlp.out``, any
family) of the last 3 blocks (`layers`, `parts`). For one such weight W (``d_out × d_in``)
and an edit (prompt → target), the gradient of the target's NLL is ``Σ_i δ_i u_iᵀ`` over the
tokens i: ``u_i`` the projection's input there, ``δ_i`` the loss's gradient at its output
(`train.factors`: a nethook `Trace` of input and output, ``autograd.grad`` at the output).

The editor (`editor.py`): ``z_i = [u_i, δ_i]``, normalised with statistics gathered in
training, goes through ``n_hidden + 1`` residual low-rank layers ``z + clamp_min(s_l ⊙ (U V z
+ b) + o_l, 0)``, one network per weight shape, shared by the weights of that shape, with a
scale ``s_l`` and offset ``o_l`` per weight; out come ``[ũ_i, δ̃_i]``, and the update is

    ΔW_l = −η_l Σ_i δ̃_i ũ_iᵀ          (η_l learned, one per edited weight)

Training (`train.py`, at attach, on `AttachContext.train_records()`; refused in one line
naming `stream.train_file` when there is none): per training edit, the factors at the base
weights, the editor's ΔW applied through hooks (``y + x ΔWᵀ``: the model with ``W + ΔW``,
its weights untouched), and the loss ``c_edit · NLL(target | a rephrase) + c_loc · KL(pre ‖
post)`` over a locality prompt + answer, backpropagated into the editor only (the model
under `frozen`); `accumulate` edits per Adam update. Deterministic from the training seed.
The trained editor is cached (`ctx.cache()`, folder ``mend``, entry ``editor-<hash>`` of the
settings that shape it, the edited layers, the seed and a hash of the split's content), so
a second run reads it; attach says when it trains ("editor trained, N steps, T s ..."; a
read is silent: a chunked run re-attaches per chunk) and `info` says which.

Editing (`method.py`): the factors at the current weights, ΔW added in place; a batch
(`BatchEditing`) is one joint update from all its requests' tokens, a receipt per request
(its own target loss before and after; ``steps = 1``, ``converged = None``: there is no
stopping criterion). Sequential edits accumulate in the weights, as the field's sequential
benchmarks run MEND. Log of edits; retraction exact by replay from the base weights
(`retract = "replay"`) or refused; state: the edited weights, the log and the editor.

Settings (ours; paper: Mitchell et al. and their reference code for GPT-2 XL / GPT-J,
repeated in EasyEdit's hparams/TRAINING/MEND/gpt2-xl.yaml):

==============  ======================  ==============================================
setting         ours                    paper
==============  ======================  ==============================================
layers          last 3 blocks           last 3 blocks
parts           mlp.in + mlp.out        c_fc + c_proj (LLaMA: gate, up and down proj)
rank            1920 (capped at d)      1920
n_hidden        1                       1
shared          per shape, s_l and o_l  per shape, s_l and o_l
norm            yes                     yes
edit_lr         1e-4, learned           1e-4, learned
lr              1e-4 (Adam)             1e-6 (Adam)
lr_lr           1e-4 (Adam)             1e-4 (Adam)
c_edit / c_loc  0.1 / 1.0               0.1 / 1.0
steps           500 updates             up to 10,000 updates (100,000 edits), early stop
accumulate      10                      10
grad_clip       100                     100
editor_seed     the run's seed          (the global RNG)
==============  ======================  ==============================================

Deviations from the paper and its reference code:
  * lr 1e-4, not 1e-6: with hundreds of updates instead of 10,000, the networks of a small
    model stay near the identity at 1e-6 and mostly the step sizes η learn (3-layer, 32-wide
    GPT-2, 12 training edits, 150 updates of 2: mean NLL fall of 4 held-out edits 0.54 at
    1e-6 against 0.51 for the identity network with the learned η; 0.61 at 1e-4 against
    0.53). The paper's edit_lr 1e-4 works as it is: on the built-in model (train split
    streams/dev/edits-3000.jsonl), 30 updates give a teacher-forced token accuracy of 0.78
    on 20 test edits, against 0.35 for the untrained editor.
  * training length: a fixed number of updates, no validation split and no early stopping.
  * the sign: ΔW = −η Σ δ̃ ũᵀ as the paper writes it; the reference code adds the update
    (its author confirms the bug in eric-mitchell/mend issue #13; training flips it back).
  * normalisation: statistics merged batch by batch (the reference: row by row; equal up to
    rounding), and each feature's standard deviation is floored at 1e-2 of the mean over its
    part (u or δ), or taken as 1 in a part that never varied (the reference divides by std +
    1e-7 only: a feature constant in a small train split blows an edit up).
  * training data: a rephrase drawn from the record's rephrases (its own prompt when it has
    none); the locality pair drawn from the record's own (the next record's prompt and target
    when it has none; the paper draws Natural Questions for zsRE); KL over every real token
    of the locality prompt + answer.
  * LLaMA-family gate_proj is not edited: `lifelong.layers` names mlp.in (up_proj) and
    mlp.out (down_proj) only.
  * the post-edit forward in training is the model with hooks computing ``y + x ΔWᵀ``
    (the reference: a functional copy through `higher`); the same function up to rounding.

Layout: `config.py` (settings), `editor.py` (the networks), `train.py` (factors, hooks,
training), `method.py` (attach, cache, edit, retraction, state).
"""

from .config import MendConfig
from .editor import MendEditor
from .method import Mend

__all__ = ["Mend", "MendConfig", "MendEditor"]
