"""Neurons added beside one FFN (T-Patcher's patches, CaliNET's calibration slots): what they
add, and the one way to hook them in.

An added neuron reads the FFN's input x (the input of its first projection, `mlp.in`: the
normalised residual stream) and adds ``act(x . k + b) v`` to the FFN's output (the output of
its last projection, `mlp.out`), at every position, as any neuron of that FFN would.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ...nethook import Trace, replace_output


def activate(a: torch.Tensor, kind: str) -> torch.Tensor:
    """The neurons' activation of pre-activations `a`: GELU (erf form) or ReLU."""
    return F.relu(a) if kind == "relu" else F.gelu(a)


def side_output(x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, kind: str,
                bias: torch.Tensor | None = None) -> torch.Tensor:
    """What the neurons add to the FFN output at every position: act(x K^T + b) V in float32;
    `x` (..., d_in), `keys` (N, d_in), `values` (N, d_out), `bias` (N,) or none."""
    a = x.float() @ keys.T
    return activate(a if bias is None else a + bias, kind) @ values


def open_ffn_side(stack: contextlib.ExitStack, source: nn.Module, target: nn.Module,
                  fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *,
                  detach: bool = True) -> None:
    """Open on `stack` a Trace of `source`'s input x (the FFN input) and a rewrite of
    `target`'s output y (the FFN output) by ``fn(x, y)``. `detach=False` keeps x's graph, so
    a lower layer's neurons get gradient through a higher layer's."""
    src = stack.enter_context(Trace(source, capture="input", detach=detach))
    stack.enter_context(replace_output(target, lambda y: fn(src.input, y)))
