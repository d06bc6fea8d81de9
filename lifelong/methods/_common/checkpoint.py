"""Resuming a long training (MEND's editor, KE's hyper-network, SERAC's classifier and
counterfactual model) where it was interrupted.

A training saves its whole state at an update boundary (the network, the optimiser's state,
its sampler's random state and remaining order, its record of losses) at most every
`every_seconds`, beside the cache entry it will become (`train_or_read`); a later attach (or
`lifelong train-editor`) with the same entry loads it and takes the remaining updates. The
file is removed when the trained network is cached.

Invariants: a save is atomic (the file holds a complete state or is absent), so a kill at any
instant leaves the last complete one; a resumed training takes the same updates on the same
draws as an uninterrupted one, so it ends with the same tensors (tests/test_train_resume.py).
A file that cannot be read as a state is ignored (training starts over) and then overwritten.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch


class Network(Protocol):
    """What a training saves of its network: every tensor, loaded back exactly."""

    def tensors(self) -> dict[str, torch.Tensor]: ...
    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None: ...


@dataclass
class Checkpoint:
    """Where a training keeps its resume point (`path`; None: nowhere, nothing is saved) and
    how often it writes it."""

    path: Path | None = None
    every_seconds: float = 30.0
    _last: float = field(default_factory=time.monotonic, init=False, repr=False)

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None when there is none (or it cannot be read)."""
        if self.path is None or not self.path.is_file():
            return None
        try:
            return torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 (a foreign or damaged file: start over, said by the caller)
            return None

    def resume(self, net: Network, opt: torch.optim.Optimizer,
               draws: ResumableDraws) -> dict[str, Any]:
        """Load the saved state into `net`, `opt` and `draws` and return the rest of it (the
        training's own record: "losses", "seconds", ...); {} when there is none."""
        saved = self.load()
        if saved is None:
            return {}
        net.load_tensors(saved.pop("net"))
        opt.load_state_dict(saved.pop("opt"))
        draws.restore(saved.pop("draws"))
        return saved

    @staticmethod
    def state(net: Network, opt: torch.optim.Optimizer, draws: ResumableDraws,
              **record: Any) -> dict[str, Any]:
        """What `resume` reads back: the network, the optimiser, the draws and `record`."""
        return {"net": net.tensors(), "opt": opt.state_dict(), "draws": draws.state(), **record}

    def at_update(self, state: Callable[[], dict[str, Any]]) -> None:
        """Called after every update: save `state()` when `every_seconds` have passed since
        the last save (or the start)."""
        if self.path is not None and time.monotonic() - self._last >= self.every_seconds:
            self.save(state())

    def save(self, state: dict[str, Any]) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)
        self._last = time.monotonic()

    def clear(self) -> None:
        """Remove the resume point (the training is complete and cached)."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)


class ResumableDraws:
    """A training's sampler whose whole state is `rng` (a `random.Random`) and `order` (the
    indices left in the current pass), saved and restored at update boundaries."""

    rng: random.Random
    order: list[int]

    def state(self) -> dict[str, Any]:
        """Where the draws stand, as plain data (saved with `torch.save`, weights only)."""
        version, internal, gauss = self.rng.getstate()
        return {"rng": {"version": version, "internal": list(internal), "gauss": gauss},
                "order": list(self.order)}

    def restore(self, saved: dict[str, Any]) -> None:
        rng = saved["rng"]
        self.rng.setstate((rng["version"], tuple(rng["internal"]), rng["gauss"]))
        self.order = [int(i) for i in saved["order"]]


class Passes(ResumableDraws):
    """Indices 0..n-1 drawn in passes, each pass a fresh permutation from `rng` (`take`
    draws across the end of a pass)."""

    def __init__(self, n: int, rng: random.Random):
        self.n, self.rng, self.order = n, rng, []

    def take(self, k: int) -> list[int]:
        """The next `k` indices (at most n per pass)."""
        picked: list[int] = []
        while len(picked) < k:
            if not self.order:
                self.order = list(range(self.n))
                self.rng.shuffle(self.order)
            picked.append(self.order.pop())
        return picked
