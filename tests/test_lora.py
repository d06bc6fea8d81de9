"""LoRA (`lifelong/methods/lora.py`) and F-Learning's LoRA tuner: an edit makes its target
likelier; while it trains only the adapter learns and the base weights stay as they were;
after it the weights are exactly base + alpha/rank * B @ A and nothing else changed; one
adapter carries every edit, or one adapter per shard (merging a full shard moves no served
weight, each shard adds its own subspace, a run resumed inside a shard merges where the
uninterrupted one does); detach restores the model bit for bit; the state round trip is
exact and a resumed run edits identically (dropout included); F-Learning's LoRA forgetting
subtracts (lam 0 is no forgetting, bit for bit) and raises the old value's loss; without
peft the method says which extra to install."""

from __future__ import annotations

import importlib.util
import io
import sys

import pytest
import torch
from conftest import make_tiny_model, tiny_tokenizer

from lifelong import layers
from lifelong.config import from_mapping
from lifelong.errors import ConfigError
from lifelong.methods import AttachContext, EditRequest, build_method, get_method
from lifelong.model import LM
from lifelong.scoring import batch_target_loss, encode_pairs, forward_logits

pytestmark = pytest.mark.usefixtures("single_thread")

EDITS = [EditRequest("e1", "Aldric works for", "Zentro", "Aldric|employer", "Aldric"),
         EditRequest("e2", "Brenna was born in", "Kyoto", "Brenna|city", "Brenna"),
         EditRequest("e3", "Caspar speaks", "Finnish", "Caspar|language", "Caspar")]
PROBES = ["Aldric works for", "Brenna was born in", "Caspar speaks", "Delphine plays the"]
FAST = {"steps": 12, "lr": 0.02, "stop_loss": 0.0}
# an edit, then a re-edit of the same fact that knows the value before it
OLD = EditRequest("o1", "Aldric works for", "Vantex", "Aldric|employer", "Aldric")
REEDIT = EditRequest("o2", "Aldric works for", "Zentro", "Aldric|employer", "Aldric", "Vantex")


def fresh_lm(family: str = "gpt2") -> LM:
    return LM(make_tiny_model(family, seed=0, n_layer=2, width=32), tiny_tokenizer(), "tiny", "")


def attached(name: str, lm: LM, **settings):
    method = build_method(name, settings, 0)
    method.attach(lm, AttachContext(seed=0))
    return method


@torch.no_grad()
def logits(lm: LM) -> torch.Tensor:
    ids, mask, end, _, _ = encode_pairs(lm, PROBES, ["Zentro"] * len(PROBES))
    return forward_logits(lm, ids, mask, end)


@torch.no_grad()
def loss_of(lm: LM, r: EditRequest, target: str | None = None) -> float:
    return float(batch_target_loss(lm, encode_pairs(lm, [r.prompt], [target or r.target])))


def params(lm: LM) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in lm.model.named_parameters()}


# ---- the method -----------------------------------------------------------------------------
def test_defaults_are_easyedit_s_and_settings_are_validated():
    pytest.importorskip("peft")
    cfg = from_mapping(get_method("lora").Config, {})
    assert (cfg.rank, cfg.alpha, cfg.dropout, cfg.lr, cfg.steps, cfg.layers) == \
           (8, 32.0, 0.1, 5e-3, 70, ())
    assert cfg.stop_loss == from_mapping(get_method("ft-m").Config, {}).stop_loss
    for bad in ({"targets": ["attn.q"]}, {"targets": []}, {"targets": ["mlp.in", "mlp.in"]},
                {"rank": 0}, {"dropout": 1.0}):
        with pytest.raises(ConfigError):
            build_method("lora", bad, 0)
    with pytest.raises(ConfigError, match="out of range"):
        attached("lora", fresh_lm(), layers=[5])


@pytest.mark.parametrize("family", ["gpt2", "llama"])  # Conv1D (in, out) and Linear (out, in)
def test_an_edit_trains_only_the_adapter_and_merges_it_exactly(family):
    pytest.importorskip("peft")
    lm = fresh_lm(family)
    before = params(lm)
    flags = [p.requires_grad for p in lm.model.parameters()]
    method = attached("lora", lm, targets=["attn.out", "mlp.out"], layers=[-1], **FAST)
    names = ["layers.1.attn.out", "layers.1.mlp.out"]
    modules = [layers.resolve(lm.model, n) for n in names]
    originals = [layers.weight_out_in(m).detach().clone() for m in modules]
    seen = []

    def base_untouched(module, args, output):  # runs inside peft's layer, on the base layer
        seen.append(torch.equal(layers.weight_out_in(module), originals[modules.index(module)]))

    loss_before = loss_of(lm, EDITS[0])
    hooks = [m.register_forward_hook(base_untouched) for m in modules]
    receipt = method.edit([EDITS[0]])
    for h in hooks:
        h.remove()
    assert len(seen) == 2 * receipt.steps and all(seen)  # training: base weights as they were
    assert receipt.steps == FAST["steps"]
    assert loss_of(lm, EDITS[0]) < loss_before - 0.3  # likelier (the tiny model floors near 5.2)
    assert all(p.grad is None for p in lm.model.parameters())
    assert [p.requires_grad for p in lm.model.parameters()] == flags
    assert list(params(lm)) == list(before)  # peft's layers are gone again
    state = method.state_dict()["adapter"]
    assert state["base"] is None and len(state["a"]) == len(state["b"]) == 2
    targeted = {layers.module_path(lm.model, n) + ".weight" for n in names}
    for name, p in lm.model.named_parameters():
        if name not in targeted:
            assert torch.equal(p.detach(), before[name]), name
    for module, w0, a, b in zip(modules, originals, state["a"], state["b"]):
        assert a.shape == (8, w0.shape[1]) and b.shape == (w0.shape[0], 8)
        assert torch.equal(layers.weight_out_in(module), w0 + 32.0 / 8 * (b @ a))
        assert not torch.equal(layers.weight_out_in(module), w0)


def test_one_adapter_carries_every_edit():
    """The second edit starts from the first one's adapter: its first loss is the edited
    model's (a new adapter over the pre-stream weights would start from the base model's)."""
    pytest.importorskip("peft")
    lm = fresh_lm()
    base_loss = loss_of(lm, EDITS[0])
    method = attached("lora", lm, dropout=0.0, **FAST)
    method.edit([EDITS[0]])
    first = method.state_dict()["adapter"]
    edited_loss = loss_of(lm, EDITS[0])
    assert edited_loss < base_loss - 0.3
    receipt = method.edit([EditRequest("again", EDITS[0].prompt, EDITS[0].target, "x")])
    assert receipt.loss_before == pytest.approx(edited_loss, abs=1e-4)
    second = method.state_dict()["adapter"]
    assert len(second["a"]) == len(first["a"]) == 2  # one adapter per projection, still
    assert not torch.equal(second["b"][0], first["b"][0])


def _weight(lm: LM) -> torch.Tensor:
    """The last layer's attention output projection, (out, in), as served now."""
    return layers.weight_out_in(layers.resolve(lm.model, "layers.1.attn.out")).detach().clone()


def test_a_full_shard_is_merged_unchanged_and_the_next_shard_trains_its_own_subspace():
    """shard_edits = 1 at rank 1: the merge moves no served weight (the first edit gives the
    same weights as one shared adapter), and three shards' change has rank 3 where one
    adapter's stays rank 1."""
    pytest.importorskip("peft")
    runs = {}
    for shard_edits in (0, 1):
        lm = fresh_lm()
        original = _weight(lm)
        method = attached("lora", lm, rank=1, layers=[-1], dropout=0.0,
                          shard_edits=shard_edits, **FAST)
        firsts = [method.edit([EDITS[0]]), _weight(lm) - original]
        for r in EDITS[1:]:
            method.edit([r])
        runs[shard_edits] = (firsts, _weight(lm) - original, method)
    (r0, w0), (r1, w1) = runs[0][0], runs[1][0]
    assert torch.equal(w0, w1)  # the merge after the first edit left the served weights alone
    assert "adapter" not in r0.detail and r1.detail["adapter"] == 0
    assert int(torch.linalg.matrix_rank(runs[0][1])) == 1
    assert int(torch.linalg.matrix_rank(runs[1][1])) == 3
    state = runs[1][2].state_dict()
    assert (state["n_shards"], state["in_shard"], state["adapter"]["a"]) == (3, 0, None)


def test_a_run_resumed_inside_a_shard_merges_where_the_uninterrupted_one_does():
    pytest.importorskip("peft")
    lm, lm2 = fresh_lm(), fresh_lm()
    settings = {"shard_edits": 2, "rank": 2, "layers": [-1], **FAST}
    method = attached("lora", lm, **settings)
    for r in EDITS:
        method.edit([r])
    state = method.state_dict()
    assert (state["n_shards"], state["in_shard"]) == (1, 1)
    resumed = attached("lora", lm2, **settings)
    resumed.load_state_dict(state)
    assert torch.equal(logits(lm), logits(lm2))
    extra = EditRequest("e4", "Delphine plays the", "cello", "Delphine|instrument", "Delphine")
    receipts = [m.edit([extra]) for m in (method, resumed)]
    assert receipts[0].detail["adapter"] == receipts[1].detail["adapter"] == 1
    assert torch.equal(logits(lm), logits(lm2))
    assert method.state_dict()["adapter"]["a"] is None  # the second shard closed in both
    assert resumed.state_dict()["adapter"]["a"] is None


def test_detach_restores_the_model_bit_for_bit():
    pytest.importorskip("peft")
    lm = fresh_lm()
    before, out = params(lm), logits(lm)
    kinds = [type(m) for m in lm.model.modules()]
    method = attached("lora", lm, targets=["attn.out", "mlp.in"], **FAST)
    for r in EDITS:
        method.edit([r])
    assert not torch.equal(logits(lm), out)
    method.detach()
    after = params(lm)
    assert list(after) == list(before) and all(torch.equal(after[n], before[n]) for n in before)
    assert torch.equal(logits(lm), out) and [type(m) for m in lm.model.modules()] == kinds
    assert "peft_config" not in vars(lm.model)


def test_an_edit_that_fails_leaves_no_adapter_layer_behind(monkeypatch):
    pytest.importorskip("peft")
    import lifelong.methods.ft as ft

    lm = fresh_lm()
    flags = [p.requires_grad for p in lm.model.parameters()]
    method = attached("lora", lm, **FAST)
    method.edit([EDITS[0]])
    served = logits(lm)
    calls = []

    def failing(*args):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("out of memory")
        return batch_target_loss(*args)

    monkeypatch.setattr(ft, "batch_target_loss", failing)
    with pytest.raises(RuntimeError, match="out of memory"):
        method.edit([EDITS[1]])
    assert not any("lora" in n for n, _ in lm.model.named_parameters())
    assert [p.requires_grad for p in lm.model.parameters()] == flags
    assert not torch.equal(logits(lm), served)  # the two updates it made are merged
    method.detach()
    assert torch.equal(logits(lm), logits(fresh_lm()))


def test_state_round_trips_exactly_and_a_resumed_run_edits_identically():
    pytest.importorskip("peft")
    lm = fresh_lm()
    method = attached("lora", lm, **FAST)  # dropout 0.1: the masks must replay too
    for r in EDITS[:2]:
        method.edit([r])
    buf = io.BytesIO()
    torch.save(method.state_dict(), buf)
    state = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    lm2 = fresh_lm()
    method2 = attached("lora", lm2, **FAST)
    method2.load_state_dict(state)
    assert torch.equal(logits(lm2), logits(lm)) and method2.n_edits == 2
    a, b = method.edit([EDITS[2]]), method2.edit([EDITS[2]])
    assert a == b and torch.equal(logits(lm2), logits(lm))
    assert method.footprint() == method2.footprint() == 2 * 8 * (32 + 32) * 4  # 2 layers' A, B


def test_dropout_acts_while_training_and_is_seeded_by_the_edit():
    pytest.importorskip("peft")
    runs = {}
    for dropout, edit_id in ((0.0, "e1"), (0.5, "e1"), (0.5, "e1"), (0.5, "other")):
        lm = fresh_lm()
        attached("lora", lm, dropout=dropout, **FAST).edit(
            [EditRequest(edit_id, EDITS[0].prompt, EDITS[0].target, "f")])
        runs.setdefault((dropout, edit_id), []).append(logits(lm))
    assert torch.equal(*runs[(0.5, "e1")])  # the same edit: the same masks
    assert not torch.equal(runs[(0.5, "e1")][0], runs[(0.0, "e1")][0])
    assert not torch.equal(runs[(0.5, "e1")][0], runs[(0.5, "other")][0])


# ---- F-Learning with the LoRA tuner ---------------------------------------------------------
def reedited(**settings) -> tuple[LM, object, object]:
    """The model after an edit to OLD's value and F-Learning's re-edit of it."""
    lm = fresh_lm()
    attached("ft", lm, steps=30, lr=0.1, norm_constraint=None).edit([OLD])
    method = attached("f-learning", lm, tuner="lora", **settings)
    return lm, method, method.edit([REEDIT])


def test_lora_forgetting_changes_the_re_edit_and_lam_zero_is_no_forgetting():
    pytest.importorskip("peft")
    settings = {"steps": 10, "lr": 0.02, "forget_lr": 0.02, "stop_loss": 0.0}
    lm_on, on, receipt = reedited(**settings)
    lm_off, off, plain = reedited(forget=False, **settings)
    lm_zero, zero, _ = reedited(lam=0.0, **settings)
    assert receipt.detail["forget_steps"] == 10 and "forget_steps" not in plain.detail
    assert not torch.equal(logits(lm_on), logits(lm_off))
    assert on.state_dict()["adapter"]["base"] is not None  # the subtraction moved the base
    assert off.state_dict()["adapter"]["base"] is None
    # lam 0: the fresh adapter's fit leaves no trace (weights, generators, learning adapter)
    assert torch.equal(logits(lm_zero), logits(lm_off))
    assert on.n_forgotten == 1 and off.n_forgotten == 0


def test_lora_forgetting_raises_the_old_value_s_loss_and_round_trips():
    pytest.importorskip("peft")
    lm, method, receipt = reedited(forget_lr=0.05, stop_loss=1e9)  # learning takes no step
    assert receipt.steps == 0
    after = loss_of(lm, REEDIT, REEDIT.previous)
    assert after > receipt.detail["old_loss_before"] + 0.05  # (lam 0: exactly equal)
    assert receipt.detail["old_loss_after_forget"] == pytest.approx(after, rel=1e-5)
    lm2 = fresh_lm()
    method2 = attached("f-learning", lm2, tuner="lora")
    method2.load_state_dict(method.state_dict())
    assert torch.equal(logits(lm2), logits(lm))
    method2.detach()
    assert torch.equal(logits(lm2), logits(fresh_lm()))


def test_lora_forgetting_with_full_learning_subtracts_the_adapter_delta_from_the_weight():
    """The paper's third variant: a fresh adapter fitted on the old value, lam x its delta
    subtracted from the weight itself, then `ft`'s learning (here none: stop_loss 1e9). The
    delta is recomputed by hand: the same adapter fitted the same way on the same weight."""
    pytest.importorskip("peft")
    from lifelong.methods._common.loop import Step, frozen, optimise
    from lifelong.methods.lora import LoraAdapter
    lam = 0.6
    settings = {"forget_tuner": "lora", "forget_lr": 0.05, "stop_loss": 1e9,
                "norm_constraint": None, "lam": lam}
    lm = fresh_lm()
    attached("ft", lm, steps=30, lr=0.1, norm_constraint=None).edit([OLD])
    method = attached("f-learning", lm, **settings)

    def served() -> torch.Tensor:  # the edited weight as (out, in), as the adapter adds to it
        return layers.weight_out_in(layers.resolve(lm.model, method.layer_name)).detach()
    w = served().clone()
    ref_lm = fresh_lm()
    attached("ft", ref_lm, steps=30, lr=0.1, norm_constraint=None).edit([OLD])
    ref = LoraAdapter(ref_lm.model, [method.layer_name], rank=8, alpha=32.0, dropout=0.1,
                      seed=0, who="test")
    batch = encode_pairs(ref_lm, [REEDIT.prompt], [REEDIT.previous])
    with ref.tuning("forget:" + REEDIT.edit_id) as params, frozen(ref_lm.model, trainable=params):
        optimise(torch.optim.Adam(params, lr=0.05),
                 lambda: Step(loss := batch_target_loss(ref_lm, batch), float(loss.detach())),
                 10, fresh_last=False)
    delta = ref.deltas()[0]
    receipt = method.edit([REEDIT])
    assert receipt.steps == 0 and receipt.detail["forget_steps"] == 10
    assert delta.abs().max() > 0
    assert torch.allclose(served(), (w.float() - lam * delta).to(w.dtype), atol=1e-6, rtol=0)
    assert loss_of(lm, REEDIT, REEDIT.previous) > receipt.detail["old_loss_before"] + 0.05
    assert method.adapter is None  # full learning: no learning adapter
    with pytest.raises(ConfigError, match="not one of F-Learning's variants"):
        build_method("f-learning", {"tuner": "lora", "forget_tuner": "full"}, 0)


# ---- peft is optional -----------------------------------------------------------------------
def test_without_peft_the_module_imports_and_the_method_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` raises ImportError
    import lifelong.methods.lora as lora

    name = "lifelong.methods._lora_without_peft"
    spec = importlib.util.spec_from_file_location(name, lora.__file__)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)  # a fresh import of the file, peft unimportable
    assert module.LoRA.name == "lora" and "peft" not in vars(module)
    message = "method lora needs the optional extra: pip install -e '.[peft]'"
    with pytest.raises(ConfigError) as err:
        build_method("lora", {}, 0)
    assert str(err.value) == message
    with pytest.raises(ConfigError, match=r"f-learning with tuner = \"lora\" needs the optional"):
        attached("f-learning", fresh_lm(), tuner="lora")
    attached("f-learning", fresh_lm())  # the full tuner needs no peft
