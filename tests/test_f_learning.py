"""F-Learning (`f-learning`): its learning step is `ft` bit for bit, the forgetting step is
exactly W - lam * (W fine-tuned on the old value - W), lam = 0 is no forgetting, a request
without a previous value skips (and counts) the forgetting, forgetting raises the old value's
loss, the state round trip is exact and only the edited weight learns."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_model, tiny_tokenizer

from lifelong.methods import AttachContext, EditRequest, build_method, edit_batch
from lifelong.model import LM
from lifelong.scoring import batch_target_loss, encode_pairs, forward_logits

pytestmark = pytest.mark.usefixtures("single_thread")

LEARN = {"steps": 8, "lr": 0.02}
#: learning takes no update (the first loss is below stop_loss): the weight after the edit
#: is the weight after forgetting; no bound, so nothing projects it
FORGET_ONLY = {"stop_loss": 1e9, "norm_constraint": None}
OLD = [EditRequest("e1", "Aldric works for", "Zentro", "Aldric|employer", "Aldric", "Vantex"),
       EditRequest("e2", "Brenna was born in", "Kyoto", "Brenna|city", "Brenna", "Lisbon")]
NEW = EditRequest("e3", "Caspar speaks", "Finnish", "Caspar|language", "Caspar")  # no previous
PROBES = ["Aldric works for", "Brenna was born in", "Caspar speaks", "Delphine plays the"]


def fresh_lm() -> LM:
    return LM(make_tiny_model("gpt2", seed=0, n_layer=2, width=32), tiny_tokenizer(), "tiny", "")


def attached(name: str, lm: LM, **settings):
    method = build_method(name, settings, 0)
    method.attach(lm, AttachContext(seed=0))
    return method


@torch.no_grad()
def logits(lm: LM) -> torch.Tensor:
    ids, mask, end, _, _ = encode_pairs(lm, PROBES, ["Zentro"] * len(PROBES))
    return forward_logits(lm, ids, mask, end)


@torch.no_grad()
def loss_of(lm: LM, prompt: str, target: str) -> float:
    return float(batch_target_loss(lm, encode_pairs(lm, [prompt], [target])))


def test_without_forgetting_it_is_ft_bit_for_bit():
    lm, lm_ft = fresh_lm(), fresh_lm()
    fl = attached("f-learning", lm, forget=False, **LEARN)
    ft = attached("ft", lm_ft, **LEARN)
    for r in [*OLD, NEW]:
        a, b = fl.edit([r]), ft.edit([r])
        assert (a.loss_before, a.loss_after, a.steps, a.converged) == \
               (b.loss_before, b.loss_after, b.steps, b.converged)
        assert torch.equal(fl.weight, ft.weight)
        assert a.detail["forget"] is False and a.detail["forget_skipped"] == 0
    assert torch.equal(logits(lm), logits(lm_ft))
    assert fl.n_forgotten == fl.n_forget_skipped == 0


def test_forgetting_subtracts_lam_times_the_old_fine_tuning_delta_exactly():
    """delta_old recomputed independently: `ft` on (prompt -> previous), same Adam steps and
    learning rate, never stopping early (stop_loss 0), from the same weight."""
    lam, steps, lr = 0.7, 4, 0.01
    lm = fresh_lm()
    fl = attached("f-learning", lm, lam=lam, forget_steps=steps, forget_lr=lr, **FORGET_ONLY)
    for r in OLD:  # the second edit starts from the weight the first one left
        w = fl.weight.detach().clone()
        lm_ref = fresh_lm()
        ref = attached("ft", lm_ref, steps=steps, lr=lr, norm_constraint=None, stop_loss=0.0)
        with torch.no_grad():
            ref.weight.copy_(w)
        ref.edit([EditRequest("old", r.prompt, r.previous, r.fact)])
        w_old = ref.weight.detach()
        receipt = fl.edit([r])
        assert receipt.steps == 0 and receipt.detail["forget_steps"] == steps
        assert not torch.equal(w_old, w)
        assert torch.equal(fl.weight.detach(), w - lam * (w_old - w))
        assert fl.weight.grad is None  # the forgetting fine-tune leaves no gradient behind
    assert fl.n_forgotten == 2 and fl.n_forget_skipped == 0


def test_lam_zero_is_the_learning_step_alone():
    lm, lm_off = fresh_lm(), fresh_lm()
    zero = attached("f-learning", lm, lam=0.0, forget_steps=3, forget_lr=0.05, **LEARN)
    off = attached("f-learning", lm_off, forget=False, **LEARN)
    for r in OLD:
        a, b = zero.edit([r]), off.edit([r])
        assert "forget_steps" in a.detail and "forget_steps" not in b.detail
        assert (a.loss_before, a.loss_after, a.steps) == (b.loss_before, b.loss_after, b.steps)
    assert torch.equal(zero.weight, off.weight)
    assert torch.equal(logits(lm), logits(lm_off))


def test_a_request_without_previous_skips_forgetting_and_is_counted():
    lm, lm_ft = fresh_lm(), fresh_lm()
    fl = attached("f-learning", lm, **LEARN)
    ft = attached("ft", lm_ft, **LEARN)
    receipt = fl.edit([NEW])
    ft.edit([NEW])
    assert receipt.detail["forget_skipped"] == 1 and "forget_steps" not in receipt.detail
    assert torch.equal(fl.weight, ft.weight)  # learnt as ft learns it
    assert (fl.n_forget_skipped, fl.n_forgotten) == (1, 0)
    receipt = fl.edit([OLD[0]])
    assert receipt.detail["forget_skipped"] == 0 and receipt.detail["forget_steps"] == 10
    assert (fl.n_forget_skipped, fl.n_forgotten) == (1, 1)
    receipts = edit_batch(fl, [OLD[1], NEW])  # a batch: one forgotten, one skipped
    assert all(r.detail["forget_skipped"] == 1 for r in receipts)
    assert (fl.n_forget_skipped, fl.n_forgotten) == (2, 2)
    assert fl.state_dict()["n_forget_skipped"] == 2


@pytest.mark.parametrize("bound", [None, 2e-2])
def test_forgetting_raises_the_loss_of_the_old_value(bound):
    """The old value is made more likely first (plain ft); forgetting then makes it less so,
    also inside `ft`'s L-infinity box (which then limits how much it can remove)."""
    lm = fresh_lm()
    attached("ft", lm, steps=30, lr=0.1, norm_constraint=None).edit(
        [EditRequest("old", OLD[0].prompt, OLD[0].previous, OLD[0].fact)])
    known = loss_of(lm, OLD[0].prompt, OLD[0].previous)
    fl = attached("f-learning", lm, forget_lr=0.02, stop_loss=1e9, norm_constraint=bound)
    receipt = fl.edit([OLD[0]])
    after = loss_of(lm, OLD[0].prompt, OLD[0].previous)
    assert receipt.detail["old_loss_before"] == pytest.approx(known, rel=1e-5)
    if bound is None:
        assert after > known + 0.03
        assert receipt.detail["old_loss_after_forget"] == pytest.approx(after, rel=1e-5)
    else:  # projected back into the box (the learning step took no update to do it)
        assert after > known + 0.003
        assert (fl.weight.detach() - fl.original).abs().max() <= bound + 1e-6


def test_state_round_trip_is_exact_and_resumes_identically():
    lm = fresh_lm()
    fl = attached("f-learning", lm, **LEARN)
    for r in [OLD[0], NEW]:
        fl.edit([r])
    state = fl.state_dict()
    lm2 = fresh_lm()
    fl2 = attached("f-learning", lm2, **LEARN)
    fl2.load_state_dict(state)
    assert torch.equal(fl2.weight, fl.weight) and torch.equal(logits(lm2), logits(lm))
    assert (fl2.n_edits, fl2.n_forgotten, fl2.n_forget_skipped) == (2, 1, 1)
    a, b = fl.edit([OLD[1]]), fl2.edit([OLD[1]])  # resumed: the next edit is the same edit
    assert a == b and torch.equal(fl2.weight, fl.weight)


def test_only_the_edited_weight_learns_and_detach_restores():
    lm = fresh_lm()
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    flags = [p.requires_grad for p in lm.model.parameters()]
    fl = attached("f-learning", lm, **LEARN)
    fl.edit([OLD[0]])
    edited = [n for n, p in lm.model.named_parameters() if p is fl.weight]
    assert len(edited) == 1
    for n, p in lm.model.named_parameters():
        if n != edited[0]:
            assert p.grad is None, n
            assert torch.equal(p.detach(), before[n]), n
    assert not torch.equal(fl.weight.detach(), before[edited[0]])
    assert [p.requires_grad for p in lm.model.parameters()] == flags
    fl.detach()
    assert all(torch.equal(p.detach(), before[n]) for n, p in lm.model.named_parameters())
