"""CaliNET's calibration memory and the edit log: pure tensor code, no model, no hooks.

A calibration slot is one neuron of a small FFN beside a layer's FFN: a key ``k`` over the
FFN's input (model width) and a value ``v`` over its output. Over all slots of a layer, at
every position, the FFN output ``y`` becomes ``y + act(x K^T) V`` (no bias, as in the paper).

`SlotMemory` holds every layer's slots, float32 on the CPU; `CallLog` the edit calls that
trained them, in order. Invariant: the memory is a deterministic function of the seed, the
configuration, the base model and the log (`CaliNet._train` replays it), so the log plus the
memory is the whole state and `stacked` is derived from the memory (cached per device,
rebuilt whenever the memory changes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from .._common.rng import seeded_rng
from ..base import tensor_bytes

#: one request of an edit call: (edit id, prompt, target)
Request = tuple[str, str, str]


def draw_keys(seed: int, layer: int, block: int, slots: int, d_in: int) -> torch.Tensor:
    """The initial keys of block `block` of layer `layer`: uniform in +-1/sqrt(d_in) (the
    initialisation of a torch Linear of that input width, as the reference code's), drawn on
    the CPU from a generator seeded by (seed, layer, block) alone, so a replay draws the same."""
    g = torch.Generator().manual_seed(seeded_rng(seed, "calinet", layer, block).getrandbits(63))
    return (torch.rand((slots, d_in), generator=g) * 2 - 1) / math.sqrt(d_in)


@dataclass
class SlotMemory:
    """Per calibrated layer (in the order of `CaliNet.sites`) the keys (N, d_in) and values
    (N, d_out); every layer holds the same number N of slots."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    _cache: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = field(
        default_factory=dict, init=False, repr=False)

    @classmethod
    def empty(cls, dims: list[tuple[int, int]]) -> SlotMemory:
        """No slot yet, for layers of (d_in, d_out) `dims`."""
        return cls([torch.zeros((0, i)) for i, _ in dims], [torch.zeros((0, o)) for _, o in dims])

    def rows(self) -> int:
        return int(self.keys[0].shape[0]) if self.keys else 0

    def stacked(self, i: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor,
                                                                          torch.Tensor]:
        """(K, V) of layer `i`, float32 on `device`."""
        key = str(device)
        if key not in self._cache:
            self._cache[key] = [(k.to(device), v.to(device))
                                for k, v in zip(self.keys, self.values)]
        return self._cache[key][i]

    def truncate(self, n: int) -> None:
        """Keep the first `n` slots of every layer."""
        self.keys = [k[:n].clone() for k in self.keys]
        self.values = [v[:n].clone() for v in self.values]
        self._cache.clear()

    def set(self, keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        """Replace every layer's slots (float32 CPU copies are kept)."""
        if len({k.shape[0] for k in keys}) > 1:
            raise ValueError("every calibrated layer holds the same number of slots")
        self.keys = [k.detach().float().cpu().clone() for k in keys]
        self.values = [v.detach().float().cpu().clone() for v in values]
        self._cache.clear()

    def nbytes(self) -> int:
        return tensor_bytes(*self.keys, *self.values)


@dataclass
class CallLog:
    """The active edit calls in order, each the requests it trained (a call holds one request,
    or a batch with schedule.edit_batch). A retracted request is removed from its call; a call
    left empty is dropped."""

    calls: list[list[Request]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.calls)

    def ids(self) -> list[str]:
        return [r[0] for call in self.calls for r in call]

    def find(self, edit_id: str) -> int | None:
        """Index of the call holding `edit_id` (None: no active call does)."""
        return next((i for i, call in enumerate(self.calls) if any(r[0] == edit_id for r in call)),
                    None)

    def without(self, edit_id: str, start: int) -> list[list[Request]]:
        """The calls from `start` on with `edit_id` removed (calls left empty dropped)."""
        out = [[r for r in call if r[0] != edit_id] for call in self.calls[start:]]
        return [call for call in out if call]

    def to_state(self) -> list[list[list[str]]]:
        return [[list(r) for r in call] for call in self.calls]

    @classmethod
    def from_state(cls, state: list[Any]) -> CallLog:
        return cls([[(str(r[0]), str(r[1]), str(r[2])) for r in call] for call in state])
