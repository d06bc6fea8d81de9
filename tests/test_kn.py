"""KN (lifelong/methods/kn.py) on tiny real models: the integrated gradients are the paper's
Riemann sum (one step: gradient x activation; many: the completeness axiom), refinement over
prompts, the edit touches exactly the located neurons' value vectors by the stated amounts,
it moves the answer toward the new target, and retraction replays exactly."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_model, tiny_tokenizer

from lifelong import layers
from lifelong.methods import AttachContext, EditRequest, build_method
from lifelong.methods.kn import first_token, integrated_gradients, knowledge_neurons
from lifelong.model import LM
from lifelong.nethook import Trace, replace_input
from lifelong.scoring import forward_logits

pytestmark = pytest.mark.usefixtures("single_thread")

PROMPT = "Aldric works for"
EDIT = EditRequest("e1", PROMPT, "Zentro", "Aldric|employer", "Aldric")
OTHER = EditRequest("e2", "Brenna was born in", "Kyoto", "Brenna|city", "Brenna")


def fresh_lm(seed: int = 0, n_layer: int = 2) -> LM:
    return LM(make_tiny_model("gpt2", seed=seed, n_layer=n_layer, width=32), tiny_tokenizer(),
              "tiny", "")


def attached(lm: LM, **settings):
    method = build_method("kn", {"ig_steps": 8, **settings}, 0)
    method.attach(lm, AttachContext(seed=0))
    return method


def prob_with(lm: LM, module, prompt: str, token: int, last: torch.Tensor | None = None):
    """P(token | prompt), with the module's input at the last position replaced by `last`."""
    ids = torch.tensor([lm.tok(prompt, add_special_tokens=False)["input_ids"]])
    mask, end = torch.ones_like(ids), torch.full((1,), ids.shape[1])

    def swap(x):
        return x if last is None else torch.cat([x[:, :-1], last.to(x.dtype)[None, None]], 1)

    with replace_input(module, swap):
        return forward_logits(lm, ids, mask, end)[0, -1].float().softmax(-1)[token]


def test_one_step_is_gradient_times_activation():
    lm = fresh_lm()
    module = layers.resolve(lm.model, "layers.1.mlp.out")
    token = first_token(lm, PROMPT, "Zentro")
    with torch.no_grad(), Trace(module, capture="input") as tr:
        prob_with(lm, module, PROMPT, token)
    act = tr.input[0, -1].float().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(prob_with(lm, module, PROMPT, token, act), act)
    attr = integrated_gradients(lm, module, PROMPT, token, steps=1)
    assert torch.allclose(attr, act.detach() * grad, rtol=1e-4, atol=1e-9)
    assert all(p.grad is None for p in lm.model.parameters())


@pytest.mark.parametrize("layer", [0, 1])
def test_attributions_sum_to_the_probability_difference(layer):
    """Completeness: sum_i Attr_i = P(w) - P(0) as the Riemann sum converges."""
    lm = fresh_lm()
    module = layers.resolve(lm.model, f"layers.{layer}.mlp.out")
    token = first_token(lm, PROMPT, "Zentro")
    width = layers.in_out_features(module)[0]
    with torch.no_grad():
        full = float(prob_with(lm, module, PROMPT, token))
        zero = float(prob_with(lm, module, PROMPT, token, torch.zeros(width)))
    total = float(integrated_gradients(lm, module, PROMPT, token, steps=200).sum())
    assert abs(full - zero) > 1e-6, "the test needs a layer that matters"
    assert total == pytest.approx(full - zero, rel=0.05, abs=1e-7)


def test_refinement_keeps_the_neurons_shared_by_the_prompts():
    lm = fresh_lm()
    modules = {i: layers.resolve(lm.model, f"layers.{i}.mlp.out") for i in (0, 1)}
    prompts = [PROMPT, "The employer of Aldric is"]
    token = first_token(lm, PROMPT, "Zentro")
    each = [{(layer, n) for layer, n, _ in knowledge_neurons(lm, modules, [p], token, 6, 0.2, 1.0)}
            for p in prompts]
    both = knowledge_neurons(lm, modules, prompts, token, 6, 0.2, 1.0)
    either = knowledge_neurons(lm, modules, prompts, token, 6, 0.2, 0.5)
    assert {(layer, n) for layer, n, _ in both} == each[0] & each[1]
    assert {(layer, n) for layer, n, _ in either} == each[0] | each[1]
    scores = [s for _, _, s in either]
    assert scores == sorted(scores, reverse=True)
    capped = knowledge_neurons(lm, modules, prompts, token, 6, 0.2, 0.5, max_neurons=3)
    assert capped == either[:3]


@pytest.mark.parametrize("vectors", ["embed", "unembed"])
def test_the_edit_changes_exactly_the_located_value_vectors(vectors):
    lm = fresh_lm()
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    method = attached(lm, lambda_old=1.5, lambda_new=3.0, vectors=vectors)
    old_token = first_token(lm, PROMPT, "Halvik")
    receipt = method.edit([EditRequest("e1", PROMPT, "Zentro", "f", previous="Halvik")])
    located = [tuple(map(int, s.split("."))) for s in receipt.detail["neurons"]]
    assert located and receipt.applied and receipt.converged is None and receipt.steps == 0
    assert receipt.detail["old_token"] == "Halvik"
    which = "embed" if vectors == "embed" else "lm_head"
    table = layers.resolve(lm.model, which).weight.detach()
    delta = 3.0 * table[first_token(lm, PROMPT, "Zentro")] - 1.5 * table[old_token]
    changed = {}
    for name, p in lm.model.named_parameters():
        if not torch.equal(p.detach(), before[name]):
            changed[name] = p.detach() - before[name]
    paths = {layers.module_path(lm.model, f"layers.{i}.mlp.out") + ".weight": i for i in (0, 1)}
    assert set(changed) <= set(paths)
    for name, diff in changed.items():
        diff = diff.T  # GPT-2's Conv1D stores (in, out): value vectors are its rows
        cols = {int(c) for c in diff.abs().sum(0).nonzero()}
        assert cols == {n for layer, n in located if layer == paths[name]}
        for c in cols:
            assert torch.allclose(diff[:, c], delta, atol=1e-6)
    assert len(changed) == len({layer for layer, _ in located})


def test_an_edit_moves_a_learnt_fact_to_the_new_target():
    """A tiny model taught 'Aldric works for Halvik': after the KN edit to Zentro the new
    target's probability rises and the old answer's falls."""
    torch.manual_seed(0)
    lm = fresh_lm(seed=1)
    ids = torch.tensor([lm.tok(f"{PROMPT} Halvik", add_special_tokens=False)["input_ids"]])
    opt = torch.optim.Adam(lm.model.parameters(), lr=3e-3)
    for _ in range(60):
        opt.zero_grad()
        lm.model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
    for p in lm.model.parameters():
        p.grad = None
    new, old = first_token(lm, PROMPT, "Zentro"), first_token(lm, PROMPT, "Halvik")
    out = layers.resolve(lm.model, "layers.1.mlp.out")
    with torch.no_grad():
        p_new, p_old = float(prob_with(lm, out, PROMPT, new)), float(prob_with(lm, out, PROMPT, old))
    assert p_old > 0.5, "the model learnt the fact"
    receipt = attached(lm).edit([EditRequest("e1", PROMPT, "Zentro", "f")])
    assert receipt.detail["old_token"] == "Halvik"  # the greedy answer, no `previous` given
    with torch.no_grad():
        assert float(prob_with(lm, out, PROMPT, new)) > p_new
        assert float(prob_with(lm, out, PROMPT, old)) < p_old
    assert receipt.loss_after < receipt.loss_before


def test_a_multi_token_target_edits_its_first_token_and_says_so():
    lm = fresh_lm()
    receipt = attached(lm).edit([EditRequest("e1", PROMPT, "Zentro Halvik", "f")])
    assert receipt.detail["target_tokens"] == 2 and receipt.detail["edited_tokens"] == 1
    assert "first token" in receipt.detail["note"]


def test_retraction_replays_the_others_exactly():
    lm, lm2 = fresh_lm(), fresh_lm()
    method = attached(lm)
    method.edit([EDIT])
    method.edit([OTHER])
    method.retract("e1")
    attached(lm2).edit([OTHER])
    for p, q in zip(lm.model.parameters(), lm2.model.parameters()):
        assert torch.equal(p, q)
    method.detach()
    base = fresh_lm()
    for p, q in zip(lm.model.parameters(), base.model.parameters()):
        assert torch.equal(p, q)


def test_layers_setting_limits_the_search():
    lm = fresh_lm(n_layer=3)
    receipt = attached(lm, layers=[-1]).edit([EDIT])
    assert receipt.detail["neurons"] and all(s.startswith("2.") for s in receipt.detail["neurons"])
