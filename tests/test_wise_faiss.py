"""WISE's own behaviour on a tiny GPT-2 (the contract suite covers the common protocol)."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_model, tiny_tokenizer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
    method = build_method("wise-faiss", base | settings_, seed=0)
    method.attach(model, AttachContext(seed=0, unrelated_prompts=UNRELATED))
    return method


def predicts(model: LM, prompt: str, target: str) -> bool:
    from lifelong.scoring import score_pairs
    return score_pairs(model, [prompt], [target])[0].tf_exact


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
             stop_loss=0.0, steps=6, router="activation")
    w.edit([EDITS[0]])
    got = w.memories[0].delta()
    # the same optimisation done by hand on a copy of the weight
    ref_model = lm()
    module = layers.resolve(ref_model.model, f"layers.{layers.default_edit_layer(ref_model.model)}.mlp.out")
    for p in ref_model.model.parameters():
        p.requires_grad_(False)
    w0 = layers.weight_out_in(module).detach().clone()
    side = w0.clone().requires_grad_(True)
    opt = torch.optim.SGD([side], lr=0.05, momentum=w.config.momentum)  # 0.9 by default
    from lifelong.nethook import rewrite_output
    with rewrite_output(module, lambda x, y: layers.apply_linear(module, x, side)):
        for _ in range(6):
            opt.zero_grad()
            target_loss(ref_model, [EDITS[0].prompt], [EDITS[0].target]).backward()
            opt.step()
    assert torch.allclose(got, side.detach() - w0, atol=1e-5)


@pytest.mark.parametrize("unit", ["row", "entry"])
def test_masks_confine_each_shard(unit):
    model = lm()
    w = wise(model, shard_size=1, mask_ratio=0.2, mask_unit=unit, protect=False)
    w.edit([EDITS[0]])
    w.edit([EDITS[1]])
    mem = w.memories[0]
    first = mem.shards[0]
    assert torch.all(first[~w._new_mask(0, 0)] == 0)
    assert torch.all(mem.current[~mem.mask] == 0)
    assert first.abs().sum() > 0 and mem.current.abs().sum() > 0
    assert 0.05 < mem.mask.float().mean() < 0.4
    if unit == "row":  # whole output rows
        assert torch.equal(mem.mask, mem.mask[:, :1].expand_as(mem.mask))


def test_disjoint_masks_partition_each_cycle_and_ties_of_them_is_their_sum():
    model = lm()
    w = wise(model, shard_size=1, mask_ratio=0.25, mask_unit="row", merge="ties", density=1.0)
    masks = torch.stack([w._new_mask(0, s) for s in range(4)])
    assert torch.equal(masks.sum(0), torch.ones_like(masks[0], dtype=torch.long))
    assert not torch.equal(w._new_mask(0, 4), masks[0])  # the next cycle draws a new partition
    for r in EDITS:
        w.edit([r])
    total = w.memories[0].delta().clone()
    w.consolidate()
    assert torch.allclose(w.memories[0].merged, total, atol=1e-6)


def test_one_late_merge_equals_a_merge_at_every_cycle_end():
    """Shards of different mask cycles overlap; consolidating them together must not average
    them (that lost edits in a development trial): it folds cycle by cycle."""
    late, scheduled = (wise(lm(), shard_size=1, mask_ratio=0.5, mask_unit="row", merge="ties",
                            steps=20, lr=0.5)
                       for _ in range(2))
    for i, r in enumerate(EDITS):  # 4 shards of one edit: 2 cycles of 2
        late.edit([r])
        scheduled.edit([r])
        if i % 2:
            scheduled.consolidate()
    late.consolidate()
    assert torch.allclose(late.memories[0].merged, scheduled.memories[0].merged, atol=1e-6)
    assert all(predicts(late.lm, r.prompt, r.target) for r in EDITS)


@pytest.mark.parametrize("merge", ["ties", "linear"])
def test_entry_masked_shards_overlap_under_protect_and_only_a_sum_keeps_them(merge):
    """With entry masks, `protect` projects each masked step along its rows, so the shards of
    one cycle overlap: TIES's disjoint mean then changes what the memory serves, a sum (the
    default merge) does not. With row masks both are the sum (the test above)."""
    w = wise(lm(), shard_size=1, mask_ratio=0.5, mask_unit="entry", merge=merge, steps=20, lr=0.5)
    for r in EDITS[:2]:  # two shards of one cycle: disjoint masks, overlapping steps
        w.edit([r])
    mem = w.memories[0]
    assert torch.equal(w._new_mask(0, 0) & w._new_mask(0, 1), torch.zeros_like(mem.mask))
    assert ((mem.shards[0] != 0) & (mem.current != 0)).any()
    total = mem.delta().clone()
    w.consolidate()
    assert torch.allclose(mem.merged, total, atol=1e-6) == (merge == "linear")


def test_the_default_merge_changes_no_served_weight():
    w = wise(lm(), shard_size=1, mask_ratio=0.5, steps=20, lr=0.5)
    assert (w.config.mask_unit, w.config.merge) == ("entry", "linear")
    for r in EDITS:
        w.edit([r])
    total = w.memories[0].delta().clone()
    w.consolidate()
    assert torch.allclose(w.memories[0].merged, total, atol=1e-6)


@torch.no_grad()
def served(model: LM, req: EditRequest) -> torch.Tensor:
    """Logits at every position of the edit's prompt and target, as served."""
    ids, mask, end, _, _ = encode_pairs(model, [req.prompt], [req.target])
    return forward_logits(model, ids, mask, end)[0, mask[0].bool()]


@pytest.mark.parametrize("positions", ["all", "last"])
def test_protect_keeps_earlier_keys_outputs(positions):
    """With `protect`, a later edit's step is orthogonal to the earlier edits' keys: the
    memory's output at those keys stays as it was (the null-space invariant). With every
    position protected ("all") the earlier edit is served identically at every token of its
    prompt and target; with the last prompt token only, the other tokens move."""
    model = lm()
    w = wise(model, shard_size=10, mask_ratio=1.0, protect_positions=positions)
    w.edit([EDITS[0]])
    mem = w.memories[0]
    keys = mem.keys[EDITS[0].fact]
    assert keys.shape[0] == (1 if positions == "last" else len(served(model, EDITS[0])))
    first, before, tokens = mem.delta().clone(), mem.delta() @ keys.T, served(model, EDITS[0])
    w.edit([EDITS[1]])
    w.edit([EDITS[2]])
    assert w.memory_of(EDITS[2].edit_id) == 0
    assert not torch.allclose(mem.delta(), first, atol=1e-4)  # the later edits did change it
    assert torch.allclose(mem.delta() @ keys.T, before, atol=1e-4)
    assert torch.allclose(served(model, EDITS[0]), tokens, atol=1e-3) == (positions == "all")
    unprotected = wise(lm(), shard_size=10, mask_ratio=1.0, protect=False)
    for r in EDITS[:3]:
        unprotected.edit([r])
    um = unprotected.memories[0]
    assert not torch.allclose(um.delta() @ keys.T, before, atol=1e-4)


@pytest.mark.parametrize("unit", ["entry", "row"])
def test_protect_holds_under_either_mask(unit):
    """The projection comes after the mask, so a masked step stays in the null space whether
    the mask keeps entries (the step then leaves its entries) or rows (it stays in them)."""
    w = wise(lm(), shard_size=1, mask_ratio=0.3, mask_unit=unit)
    w.edit([EDITS[0]])
    mem = w.memories[0]
    keys = mem.keys[EDITS[0].fact]
    before = mem.delta() @ keys.T
    w.edit([EDITS[1]])
    assert mem.current.abs().sum() > 0
    assert torch.allclose(mem.delta() @ keys.T, before, atol=1e-4)
    assert bool((mem.current[~mem.mask] != 0).any()) == (unit == "entry")


def test_momentum_restart_drops_the_momentum_only_when_the_loss_rose():
    from lifelong.methods.wise_faiss.trainer import restart_if_worse
    p = torch.zeros(3, requires_grad=True)
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    p.grad = torch.ones(3)
    opt.step()
    buffer = opt.state[p]["momentum_buffer"]
    seen = [float("inf")]
    for loss, kept in [(1.0, True), (0.5, True), (0.5, True), (0.7, False)]:
        restart_if_worse(opt, loss, seen)
        assert bool(buffer.abs().sum() > 0) == kept
        buffer.fill_(1.0)


def test_momentum_restart_changes_what_an_edit_trains():
    """A step size at which the loss rises on some step: with restart the edit trains
    differently (without the setting nothing changes: the golden rows)."""
    steps = [wise(lm(), lr=0.5, momentum=0.9, steps=30, stop_loss=0.0, momentum_restart=on)
             for on in (False, True)]
    for w in steps:
        w.edit([EDITS[0]])
    assert not torch.allclose(steps[0].memories[0].delta(), steps[1].memories[0].delta())


def test_a_memory_full_of_keys_hands_new_edits_to_a_new_memory():
    """Earlier keys spanning the key width would leave the next edit no null space to be
    written in: the memory counts as full and the edit opens a new memory, where it is
    learned, and the full memory is left as it was."""
    model = lm()
    w = wise(model, shard_size=10, mask_ratio=1.0, protect_share=0.5, steps=30, lr=0.5)
    w.edit([EDITS[0]])
    mem = w.memories[0]
    width = mem.merged.shape[1]
    g = torch.Generator().manual_seed(0)
    for i in range(width):  # earlier facts whose keys span the key width
        mem.remember_key(f"filler{i}", torch.randn(1, width, generator=g))
    before = mem.delta().clone()
    w.edit([EDITS[1]])
    assert torch.equal(mem.delta(), before)
    assert len(w.memories) == 2 and w.memory_of(EDITS[1].edit_id) == 1
    assert predicts(model, EDITS[1].prompt, EDITS[1].target)


def test_merge_mode_opens_a_new_memory_when_protect_share_is_reached():
    model = lm()
    w = wise(model, mode="merge", protect_share=2 / 128, mask_ratio=1.0, shard_size=10,
             steps=30, lr=0.5, protect_positions="last")  # full after 2 one-key facts
    assert w.w_main.shape[1] == 128
    for r in EDITS:
        w.edit([r])
    assert [len(m.keys) for m in w.memories] == [2, 2]
    assert w.route([r.prompt for r in EDITS]) == [0, 0, 1, 1]
    assert all(predicts(model, r.prompt, r.target) for r in EDITS)
    # every position protected: each fact's keys span several dimensions, a memory per fact
    w = wise(lm(), mode="merge", protect_share=2 / 128, mask_ratio=1.0, shard_size=10,
             steps=30, lr=0.5)
    for r in EDITS:
        w.edit([r])
    assert [len(m.keys) for m in w.memories] == [1, 1, 1, 1]
    assert all(m.protected_rank() >= 2 for m in w.memories)


def test_faiss_router_sends_far_prompts_to_main():
    model = lm()
    w = wise(model, key_radius=1e-4)
    w.edit([EDITS[0]])
    assert w.route([EDITS[0].prompt, *UNRELATED]) == [0] + [None] * len(UNRELATED)
    wide = wise(lm(), key_radius=100.0, claim_rate=1.0)
    wide.edit([EDITS[0]])
    assert wide.route(list(UNRELATED)) == [0] * len(UNRELATED)


def test_claim_rate_scales_the_radius_until_the_pool_is_unclaimed():
    """At a radius that takes every prompt, the guard shrinks it until no more than
    claim_rate of the unrelated pool is routed (0: none; the edit's own prompt still is);
    where the radius claims none of the pool the factor is 1; the factor survives a state
    round trip; claim_rate 1 is the bare radius."""
    w = wise(lm(), key_radius=100.0, claim_rate=0.0)
    w.edit([EDITS[0]])
    assert w.route([EDITS[0].prompt, *UNRELATED]) == [0] + [None] * len(UNRELATED)
    assert 0 < w.radius_factor() < 1
    again = wise(lm(), key_radius=100.0, claim_rate=0.0)
    again.load_state_dict(w.state_dict())
    assert again.radius_factor() == w.radius_factor()
    assert again.route(list(UNRELATED)) == [None] * len(UNRELATED)
    half = wise(lm(), key_radius=100.0, claim_rate=0.5)
    half.edit([EDITS[0]])
    assert sum(r is not None for r in half.route(list(UNRELATED))) == len(UNRELATED) // 2
    narrow = wise(lm(), key_radius=1e-4)
    narrow.edit([EDITS[0]])
    assert narrow.radius_factor() == 1.0


def test_router_tokens_read_the_prompt_only():
    from lifelong.methods._common.keys import router_tokens
    attn = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    end = torch.tensor([3, 4])
    assert router_tokens(attn, end, "mean").tolist() == [
        [False, True, True, False, False], [True, True, True, True, False]]
    assert router_tokens(attn, end, "last").tolist() == [
        [False, False, True, False, False], [False, False, False, True, False]]


def test_rehearsal_is_seeded_and_skips_the_edited_fact():
    model = lm()
    w = wise(model, replay=2)
    for r in EDITS[:3]:
        w.edit([r])
    again = EditRequest("e9", EDITS[1].prompt, "Halvik", EDITS[1].fact)
    picked = w._rehearsal(w.memories[0], again)
    assert len(picked) == 2 and all(r.fact != again.fact for r in picked)
    assert picked == w._rehearsal(w.memories[0], again)


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
    assert len(w.table) == 4
    assert w.route([EDITS[3].prompt])[0] == 1


def test_reedit_replaces_the_older_key():
    model = lm()
    w = wise(model, mode="retrieve", memory_size=1)
    w.edit([EDITS[0]])
    w.edit([EditRequest("e9", EDITS[0].prompt, "Halvik", EDITS[0].fact)])
    assert sorted(w.table.owner.values()) == ["e9"]


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 3))
def test_retract_equals_never_editing(which):
    """Rebuilding the memory without an edit gives the memory of a stream without it."""
    a, b = lm(), lm()
    wa, wb = wise(a, shard_size=2, retract="rebuild"), wise(b, shard_size=2, retract="rebuild")
    for r in EDITS:
        wa.edit([r])
    wa.retract(EDITS[which].edit_id)
    for r in EDITS:
        if r is not EDITS[which]:
            wb.edit([r])
    probe = [r.prompt for r in EDITS] + list(UNRELATED)
    assert torch.equal(logits(a, probe), logits(b, probe))


def test_unroute_retraction_restores_the_base_model_and_the_previous_value():
    model = lm()
    base = logits(model, [EDITS[0].prompt, EDITS[1].prompt])
    # (a random tiny model cannot be confident: its final norm bounds the logits, so the
    # checks are on the argmax, and stop_loss 0 trains every step)
    w = wise(model, steps=30, lr=2.0, stop_loss=0.0, mask_ratio=1.0)
    w.edit([EDITS[0]])
    w.edit([EDITS[1]])
    served = logits(model, [EDITS[1].prompt])
    w.retract("e0")  # default: unroute (FAISS router)
    assert w.memory_of("e0") is None and w.route([EDITS[0].prompt]) == [None]
    after = logits(model, [EDITS[0].prompt, EDITS[1].prompt])
    assert torch.equal(after[0], base[0])  # bit-identical: the main memory answers
    assert torch.allclose(after[1, -served.shape[1]:], served[0], atol=1e-6)
    # a re-edited fact: retracting the newest edit brings the previous value back
    again = EditRequest("e9", EDITS[1].prompt, "Halvik", EDITS[1].fact)
    w.edit([again])
    assert predicts(model, EDITS[1].prompt, "Halvik")
    assert not predicts(model, EDITS[1].prompt, EDITS[1].target)
    w.retract("e9")
    assert w.memory_of("e1") is not None and w.memory_of("e9") is None
    assert predicts(model, EDITS[1].prompt, EDITS[1].target)


NEIGHBOUR = EditRequest("e5", "Aldric works for the", "Zentro", "f5")


@pytest.mark.parametrize("tombstone", [True, False])
def test_a_retracted_prompt_cannot_reach_its_step_through_a_neighbouring_key(tombstone):
    """Unrouting drops the edit's key but not its trained step: a neighbour's key in the same
    memory (the shipped 1000-edit run's leak) would route the retracted prompt back to it.
    The tombstone keeps it on the main memory, bit-identical to the base model."""
    model = lm()
    base = logits(model, [EDITS[0].prompt])
    w = wise(model, key_radius=50.0, claim_rate=1.0, tombstone=tombstone)
    w.edit([EDITS[0]])
    w.edit([NEIGHBOUR])
    w.retract("e0")
    if not tombstone:  # what unrouting alone leaves: the leak the tombstone closes
        assert w.route([EDITS[0].prompt]) == [0]
        return
    assert w.route([EDITS[0].prompt]) == [None]
    assert torch.equal(logits(model, [EDITS[0].prompt]), base)
    assert w.route([NEIGHBOUR.prompt]) == [0], "the neighbour's own prompt is still served"


@pytest.mark.parametrize("fact_identity", [True, False])
def test_a_tombstone_never_blocks_a_later_edit_of_the_same_prompt(fact_identity):
    """A re-edit with the retracted prompt lies at distance 0 from the tombstone: the live key
    wins the tie (and, with the fact oracle, the fact's tombstone is retired)."""
    model = lm()
    w = wise(model, key_radius=50.0, claim_rate=1.0, use_fact_identity=fact_identity)
    w.edit([EDITS[0]])
    w.retract("e0")
    assert len(w.tombs) == 1
    w.edit([EditRequest("e7", EDITS[0].prompt, "Halvik", EDITS[0].fact)])
    assert len(w.tombs) == (0 if fact_identity else 1)
    assert w.route([EDITS[0].prompt]) == [0]


def test_tombstones_survive_a_saved_state():
    model = lm()
    w = wise(model, key_radius=50.0, claim_rate=1.0)
    w.edit([EDITS[0]])
    w.edit([NEIGHBOUR])
    w.retract("e0")
    state = w.state_dict()
    w.detach()
    other = lm()
    again = wise(other, key_radius=50.0, claim_rate=1.0)
    again.load_state_dict(state)
    assert again.route([EDITS[0].prompt, NEIGHBOUR.prompt]) == [None, 0]
    assert len(again.tombs) == 1


def test_unroute_needs_the_faiss_router():
    from lifelong.errors import NotSupported
    w = wise(lm(), router="activation", retract="unroute")
    w.edit([EDITS[0]])
    with pytest.raises(NotSupported):
        w.retract("e0")


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


def test_bench_wise_runs_small():
    from lifelong.bench_wise import bench_wise
    out = bench_wise(None, edits=3, memories=(1, 2), queries=32, echo=lambda *_: None)
    assert out["edits"] == 3 and out["merge"]["shards"] == 1 and out["edit_ms"]["p50"] > 0
    assert {"bare", "memory"} <= set(out["queries"])
    assert [(r["memories"], r["router"]) for r in out["routing"]] == [
        (1, "faiss"), (1, "activation"), (2, "faiss"), (2, "activation")]


def test_bench_router_keys_fills_the_table_and_routes_what_it_holds():
    """`bench wise --keys`: the router holds the 4 edits' keys plus the filled ones; the
    prompts it holds go to the memory, prompts it does not hold stay on the main one (the
    radius calibrated on the unrelated pool), and queries are timed both ways."""
    from lifelong.bench_wise import bench_router_keys
    (row,) = bench_router_keys(None, [40], echo=lambda *_: None)
    assert row["keys"] == 44 and row["held_routed"] == 32 and row["strangers_routed"] <= 2
    assert row["memory"]["batch1_ms"]["p50"] > 0 and row["bare"]["batch32_ms"]["p50"] > 0
