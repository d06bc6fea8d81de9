"""FT-M and FT-EWC (`lifelong/methods/ft_m.py`, `ft_ewc.py`): FT-M's loss ignores the prompt's
own token predictions; FT-EWC with lambda 0 is `ft` update for update, a larger lambda holds
back the entries with a large Fisher, the Fisher accumulates over edits and the anchor
follows the weights, the state round-trips exactly, and only the edited weight learns."""

from __future__ import annotations

import io
from contextlib import nullcontext

import pytest
import torch
from conftest import make_tiny_model, tiny_tokenizer

from lifelong import layers
from lifelong.config import from_mapping
from lifelong.errors import ConfigError
from lifelong.methods import AttachContext, EditRequest, build_method, get_method
from lifelong.model import LM
from lifelong.nethook import replace_output
from lifelong.scoring import (
    batch_target_loss,
    encode_pairs,
    forward_logits,
    next_token_logp,
    tokenize_pair,
)

pytestmark = pytest.mark.usefixtures("single_thread")

UNRELATED = ("Caspar speaks", "Delphine plays the", "Evander was born in", "Fenella works for",
             "The employer of Gideon is", "Hestia likes the colour", "Ignatius owns a")
EDITS = [EditRequest("e1", "The employer of Aldric is", "Zentro", "Aldric|employer"),
         EditRequest("e2", "Brenna was born in", "Kyoto", "Brenna|city"),
         EditRequest("e3", "Juniper speaks", "Finnish", "Juniper|language")]
# the same training settings for `ft` and `ft-ewc`; stop_loss 0: every edit runs all steps
SHARED = {"steps": 6, "lr": 0.02, "norm_constraint": 0.05, "stop_loss": 0.0}


def fresh_lm() -> LM:
    return LM(make_tiny_model("gpt2", seed=0, n_layer=2, width=32), tiny_tokenizer(), "tiny", "")


def attached(name: str, lm: LM, unrelated=UNRELATED, **settings):
    method = build_method(name, settings, 0)
    method.attach(lm, AttachContext(seed=0, unrelated_prompts=tuple(unrelated)))
    return method


def target_grad(lm: LM, weight: torch.Tensor, r: EditRequest) -> torch.Tensor:
    batch = encode_pairs(lm, [r.prompt], [r.target])
    (grad,) = torch.autograd.grad(batch_target_loss(lm, batch), [weight])
    return grad


# ---- FT-M ---------------------------------------------------------------------------------
def test_ft_m_loss_ignores_the_prompt_tokens():
    """Rescaling the logits at the positions that predict prompt tokens changes a loss that
    counts them, but not FT-M's edit: its weights come out bit-identical."""
    r = EDITS[0]
    n_prompt = len(tokenize_pair(fresh_lm(), r.prompt, r.target)[0])

    def rescale_prompt_predictions(y: torch.Tensor) -> torch.Tensor:
        scale = torch.ones(y.shape[1], 1, dtype=y.dtype)
        scale[:n_prompt - 1] = 3.0  # position n_prompt - 1 predicts the first target token
        return y * scale

    def whole_sequence_grad(lm: LM) -> torch.Tensor:
        ids, mask, end, _, _ = encode_pairs(lm, [r.prompt], [r.target])
        nll = -next_token_logp(forward_logits(lm, ids, mask, end), ids).mean()
        return torch.autograd.grad(nll, [layers.edit_target(lm.model, None)[1].weight])[0]

    weights, whole = [], []
    for hooked in (False, True):
        lm = fresh_lm()
        head = layers.resolve(lm.model, "lm_head")
        with replace_output(head, rescale_prompt_predictions) if hooked else nullcontext():
            whole.append(whole_sequence_grad(lm))
            method = attached("ft-m", lm, steps=5, lr=1e-3, stop_loss=0.0)
            receipt = method.edit([r])
        assert receipt.steps == 5
        weights.append(method.weight.detach().clone())
    assert not torch.allclose(whole[0], whole[1])  # the rescaling reaches a prompt-token loss
    assert not torch.equal(weights[0], method.original)
    assert torch.equal(weights[0], weights[1])


def test_ft_m_is_unbounded_by_default_and_ft_is_not():
    ftm, ft = (from_mapping(get_method(n).Config, {}) for n in ("ft-m", "ft"))
    assert ftm.norm_constraint is None and ft.norm_constraint is not None
    assert (ftm.lr, ftm.steps, ftm.stop_loss) == (5e-4, 25, 1e-2)
    lm = fresh_lm()
    method = attached("ft-m", lm, steps=10, lr=0.05, stop_loss=0.0)
    method.edit([EDITS[0]])
    assert (method.weight.detach() - method.original).abs().max() > ft.norm_constraint


# ---- FT-EWC -------------------------------------------------------------------------------
def test_ft_ewc_with_lambda_zero_is_ft_update_for_update():
    lm_ft, lm_ewc = fresh_lm(), fresh_lm()
    ft = attached("ft", lm_ft, **SHARED)
    ewc = attached("ft-ewc", lm_ewc, ewc_lambda=0.0, **SHARED)
    assert torch.count_nonzero(ewc.fisher) > 0  # a Fisher is there; lambda 0 ignores it
    for requests in ([EDITS[0]], [EDITS[1]], EDITS[1:]):
        a, b = ft.edit(requests), ewc.edit(requests)
        assert (a.loss_before, a.loss_after, a.steps) == (b.loss_before, b.loss_after, b.steps)
        assert torch.equal(ft.weight, ewc.weight)


def test_a_larger_lambda_holds_back_the_entries_with_a_large_fisher():
    moved = {}
    for lam in (0.0, 1e3):
        method = attached("ft-ewc", fresh_lm(), ewc_lambda=lam, steps=25, stop_loss=0.0)
        fisher = method.fisher.clone()
        method.edit([EDITS[0]])
        moved[lam] = (method.weight.detach() - method.original).abs()
    top = fisher >= fisher.flatten().quantile(0.9)
    ratio_top = moved[1e3][top].mean() / moved[0.0][top].mean()
    ratio_rest = moved[1e3][~top].mean() / moved[0.0][~top].mean()
    assert ratio_top < 0.2
    assert ratio_top < ratio_rest / 2


def test_the_fisher_accumulates_over_edits_and_the_anchor_follows_the_weights():
    lm = fresh_lm()
    method = attached("ft-ewc", lm, ewc_lambda=1.0, steps=5)
    assert torch.equal(method.anchor, method.original)
    before = method.fisher.clone()
    for r in EDITS[:2]:
        method.edit([r])
        expected = before + target_grad(lm, method.weight, r).float().pow(2)
        assert torch.allclose(method.fisher, expected, rtol=1e-5, atol=1e-12)
        assert (method.fisher >= before).all() and (method.fisher > before).any()
        assert torch.equal(method.anchor, method.weight.detach())
        before = method.fisher.clone()
    # a batch adds every request's own Fisher
    method.edit(EDITS[:2])
    added = sum(target_grad(lm, method.weight, r).float().pow(2) for r in EDITS[:2])
    assert torch.allclose(method.fisher, before + added, rtol=1e-5, atol=1e-12)


def test_the_pre_stream_fisher_comes_from_the_unrelated_text():
    with_text = attached("ft-ewc", fresh_lm())
    assert with_text.fisher_source.startswith("unrelated") and with_text.fisher.sum() > 0
    none = attached("ft-ewc", fresh_lm(), unrelated=())
    assert none.fisher_source == "none" and torch.count_nonzero(none.fisher) == 0
    capped = attached("ft-ewc", fresh_lm(), fisher_samples=1)
    assert not torch.equal(capped.fisher, with_text.fisher)


def test_ft_ewc_state_round_trips_exactly():
    lm = fresh_lm()
    method = attached("ft-ewc", lm, ewc_lambda=50.0, steps=5)
    for r in EDITS[:2]:
        method.edit([r])
    buf = io.BytesIO()
    torch.save(method.state_dict(), buf)
    state = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    lm2 = fresh_lm()  # other unrelated text: its own pre-stream Fisher differs until loaded
    method2 = attached("ft-ewc", lm2, unrelated=UNRELATED[:2], ewc_lambda=50.0, steps=5)
    assert not torch.equal(method2.fisher, method.fisher)
    method2.load_state_dict(state)
    for key, value in method.state_dict().items():
        other = method2.state_dict()[key]
        assert torch.equal(value, other) if torch.is_tensor(value) else value == other
    method.edit([EDITS[2]])
    method2.edit([EDITS[2]])  # the penalty reads the loaded Fisher and anchor
    assert torch.equal(method.weight, method2.weight)
    assert torch.equal(method.fisher, method2.fisher)
    method2.detach()
    assert torch.equal(method2.weight, fresh_lm().model.get_parameter(_name(lm2, method2)))


def _name(lm: LM, method) -> str:
    return next(n for n, p in lm.model.named_parameters() if p is method.weight)


@pytest.mark.parametrize("name", ["ft-m", "ft-ewc"])
def test_only_the_edited_weight_gets_a_gradient(name):
    lm = fresh_lm()
    flags = [p.requires_grad for p in lm.model.parameters()]
    method = attached(name, lm, steps=3, lr=0.01)
    assert all(p.grad is None for p in lm.model.parameters())  # the Fisher leaves no grad
    method.edit([EDITS[0]])
    method.edit(EDITS[1:])
    touched = [n for n, p in lm.model.named_parameters() if p.grad is not None]
    assert touched == [_name(lm, method)]
    assert [p.requires_grad for p in lm.model.parameters()] == flags


@pytest.mark.parametrize("name, bad", [("ft-m", {"lr": -1.0}), ("ft-m", {"steps": 0}),
                                       ("ft-ewc", {"ewc_lambda": -0.1}),
                                       ("ft-ewc", {"fisher_samples": -1}),
                                       ("ft-ewc", {"module": "mlp.gate"})])
def test_settings_are_validated(name, bad):
    with pytest.raises(ConfigError):
        build_method(name, bad, 0)
