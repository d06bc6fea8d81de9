"""CaliNET the method: the serving hooks, slot training and exact retraction by replay around
a `SlotMemory` and a `CallLog` (the algorithm, the stream choice and the deviations:
`calinet/__init__.py`).

Modes are which `lifelong.nethook` contexts are open on the calibrated FFNs: serving (per
layer a `Trace` of the FFN input plus a `replace_output` adding the memory's slots, opened at
attach) and training (the same pair per layer with the trained slots added, serving
suspended).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ... import layers
from ...errors import ConfigError, NotSupported
from ...model import LM
from ...scoring import batch_target_loss, encode_pairs
from .._common.ffn import open_ffn_side, side_output
from .._common.hooks import Hooks, Served
from .._common.loop import LoopResult, Step, frozen, optimise, receipt
from ..base import (
    BatchEditing,
    EditReceipt,
    EditRequest,
    MemoryBase,
    Retractable,
    UnknownEdit,
    shared_receipts,
)
from ..context import AttachContext
from .config import CaliNetConfig
from .slots import CallLog, Request, SlotMemory, draw_keys

#: fn(i, x, y) -> new output of calibrated layer i (x: its FFN input, y: its FFN output)
SideFn = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Site:
    """One calibrated FFN: its block index, the module whose input is the FFN input (the
    first projection) and the one whose output is the FFN output (the last projection)."""

    layer: int
    source: nn.Module
    target: nn.Module
    d_in: int
    d_out: int


class CaliNet(Served, MemoryBase, Retractable, BatchEditing):
    """CaliNET. Invariants: the `CallLog` (active edit calls in order) and the `SlotMemory`
    are the whole state, and the memory is a deterministic function of the seed, the
    configuration, the base model and the log (keys drawn from (seed, layer, block), values
    from zero, deterministic training), so `retract` by replay is exact; the base model's
    weights are never written (only hooks are added), so detach leaves it bit-identical."""

    name = "calinet"
    Config = CaliNetConfig
    summary = ("CaliNET: trained calibration slots (a small FFN) beside the last FFN, one "
               "memory trained further per edit (exact retraction by replay)")
    memory_kind = "hooks"

    # ---- lifecycle ----------------------------------------------------------------------
    def attach(self, lm: LM, ctx: AttachContext) -> None:
        """Resolve the calibrated FFNs and open the serving hooks (an empty memory serves
        nothing). `ctx` is not read: CaliNET trains on the edits' own prompts only."""
        self.lm = lm
        self.sites = self._sites(lm)
        self.memory = SlotMemory.empty([(s.d_in, s.d_out) for s in self.sites])
        self.log = CallLog()
        self.hooks = Hooks(lambda stack: self._enter(stack, self._serve))
        self.hooks.open()

    def _sites(self, lm: LM) -> list[Site]:
        """The calibrated FFNs, in the order of `config.layers`; ConfigError when two entries
        name the same block (e.g. -1 and n-1)."""
        out: list[Site] = []
        for layer in self.config.layers:
            index = layers.layer_index(lm.model, layer)
            if any(s.layer == index for s in out):
                raise ConfigError(f"calinet.layers: {list(self.config.layers)} names block "
                                  f"{index} twice")
            # the FFN's input is the input of its first projection (c_fc / up_proj / fc1 ...),
            # its output that of its last (c_proj / down_proj / fc2 ...), in every family
            _, source = layers.edit_target(lm.model, index, "mlp.in")
            _, target = layers.edit_target(lm.model, index, "mlp.out")
            out.append(Site(index, source, target, layers.in_out_features(source)[0],
                            layers.in_out_features(target)[1]))
        return out

    def _enter(self, stack: contextlib.ExitStack, fn: SideFn) -> None:
        """Per calibrated layer i, a Trace of its FFN input x and a rewrite of its FFN output
        y by ``fn(i, x, y)``. Inputs are kept with their graph (detach=False), so while
        several layers train, a higher layer's slots pass gradient down to a lower one's."""
        for i, site in enumerate(self.sites):
            open_ffn_side(stack, site.source, site.target,
                          lambda x, y, i=i: fn(i, x, y), detach=False)

    def _serve(self, i: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Every slot of layer i at every position (a side FFN of that layer); an empty memory:
        `y` itself."""
        if self.memory.rows() == 0:
            return y
        keys, values = self.memory.stacked(i, y.device)
        return y + side_output(x, keys, values, self.config.activation).to(y.dtype)

    # ---- editing ------------------------------------------------------------------------
    def edit(self, requests: Sequence[EditRequest]) -> EditReceipt:
        """Train the memory on `requests` jointly (one call: one calibration set): one
        optimisation of their mean target loss; the receipt reports it."""
        call: list[Request] = [(r.edit_id, r.prompt, r.target) for r in requests]
        if not call:
            return receipt([], self.config.stop_loss, {"layers": self._names()})
        result = self._train(call)
        self.log.calls.append(call)
        return receipt([result], self.config.stop_loss,
                       {"layers": self._names(), "slots": self.memory.rows(),
                        "calls": len(self.log)})

    def edit_batch(self, requests: Sequence[EditRequest]) -> list[EditReceipt]:
        """A batch is one calibration set (the paper calibrates a set of facts jointly): one
        training, whose figures every request's receipt carries."""
        return shared_receipts(self.edit(requests), len(requests))

    def _names(self) -> list[str]:
        return [f"layers.{s.layer}.mlp" for s in self.sites]

    def _train(self, call: list[Request]) -> LoopResult:
        """Train the slots on `call` with the model frozen, and write them to the memory: with
        memory = 'blocks' a new block (keys drawn for its index, values zero) beside the frozen
        earlier ones; with 'shared' the one memory, drawn at the first call and trained further
        after. A deterministic function of (seed, config, model, memory, call)."""
        cfg, lm, dev = self.config, self.lm, self.lm.device
        n = len(self.sites)
        fresh = cfg.memory == "blocks" or self.memory.rows() == 0
        if fresh:
            block = len(self.log) if cfg.memory == "blocks" else 0
            init_k = [draw_keys(self.seed, s.layer, block, cfg.slots, s.d_in) for s in self.sites]
            init_v = [torch.zeros((cfg.slots, s.d_out)) for s in self.sites]
            frozen_kv = [self.memory.stacked(i, dev) for i in range(n)]  # earlier blocks
        else:
            init_k, init_v = self.memory.keys, self.memory.values
            frozen_kv = [(torch.zeros((0, s.d_in), device=dev), torch.zeros((0, s.d_out), device=dev))
                         for s in self.sites]
        keys = [nn.Parameter(k.to(dev).clone()) for k in init_k]
        values = [nn.Parameter(v.to(dev).clone()) for v in init_v]
        batch = encode_pairs(lm, [r[1] for r in call], [r[2] for r in call])

        def side(i: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            k = torch.cat([frozen_kv[i][0], keys[i]])
            v = torch.cat([frozen_kv[i][1], values[i]])
            return y + side_output(x, k, v, cfg.activation).to(y.dtype)

        def step() -> Step:
            loss = batch_target_loss(lm, batch)
            value = float(loss.detach())
            return Step(loss, value, value < cfg.stop_loss)

        opt = torch.optim.Adam([*keys, *values], lr=cfg.lr)
        with frozen(lm.model), self.hooks.suspended(), contextlib.ExitStack() as stack:
            self._enter(stack, side)
            result = optimise(opt, step, cfg.steps, fresh_last=True)
        if fresh:
            self.memory.set([torch.cat([self.memory.keys[i], keys[i].detach().cpu()]) for i in range(n)],
                            [torch.cat([self.memory.values[i], values[i].detach().cpu()])
                             for i in range(n)])
        else:
            self.memory.set(list(keys), list(values))
        return result

    # ---- retraction ---------------------------------------------------------------------
    def retract(self, edit_id: str) -> None:
        """Exact: drop the edit from its call and re-train the memory from where that call
        entered it, every later call in order, as if the edit had never been made. With
        memory = 'blocks' that is the call's block and the later ones (the newest edit alone
        costs nothing); with 'shared' every remaining call, from the first draw (the shared
        memory before a call is not kept)."""
        cfg = self.config
        if cfg.retract == "unsupported":
            raise NotSupported("calinet cannot retract one edit here (retract = 'unsupported'): "
                               "every slot was trained with it, and later edits on top of it; "
                               "set retract = 'replay'")
        c = self.log.find(edit_id)
        if c is None:
            raise UnknownEdit(f"calinet: no active edit {edit_id!r} to retract")
        start = c if cfg.memory == "blocks" else 0
        replay = self.log.without(edit_id, start)
        self.log.calls = self.log.calls[:start]
        self.memory.truncate(start * cfg.slots)
        for call in replay:
            self._train(call)
            self.log.calls.append(call)

    # ---- state --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"layers": [s.layer for s in self.sites], "log": self.log.to_state(),
                "keys": [k.clone() for k in self.memory.keys],
                "values": [v.clone() for v in self.memory.values]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        got = [int(x) for x in state["layers"]]
        if got != [s.layer for s in self.sites]:
            raise ConfigError(f"calinet: this state calibrates blocks {got}, the method is "
                              f"attached to blocks {[s.layer for s in self.sites]}")
        self.log = CallLog.from_state(state["log"])
        self.memory.set(list(state["keys"]), list(state["values"]))

    def footprint(self) -> int:
        """The slots' bytes (keys and values of every calibrated layer)."""
        return self.memory.nbytes()
