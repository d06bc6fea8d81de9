"""Family-independent layer addressing.

Editing methods talk about layers with names that mean the same thing in every architecture;
this module resolves them, per model family (``model.config.model_type``), to the real
submodule. The names:

==========================  ==============================================================
``embed``                   the token embedding
``layers.{L}``              transformer block ``L`` (its output is the residual stream)
``layers.{L}.attn``         the block's attention module
``layers.{L}.attn.out``     the attention output projection
``layers.{L}.mlp``          the block's MLP module
``layers.{L}.mlp.in``       the first MLP projection (GPT-2 ``c_fc``, GPT-J ``fc_in``,
                            LLaMA/Mistral/Qwen2 ``up_proj``)
``layers.{L}.mlp.out``      the MLP output projection (GPT-2 ``c_proj``, GPT-J ``fc_out``,
                            LLaMA/Mistral/Qwen2 ``down_proj``): the usual editing target
``final_norm``              the norm after the last block
``lm_head``                 the output (unembedding) projection; for families with tied
                            embeddings (GPT-2, OPT) it shares its weight with ``embed``
==========================  ==============================================================

``L`` may be negative (``-1`` is the last block). Unknown families, unknown names and
out-of-range layers raise :class:`lifelong.errors.ConfigError` with a message that lists what
is known.

The mapping is a small table of dotted paths per family (:data:`FAMILIES`); nothing else is
family-specific. Projections are handled through three helpers that hide GPT-2's ``Conv1D``
(which stores its weight as ``(in, out)``): :func:`weight_out_in`, :func:`in_out_features` and
:func:`apply_linear`, all of which speak the ``(out_features, in_features)`` orientation of
``torch.nn.Linear``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError

# A path is a dotted attribute path, or a tuple of alternatives (the first that exists wins;
# used where transformers renamed a module between versions). None: the family has no such
# module.
_Path = str | tuple[str, ...] | None


@dataclass(frozen=True)
class FamilySpec:
    """Where the named parts live in one model family.

    ``embed``, ``blocks``, ``final_norm`` and ``lm_head`` are paths from the top-level
    (``...ForCausalLM``) model; ``attn``, ``attn_out``, ``mlp``, ``mlp_in`` and ``mlp_out`` are
    paths relative to one block.
    """

    embed: _Path
    blocks: _Path
    final_norm: _Path
    lm_head: _Path
    attn: _Path
    attn_out: _Path
    mlp: _Path
    mlp_in: _Path
    mlp_out: _Path


_LLAMA_LIKE = FamilySpec(
    embed="model.embed_tokens", blocks="model.layers", final_norm="model.norm",
    lm_head="lm_head", attn="self_attn", attn_out="self_attn.o_proj",
    mlp="mlp", mlp_in="mlp.up_proj", mlp_out="mlp.down_proj",
)

#: The supported families, by ``config.model_type``.
FAMILIES: dict[str, FamilySpec] = {
    "gpt2": FamilySpec(
        embed="transformer.wte", blocks="transformer.h", final_norm="transformer.ln_f",
        lm_head="lm_head", attn="attn", attn_out="attn.c_proj",
        mlp="mlp", mlp_in="mlp.c_fc", mlp_out="mlp.c_proj",
    ),
    "gptj": FamilySpec(
        embed="transformer.wte", blocks="transformer.h", final_norm="transformer.ln_f",
        lm_head="lm_head", attn="attn", attn_out="attn.out_proj",
        mlp="mlp", mlp_in="mlp.fc_in", mlp_out="mlp.fc_out",
    ),
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "gpt_neox": FamilySpec(
        embed="gpt_neox.embed_in", blocks="gpt_neox.layers",
        final_norm="gpt_neox.final_layer_norm", lm_head=("lm_head", "embed_out"),
        attn="attention", attn_out="attention.dense",
        mlp="mlp", mlp_in="mlp.dense_h_to_4h", mlp_out="mlp.dense_4h_to_h",
    ),
    # OPT has no MLP submodule: fc1/fc2 sit directly in the decoder layer.
    "opt": FamilySpec(
        embed="model.decoder.embed_tokens", blocks="model.decoder.layers",
        final_norm="model.decoder.final_layer_norm", lm_head="lm_head",
        attn="self_attn", attn_out="self_attn.out_proj",
        mlp=None, mlp_in="fc1", mlp_out="fc2",
    ),
}

#: The name templates this module understands, in a stable order (for messages and tests).
NAMES: tuple[str, ...] = (
    "embed", "layers.{L}", "layers.{L}.attn", "layers.{L}.attn.out", "layers.{L}.mlp",
    "layers.{L}.mlp.in", "layers.{L}.mlp.out", "final_norm", "lm_head",
)

_TOP_LEVEL = {"embed": "embed", "final_norm": "final_norm", "lm_head": "lm_head"}
_IN_BLOCK = {"": None, "attn": "attn", "attn.out": "attn_out", "mlp": "mlp",
             "mlp.in": "mlp_in", "mlp.out": "mlp_out"}
_LAYER_RE = re.compile(r"layers\.(-?\d+)(?:\.(attn|attn\.out|mlp|mlp\.in|mlp\.out))?")


def _known_names_text() -> str:
    return ", ".join(NAMES)


def family(model: nn.Module) -> str:
    """The model's family (``model.config.model_type``), checked to be supported."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        got = f"model type {model_type!r}" if model_type else (
            f"a {type(model).__name__} without config.model_type")
        raise ConfigError(f"unsupported model family: {got}; known families: "
                          f"{', '.join(sorted(FAMILIES))}")
    return model_type


def _spec(model: nn.Module) -> FamilySpec:
    return FAMILIES[family(model)]


def _lookup(root: nn.Module, path: _Path, what: str, fam: str) -> tuple[str, nn.Module]:
    """Follow a (possibly alternative) dotted path from `root`; ConfigError if it is absent."""
    if path is None:
        raise ConfigError(f"{fam} models have no module for {what!r}; "
                          f"known names: {_known_names_text()}")
    candidates = (path,) if isinstance(path, str) else path
    for cand in candidates:
        obj: object = root
        for part in cand.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.Module):
            return cand, obj
    raise ConfigError(f"{what!r}: {fam} model {type(root).__name__} has no module at "
                      f"{' or '.join(candidates)}")


def _blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    fam = family(model)
    path, blocks = _lookup(model, FAMILIES[fam].blocks, "layers", fam)
    return path, blocks  # type: ignore[return-value]


def num_layers(model: nn.Module) -> int:
    """Number of transformer blocks (counted from the model, not read from its config)."""
    return len(_blocks(model)[1])


def layer_index(model: nn.Module, layer: int) -> int:
    """`layer` as a non-negative block index (``-1`` is the last block); ConfigError when out
    of range."""
    n = num_layers(model)
    if not -n <= layer < n:
        raise ConfigError(f"layer {layer} out of range for a {family(model)} model with {n} "
                          f"layers (valid: {-n}..{n - 1})")
    return layer % n


def module_path(model: nn.Module, name: str) -> str:
    """The real dotted path of the module called `name`, e.g. ``"transformer.h.3.mlp.c_proj"``
    for ``"layers.3.mlp.out"`` (or ``"layers.-1.mlp.out"`` in a 4-layer GPT-2). Usable with
    ``model.get_submodule``."""
    return _resolve(model, name)[0]


def resolve(model: nn.Module, name: str) -> nn.Module:
    """The module called `name` (see the module docstring for the names)."""
    return _resolve(model, name)[1]


def _resolve(model: nn.Module, name: str) -> tuple[str, nn.Module]:
    fam = family(model)
    spec = FAMILIES[fam]
    if not isinstance(name, str):
        raise ConfigError(f"layer name must be a string, got {name!r}; "
                          f"known names: {_known_names_text()}")
    if name in _TOP_LEVEL:
        return _lookup(model, getattr(spec, _TOP_LEVEL[name]), name, fam)
    match = _LAYER_RE.fullmatch(name)
    if match is None:
        raise ConfigError(f"unknown layer name {name!r}; known names: {_known_names_text()} "
                          f"(L an integer, negative counts from the last layer)")
    index = layer_index(model, int(match.group(1)))
    blocks_path, blocks = _blocks(model)
    block_path = f"{blocks_path}.{index}"
    field = _IN_BLOCK[match.group(2) or ""]
    if field is None:
        return block_path, blocks[index]
    rel, module = _lookup(blocks[index], getattr(spec, field), name, fam)
    return f"{block_path}.{rel}", module


def default_edit_layer(model: nn.Module) -> int:
    """The default layer to edit. A model whose config names one (``lifelong_edit_layer``,
    which `lifelong pretrain` writes from the model's causal trace: the layer whose MLP output
    carries most of a fact's recall at the subject's last token) gets that layer; any other
    model a late-middle block, ``floor(0.75 * (n - 1) + 0.5)`` for ``n`` blocks (0.75 of the
    way to the last block, rounding halves up: 1 for 2 layers, 8 for 12, 35 for 48). Always
    in ``0..n-1``."""
    n = num_layers(model)
    named = getattr(getattr(model, "config", None), "lifelong_edit_layer", None)
    if isinstance(named, int) and not isinstance(named, bool) and 0 <= named < n:
        return named
    return min(n - 1, max(0, math.floor(0.75 * (n - 1) + 0.5)))


def hidden_size(model: nn.Module) -> int:
    """Width of the residual stream (``config.hidden_size``, else the embedding width)."""
    size = getattr(getattr(model, "config", None), "hidden_size", None)
    if isinstance(size, int):
        return size
    return int(resolve(model, "embed").weight.shape[1])


def mlp_width(model: nn.Module) -> int:
    """Width of the MLP's inner layer: the input size of ``layers.0.mlp.out``."""
    return in_out_features(resolve(model, "layers.0.mlp.out"))[0]


# --- projections -------------------------------------------------------------------------

def _is_conv1d(module: nn.Module) -> bool:
    """GPT-2 style Conv1D (weight stored (in, out)); matched by shape of the class rather than
    by import, so that any transformers version (and GPT-1/GPT-2 copies) qualify."""
    return (type(module).__name__ == "Conv1D" and hasattr(module, "nf")
            and isinstance(getattr(module, "weight", None), torch.Tensor))


def _check_projection(module: nn.Module) -> None:
    if not (isinstance(module, nn.Linear) or _is_conv1d(module)):
        raise TypeError(f"expected a linear projection (nn.Linear or Conv1D), got "
                        f"{type(module).__name__}")


def weight_out_in(module: nn.Module) -> torch.Tensor:
    """The projection's weight in ``(out_features, in_features)`` orientation.

    For ``nn.Linear`` this is ``module.weight`` itself; for GPT-2's ``Conv1D`` it is
    ``module.weight.T``, a view sharing storage: writing into it (under ``torch.no_grad()``,
    since the parameter requires grad) changes the module.
    """
    _check_projection(module)
    return module.weight.T if _is_conv1d(module) else module.weight


def parameter_layout(module: nn.Module, out_in: torch.Tensor) -> torch.Tensor:
    """A weight-shaped tensor in ``(out_features, in_features)`` orientation (as
    `weight_out_in` gives) in the layout of ``module.weight`` itself (GPT-2's ``Conv1D``
    stores ``(in, out)``): a view, no copy."""
    _check_projection(module)
    return out_in.T if _is_conv1d(module) else out_in


def largest_weight_change(model: nn.Module, name: str,
                          changes: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """{the `named_parameters` name of projection `name`'s weight: the largest of `changes`
    (Frobenius norm; changes to that weight in ``(out, in)`` orientation, e.g. side
    memories') in that weight's layout}; {} without changes."""
    if not changes:
        return {}
    path, module = _resolve(model, name)
    return {f"{path}.weight": parameter_layout(module, max(changes, key=lambda d: float(d.norm())))}


def in_out_features(module: nn.Module) -> tuple[int, int]:
    """``(in_features, out_features)`` of a projection."""
    out_features, in_features = weight_out_in(module).shape
    return int(in_features), int(out_features)


def apply_linear(module: nn.Module, x: torch.Tensor,
                 weight: torch.Tensor | None = None) -> torch.Tensor:
    """The projection's function applied to `x` (last dimension ``in_features``), bias
    included, optionally with `weight` (``(out_features, in_features)``) in place of its own.

    The module is not called, so its hooks do not run and it is not modified. With
    ``weight=None`` the result is bit-identical to ``module(x)``.
    """
    _check_projection(module)
    in_features, out_features = in_out_features(module)
    if weight is not None and tuple(weight.shape) != (out_features, in_features):
        raise ValueError(f"replacement weight has shape {tuple(weight.shape)}, expected "
                         f"(out_features, in_features) = {(out_features, in_features)}")
    if x.shape[-1] != in_features:
        raise ValueError(f"input has last dimension {x.shape[-1]}, expected {in_features}")
    if _is_conv1d(module):
        w_in_out = module.weight if weight is None else weight.T
        flat = x.reshape(-1, in_features)
        out = (torch.addmm(module.bias, flat, w_in_out) if module.bias is not None
               else flat @ w_in_out)
        return out.view(*x.shape[:-1], out_features)
    return F.linear(x, module.weight if weight is None else weight, module.bias)


__all__ = [
    "FAMILIES", "FamilySpec", "NAMES", "apply_linear", "default_edit_layer", "family",
    "hidden_size", "in_out_features", "layer_index", "mlp_width", "module_path", "num_layers",
    "resolve", "weight_out_in",
]


def edit_target(model: nn.Module, layer: int | None, part: str = "mlp.out") -> tuple[str, nn.Module]:
    """The module an editing method works on: `layers.{layer}.{part}`, with `layer` None
    meaning `default_edit_layer` and negative layers counted from the end. Returns the
    normalised family-independent name and the module."""
    index = layer_index(model, layer if layer is not None else default_edit_layer(model))
    name = f"layers.{index}.{part}"
    return name, resolve(model, name)
