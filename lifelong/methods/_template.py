"""`template`: a complete, working method to copy (docs/adding-a-method.md).

Copy this file to `lifelong/methods/<yourname>.py` (or a folder `<yourname>/` with an
`__init__.py`), set `name`, and it is registered: `lifelong methods` lists it, scenarios run
it, and `tests/test_contract.py` and `tests/test_platform_*.py` test it. (This file itself is
skipped by the registry because its name starts with an underscore; the contract tests run
it anyway, so it keeps working.)

What it does (a tiny key-value memory, GRACE without radii bookkeeping): at one MLP output
projection, each edit stores a key (the projection's input at the edit prompt's last token)
and a value (a vector trained so that the model produces the target when the projection's
output is replaced by it from that token on). A row whose key lies within `radius` x |key|
of a stored key gets that key's value; other rows are untouched. Retraction is exact: the
edit's entry is removed, and every other entry is as it was.

The platform pieces it uses, one each:
  * `layers.edit_target` - the module, by family-independent name;
  * `_common.hooks.Hooks` / `Served` - the serving hook (a `nethook` context), suspended
    while keys are captured and values trained;
  * `_common.keys` - where a row's key is read;
  * `_common.loop` - `frozen(model)` and the shared edit loop, which also builds the receipt;
  * `Retractable` - a declared capability (add `Consolidating`, `Routing`, `BatchEditing`,
    `WeightDeltas` the same way when your method has them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .. import layers
from ..config import setting
from ..model import LM
from ..nethook import Trace, replace_output, rewrite_output
from ..scoring import batch_target_loss, encode_pairs
from ._common.hooks import Hooks, Served
from ._common.keys import batch_info, key_positions, position_mask
from ._common.loop import Step, frozen, optimise, receipt
from .base import (
    EditReceipt,
    EditRequest,
    MemoryBase,
    Retractable,
    UnknownEdit,
    tensor_bytes,
)
from .context import AttachContext


@dataclass(frozen=True)
class TemplateConfig:
    """Every setting: a type, a default, help text and (where it has them) bounds or choices;
    `lifelong methods` prints them, scenarios set them, unknown keys are refused."""

    layer: int | None = setting(None, "layer whose mlp.out output is replaced (negative counts "
                                      "from the end); default: the late-middle layer")
    radius: float = setting(0.05, "a row is served by the nearest key within radius x |key|",
                            min=0.0)
    replace: str = setting("from_key", "positions a value replaces: the key token and every "
                                       "later one, or the key token only",
                           choices=("from_key", "key"))
    steps: int = setting(20, "most Adam steps to train a value", min=1, max=10_000)
    lr: float = setting(0.5, "Adam learning rate (times the layer output's RMS)", min=0.0)
    stop_loss: float = setting(0.05, "stop once the target loss is below this", min=0.0)


class TemplateMethod(Served, MemoryBase, Retractable):
    """Invariants: `self.entries` (edit id -> key, value), in edit order, is the whole memory;
    detach leaves the model as it was (only hooks are added)."""

    name = "template"
    Config = TemplateConfig
    summary = "template: key-value memory at one layer (copy me: docs/adding-a-method.md)"
    memory_kind = "hooks"   # served by hooks; "weights" if it changed the model's weights
    retraction = "exact"

    def attach(self, lm: LM, ctx: AttachContext) -> None:
        self.lm = lm
        self.layer_name, self.module = layers.edit_target(lm.model, self.config.layer)
        self.entries: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.hooks = Hooks(lambda stack: stack.enter_context(
            rewrite_output(self.module, self._serve)))
        self.hooks.open()

    # ---- serving: the ordinary forward, with the hook in place ----------------------------
    def _serve(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not self.entries:
            return y
        info = self.lm.forward_info
        kpos = key_positions(info, y.shape[0], y.shape[1], y.device)
        query = x[torch.arange(x.shape[0], device=x.device), kpos].detach().float()
        newest_first = list(self.entries.values())[::-1]  # ties go to the newest edit
        keys = torch.stack([k for k, _ in newest_first])
        values = torch.stack([v for _, v in newest_first])
        dist = torch.cdist(query, keys)                    # (rows, entries)
        best = dist.argmin(1)
        hit = dist.gather(1, best[:, None])[:, 0] <= self.config.radius * keys[best].norm(dim=1)
        mask = position_mask(info, self.config.replace, kpos, y.shape[1]) & hit[:, None]
        return torch.where(mask[..., None], values[best].to(y.dtype)[:, None], y)

    # ---- editing ------------------------------------------------------------------------
    def edit(self, requests: Sequence[EditRequest]) -> EditReceipt:
        results = []
        for r in requests:
            key, value, result = self._train(r)
            self.entries[r.edit_id] = (key, value)
            results.append(result)
        return receipt(results, self.config.stop_loss, {"entries": len(self.entries)})

    def _train(self, r: EditRequest):
        """The edit's key and a value trained with the shared loop (the model frozen)."""
        batch = encode_pairs(self.lm, [r.prompt], [r.target])
        with torch.no_grad(), self.hooks.suspended(), Trace(self.module, capture="both") as t:
            batch_target_loss(self.lm, batch)
        kpos = key_positions(batch_info(batch), 1, batch[0].shape[1], t.output.device)
        key = t.input[0, kpos[0]].detach().float().clone()
        init = t.output[0, kpos[0]].detach().float().clone()  # the layer's own output
        value = torch.nn.Parameter(init.clone())
        opt = torch.optim.Adam([value], lr=self.config.lr * float(init.pow(2).mean().sqrt()))

        def step() -> Step:
            loss = batch_target_loss(self.lm, batch)
            return Step(loss, float(loss.detach()), float(loss.detach()) < self.config.stop_loss)

        def trained(y: torch.Tensor) -> torch.Tensor:
            info = self.lm.forward_info
            kp = key_positions(info, y.shape[0], y.shape[1], y.device)
            mask = position_mask(info, self.config.replace, kp, y.shape[1])
            return torch.where(mask[..., None], value.to(y.dtype)[None, None], y)

        with frozen(self.lm.model), self.hooks.suspended(), replace_output(self.module, trained):
            result = optimise(opt, step, self.config.steps, fresh_last=True)
        return key, value.detach().clone(), result

    def retract(self, edit_id: str) -> None:
        if edit_id not in self.entries:
            raise UnknownEdit(f"template: no active edit {edit_id!r} to retract")
        del self.entries[edit_id]

    # ---- state: tensors and plain data only (the store loads it with weights_only) -------
    def state_dict(self) -> dict[str, Any]:
        return {"ids": list(self.entries),
                "keys": [k.clone() for k, _ in self.entries.values()],
                "values": [v.clone() for _, v in self.entries.values()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.entries = {i: (k.clone(), v.clone())
                        for i, k, v in zip(state["ids"], state["keys"], state["values"])}

    def footprint(self) -> int:
        return sum(tensor_bytes(k, v) for k, v in self.entries.values())
