"""GRACE the method: the serving hook, key capture and value training around a `Codebook`.

Modes are which `lifelong.nethook` context is open on the edited projection: serving
(`rewrite_output`: codebook lookups, opened at attach), capturing keys (`Trace`, with the
serving hook suspended) or training a value (`replace_output` with the value being trained,
serving suspended).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch

from ... import layers
from ...model import LM
from ...nethook import Trace, replace_output, rewrite_output
from ...scoring import batch_target_loss, encode_pairs
from .._common.facts import as_seen
from .._common.guard import guard_from_context
from .._common.hooks import Hooks, Served
from .._common.keys import batch_info, key_positions, position_mask, read_keys
from .._common.loop import LoopResult, Step, frozen, optimise, receipt
from ..base import EditReceipt, EditRequest, MemoryBase, Retractable
from ..context import AttachContext
from .codebook import Codebook
from .config import GraceConfig


class Grace(Served, MemoryBase, Retractable):
    """GRACE. Invariants: the codebook is a function of its log (`Codebook`); detach leaves
    the model as it was (only hooks are added)."""

    name = "grace"
    Config = GraceConfig
    summary = "GRACE: codebook of keys with deferral radii at one layer (exact retraction)"
    memory_kind = "hooks"
    retraction = "exact"

    # ---- lifecycle ----------------------------------------------------------------------
    def attach(self, lm: LM, ctx: AttachContext) -> None:
        cfg = self.config
        self.lm = lm
        self.layer_name, self.module = layers.edit_target(lm.model, cfg.layer)
        in_f, out_f = layers.in_out_features(self.module)
        # the key is read at the projection's input, or at the input of the whole MLP block
        self.key_module = self.module if cfg.key == "mlp.out" else \
            layers.resolve(lm.model, self.layer_name.rsplit(".", 1)[0])
        self.key_dim = in_f if cfg.key == "mlp.out" else layers.hidden_size(lm.model)
        self.value_dim = out_f
        self.hooks = Hooks(self._serving)
        self.hooks.open()
        guard = guard_from_context(ctx, f"{self.layer_name}/{cfg.key}/{cfg.key_token}",
                                   self.key_dim, cfg.claim_rate, self._prompt_keys,
                                   pool=cfg.claim_pool)
        self.book = Codebook(cfg, self.key_dim, self.value_dim, guard)

    def _serving(self, stack: contextlib.ExitStack) -> None:
        if self.key_module is self.module:
            stack.enter_context(rewrite_output(self.module, self._serve))
            return
        source = stack.enter_context(Trace(self.key_module, capture="input"))
        stack.enter_context(rewrite_output(self.module, lambda _x, y: self._serve(source.input, y)))

    def _serve(self, source: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """Replace the output of rows whose key a codebook entry covers (others untouched)."""
        if len(self.book.index) == 0:
            return output
        info = self.lm.forward_info
        batch, width = output.shape[0], output.shape[1]
        kpos = key_positions(info, batch, width, output.device)
        entry, hit = self.book.lookup(read_keys(source, kpos, info, self.config.key_token)
                                      .detach().float())
        if hit.device.type == "cpu" and not bool(hit.any()):  # (on a GPU, asking would wait)
            return output
        values = self.book.values_of(entry).to(output.device)
        mask = position_mask(info, self.config.replace, kpos, width) & hit.to(output.device).unsqueeze(1)
        return torch.where(mask.unsqueeze(-1), values.to(output.dtype).unsqueeze(1), output)

    # ---- keys and values ----------------------------------------------------------------
    @torch.no_grad()
    def keys_of(self, prompts: list[str], targets: list[str]):
        """(keys, layer outputs at the key token, target token ids) of prompt/target pairs,
        computed with the codebook out of the way; also the mean target loss."""
        batch = encode_pairs(self.lm, prompts, targets)
        with self.hooks.suspended(), Trace(self.module, capture="output") as out, \
                Trace(self.key_module, capture="input") as src:
            loss = float(batch_target_loss(self.lm, batch))
        info, width = batch_info(batch), batch[0].shape[1]
        y = out.output
        kpos = key_positions(info, y.shape[0], width, y.device)
        keys = read_keys(src.input, kpos, info, self.config.key_token).detach().float().clone()
        outputs = y[torch.arange(y.shape[0], device=y.device), kpos].detach().float().clone()
        return keys, outputs, [tuple(t) for t in batch[4]], loss

    def _prompt_keys(self, prompts: list[str]) -> torch.Tensor:
        """Keys of bare prompts (a key reads prompt tokens only: the target is a placeholder)."""
        return self.keys_of(prompts, ["x"] * len(prompts))[0]

    def _train(self, prompts: list[str], targets: list[str]):
        """Keys at the key token and values trained to produce the targets; the loop's
        result reports the loss of the bare layer output as its first figure."""
        lm, cfg = self.lm, self.config
        keys, init, target_ids, loss0 = self.keys_of(prompts, targets)
        value = torch.nn.Parameter(init.clone())
        scale = float(init.pow(2).mean().sqrt().clamp(min=1e-3))
        opt = torch.optim.Adam([value], lr=cfg.lr * scale)
        batch = encode_pairs(lm, prompts, targets)
        history: list[float] = []

        def step() -> Step:
            out = batch_target_loss(lm, batch)
            loss = float(out.detach())
            history.append(loss)
            plateau = len(history) > 8 and history[-9] - loss < 1e-3 * max(history[-9], 1e-6)
            return Step(out, loss, loss < cfg.stop_loss or plateau)

        with frozen(lm.model), self.hooks.suspended(), \
                replace_output(self.module, lambda y: self._trained_output(y, value)):
            result = optimise(opt, step, cfg.steps, fresh_last=True)
        return keys, value.detach().clone(), target_ids, LoopResult(loss0, result.last, result.steps)

    def _trained_output(self, output: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """While training: every row's output replaced by its value (as `replace` says)."""
        info = self.lm.forward_info
        kpos = key_positions(info, output.shape[0], output.shape[1], output.device)
        mask = position_mask(info, self.config.replace, kpos, output.shape[1])
        return torch.where(mask.unsqueeze(-1), value.to(output.dtype).unsqueeze(1), output)

    # ---- editing ------------------------------------------------------------------------
    def edit(self, requests: Sequence[EditRequest]) -> EditReceipt:
        results, placed = [], []
        for r in (as_seen(r, self.config.use_fact_identity) for r in requests):
            prompts = [r.prompt] + [p for p in self.book.prompts_of(r.fact) if p != r.prompt]
            keys, values, targets, result = self._train(prompts, [r.target] * len(prompts))
            placed.append(self.book.add({
                "edit_id": r.edit_id, "fact": r.fact, "target": r.target,
                "target_ids": list(targets[0]), "prompts": prompts, "keys": keys,
                "values": values}))
            results.append(result)
        return receipt(results, self.config.stop_loss, {
            "layer": self.layer_name, "placed": placed, "entries": len(self.book.index),
            "radius_factor": self.book.factor()})

    def insert_item(self, item: dict[str, Any]) -> list[str]:
        """Place a ready item without training (`Codebook.add`): benchmarks and tests of the
        placement rules."""
        return self.book.add(dict(item))

    def retract(self, edit_id: str) -> None:
        self.book.retract(edit_id)

    # ---- state --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return self.book.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.book.load_state_dict(state)

    def footprint(self) -> int:
        return self.book.footprint()
