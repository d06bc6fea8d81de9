"""Hook context managers (lifelong.nethook) on tiny models of every family."""

from __future__ import annotations

import pytest
import torch
from conftest import FAMILIES, make_tiny_model
from torch import nn

from lifelong import layers
from lifelong.errors import ConfigError
from lifelong.nethook import (
    StopForward,
    Trace,
    TraceDict,
    replace_input,
    replace_output,
)

pytestmark = pytest.mark.usefixtures("single_thread")

IDS = torch.tensor([[3, 4, 5, 6, 7], [8, 9, 10, 11, 12]])


class Boom(Exception):
    pass


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    return {fam: make_tiny_model(fam) for fam in FAMILIES}


def logits(model: nn.Module, ids: torch.Tensor = IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("fam", FAMILIES)
def test_trace_captures_mlp_out(models, fam):
    model = models[fam]
    module = layers.resolve(model, "layers.1.mlp.out")
    hidden, width = layers.hidden_size(model), layers.mlp_width(model)
    with Trace(module, capture="both") as t:
        assert t.input is None and t.output is None
        logits(model)
    assert t.input.shape == (2, 5, width)
    assert t.output.shape == (2, 5, hidden)
    # The captured pair is consistent with the module's function.
    assert torch.allclose(layers.apply_linear(module, t.input), t.output, atol=1e-6)
    assert hook_count(model) == 0

    with Trace(module) as t_out:
        logits(model)
    assert t_out.input is None and torch.equal(t_out.output, t.output)
    with Trace(module, capture="input") as t_in:
        logits(model)
    assert t_in.output is None and torch.equal(t_in.input, t.input)


@pytest.mark.parametrize("fam", FAMILIES)
def test_trace_tuple_and_keyword_modules(models, fam):
    """Blocks and attention modules return tuples in some families and are called with
    keywords in others (LLaMA attention); .input/.output are the hidden states either way."""
    model = models[fam]
    with TraceDict(model, ["layers.0", "layers.0.attn", "layers.-1", "final_norm", "embed"],
                   capture="both") as td:
        logits(model)
    hidden = layers.hidden_size(model)
    for name in ("layers.0", "layers.0.attn", "layers.-1", "final_norm"):
        assert isinstance(td[name].output, torch.Tensor), name
        assert td[name].output.shape == (2, 5, hidden), name
        assert td[name].input.shape == (2, 5, hidden), name
    assert torch.equal(td["embed"].input, IDS)
    assert torch.equal(td["final_norm"].input, td["layers.-1"].output)
    assert hook_count(model) == 0


def test_trace_detach_and_clone(tiny_gpt2):
    module = layers.resolve(tiny_gpt2, "layers.0.mlp.out")
    with Trace(module, detach=False) as t:
        tiny_gpt2(IDS)
    assert t.output.requires_grad
    with Trace(module) as t:
        tiny_gpt2(IDS)
    assert not t.output.requires_grad
    # clone: a later in-place change to the module's output tensor does not reach the copy.
    with Trace(module, clone=True) as t_clone, Trace(module) as t_plain, \
            replace_output(module, lambda y: y.mul_(0)):
        logits(tiny_gpt2)
    assert not torch.equal(t_clone.output, torch.zeros_like(t_clone.output))
    assert torch.equal(t_plain.output, torch.zeros_like(t_plain.output))


@pytest.mark.parametrize("fam", FAMILIES)
def test_replace_output_zeroing_changes_logits_and_restores(models, fam):
    model = models[fam]
    before = logits(model)
    module = layers.resolve(model, "layers.0.mlp.out")
    with replace_output(module, torch.zeros_like):
        during = logits(model)
        with Trace(module) as t:
            logits(model)
        assert torch.equal(t.output, torch.zeros_like(t.output))
    assert not torch.allclose(during, before)
    assert torch.equal(logits(model), before)
    assert hook_count(model) == 0


@pytest.mark.parametrize("fam", FAMILIES)
def test_replace_on_tuple_or_keyword_modules(models, fam):
    model = models[fam]
    before = logits(model)
    for name in ("layers.0", "layers.0.attn"):
        module = layers.resolve(model, name)
        with replace_output(module, lambda y: y * 0.5):
            changed = logits(model)
        assert not torch.allclose(changed, before), name
        with replace_input(module, lambda x: x + 1.0):
            changed = logits(model)
        assert not torch.allclose(changed, before), name
    assert torch.equal(logits(model), before)
    assert hook_count(model) == 0


@pytest.mark.parametrize("fam", FAMILIES)
def test_replace_input_matches_manual_edit(models, fam):
    """Scaling mlp.out's input by 2 doubles its output minus one bias (exactly what the
    module would compute on the scaled input)."""
    model = models[fam]
    module = layers.resolve(model, "layers.1.mlp.out")
    with Trace(module, capture="both") as plain:
        logits(model)
    with replace_input(module, lambda x: 2 * x), Trace(module, capture="both") as doubled:
        logits(model)
    # The Trace entered after replace_input sees the replaced input.
    assert torch.allclose(doubled.input, 2 * plain.input)
    assert torch.allclose(doubled.output, layers.apply_linear(module, 2 * plain.input),
                          atol=1e-5)


@pytest.mark.parametrize("ctx", ["trace", "trace_dict", "replace_output", "replace_input",
                                 "nested"])
def test_hooks_removed_when_body_raises(tiny_gpt2, ctx):
    before = logits(tiny_gpt2)
    module = layers.resolve(tiny_gpt2, "layers.0.mlp.out")
    makers = {
        "trace": lambda: Trace(module, capture="both"),
        "trace_dict": lambda: TraceDict(tiny_gpt2, ["layers.0.mlp.out", "layers.1"],
                                        capture="both"),
        "replace_output": lambda: replace_output(module, torch.zeros_like),
        "replace_input": lambda: replace_input(module, torch.zeros_like),
    }
    with pytest.raises(Boom):
        if ctx == "nested":
            with makers["trace"](), makers["replace_output"](), makers["trace_dict"](), \
                    makers["replace_input"]():
                assert hook_count(tiny_gpt2) == 2 + 1 + 4 + 1
                logits(tiny_gpt2)
                raise Boom()
        else:
            with makers[ctx]():
                assert hook_count(tiny_gpt2) > 0
                logits(tiny_gpt2)
                raise Boom()
    assert hook_count(tiny_gpt2) == 0
    assert torch.equal(logits(tiny_gpt2), before)


def test_hooks_removed_when_forward_raises(tiny_gpt2):
    module = layers.resolve(tiny_gpt2, "layers.0.mlp.out")

    def explode(_):
        raise Boom()

    with pytest.raises(Boom), Trace(module), replace_output(module, explode):
        logits(tiny_gpt2)
    assert hook_count(tiny_gpt2) == 0


def test_nesting(tiny_gpt2):
    model = tiny_gpt2
    before = logits(model)
    out_mod = layers.resolve(model, "layers.0.mlp.out")
    with Trace(out_mod) as outer:
        with replace_output(out_mod, lambda y: y + 1.0):
            with Trace(out_mod) as inner:
                with replace_output(out_mod, lambda y: y * 3.0):
                    logits(model)
                # Hooks on one module run in the order entered: outer saw the original, the
                # inner Trace saw (+1), the result was ((y + 1) * 3).
                assert torch.allclose(inner.output, outer.output + 1.0)
                assert hook_count(model) == 3
            assert hook_count(model) == 2
            logits(model)
            assert torch.allclose(outer.output, inner.output - 1.0, atol=1e-6)
        assert hook_count(model) == 1
        assert torch.equal(logits(model), before)
    assert hook_count(model) == 0
    assert torch.equal(logits(model), before)


def test_trace_dict_mapping_and_validation(tiny_gpt2):
    names = ["layers.0.mlp.out", "layers.-1", "layers.0.mlp.out"]
    with TraceDict(tiny_gpt2, names) as td:
        logits(tiny_gpt2)
    assert list(td) == ["layers.0.mlp.out", "layers.-1"] and len(td) == 2
    assert "layers.-1" in td and td["layers.-1"].output.shape == (2, 5, 32)
    with pytest.raises(ConfigError, match="known names"):
        TraceDict(tiny_gpt2, ["layers.0.mlp.out", "layers.0.mlp.output"])
    assert hook_count(tiny_gpt2) == 0


def test_stop_forward(tiny_gpt2):
    last = layers.resolve(tiny_gpt2, "layers.-1")
    with Trace(last) as seen_last, \
            Trace(layers.resolve(tiny_gpt2, "layers.0.mlp.out"), capture="input", stop=True) as t:
        tiny_gpt2(IDS)
        pytest.fail("the forward should have stopped")
    assert t.input.shape == (2, 5, 128)
    assert seen_last.output is None
    with TraceDict(tiny_gpt2, ["layers.0.mlp", "layers.0"], stop=True) as td:
        tiny_gpt2(IDS)
        pytest.fail("the forward should have stopped")
    assert td["layers.0"].output.shape == (2, 5, 32)
    assert hook_count(tiny_gpt2) == 0
    # A StopForward from an inner Trace is not swallowed by an outer one that did not raise it.
    with pytest.raises(StopForward), Trace(last):
        raise StopForward(owner=object())


def test_trace_rejects_bad_capture(tiny_gpt2):
    with pytest.raises(ValueError, match="capture"):
        Trace(layers.resolve(tiny_gpt2, "embed"), capture="outputs")


def test_rewrite_output_sees_the_input(tiny_gpt2):
    from lifelong import layers
    from lifelong.nethook import rewrite_output
    module = layers.resolve(tiny_gpt2, "layers.0.mlp.out")
    seen = {}

    def fn(x, y):
        seen["x"], seen["y"] = x.shape, y.shape
        return layers.apply_linear(module, x) * 0

    ids = torch.tensor([[3, 4, 5]])
    before = tiny_gpt2(ids).logits
    with rewrite_output(module, fn):
        changed = tiny_gpt2(ids).logits
    assert seen["x"][-1] == layers.mlp_width(tiny_gpt2) and seen["y"][-1] == layers.hidden_size(tiny_gpt2)
    assert not torch.equal(changed, before)
    assert torch.equal(tiny_gpt2(ids).logits, before)
