"""T-Patcher on tiny random-init models (GPT-2 and LLaMA, for family-neutral addressing): an
edit fixes its target with a neuron that fires on its input and stays silent on the memory;
unrelated outputs move only by what a silent neuron leaks; sequential edits, re-edits and
multi-token targets; detach, state and exact retraction by replay."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_model, tiny_tokenizer

from lifelong import layers
from lifelong.errors import NotSupported
from lifelong.methods import AttachContext, EditRequest, UnknownEdit, build_method
from lifelong.methods.base import retract_edit
from lifelong.model import LM
from lifelong.nethook import Trace
from lifelong.scoring import encode_pairs, forward_logits, score_pairs

pytestmark = pytest.mark.usefixtures("single_thread")

#: the tiny random models' target loss cannot go far below log(vocab) (their logits span
#: < 1), so `stop_loss` is set above it: training then stops once the edit is fixed and the
#: margins hold, which makes `converged` meaningful here
FAST = {"stop_loss": 6.0, "steps": 200}
UNRELATED = ("Caspar speaks", "Evander plays the", "Who employs Delphine ? Answer :")
E1 = EditRequest("e1", "Aldric works for", "Zentro", "Aldric|employer")
E2 = EditRequest("e2", "Brenna was born in", "Kyoto", "Brenna|city")
E3 = EditRequest("e3", "The employer of Aldric is", "Vantex", "Aldric|employer2")
PROBES = [E1.prompt, E2.prompt, E3.prompt, *UNRELATED]
FAMILIES = ["gpt2", "llama"]


def fresh_lm(family: str = "gpt2") -> LM:
    return LM(make_tiny_model(family, n_layer=2, width=32), tiny_tokenizer(), "tiny", "")


def patcher(lm: LM, **settings):
    m = build_method("t-patcher", {**FAST, **settings}, 0)
    m.attach(lm, AttachContext(seed=0, unrelated_prompts=UNRELATED))
    return m


@torch.no_grad()
def logits(lm: LM, prompts=PROBES) -> torch.Tensor:
    ids, mask, end, _, _ = encode_pairs(lm, prompts, ["Zentro"] * len(prompts))
    return forward_logits(lm, ids, mask, end)


def gen_ok(lm: LM, r: EditRequest) -> bool:
    return score_pairs(lm, [r.prompt], [r.target])[0].gen_exact


# ---- an edit ----------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_edit_fixes_the_target_with_a_neuron_silent_on_the_memory(family):
    lm = fresh_lm(family)
    assert not gen_ok(lm, E1)
    m = patcher(lm)
    # the FFN of the last block, in and out, whatever the family calls them
    assert m.layer_name == "layers.1.mlp"
    assert m.source is layers.resolve(lm.model, "layers.-1.mlp.in")
    assert m.target is layers.resolve(lm.model, "layers.-1.mlp.out")
    rc = m.edit([E1])
    assert gen_ok(lm, E1) and rc.converged and rc.steps > 0
    assert rc.detail["neurons"] == 1 and m.log.edits[0].positions == [2]  # "for": last prompt token
    a_edit = m.activations([E1.prompt])[-1, 0]
    a_mem = m.activations(list(UNRELATED))[:, 0]
    assert a_edit > m.config.act_margin
    assert (a_mem < m.config.memory_margin).all()  # every token of every memory prompt


def test_without_the_memory_loss_the_neuron_fires_on_the_memory():
    """The memory loss is what keeps the neuron silent: the same edit with its weight at 0
    leaves it active on some memory token (and the edit itself still works)."""
    lm = fresh_lm()
    m = patcher(lm, memory_weight=0.0)
    m.edit([E1])
    assert gen_ok(lm, E1)
    assert m.activations(list(UNRELATED)).max() > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_unrelated_outputs_move_only_by_the_silent_neurons_leak(family):
    """ReLU: a silent neuron adds exactly zero, so unrelated prompts are bit-identical. GELU
    (the paper's): it adds gelu(a) v at each position (a < 0 there, mostly below the margin);
    the tolerance is that leak itself, bounded from the trained neuron (|gelu(a)| |v| with the
    largest a on those tokens), on the residual stream the last block writes, where it is the
    only change. (The logits of a random tiny model are near ties, so even this leak may flip
    an argmax there: what is asserted is the bound, not unchanged predictions.)"""
    for activation in ("relu", "gelu"):
        lm = fresh_lm(family)
        block = layers.resolve(lm.model, "layers.-1")
        prompts = list(UNRELATED)
        with torch.no_grad(), Trace(block) as before:
            base = logits(lm, prompts)
        m = patcher(lm, activation=activation)
        m.edit([E1])
        with torch.no_grad(), Trace(block) as after:
            edited = logits(lm, prompts)
        _, mask, end, _, _ = encode_pairs(lm, prompts, ["Zentro"] * len(prompts))
        real = mask.bool() & (torch.arange(mask.shape[1]) < end.unsqueeze(1))  # prompt tokens
        a = m.activations(prompts)
        assert (a < 0).all()
        if activation == "relu":
            assert torch.equal(edited[real], base[real])
            continue
        v = m.log.edits[0].values.norm()
        leak = float(F.gelu(a.max()).abs() * v)
        moved = (after.output - before.output)[real].norm(dim=-1).max()
        assert 0 < moved <= leak * 1.01 + 1e-6
        # ... and that leak is under 1% of what the neuron adds on its own input
        assert leak < 0.01 * float(F.gelu(m.activations([E1.prompt])[-1, 0]) * v)
        assert not torch.equal(edited[real], base[real])  # GELU is not exactly silent


def test_an_edit_the_model_already_gets_right_adds_no_neuron():
    lm = fresh_lm()
    own = score_pairs(lm, [E1.prompt], ["Zentro"])[0].gen_text  # what the model says now
    before = logits(lm)
    m = patcher(lm)
    rc = m.edit([EditRequest("e0", E1.prompt, own, "f")])
    assert rc.detail["neurons"] == 0 and rc.steps == 0 and rc.converged
    assert torch.equal(logits(lm), before)


@pytest.mark.parametrize("family", FAMILIES)
def test_multi_token_target_gets_one_neuron_per_mistaken_token(family):
    lm = fresh_lm(family)
    r = EditRequest("m1", E2.prompt, "Kyoto Lisbon Oslo", "f")
    m = patcher(lm)
    m.edit([r])
    assert m.log.edits[0].positions == [3, 4, 5]  # "in", "Kyoto", "Lisbon" predict the next
    assert gen_ok(lm, r)
    lm1 = fresh_lm(family)
    one = patcher(lm1, neurons_per_edit=1)
    one.edit([r])
    assert one.log.edits[0].positions == [3] and not gen_ok(lm1, r)  # the rest unpatched


# ---- sequential editing ---------------------------------------------------------------------
def test_sequential_edits_keep_earlier_ones_and_a_re_edit_wins():
    """Each later neuron is kept silent on the earlier edits' tokens (they are in its
    memory); a re-edit of the same prompt is not (its own input is left out of its memory)."""
    lm = fresh_lm()
    m = patcher(lm)
    for r in (E1, E2, E3):
        m.edit([r])
    assert all(gen_ok(lm, r) for r in (E1, E2, E3))
    a = m.activations([E1.prompt])  # rows: "Aldric", "works", "for"
    assert a[-1, 0] > 0 and (a[-1, 1:] < 0).all()  # only e1's neuron fires on e1's input
    again = EditRequest("e4", E1.prompt, "Vantex", E1.fact)
    m.edit([again])
    assert gen_ok(lm, again) and gen_ok(lm, E2) and gen_ok(lm, E3)
    assert m.activations([E1.prompt])[-1, 3] > 0  # the new neuron fires where e1's does
    assert m.footprint() > 0 and m.log.neurons() == 4


# ---- detach, state, retraction ----------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_detach_restores_and_state_round_trips_bit_for_bit(family):
    lm = fresh_lm(family)
    base = logits(lm)
    m = patcher(lm)
    m.edit([E1])
    m.edit([E2])
    expected = logits(lm)
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    state = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    lm2 = fresh_lm(family)
    patcher(lm2).load_state_dict(state)
    assert torch.equal(logits(lm2), expected)
    m.detach()
    assert torch.equal(logits(lm), base)
    assert all(p.grad is None for p in lm.model.parameters())


def test_retraction_replays_to_the_memory_that_never_saw_the_edit():
    lm = fresh_lm()
    m = patcher(lm)
    m.edit([E1])
    m.edit([E2])
    before_e3 = logits(lm)
    m.edit([E3])
    e3_first = m.log.edits[2]
    m.retract("e3")  # the newest: nothing to replay
    assert torch.equal(logits(lm), before_e3)
    m.edit([E3])
    m.retract("e2")  # an older one: e3 is re-trained without e2
    got = logits(lm)
    assert m.log.ids() == ["e1", "e3"]
    assert not torch.equal(m.log.edits[1].keys, e3_first.keys)  # e2 had shaped e3
    lm2 = fresh_lm()
    ref = patcher(lm2)
    ref.edit([E1])
    ref.edit([E3])
    assert torch.equal(got, logits(lm2))
    with pytest.raises(UnknownEdit, match="e2"):
        m.retract("e2")


def test_removing_only_the_patch_would_not_be_exact():
    """Why retraction replays: e3's neuron trained after e2 differs from the one trained
    without e2, so dropping e2's neuron alone leaves outputs a never-edited run does not have."""
    lm = fresh_lm()
    m = patcher(lm)
    for r in (E1, E2, E3):
        m.edit([r])
    m.log.replace([e for e in m.log.edits if e.edit_id != "e2"])  # surgery, no replay
    lm2 = fresh_lm()
    ref = patcher(lm2)
    ref.edit([E1])
    ref.edit([E3])
    assert not torch.equal(logits(lm), logits(lm2))


def test_retraction_can_be_refused():
    m = patcher(fresh_lm(), retract="unsupported")
    assert m.retraction is None
    m.edit([E1])
    with pytest.raises(NotSupported, match="t-patcher"):
        retract_edit(m, "e1")
