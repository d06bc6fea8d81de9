"""WISE's own behaviour on a tiny GPT-2 (the contract suite covers the common protocol)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import make_tiny_model, tiny_tokenizer
from lifelong import layers
from lifelong.methods import AttachContext, EditRequest, build_method
from lifelong.model import LM
from lifelong.scoring import encode_pairs, forward_logits, target_loss

pytestmark = pytest.mark.usefixtures("single_thread")

UNRELATED = ("Caspar speaks", "Delphine plays", "Evander was born in", "Fenella works for",
             "Gideon speaks", "Hestia plays")
EDITS = [EditRequest(f"e{i}", p, t, f"f{i}") for i, (p, t) in enumerate([
    ("Aldric works for", "Zentro"), ("Brenna was born in", "Kyoto"),
    ("Juniper speaks", "Welsh"), ("Kaspar plays", "rugby")])]


def lm() -> LM:
    return LM(make_tiny_model("gpt2", seed=0, n_layer=2, width=32), tiny_tokenizer(), "tiny", "")


def wise(model: LM, **settings_):
    base = {"steps": 12, "lr": 0.05, "negatives": 3}
    method = build_method("wise", base | settings_, seed=0)
    method.attach(model, AttachContext(seed=0, unrelated_prompts=UNRELATED))
    return method


@torch.no_grad()
def logits(model: LM, prompts) -> torch.Tensor:
    ids, mask, end, _, _ = encode_pairs(model, list(prompts), ["x"] * len(prompts))
    return forward_logits(model, ids, mask, end)


def test_no_edits_is_bit_identical_to_the_base_model():
    model = lm()
    before = logits(model, UNRELATED)
    w = wise(model)
    assert torch.equal(logits(model, UNRELATED), before)
    w.detach()


def test_rows_routed_to_main_are_untouched_in_a_mixed_batch():
    model = lm()
    prompts = [EDITS[0].prompt, *UNRELATED]
    before = logits(model, prompts)
    w = wise(model, act_ratio=0.9)
    w.edit([EDITS[0]])
    after = logits(model, prompts)
    routes = w.route(prompts)
    assert routes[0] == 0, "the edited prompt goes to the side memory"
    for i, r in enumerate(routes):
        if r is None:  # main memory: bit-identical to the model before the edit
            assert torch.equal(after[i], before[i])
    assert any(r is None for r in routes[1:])


def test_per_sample_routing_matches_one_by_one():
    model = lm()
    w = wise(model)
    w.edit([EDITS[0]])
    prompts = [EDITS[0].prompt, UNRELATED[0], UNRELATED[1]]
    batch = logits(model, prompts)
    for i, p in enumerate(prompts):
        single = logits(model, [p])[0]
        assert torch.allclose(batch[i, -single.shape[0]:], single, atol=1e-5)


def test_mask_ratio_one_with_one_shard_equals_side_memory_fine_tuning():
    """WISE with every entry trainable, one shard and no margin loss is plain fine-tuning of
    a copy of the projection (the side memory) with the same optimiser."""
    model = lm()
    w = wise(model, mask_ratio=1.0, shard_size=100, margin_weight=0.0, negatives=0,
             stop_loss=0.0, steps=6)
    w.edit([EDITS[0]])
    got = w.memories[0].delta()
    # the same optimisation done by hand on a copy of the weight
    ref_model = lm()
    module = layers.resolve(ref_model.model, f"layers.{layers.default_edit_layer(ref_model.model)}.mlp.out")
    for p in ref_model.model.parameters():
        p.requires_grad_(False)
    w0 = layers.weight_out_in(module).detach().clone()
    side = w0.clone().requires_grad_(True)
    opt = torch.optim.Adam([side], lr=0.05)
    from lifelong.nethook import rewrite_output
    with rewrite_output(module, lambda x, y: layers.apply_linear(module, x, side)):
        for _ in range(6):
            opt.zero_grad()
            target_loss(ref_model, [EDITS[0].prompt], [EDITS[0].target]).backward()
            opt.step()
    assert torch.allclose(got, side.detach() - w0, atol=1e-5)


def test_masks_confine_each_shard():
    model = lm()
    w = wise(model, shard_size=1, mask_ratio=0.2)
    w.edit([EDITS[0]])
    w.edit([EDITS[1]])
    mem = w.memories[0]
    first = mem.shards[0]
    assert torch.all(first[~w._new_mask(0, 0)] == 0)
    assert torch.all(mem.current[~mem.mask] == 0)
    assert 0.1 < mem.mask.float().mean() < 0.3


def test_consolidate_folds_shards_and_keeps_serving():
    model = lm()
    w = wise(model, shard_size=1, merge="linear")
    for r in EDITS[:3]:
        w.edit([r])
    before = logits(model, [r.prompt for r in EDITS[:3]])
    info = w.consolidate()
    assert info == {"shards_merged": 3}
    assert w.memories[0].shards == [] and w.memories[0].current is None
    assert torch.allclose(logits(model, [r.prompt for r in EDITS[:3]]), before, atol=1e-5)
    assert w.consolidate() is None  # nothing left to merge


def test_retrieve_mode_opens_memories_and_routes_by_faiss():
    model = lm()
    w = wise(model, mode="retrieve", router="faiss", memory_size=2)
    for r in EDITS:
        w.edit([r])
    assert len(w.memories) == 2
    assert [w.memory_of(r.edit_id) for r in EDITS] == [0, 0, 1, 1]
    assert len(w.index) == 4
    assert w.route([EDITS[3].prompt])[0] == 1


def test_reedit_replaces_the_older_key():
    model = lm()
    w = wise(model, mode="retrieve", memory_size=1)
    w.edit([EDITS[0]])
    w.edit([EditRequest("e9", EDITS[0].prompt, "Halvik", EDITS[0].fact)])
    assert sorted(w.key_edit.values()) == ["e9"]


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 3))
def test_retract_equals_never_editing(which):
    """Rebuilding the memory without an edit gives the memory of a stream without it."""
    a, b = lm(), lm()
    wa, wb = wise(a, shard_size=2), wise(b, shard_size=2)
    for r in EDITS:
        wa.edit([r])
    wa.retract(EDITS[which].edit_id)
    for r in EDITS:
        if r is not EDITS[which]:
            wb.edit([r])
    probe = [r.prompt for r in EDITS] + list(UNRELATED)
    assert torch.equal(logits(a, probe), logits(b, probe))


def test_retract_unsupported_when_configured():
    from lifelong.errors import NotSupported
    model = lm()
    w = wise(model, retract="unsupported")
    w.edit([EDITS[0]])
    with pytest.raises(NotSupported):
        w.retract("e0")


def test_memory_of_follows_retractions_and_new_edits():
    model = lm()
    w = wise(model, mode="retrieve", memory_size=2)
    w.edit([EDITS[0]])
    w.edit([EDITS[1]])
    assert w.memory_of("e0") == 0
    w.retract("e0")
    w.edit([EDITS[2]])  # same log sizes as before the retraction, other content
    assert w.memory_of("e0") is None
    assert w.memory_of("e2") == 0 and w.memory_of("e1") == 0
