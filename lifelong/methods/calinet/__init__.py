"""`calinet`: CaliNET (Dong et al., Findings of EMNLP 2022, "Calibrating Factual Knowledge in
Pretrained Language Models"): a calibration memory of trained FFN-like slots beside the FFN
of the last layer(s), the base model frozen.

Where: the FFN of each block in `layers` (default (-1,): the last block; the paper finds the
last layers work best, and its reference script calibrates the last decoder FFN of T5-base).
Per layer, `slots` calibration slots: keys ``K_c`` (slots, d_in) over the FFN's input (the
input of its first projection, ``layers.{L}.mlp.in``: the normalised residual stream) and
values ``V_c`` (slots, d_out) over its output (``layers.{L}.mlp.out``). At every position the
FFN output ``y`` becomes ``y + act(x K_c^T) V_c`` (no bias, as in the paper and its code).

Training (per edit call; the model frozen with `frozen`, serving suspended, the trained slots
added by a `nethook` rewrite, the shared `optimise` loop, Adam at `lr`): the mean over the
call's requests of the teacher-forced NLL of the target tokens given the prompt
(`scoring.batch_target_loss`), until it is below `stop_loss` or after `steps` updates (the
receipt's ``converged`` says which). Only the slots get gradients; every weight of the base
model is left as it was. Initialisation: keys uniform in +-1/sqrt(d_in) (a torch Linear's,
as the reference code's), drawn from (seed, layer, block) alone; values zero, so a new slot
changes nothing before it is trained.

What the training sees: the request's prompt and target, nothing more. The paper trains on
each fact's ParaRel paraphrase templates (about 80% of them; the rest are its test set), as
T5 span corruption (the masked object is the target); `EditRequest` carries no rephrases (they
are evaluation data here), so each fact is learnt from its one prompt, as a causal LM's
continuation.

The stream (`memory`; the paper calibrates one set of facts, once, and has no stream):
  * 'shared' (default): one memory of `slots` slots per layer, drawn at the first edit and
    trained further by every later edit on that edit alone. This is the paper's single
    calibration memory with the facts arriving one at a time instead of as one set; nothing
    replays earlier edits (the paper has no such mechanism and the runtime gives no data for
    it), so later edits overwrite earlier ones where they share slots: that interference is
    what a stream measures. Fixed footprint.
  * 'blocks': each edit call gets a new block of `slots` slots (keys drawn for the block's
    index), the earlier blocks frozen and serving while it trains: the paper's memory, one per
    calibration set. Earlier edits still move, since nothing keeps a new block silent on their
    inputs. The footprint grows by one block per call.
A batch (`BatchEditing`, schedule.edit_batch > 1) is one calibration set, trained jointly:
closest to the paper, which calibrates 100 or 1000 facts at once.

Retraction (`retract = "replay"`: exact): the memory is a deterministic function of the seed,
the configuration, the base model and the log of edit calls (no other random draw, the
training deterministic), so `retract` drops the edit from its call and re-trains the memory
from where that call entered it, as if the edit had never been made (tests/test_calinet.py
checks it bit for bit). Cost: with 'blocks' the call's block and the later ones (the newest
edit alone: none); with 'shared' every remaining call from the first draw, because the shared
memory between calls is not kept (keeping it would cost a memory's bytes per edit).
`retract = "unsupported"` refuses instead.

Deviations from the paper (and its reference code), each also in the setting's help:
  * no contrastive knowledge assessment (the paper's CKA picks the facts the model gets
    wrong); every edit of the stream is trained, and one the model already knows (target loss
    below `stop_loss`) takes no step (with 'blocks' its block is still allocated, untrained:
    its zero values change nothing);
  * objective: the target's teacher-forced NLL after the prompt, not T5 span corruption over
    paraphrases (above); Adam with early stopping at `stop_loss`, not Adafactor for a fixed
    5000 steps (constant lr 1e-2 after 100 warm-up steps, batches of 2048);
  * values start at zero (reference: random, like the keys), so attaching, or a block that
    was never trained, changes no output;
  * slots are ungated with `activation` (GELU by default) in every family; the reference code
    mirrors T5's FFN (ReLU, or gated GELU for T5 v1.1), so a gated (SwiGLU) FFN here gets
    ungated slots;
  * the stream allocation, the batch-as-calibration-set reading and the retraction are this
    project's (the paper has none of them).

Layout: `config.py` (settings), `slots.py` (the slot memory, the call log, the slot function,
the seeded draw: pure tensor code), `method.py` (hooks, training, retraction, state).
"""

from .config import CaliNetConfig
from .method import CaliNet
from .slots import CallLog, SlotMemory

__all__ = ["CaliNet", "CaliNetConfig", "CallLog", "SlotMemory"]
