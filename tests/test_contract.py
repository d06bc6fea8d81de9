"""The contract every registered method must honour, run against each of them on a tiny GPT-2
(the PEFT `TEST_CASES` pattern): a new method file is picked up here automatically, and so is
the template method (`lifelong/methods/_template.py`), which the registry skips.

Core: edit -> a receipt; state round trip -> identical outputs on a fresh model; detach ->
bit-identical to the base model. Then one contract per capability, run against every method
that declares it (`lifelong.methods.base`): Retractable (what `retraction` promises, unknown
ids), Consolidating, Routing, BatchEditing, WeightDeltas; and what a method that lacks one gets from the
platform (NotSupported, nothing merged, one edit at a time)."""

from __future__ import annotations

import dataclasses
import io

import pytest
import torch
from conftest import make_tiny_model, tiny_tokenizer

from lifelong.config import from_mapping
from lifelong.errors import ConfigError, NotSupported
from lifelong.methods import (
    AttachContext,
    BatchEditing,
    Consolidating,
    EditRequest,
    Memory,
    MemoryBase,
    Retractable,
    Routing,
    UnknownEdit,
    WeightDeltas,
    available_methods,
    consolidate_memory,
    edit_batch,
    retract_edit,
    side_weight_deltas,
)
from lifelong.methods._template import TemplateMethod
from lifelong.methods.context import TrainRecord
from lifelong.model import LM
from lifelong.scoring import encode_pairs, forward_logits, score_pairs

pytestmark = pytest.mark.usefixtures("single_thread")

#: cheaper settings for the tiny model; a method not listed runs with its defaults
FAST_SETTINGS: dict[str, dict] = {"ft": {"steps": 8, "lr": 0.02}, "wise-faiss": {"steps": 8, "shard_size": 1},
                                   "wise": {"steps": 8, "shard_size": 1, "prefixes": 1, "lr": 4.0},
                                   "grace": {"steps": 10}, "defer": {"steps": 10},
                                   "template": {"steps": 10}, "mend": {"steps": 2, "accumulate": 2}, "instructedit": {"steps": 2, "accumulate": 2}, "ke": {"steps": 2}, "serac": {"cls_steps": 20, "cf_steps": 5, "batch_size": 4},
                                   "kn": {"ig_steps": 4},
                                   "rome": {"stats_fallback": True, "prefixes": 2, "steps": 5},
                                   "memit": {"stats_fallback": True, "prefixes": 2, "steps": 5},
                                   "alphaedit": {"stats_fallback": True, "prefixes": 2, "steps": 5}}
CLASSES = {**available_methods(), "template": TemplateMethod}
METHODS = sorted(CLASSES)
PROBES = ["Aldric works for", "The employer of Aldric is", "Brenna was born in", "Caspar speaks"]
EDITS = [EditRequest("e1", "Aldric works for", "Zentro", "Aldric|employer", "Aldric"),
         EditRequest("e2", "Brenna was born in", "Kyoto", "Brenna|city", "Brenna")]


#: a train split for methods that learn before the stream (MEND); people never probed here
TRAIN_SPLIT = tuple(TrainRecord(EditRequest(f"t{i}", f"{p} works for", c, f"{p}|employer", p),
                                (f"The employer of {p} is",), ((f"{p} was born in", "Oslo"),))
                    for i, (p, c) in enumerate(zip(["Delphine", "Evander", "Fenella", "Gideon"],
                                                   ["Vantex", "Orbica", "Halvik", "Lumora"])))


def fresh_lm(seed: int = 0) -> LM:
    return LM(make_tiny_model("gpt2", seed=seed, n_layer=2, width=32), tiny_tokenizer(), "tiny", "")


@torch.no_grad()
def logits(lm: LM) -> torch.Tensor:
    ids, mask, end, _, _ = encode_pairs(lm, PROBES, ["Zentro"] * len(PROBES))
    return forward_logits(lm, ids, mask, end)


def attached(name: str, lm: LM, seed: int = 0, **settings):
    cls = CLASSES[name]
    method = cls(from_mapping(cls.Config, {**FAST_SETTINGS.get(name, {}), **settings}), seed=seed)
    method.attach(lm, AttachContext(seed=seed, unrelated_prompts=tuple(PROBES[2:]),
                                    train_split=TRAIN_SPLIT))
    return method


def declaring(capability: type) -> list[str]:
    return [n for n in METHODS if issubclass(CLASSES[n], capability)]


def test_registry_finds_the_methods_in_files_and_folders():
    assert {"none", "ft", "grace", "defer", "wise-faiss"} <= set(available_methods())
    assert "template" not in available_methods()  # `_template.py` is skipped


@pytest.mark.parametrize("name", METHODS)
def test_config_is_frozen_and_strict_and_the_class_declares_itself(name):
    cls = CLASSES[name]
    cfg = from_mapping(cls.Config, {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.some_field = 1
    with pytest.raises(ConfigError, match="unknown key"):
        from_mapping(cls.Config, {"no_such_setting": 1}, where="m")
    assert cls.summary, "a method needs a one-line summary for `lifelong methods`"
    assert issubclass(cls, MemoryBase) and cls.memory_kind in ("weights", "hooks", "nothing")
    assert isinstance(cls(cfg), Memory)


@pytest.mark.parametrize("name", METHODS)
def test_edit_receipt_and_footprint(name):
    lm = fresh_lm()
    method = attached(name, lm)
    receipt = method.edit([EDITS[0]])
    assert receipt.applied is True, "a plain edit of a fresh fact must be applied"
    assert isinstance(receipt.steps, int) and receipt.steps >= 0
    assert receipt.converged in (None, True, False)
    assert method.footprint() >= 0
    assert len(score_pairs(lm, PROBES, ["Zentro"] * len(PROBES))) == len(PROBES)


@pytest.mark.parametrize("name", METHODS)
def test_detach_restores_the_base_model_exactly(name):
    lm = fresh_lm()
    before = logits(lm)
    flags = [p.requires_grad for p in lm.model.parameters()]
    method = attached(name, lm)
    for r in EDITS:
        method.edit([r])
    consolidate_memory(method)
    method.detach()
    assert torch.equal(logits(lm), before)
    assert [p.requires_grad for p in lm.model.parameters()] == flags


@pytest.mark.parametrize("name", METHODS)
def test_editing_accumulates_no_gradient_in_the_base_model(name):
    """`frozen(model)`: the backward pass of an edit reaches the method's own parameters."""
    lm = fresh_lm()
    method = attached(name, lm)
    method.edit([EDITS[0]])
    touched = [n for n, p in lm.model.named_parameters() if p.grad is not None]
    if CLASSES[name].memory_kind != "weights":
        assert touched == []


@pytest.mark.parametrize("name", METHODS)
def test_state_round_trip_gives_identical_outputs(name):
    lm = fresh_lm()
    method = attached(name, lm)
    for r in EDITS:
        method.edit([r])
    state = method.state_dict()
    expected = logits(lm)
    lm2 = fresh_lm()
    method2 = attached(name, lm2)
    method2.load_state_dict(state)
    assert torch.equal(logits(lm2), expected)


@pytest.mark.parametrize("name", METHODS)
def test_state_is_plain_tensors_and_data(name):
    """The store loads states with torch.load(weights_only=True): only tensors and plain data."""
    lm = fresh_lm()
    method = attached(name, lm)
    method.edit([EDITS[0]])
    buf = io.BytesIO()
    torch.save(method.state_dict(), buf)
    torch.load(io.BytesIO(buf.getvalue()), weights_only=True)


# ---- Retractable ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", declaring(Retractable))
def test_retractable_keeps_its_promise(name):
    """"exact": retracting the newest edit gives the outputs from before it, and retracting
    an older one the outputs of a memory that never saw it; "own": the edit's own prompt
    answers as before any edit; None: NotSupported, saying why."""
    lm = fresh_lm()
    base = logits(lm)
    method = attached(name, lm)
    method.edit([EDITS[1]])
    before_edit = logits(lm)
    method.edit([EDITS[0]])
    if method.retraction is None:
        with pytest.raises(NotSupported, match=".+"):
            retract_edit(method, "e1")
        return
    retract_edit(method, "e1")
    after = logits(lm)
    if method.retraction == "own":
        assert torch.allclose(after[0], base[0], atol=1e-5)
        return
    assert torch.allclose(after, before_edit, atol=1e-5)
    method.edit([EDITS[0]])
    retract_edit(method, "e2")  # the older edit: as if only e1 had been made
    lm2 = fresh_lm()
    attached(name, lm2).edit([EDITS[0]])
    assert torch.allclose(logits(lm), logits(lm2), atol=1e-5)


@pytest.mark.parametrize("name", declaring(Retractable))
def test_unknown_or_twice_retracted_ids_raise_unknown_edit(name):
    method = attached(name, fresh_lm())
    if method.retraction is None:
        pytest.skip("this configuration refuses every retraction")
    method.edit([EDITS[0]])
    with pytest.raises(UnknownEdit, match="no-such-edit"):
        method.retract("no-such-edit")
    retract_edit(method, "e1")
    with pytest.raises(UnknownEdit):
        method.retract("e1")


@pytest.mark.parametrize("name", sorted(set(METHODS) - set(declaring(Retractable))))
def test_a_method_that_cannot_retract_is_refused_with_its_reason(name):
    method = attached(name, fresh_lm())
    method.edit([EDITS[0]])
    with pytest.raises(NotSupported, match=name):
        retract_edit(method, "e1")


# ---- Consolidating ------------------------------------------------------------------------
@pytest.mark.parametrize("name", declaring(Consolidating))
def test_consolidating_reports_what_it_merged_and_keeps_working(name):
    lm = fresh_lm()
    method = attached(name, lm)
    assert method.consolidate() is None  # nothing to merge yet
    for r in EDITS:
        method.edit([r])
    info = method.consolidate()
    assert isinstance(info, dict) and info
    assert method.consolidate() is None  # merged already
    state = method.state_dict()
    lm2 = fresh_lm()
    attached(name, lm2).load_state_dict(state)
    assert torch.equal(logits(lm2), logits(lm))


@pytest.mark.parametrize("name", sorted(set(METHODS) - set(declaring(Consolidating))))
def test_consolidating_nothing_for_the_others(name):
    method = attached(name, fresh_lm())
    method.edit([EDITS[0]])
    assert consolidate_memory(method) is None


# ---- Routing ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", declaring(Routing))
def test_routing_names_the_memory_of_each_edit(name):
    method = attached(name, fresh_lm())
    assert method.route(PROBES) == [None] * len(PROBES)  # no memory yet: the main model
    for r in EDITS:
        method.edit([r])
    where = [method.memory_of(r.edit_id) for r in EDITS]
    assert all(isinstance(w, int) for w in where) and method.memory_of("nope") is None
    routes = method.route([r.prompt for r in EDITS])
    assert routes == where  # an edit's own prompt goes to the memory holding it
    for router in method.shadow_routers:
        assert len(method.route(PROBES, router=router)) == len(PROBES)


# ---- WeightDeltas ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", declaring(WeightDeltas))
def test_weight_deltas_name_parameters_in_their_layout_and_leave_them_alone(name):
    """Nothing before an edit; after edits, changes to named parameters of the model, each
    of its parameter's shape, nonzero, while the model's own weights stay as they were."""
    lm = fresh_lm()
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    method = attached(name, lm)
    assert method.weight_deltas() == {}
    for r in EDITS:
        method.edit([r])
    deltas = method.weight_deltas()
    assert deltas and set(deltas) <= set(before)
    assert all(d.shape == before[n].shape and float(d.norm()) > 0 for n, d in deltas.items())
    assert all(torch.equal(p, before[n]) for n, p in lm.model.named_parameters())


@pytest.mark.parametrize("name", sorted(set(METHODS) - set(declaring(WeightDeltas))))
def test_no_side_weight_deltas_for_the_others(name):
    method = attached(name, fresh_lm())
    method.edit([EDITS[0]])
    assert side_weight_deltas(method) == {}


# ---- BatchEditing ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", METHODS)
def test_edit_batch_gives_one_receipt_per_request(name):
    """A BatchEditing method edits the batch in one call; the platform gives every other
    method the requests one by one. Either way: one receipt per request, and a batch of one
    is the same edit as `edit([request])`."""
    lm, lm2 = fresh_lm(), fresh_lm()
    method, single = attached(name, lm), attached(name, lm2)
    receipts = edit_batch(method, EDITS[:1])
    assert receipts == [single.edit(EDITS[:1])]
    assert torch.equal(logits(lm), logits(lm2))
    more = [EditRequest(f"b{i}", p, "Kyoto", f"fact{i}") for i, p in enumerate(PROBES[1:])]
    receipts = edit_batch(method, more)
    assert len(receipts) == len(more) and all(r.applied for r in receipts)
    if isinstance(method, BatchEditing):
        assert len(method.edit_batch(EDITS)) == len(EDITS)


def test_ft_learns_an_edit_and_none_does_not():
    lm = fresh_lm()
    assert not score_pairs(lm, [EDITS[0].prompt], [EDITS[0].target])[0].gen_exact
    ft = attached("ft", lm)
    receipt = ft.edit([EDITS[0]])
    assert receipt.loss_after < receipt.loss_before
    assert score_pairs(lm, [EDITS[0].prompt], [EDITS[0].target])[0].gen_exact
    lm2 = fresh_lm()
    attached("none", lm2).edit([EDITS[0]])
    assert not score_pairs(lm2, [EDITS[0].prompt], [EDITS[0].target])[0].gen_exact


def test_ft_norm_constraint_bounds_the_change():
    lm = fresh_lm()
    method = attached("ft", lm, steps=10, lr=0.1, norm_constraint=1e-3)
    method.edit([EDITS[0]])
    assert (method.weight.detach() - method.original).abs().max() <= 1e-3 + 1e-7


def test_template_learns_and_retracts_exactly():
    lm = fresh_lm()
    before = logits(lm)
    method = attached("template", lm, steps=40, lr=1.0)
    receipt = method.edit([EDITS[0]])
    assert receipt.loss_after < receipt.loss_before and receipt.steps > 0
    after = logits(lm)
    assert not torch.equal(after[0], before[0]) and torch.equal(after[2:], before[2:])
    method.retract("e1")
    assert torch.equal(logits(lm), before)
