"""The contract every registered method must honour, run against each of them on a tiny
GPT-2 (the PEFT `TEST_CASES` pattern): a new method file is picked up here automatically.

edit -> outputs change only as the method says; state round trip -> identical outputs on a
fresh model; retract -> restores the pre-edit outputs or raises NotSupported; detach ->
bit-identical to the base model."""

from __future__ import annotations

import pytest
import torch

from conftest import make_tiny_model, tiny_tokenizer
from lifelong.config import from_mapping
from lifelong.errors import ConfigError, NotSupported
from lifelong.methods import AttachContext, EditRequest, available_methods, build_method
from lifelong.model import LM
from lifelong.scoring import encode_pairs, forward_logits, score_pairs

#: cheaper settings for the tiny model; a method not listed runs with its defaults
FAST_SETTINGS: dict[str, dict] = {"ft": {"steps": 8, "lr": 0.02}, "wise": {"steps": 8, "shard_size": 1},
                                   "grace": {"steps": 10}, "defer": {"steps": 10}}
METHODS = sorted(available_methods())
PROBES = ["Aldric works for", "The employer of Aldric is", "Brenna was born in", "Caspar speaks"]
EDITS = [EditRequest("e1", "Aldric works for", "Zentro", "Aldric|employer", "Aldric"),
         EditRequest("e2", "Brenna was born in", "Kyoto", "Brenna|city", "Brenna")]


def fresh_lm(seed: int = 0) -> LM:
    return LM(make_tiny_model("gpt2", seed=seed, n_layer=2, width=32), tiny_tokenizer(), "tiny", "")


@torch.no_grad()
def logits(lm: LM) -> torch.Tensor:
    ids, mask, end, _, _ = encode_pairs(lm, PROBES, ["Zentro"] * len(PROBES))
    return forward_logits(lm, ids, mask, end)


def attached(name: str, lm: LM, seed: int = 0):
    method = build_method(name, FAST_SETTINGS.get(name), seed)
    method.attach(lm, AttachContext(seed=seed, unrelated_prompts=tuple(PROBES[2:])))
    return method


def test_registry_finds_the_foundation_methods():
    assert {"none", "ft"} <= set(METHODS)


@pytest.mark.parametrize("name", METHODS)
def test_config_is_frozen_and_strict(name):
    cls = available_methods()[name]
    cfg = from_mapping(cls.Config, {})
    with pytest.raises(Exception):
        cfg.some_field = 1  # frozen
    with pytest.raises(ConfigError, match="unknown key"):
        from_mapping(cls.Config, {"no_such_setting": 1}, where="m")
    assert cls.summary, "a method needs a one-line summary for `lifelong methods`"


@pytest.mark.parametrize("name", METHODS)
def test_edit_receipt_and_footprint(name):
    lm = fresh_lm()
    method = attached(name, lm)
    receipt = method.edit([EDITS[0]])
    assert receipt.applied is True, "a plain edit of a fresh fact must be applied"
    assert isinstance(receipt.steps, int) and receipt.steps >= 0
    assert method.footprint() >= 0
    assert len(score_pairs(lm, PROBES, ["Zentro"] * len(PROBES))) == len(PROBES)


@pytest.mark.parametrize("name", METHODS)
def test_detach_restores_the_base_model_exactly(name):
    lm = fresh_lm()
    before = logits(lm)
    method = attached(name, lm)
    for r in EDITS:
        method.edit([r])
    method.consolidate()
    method.detach()
    assert torch.equal(logits(lm), before)


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
    import io
    lm = fresh_lm()
    method = attached(name, lm)
    method.edit([EDITS[0]])
    buf = io.BytesIO()
    torch.save(method.state_dict(), buf)
    torch.load(io.BytesIO(buf.getvalue()), weights_only=True)


@pytest.mark.parametrize("name", METHODS)
def test_retract_restores_or_says_not_supported(name):
    lm = fresh_lm()
    base = logits(lm)
    method = attached(name, lm)
    method.edit([EDITS[1]])
    before_edit = logits(lm)
    method.edit([EDITS[0]])
    assert not torch.allclose(logits(lm), before_edit, atol=1e-5) or name == "none"
    try:
        method.retract("e1")
    except NotSupported as exc:
        assert str(exc)  # says why
        return
    after = logits(lm)
    if getattr(method, "retraction", "exact") == "own":  # the retracted edit's own prompt
        assert torch.allclose(after[0], base[0], atol=1e-5)   # behaves as before any edit
    else:
        assert torch.allclose(after, before_edit, atol=1e-5)


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
    method = build_method("ft", {"steps": 10, "lr": 0.1, "norm_constraint": 1e-3}, 0)
    method.attach(lm, AttachContext(seed=0))
    method.edit([EDITS[0]])
    assert (method.weight.detach() - method.original).abs().max() <= 1e-3 + 1e-7
