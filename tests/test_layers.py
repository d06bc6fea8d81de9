"""Family-independent layer addressing (lifelong.layers) on tiny models of every family."""

from __future__ import annotations

import pytest
import torch
from conftest import FAMILIES, make_tiny_model
from torch import nn
from transformers import AutoModelForCausalLM, GPTNeoXConfig, OPTConfig

from lifelong import layers
from lifelong.errors import ConfigError

pytestmark = pytest.mark.usefixtures("single_thread")

PROJECTIONS = ("layers.0.attn.out", "layers.0.mlp.in", "layers.0.mlp.out", "layers.-1.mlp.out",
               "lm_head")

# The real module names each family's projections must map to (the point of the table).
EXPECTED_PATHS = {
    "gpt2": {"layers.1.mlp.out": "transformer.h.1.mlp.c_proj",
             "layers.0.mlp.in": "transformer.h.0.mlp.c_fc",
             "layers.0.attn.out": "transformer.h.0.attn.c_proj",
             "embed": "transformer.wte", "final_norm": "transformer.ln_f"},
    "gptj": {"layers.1.mlp.out": "transformer.h.1.mlp.fc_out",
             "layers.0.mlp.in": "transformer.h.0.mlp.fc_in",
             "layers.0.attn.out": "transformer.h.0.attn.out_proj"},
    **{fam: {"layers.1.mlp.out": "model.layers.1.mlp.down_proj",
             "layers.0.mlp.in": "model.layers.0.mlp.up_proj",
             "layers.0.attn.out": "model.layers.0.self_attn.o_proj",
             "embed": "model.embed_tokens", "final_norm": "model.norm"}
       for fam in ("llama", "mistral", "qwen2")},
}


def all_names(n_layers: int) -> list[str]:
    return [t.replace("{L}", str(L)) for t in layers.NAMES
            for L in ((range(-n_layers, n_layers)) if "{L}" in t else [None])]


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    return {fam: make_tiny_model(fam) for fam in FAMILIES}


@pytest.mark.parametrize("fam", FAMILIES)
def test_every_name_resolves(models, fam):
    model = models[fam]
    assert layers.family(model) == fam
    assert layers.num_layers(model) == 2
    for name in all_names(2):
        module = layers.resolve(model, name)
        assert isinstance(module, nn.Module)
        path = layers.module_path(model, name)
        assert model.get_submodule(path) is module, name
    for name, path in EXPECTED_PATHS[fam].items():
        assert layers.module_path(model, name) == path
    assert layers.resolve(model, "embed") is model.get_input_embeddings()
    assert layers.resolve(model, "lm_head") is model.get_output_embeddings()


@pytest.mark.parametrize("fam", FAMILIES)
def test_negative_indices(models, fam):
    model = models[fam]
    n = layers.num_layers(model)
    for suffix in ("", ".attn", ".attn.out", ".mlp", ".mlp.in", ".mlp.out"):
        for L in range(n):
            assert layers.resolve(model, f"layers.{L - n}{suffix}") is \
                layers.resolve(model, f"layers.{L}{suffix}")
            assert layers.module_path(model, f"layers.{L - n}{suffix}") == \
                layers.module_path(model, f"layers.{L}{suffix}")
    assert layers.layer_index(model, -1) == n - 1


@pytest.mark.parametrize("fam", FAMILIES)
def test_projection_shapes(models, fam):
    model = models[fam]
    hidden, width = layers.hidden_size(model), layers.mlp_width(model)
    assert (hidden, width) == (32, 128)
    out = layers.resolve(model, "layers.0.mlp.out")
    inp = layers.resolve(model, "layers.0.mlp.in")
    assert tuple(layers.weight_out_in(out).shape) == (hidden, width)
    assert layers.in_out_features(out) == (width, hidden)
    assert tuple(layers.weight_out_in(inp).shape) == (width, hidden)
    assert layers.in_out_features(inp) == (hidden, width)
    attn_out = layers.resolve(model, "layers.0.attn.out")
    assert tuple(layers.weight_out_in(attn_out).shape) == (hidden, hidden)
    assert layers.in_out_features(layers.resolve(model, "lm_head")) == \
        (hidden, model.config.vocab_size)


@pytest.mark.parametrize("fam", FAMILIES)
def test_apply_linear_matches_module(models, fam):
    model = models[fam]
    gen = torch.Generator().manual_seed(1)
    for name in PROJECTIONS:
        module = layers.resolve(model, name)
        in_f, out_f = layers.in_out_features(module)
        x = torch.randn(2, 5, in_f, generator=gen)
        with torch.no_grad():
            got = layers.apply_linear(module, x)
            assert got.shape == (2, 5, out_f)
            assert torch.equal(got, module(x)), name
            # Also on a 1-D and a non-contiguous input.
            assert torch.allclose(layers.apply_linear(module, x[0, 0]), module(x[0, 0]),
                                  atol=1e-6)
            xt = torch.randn(5, 2, in_f, generator=gen).transpose(0, 1)
            assert torch.allclose(layers.apply_linear(module, xt), module(xt.contiguous()),
                                  atol=1e-6)


@pytest.mark.parametrize("fam", FAMILIES)
def test_apply_linear_with_replacement_weight(fam):
    model = make_tiny_model(fam, seed=3)  # mutated below: own copy
    gen = torch.Generator().manual_seed(2)
    for name in ("layers.0.mlp.out", "layers.1.mlp.in", "layers.0.attn.out"):
        module = layers.resolve(model, name)
        in_f, out_f = layers.in_out_features(module)
        x = torch.randn(3, 4, in_f, generator=gen)
        new_w = torch.randn(out_f, in_f, generator=gen)
        with torch.no_grad():
            before = module(x).clone()
            predicted = layers.apply_linear(module, x, weight=new_w)
            assert torch.equal(module(x), before), "apply_linear must not modify the module"
            assert not torch.allclose(predicted, before)
            layers.weight_out_in(module).copy_(new_w)
            assert torch.allclose(predicted, module(x), atol=1e-5), name


def test_apply_linear_rejects_bad_shapes(tiny_gpt2):
    module = layers.resolve(tiny_gpt2, "layers.0.mlp.out")
    with pytest.raises(ValueError, match="expected"):
        layers.apply_linear(module, torch.zeros(2, 128), weight=torch.zeros(128, 32))
    with pytest.raises(ValueError, match="128"):
        layers.apply_linear(module, torch.zeros(2, 32))
    with pytest.raises(TypeError):
        layers.weight_out_in(layers.resolve(tiny_gpt2, "final_norm"))


def test_apply_linear_does_not_run_hooks(tiny_gpt2):
    module = layers.resolve(tiny_gpt2, "layers.0.mlp.out")
    calls = []
    handle = module.register_forward_hook(lambda *a: calls.append(1))
    try:
        layers.apply_linear(module, torch.zeros(1, 128))
    finally:
        handle.remove()
    assert calls == []


def test_conv1d_weight_view_shares_storage(tiny_gpt2):
    module = layers.resolve(tiny_gpt2, "layers.0.mlp.out")
    assert type(module).__name__ == "Conv1D"
    view = layers.weight_out_in(module)
    assert view.shape == (32, 128) and module.weight.shape == (128, 32)
    assert view.data_ptr() == module.weight.data_ptr()
    with torch.no_grad():
        view[3, 7] = 42.0
    assert module.weight[7, 3].item() == 42.0


def test_linear_weight_is_the_parameter():
    model = make_tiny_model("llama")
    module = layers.resolve(model, "layers.0.mlp.out")
    assert layers.weight_out_in(module) is module.weight


@pytest.mark.parametrize("fam", FAMILIES)
def test_default_edit_layer_in_range(models, fam):
    model = models[fam]
    assert 0 <= layers.default_edit_layer(model) < layers.num_layers(model)


@pytest.mark.parametrize("n,expected", [(1, 0), (2, 1), (3, 2), (4, 2), (12, 8), (28, 20),
                                        (48, 35)])
def test_default_edit_layer_formula(n, expected):
    model = make_tiny_model("gpt2", n_layer=n, width=8, n_head=2, vocab_size=16)
    assert layers.default_edit_layer(model) == expected


@pytest.mark.parametrize("named,expected", [(0, 0), (3, 3), (7, 4), (-1, 4), (True, 4), ("1", 4)])
def test_a_layer_named_in_the_config_is_the_default(named, expected):
    """`lifelong pretrain` names the traced layer in config.json; out-of-range or non-int
    values fall back to the late-middle rule (4 of 6 layers)."""
    model = make_tiny_model("gpt2", n_layer=6, width=8, n_head=2, vocab_size=16)
    model.config.lifelong_edit_layer = named
    assert layers.default_edit_layer(model) == expected


@pytest.mark.parametrize("bad", ["mlp", "layers", "layers.x.mlp", "layers.0.mlp.gate",
                                 "layers.0.", "Layers.0", "transformer.h.0", "layer.0",
                                 " embed", "layers.0.mlp.out.weight"])
def test_bad_name_raises_config_error(tiny_gpt2, bad):
    with pytest.raises(ConfigError) as info:
        layers.resolve(tiny_gpt2, bad)
    msg = str(info.value)
    assert repr(bad) in msg
    for known in ("embed", "layers.{L}.mlp.out", "final_norm", "lm_head"):
        assert known in msg
    with pytest.raises(ConfigError):
        layers.module_path(tiny_gpt2, bad)


@pytest.mark.parametrize("layer", [2, 3, -3, 100])
def test_out_of_range_layer_raises_config_error(tiny_gpt2, layer):
    with pytest.raises(ConfigError, match=r"out of range.*2 layers.*-2\.\.1"):
        layers.resolve(tiny_gpt2, f"layers.{layer}.mlp.out")
    with pytest.raises(ConfigError, match="out of range"):
        layers.layer_index(tiny_gpt2, layer)


def test_unknown_family_raises_config_error():
    class Fake(nn.Module):
        class config:  # noqa: N801 - mimics model.config
            model_type = "mamba"

    with pytest.raises(ConfigError, match=r"'mamba'.*known families:.*gpt2.*llama.*qwen2"):
        layers.resolve(Fake(), "embed")
    with pytest.raises(ConfigError, match="known families"):
        layers.family(nn.Linear(2, 2))
    with pytest.raises(ConfigError):
        layers.num_layers(Fake())


def _small_extra(config_cls, **kw) -> nn.Module:
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config_cls(**kw)).eval()


def test_gpt_neox_and_opt():
    neox = _small_extra(GPTNeoXConfig, vocab_size=50, hidden_size=16, intermediate_size=48,
                        num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=32,
                        bos_token_id=0, eos_token_id=0)
    assert layers.module_path(neox, "layers.-1.mlp.out") == "gpt_neox.layers.1.mlp.dense_4h_to_h"
    for name in all_names(2):
        assert neox.get_submodule(layers.module_path(neox, name)) is layers.resolve(neox, name)
    assert layers.mlp_width(neox) == 48

    opt = _small_extra(OPTConfig, vocab_size=50, hidden_size=16, ffn_dim=48,
                       num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=32,
                       word_embed_proj_dim=16, bos_token_id=0, eos_token_id=0, pad_token_id=1)
    assert layers.module_path(opt, "layers.0.mlp.in") == "model.decoder.layers.0.fc1"
    assert layers.mlp_width(opt) == 48
    for name in all_names(2):
        if name.endswith(".mlp"):
            with pytest.raises(ConfigError, match="no module"):
                layers.resolve(opt, name)
        else:
            assert opt.get_submodule(layers.module_path(opt, name)) is layers.resolve(opt, name)


def test_make_tiny_model_is_deterministic_and_leaves_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = make_tiny_model("llama", seed=5)
    after = torch.rand(3)
    assert torch.equal(after, expected), "make_tiny_model must not consume the global RNG"
    b = make_tiny_model("llama", seed=5)
    c = make_tiny_model("llama", seed=6)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert not a.training
