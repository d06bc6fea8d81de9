"""`wise` (the paper's method) on a tiny GPT-2: merges that change the served weights,
order-free merges of shards trained from one start, routing, the norm constraint, exact
retraction across a merge; and, for `wise` and `wise-faiss` alike, a frozen base model.
(The contract suites cover the common protocol of both.)"""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import make_tiny_model, tiny_tokenizer

from lifelong import layers
from lifelong.errors import NotSupported
from lifelong.methods import AttachContext, EditRequest, build_method
from lifelong.methods.wise.memory import merge_shards
from lifelong.model import LM
from lifelong.nethook import Trace
from lifelong.scoring import encode_pairs, forward_logits, greedy_ids

pytestmark = pytest.mark.usefixtures("single_thread")

UNRELATED = ("Caspar speaks", "Delphine plays", "Hestia plays", "Gideon speaks")
EDITS = [EditRequest(f"e{i}", p, t, f"f{i}") for i, (p, t) in enumerate([
    ("Aldric works for", "Zentro"), ("Brenna was born in", "Kyoto"),
    ("Juniper speaks", "Welsh"), ("Kaspar plays", "rugby")])]
#: cheap settings that still train on the tiny model
FAST = {"steps": 12, "lr": 4.0, "prefixes": 1, "negatives": 4}


def lm() -> LM:
    return LM(make_tiny_model("gpt2", seed=0, n_layer=2, width=32), tiny_tokenizer(), "tiny", "")


def attached(model: LM, name: str = "wise", **settings):
    method = build_method(name, (FAST if name == "wise" else {"steps": 8}) | settings, seed=0)
    method.attach(model, AttachContext(seed=0, unrelated_prompts=UNRELATED))
    return method


@torch.no_grad()
def served_output(model: LM, prompts) -> torch.Tensor:
    """The edited projection's output (with the method's hooks) for `prompts`."""
    _, module = layers.edit_target(model.model, None)
    ids, mask, end, _, _ = encode_pairs(model, list(prompts), ["x"] * len(prompts))
    with Trace(module, capture="output") as tr:
        forward_logits(model, ids, mask, end)
    return tr.output.clone()


# ---- merging ------------------------------------------------------------------------------
def merge_effect(name: str, **settings) -> float:
    """max |change| of the served projection output on the edits' prompts made by
    `consolidate()` after two one-edit shards whose masks overlap."""
    model = lm()
    method = attached(model, name, shard_size=1, **settings)
    for r in EDITS[:2]:
        method.edit([r])
    prompts = [r.prompt for r in EDITS[:2]]
    before = served_output(model, prompts)
    assert method.consolidate() == {"shards_merged": 2}
    return float((served_output(model, prompts) - before).abs().max())


def test_a_merge_of_overlapping_shards_changes_the_served_weights():
    """TIES over two shards that share entries (masks of rho = 0.5) resolves their conflicts:
    the merged memory differs from either shard and from their sum, and what the memory
    serves changes; a merge that were a plain sum or a no-op fails this."""
    model = lm()
    method = attached(model, shard_size=1, mask_ratio=0.5)
    for r in EDITS[:2]:
        method.edit([r])
    a, b = (s.delta.clone() for s in method.memories[0].shards)
    assert bool((a != 0).logical_and(b != 0).any())  # the shards overlap
    method.consolidate()
    merged = method.memories[0].merged
    assert float((merged - (a + b)).abs().max()) > 0
    assert min(float((merged - d).abs().max()) for d in (a, b)) > 0
    assert merge_effect("wise", mask_ratio=0.5) > 0


def test_the_faiss_variant_merge_is_bookkeeping_with_its_defaults():
    """What docs/wise.md says of `wise-faiss`: disjoint row masks and density 1.0 make the
    merge a sum, so consolidate() leaves the served outputs bit for bit (the test above,
    run on this method, fails)."""
    assert merge_effect("wise-faiss") == 0.0


def test_merging_shards_trained_from_one_start_is_order_independent():
    """Every shard starts from the same weights (here the main ones) under its own mask, so
    a shard holds only its own edits; TIES of them is the same in any order, bit for bit,
    also weighted against an already merged memory."""
    method = attached(lm(), shard_size=1, mask_ratio=0.5)
    for r in EDITS[:3]:
        method.edit([r])
    shards = method.memories[0].shards
    for s in shards:  # nothing outside its own mask: not trained on top of the others
        assert bool((s.delta[~s.mask] == 0).all())
    deltas = [s.delta for s in shards]
    first = merge_shards(deltas, None, "ties", 0.53, 0.6, 0)
    prior = merge_shards(deltas[:1], None, "ties", 0.53, 0.6, 0)
    for order in itertools.permutations(deltas):
        assert torch.equal(merge_shards(list(order), None, "ties", 0.53, 0.6, 0), first)
        assert torch.equal(merge_shards(list(order), prior, "ties", 0.53, 0.6, 0),
                           merge_shards(deltas, prior, "ties", 0.53, 0.6, 0))


def test_the_sum_control_adds_every_shard_and_the_merged_memory_at_weight_one():
    """merge = "sum" (the control against TIES): a cycle's merged delta is the plain sum of
    its shards and of the memory merged before it; where the shards overlap it differs from
    what TIES serves."""
    method = attached(lm(), shard_size=1, mask_ratio=0.5, merge="sum")
    for r in EDITS[:2]:
        method.edit([r])
    a, b = (s.delta.clone() for s in method.memories[0].shards)
    method.consolidate()
    first = method.memories[0].merged.clone()
    assert torch.equal(first, a + b)
    assert float((first - merge_shards([a, b], None, "ties", 0.53, 0.6, 0)).abs().max()) > 0
    method.edit([EDITS[2]])
    c = method.memories[0].shards[0].delta.clone()
    method.consolidate()
    assert torch.equal(method.memories[0].merged, c + first)


def test_shards_can_start_from_the_merged_memory():
    method = attached(lm(), shard_size=1, shard_start="merged")
    method.edit([EDITS[0]])
    method.consolidate()
    merged = method.memories[0].merged.clone()
    method.edit([EDITS[1]])
    shard = method.memories[0].shards[0]
    assert torch.equal(shard.delta[~shard.mask], merged[~shard.mask])


# ---- routing, constraint, retraction ----------------------------------------------------------
def test_a_merged_edit_routes_to_the_side_memory_and_unrelated_prompts_to_the_main():
    """Trained with the margin loss against the unrelated prompts, after a merge: each
    edit's prompt passes the memory's threshold, the unrelated prompts do not."""
    method = attached(lm(), steps=60, shard_size=1)
    for r in EDITS[:2]:
        method.edit([r])
    method.consolidate()
    assert method.route([r.prompt for r in EDITS[:2]]) == [0, 0]
    assert method.route(list(UNRELATED)) == [None] * len(UNRELATED)


def test_the_side_memory_stays_within_the_norm_constraint():
    method = attached(lm(), norm_constraint=1e-3, shard_size=1)
    for r in EDITS[:2]:
        method.edit([r])
    shards = method.memories[0].shards
    assert max(float(s.delta.abs().max()) for s in shards) == pytest.approx(1e-3)
    method.consolidate()
    assert float(method.memories[0].merged.abs().max()) <= float(torch.tensor(1e-3))


def test_retraction_across_a_merge_equals_never_editing():
    """Rebuild replays the memory's log without the edit, merging where it was merged."""
    a, b = attached(lm(), shard_size=2), attached(lm(), shard_size=2)
    for r in EDITS[:3]:
        a.edit([r])
    a.consolidate()
    a.edit([EDITS[3]])
    a.retract("e1")
    for r in (EDITS[0], EDITS[2]):
        b.edit([r])
    b.consolidate()
    b.edit([EDITS[3]])
    sa, sb = a.state_dict(), b.state_dict()
    assert torch.equal(sa["memories"][0]["merged"], sb["memories"][0]["merged"])
    assert [torch.equal(x["delta"], y["delta"]) for x, y in
            zip(sa["memories"][0]["shards"], sb["memories"][0]["shards"])] == [True]


def test_retraction_can_be_refused_and_says_so():
    """retract = 'unsupported': the method declares no retraction and refuses one, leaving
    its memories as they were."""
    a = attached(lm(), shard_size=2, retract="unsupported")
    assert a.retraction is None and attached(lm(), shard_size=2).retraction == "exact"
    for r in EDITS[:2]:
        a.edit([r])
    before = a.state_dict()["memories"][0]["shards"][0]["delta"].clone()
    with pytest.raises(NotSupported, match="unsupported"):
        a.retract("e1")
    assert torch.equal(a.state_dict()["memories"][0]["shards"][0]["delta"], before)


@pytest.mark.parametrize("pool", ["stream", "stream+train", "stream-or-train"])
def test_a_chunk_holding_the_whole_stream_takes_its_negatives_from_the_train_split(pool):
    """Where the stream leaves no unrelated prompt (a chunk holding every edit), the margin
    loss's negatives and the score's scale come from the train split's locality prompts, none
    of them probed; with the stream's pool alone there are none (the margin trains against
    "." and the scale is 1). Where the stream leaves some, the default keeps exactly those."""
    from lifelong.methods import TrainRecord
    split = tuple(TrainRecord(EditRequest(f"t{i}", f"p{i}", "x", f"f{i}"), (), ((p, "a"),))
                  for i, p in enumerate(UNRELATED))
    method = build_method("wise", FAST | {"negative_pool": pool}, seed=0)
    method.attach(lm(), AttachContext(seed=0, train_split=split,
                                      probed_prompts=frozenset({UNRELATED[0]})))
    assert method.unrelated == ([] if pool == "stream" else list(UNRELATED[1:]))
    assert (method.scale == 1.0) == (pool == "stream")
    streamed = build_method("wise", FAST, seed=0)
    streamed.attach(lm(), AttachContext(seed=0, unrelated_prompts=UNRELATED[2:], train_split=split))
    assert streamed.unrelated == list(UNRELATED[2:])


def test_retrieve_mode_opens_a_memory_every_memory_size_edits():
    method = attached(lm(), mode="retrieve", memory_size=2)
    for r in EDITS:
        method.edit([r])
    assert len(method.memories) == 2
    assert [method.memory_of(r.edit_id) for r in EDITS] == [0, 0, 1, 1]


# ---- both WISE methods: the base model is frozen ---------------------------------------------
@pytest.mark.parametrize("name", ["wise", "wise-faiss"])
def test_no_base_parameter_gets_a_gradient(name):
    """Editing trains the side memory only: no parameter of the model gets a .grad, and
    every requires_grad flag is as before attach after detach."""
    model = lm()
    params = list(model.model.parameters())
    for i, p in enumerate(params):
        p.requires_grad_(i % 2 == 0)  # a mixed pattern, to see it restored
    flags = [p.requires_grad for p in params]
    method = attached(model, name, shard_size=1)
    for r in EDITS[:2]:
        method.edit([r])
    method.consolidate()
    assert all(p.grad is None for p in params)
    method.detach()
    assert [p.requires_grad for p in params] == flags


def test_bench_wise_runs_small_and_names_its_method():
    from lifelong.bench_wise import bench_wise
    out = bench_wise(None, edits=3, memories=(1, 2), queries=32, echo=lambda *_: None,
                     settings={"steps": 3, "prefixes": 1}, method="wise")
    assert out["method"] == "wise" and out["edits"] == 3 and out["merge"]["shards"] == 1
    assert [(r["memories"], r["router"]) for r in out["routing"]] == [
        (1, "activation"), (2, "activation")]


def test_bench_wise_command_benches_both_methods(tmp_path):
    import json

    from click.testing import CliRunner

    from lifelong.bench import bench
    path = tmp_path / "b.json"
    res = CliRunner().invoke(bench, ["wise", "--edits", "2", "--memories", "1", "--queries",
                                     "32", "--json", str(path)])
    assert res.exit_code == 0, res.output
    assert "method: wise\n" in res.output and "method: wise-faiss\n" in res.output
    assert set(json.loads(path.read_text())) == {"wise", "wise-faiss"}


# ---- prefixes -------------------------------------------------------------------------------
def test_prefixes_are_written_by_the_unedited_model_once_and_shared():
    """`prefix_source = "generated"` (the reference): each prefix is a start followed by what
    greedy decoding of the unedited model writes after it, prefix_tokens long for the first
    five starts and twice that for the next; the same for every edit, seed and attach.
    `random` draws other tokens per edit."""
    model = lm()
    a = attached(model, prefixes=7, prefix_tokens=3)
    texts = a._prefixed(EDITS[0])
    assert texts[0] == EDITS[0].prompt and len(texts) == 8
    assert [t.removesuffix(" " + EDITS[1].prompt) for t in a._prefixed(EDITS[1])[1:]] == a.heads
    for i, head in enumerate(a.heads):
        start = ("I", "You", "Because", "Yes", "Q:")[i % 5]
        written = model.tok.decode(list(greedy_ids(model, [start], 3 * (1 + i // 5))[0]),
                                   skip_special_tokens=True)
        assert head == f"{start} {written}".strip()
    a.hooks.close()
    again = build_method("wise", FAST | {"prefixes": 7, "prefix_tokens": 3}, seed=5)
    again.attach(model, AttachContext(seed=5, unrelated_prompts=UNRELATED))
    assert again.heads == a.heads
    again.hooks.close()
    r = attached(model, prefixes=7, prefix_tokens=3, prefix_source="random")
    assert r.heads == [] and r._prefixed(EDITS[0])[1:] != texts[1:]
    assert r._prefixed(EDITS[0])[1:] != r._prefixed(EDITS[1])[1:]
