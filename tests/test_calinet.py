"""CaliNET on tiny random-init models (GPT-2 and LLaMA, for family-neutral addressing): an
edit raises its target's probability through the calibration slots alone (the base model's
weights untouched); the stream's two allocations (one shared memory trained further, or a
block per edit) and batches as one calibration set; several layers; detach, state and exact
retraction by replay; the settings' validation."""

from __future__ import annotations

import io

import pytest
import torch
from conftest import make_tiny_model, tiny_tokenizer

from lifelong import layers
from lifelong.config import from_mapping
from lifelong.errors import ConfigError, NotSupported
from lifelong.methods import AttachContext, EditRequest, UnknownEdit, build_method
from lifelong.methods.base import retract_edit
from lifelong.methods.calinet import CaliNetConfig
from lifelong.model import LM
from lifelong.scoring import encode_pairs, forward_logits, score_pairs, target_loss

pytestmark = pytest.mark.usefixtures("single_thread")

#: the tiny random models' target loss cannot go far below log(vocab) (their logits span < 1),
#: so the default stop_loss is never reached there: every edit runs `steps` updates
FAST = {"steps": 30}
E1 = EditRequest("e1", "Aldric works for", "Zentro", "Aldric|employer")
E2 = EditRequest("e2", "Brenna was born in", "Kyoto", "Brenna|city")
E3 = EditRequest("e3", "The employer of Aldric is", "Vantex", "Aldric|employer2")
UNRELATED = ("Caspar speaks", "Evander plays the")
PROBES = [E1.prompt, E2.prompt, E3.prompt, *UNRELATED]
FAMILIES = ["gpt2", "llama"]
MEMORIES = ["shared", "blocks"]
WIDTH = 32


def fresh_lm(family: str = "gpt2") -> LM:
    return LM(make_tiny_model(family, n_layer=2, width=WIDTH), tiny_tokenizer(), "tiny", "")


def calinet(lm: LM, **settings):
    m = build_method("calinet", {**FAST, **settings}, 0)
    m.attach(lm, AttachContext(seed=0, unrelated_prompts=UNRELATED))
    return m


@torch.no_grad()
def logits(lm: LM, prompts=PROBES) -> torch.Tensor:
    ids, mask, end, _, _ = encode_pairs(lm, prompts, ["Zentro"] * len(prompts))
    return forward_logits(lm, ids, mask, end)


@torch.no_grad()
def loss(lm: LM, r: EditRequest) -> float:
    return float(target_loss(lm, [r.prompt], [r.target]))


def gen_ok(lm: LM, r: EditRequest) -> bool:
    return score_pairs(lm, [r.prompt], [r.target])[0].gen_exact


# ---- an edit ----------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_an_edit_raises_the_target_probability(family):
    lm = fresh_lm(family)
    before = loss(lm, E1)
    assert not gen_ok(lm, E1)
    m = calinet(lm)
    # the FFN of the last block, in and out, whatever the family calls them
    assert [s.layer for s in m.sites] == [1]
    assert m.sites[0].source is layers.resolve(lm.model, "layers.-1.mlp.in")
    assert m.sites[0].target is layers.resolve(lm.model, "layers.-1.mlp.out")
    rc = m.edit([E1])
    assert rc.applied and rc.steps == FAST["steps"] and rc.loss_before == pytest.approx(before)
    assert loss(lm, E1) < before - 0.3 and gen_ok(lm, E1)
    assert rc.loss_after == pytest.approx(loss(lm, E1), abs=1e-5)
    assert rc.detail["slots"] == 64 and m.footprint() == 64 * (WIDTH + WIDTH) * 4
    with m.bypassed():  # the slots are the whole change
        assert loss(lm, E1) == pytest.approx(before, abs=1e-6)


def test_only_the_slots_train():
    lm = fresh_lm()
    weights = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    flags = [p.requires_grad for p in lm.model.parameters()]
    m = calinet(lm)
    m.edit([E1])
    assert all(torch.equal(p, weights[n]) for n, p in lm.model.named_parameters())
    assert all(p.grad is None for p in lm.model.parameters())  # frozen: no gradient reached them
    assert [p.requires_grad for p in lm.model.parameters()] == flags
    keys, values = m.memory.keys[0], m.memory.values[0]
    assert values.abs().sum() > 0 and not values.requires_grad and not keys.requires_grad


def test_an_edit_the_model_already_knows_takes_no_step_and_changes_nothing():
    """Values start at zero: a slot that never trained adds exactly nothing."""
    lm = fresh_lm()
    base = logits(lm)
    m = calinet(lm, stop_loss=50.0)
    rc = m.edit([E1])
    assert rc.steps == 0 and rc.converged and m.memory.rows() == 64
    assert torch.equal(logits(lm), base)


def test_several_layers_each_get_slots_trained_together():
    lm = fresh_lm()
    m = calinet(lm, layers=[0, -1])
    assert [s.layer for s in m.sites] == [0, 1]
    m.edit([E1])
    assert all(v.abs().sum() > 0 for v in m.memory.values)  # the lower layer trained too
    assert m.footprint() == 2 * 64 * (WIDTH + WIDTH) * 4
    with pytest.raises(ConfigError, match="twice"):
        calinet(fresh_lm(), layers=[-1, 1])  # the same block of a 2-layer model


# ---- the stream -------------------------------------------------------------------------------
def test_shared_memory_is_trained_further_and_blocks_grow():
    """'shared': every edit trains the same slots (the memory does not grow, the first edit's
    slots move); 'blocks': each edit adds a block, the earlier ones stay bit for bit. The
    first edit is the same memory in both."""
    shared, blocks = calinet(fresh_lm(), memory="shared"), calinet(fresh_lm(), memory="blocks")
    shared.edit([E1])
    blocks.edit([E1])
    assert torch.equal(shared.memory.keys[0], blocks.memory.keys[0])
    assert torch.equal(shared.memory.values[0], blocks.memory.values[0])
    first_k, first_v = blocks.memory.keys[0].clone(), blocks.memory.values[0].clone()
    shared.edit([E2])
    blocks.edit([E2])
    assert shared.memory.rows() == 64 and blocks.memory.rows() == 128
    assert not torch.equal(shared.memory.values[0], first_v)
    assert torch.equal(blocks.memory.keys[0][:64], first_k)
    assert torch.equal(blocks.memory.values[0][:64], first_v)
    assert not torch.equal(blocks.memory.keys[0][64:], first_k)  # a new draw per block
    assert shared.footprint() * 2 == blocks.footprint()


def test_later_edits_interfere_with_earlier_ones_in_the_shared_memory():
    lm = fresh_lm()
    m = calinet(lm, memory="shared")
    m.edit([E1])
    learnt = loss(lm, E1)
    m.edit([E2])
    m.edit([E3])
    assert loss(lm, E1) > learnt  # nothing replays e1: later training moved its slots


def test_a_batch_is_one_calibration_set():
    lm = fresh_lm()
    m = calinet(lm, memory="blocks")
    receipts = m.edit_batch([E1, E2])
    assert len(receipts) == 2 and all(r.detail["batch"] == 2 for r in receipts)
    assert m.memory.rows() == 64 and m.log.calls == [[("e1", E1.prompt, E1.target),
                                                      ("e2", E2.prompt, E2.target)]]
    assert gen_ok(lm, E1) and gen_ok(lm, E2)
    m.retract("e1")  # the call is re-trained on e2 alone
    lm2 = fresh_lm()
    calinet(lm2, memory="blocks").edit_batch([E2])
    assert torch.equal(logits(lm), logits(lm2))


# ---- detach, state, retraction ----------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_detach_restores_and_state_round_trips_bit_for_bit(family):
    lm = fresh_lm(family)
    base = logits(lm)
    m = calinet(lm)
    m.edit([E1])
    m.edit([E2])
    expected = logits(lm)
    assert not torch.equal(expected, base)
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    state = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    lm2 = fresh_lm(family)
    m2 = calinet(lm2)
    m2.load_state_dict(state)
    assert torch.equal(logits(lm2), expected) and m2.log.ids() == ["e1", "e2"]
    m2.retract("e2")  # a loaded memory retracts like the one it was saved from
    m.retract("e2")
    assert torch.equal(logits(lm2), logits(lm))
    m.detach()
    assert torch.equal(logits(lm), base)
    with pytest.raises(ConfigError, match="blocks"):
        calinet(fresh_lm(family), layers=[0]).load_state_dict(state)


@pytest.mark.parametrize("memory", MEMORIES)
def test_retraction_replays_to_the_memory_that_never_saw_the_edit(memory):
    lm = fresh_lm()
    m = calinet(lm, memory=memory)
    m.edit([E1])
    m.edit([E2])
    before_e3 = logits(lm)
    m.edit([E3])
    m.retract("e3")  # the newest
    assert torch.equal(logits(lm), before_e3)
    m.edit([E3])
    m.retract("e2")  # an older one: e3 is re-trained without it
    assert m.log.ids() == ["e1", "e3"]
    lm2 = fresh_lm()
    ref = calinet(lm2, memory=memory)
    ref.edit([E1])
    ref.edit([E3])
    assert torch.equal(logits(lm), logits(lm2))
    assert m.footprint() == ref.footprint()
    with pytest.raises(UnknownEdit, match="e2"):
        m.retract("e2")
    with pytest.raises(UnknownEdit, match="never"):
        m.retract("never")


def test_removing_only_the_block_would_not_be_exact():
    """Why retraction replays even with blocks: e3's block was trained with e2's serving, so
    dropping e2's block alone leaves outputs that a run that never made e2 does not have."""
    lm = fresh_lm()
    m = calinet(lm, memory="blocks")
    for r in (E1, E2, E3):
        m.edit([r])
    keep = torch.tensor([True] * 64 + [False] * 64 + [True] * 64)
    m.memory.set([k[keep] for k in m.memory.keys], [v[keep] for v in m.memory.values])
    lm2 = fresh_lm()
    ref = calinet(lm2, memory="blocks")
    ref.edit([E1])
    ref.edit([E3])
    assert not torch.equal(logits(lm), logits(lm2))


def test_retraction_can_be_refused():
    m = calinet(fresh_lm(), retract="unsupported")
    assert m.retraction is None
    m.edit([E1])
    with pytest.raises(NotSupported, match="calinet"):
        retract_edit(m, "e1")


# ---- settings ---------------------------------------------------------------------------------
def test_defaults_are_the_papers_and_bad_settings_are_refused():
    cfg = from_mapping(CaliNetConfig, {})
    assert (cfg.layers, cfg.slots, cfg.lr, cfg.memory) == ((-1,), 64, 1e-2, "shared")
    for bad, match in [({"slots": 0}, "slots"), ({"memory": "ring"}, "memory"),
                       ({"activation": "tanh"}, "activation"), ({"layers": []}, "at least one"),
                       ({"layers": [1, 1]}, "twice"), ({"steps": 0}, "steps"),
                       ({"lr": -1.0}, "lr"), ({"retract": "own"}, "retract"),
                       ({"layers": 1}, "list"), ({"slot": 8}, "unknown key")]:
        with pytest.raises(ConfigError, match=match):
            from_mapping(CaliNetConfig, bad, where="calinet")
