"""T-Patcher the method: the serving hook, the memory, patch training and exact retraction
around a `PatchLog` (the algorithm and its deviations: `t_patcher/__init__.py`).

Modes are which `lifelong.nethook` contexts are open on the patched FFN: serving (a `Trace` of
the FFN input plus a `replace_output` adding every patch, opened at attach), capturing memory
rows (a `Trace` that stops the forward at the FFN input, serving suspended) and training (the
same pair with the trained neurons added, serving suspended).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ... import layers
from ...errors import NotSupported
from ...model import LM
from ...nethook import Trace
from ...scoring import encode_pairs, forward_logits, next_token_logp
from .._common.ffn import open_ffn_side, side_output
from .._common.hooks import Hooks, Served
from .._common.loop import LoopResult, Step, frozen, optimise
from ..base import EditReceipt, EditRequest, MemoryBase, Retractable, UnknownEdit, tensor_bytes
from ..context import AttachContext
from .config import TPatcherConfig
from .patches import Edit, PatchLog, activation_loss, memory_loss

#: a memory row this close to one of the edit's own keyed inputs (relative to the input's norm)
#: is that input (e.g. the same prompt edited before) and is left out of the edit's memory
SAME_INPUT = 1e-4


class TPatcher(Served, MemoryBase, Retractable):
    """T-Patcher. Invariants: the unrelated memory and the `PatchLog` (active edits in order)
    are the whole state, and every edit's neurons are a deterministic function of the model,
    that memory and the edits before it (no random draw), so `retract` by replay is exact;
    detach leaves the model as it was (only hooks are added)."""

    name = "t-patcher"
    Config = TPatcherConfig
    summary = "T-Patcher: one trained FFN neuron per mistaken token in the last layer (exact retraction by replay)"
    memory_kind = "hooks"

    # ---- lifecycle ----------------------------------------------------------------------
    def attach(self, lm: LM, ctx: AttachContext) -> None:
        cfg = self.config
        self.lm = lm
        # the FFN's input is the input of its first projection (c_fc / up_proj / fc1 ...),
        # its output that of its last (c_proj / down_proj / fc2 ...), in every family
        in_name, self.source = layers.edit_target(lm.model, cfg.layer, "mlp.in")
        _, self.target = layers.edit_target(lm.model, cfg.layer, "mlp.out")
        self.layer_name = in_name.rsplit(".", 1)[0]
        self.key_dim = layers.in_out_features(self.source)[0]
        self.value_dim = layers.in_out_features(self.target)[1]
        self.log = PatchLog(self.key_dim, self.value_dim)
        self.hooks = Hooks(lambda stack: self._enter(stack, self._serve))
        self.hooks.open()
        self.memory = self.prompt_rows(list(ctx.unrelated_prompts[:cfg.memory_prompts]))

    def _enter(self, stack: contextlib.ExitStack,
               fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        """Open a Trace of the FFN input and a rewrite of the FFN output by ``fn(x, y)``."""
        open_ffn_side(stack, self.source, self.target, fn)

    def _serve(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Every patch at every position (a neuron of the FFN); none: `y` itself."""
        if not self.log.neurons():
            return y
        k, b, v = self.log.stacked(y.device)
        return y + side_output(x, k, v, self.config.activation, b).to(y.dtype)

    # ---- the memory ---------------------------------------------------------------------
    @torch.no_grad()
    def prompt_rows(self, prompts: list[str]) -> torch.Tensor:
        """FFN inputs (float32, CPU) at every token of every prompt, in order; the forward
        stops at the FFN. No patch can change them: they are read before the patches act."""
        out = [torch.zeros((0, self.key_dim))]
        for i in range(0, len(prompts), 64):
            chunk = prompts[i:i + 64]
            ids, mask, end, _, _ = encode_pairs(self.lm, chunk, ["x"] * len(chunk))
            with self.hooks.suspended(), Trace(self.source, capture="input", stop=True) as t:
                forward_logits(self.lm, ids, mask, end)
            pos = torch.arange(ids.shape[1]).unsqueeze(0)
            real = mask.bool() & (pos < end.unsqueeze(1))  # prompt tokens, not the dummy target
            out.append(t.input.float().cpu()[real])
        return torch.cat(out)

    def activations(self, prompts: list[str]) -> torch.Tensor:
        """(rows, neurons): every neuron's pre-activation at every token of `prompts`."""
        k, b, _ = self.log.stacked("cpu")
        return self.prompt_rows(prompts) @ k.T + b

    # ---- editing ------------------------------------------------------------------------
    def edit(self, requests: Sequence[EditRequest]) -> EditReceipt:
        """Train each request's neurons in turn (each with the ones before it serving); one
        receipt: the first loss before, the last loss after, the steps summed, converged when
        every request met the stop criterion (or needed no neuron)."""
        results: list[tuple[LoopResult, bool]] = []
        added = 0
        for r in requests:
            edit, result, converged = self._train(r.edit_id, r.prompt, r.target)
            self.log.append(edit)
            results.append((result, converged))
            added += edit.keys.shape[0]
        return EditReceipt(
            applied=True, loss_before=results[0][0].first if results else None,
            loss_after=results[-1][0].last if results else None,
            steps=sum(res.steps for res, _ in results),
            converged=bool(results) and all(c for _, c in results),
            detail={"layer": self.layer_name, "neurons": added, "patches": self.log.neurons()})

    def _train(self, edit_id: str, prompt: str, target: str) -> tuple[Edit, LoopResult, bool]:
        """The edit's neurons, trained with the model frozen and every earlier patch serving;
        a deterministic function of (model, memory, earlier edits, request)."""
        cfg, lm = self.config, self.lm
        batch = encode_pairs(lm, [prompt], [target])
        ids, mask, end = batch[0], batch[1], batch[2]
        width, first = ids.shape[1], int(end[0]) - 1  # `first` predicts the first target token
        gold = ids[0, first + 1:].to(lm.device)
        with torch.no_grad(), Trace(self.source, capture="input") as tr:  # as served now
            logits = forward_logits(lm, ids, mask, end)
        rows = tr.input[0].float().cpu().clone()  # (width, d_in): this edit's memory rows
        pred = logits[0, first:width - 1].argmax(-1)
        loss0 = float(-next_token_logp(logits, ids)[0, first:].mean())
        wrong = [first + j for j in range(gold.shape[0]) if pred[j] != gold[j]]
        positions = wrong[:cfg.neurons_per_edit]
        n = len(positions)
        if n == 0:  # already right: no neuron (the paper edits mistakes only)
            empty = Edit(edit_id, prompt, target, [], rows, torch.zeros((0, self.key_dim)),
                         torch.zeros(0), torch.zeros((0, self.value_dim)))
            return empty, LoopResult(loss0, loss0, 0), True

        dev = lm.device
        hit = rows[positions]  # (n, d_in): the inputs each neuron is keyed to
        memory = self._memory_for(hit)
        mem = memory.to(dev)
        # init: a = 1 exactly on the keyed input (k = h / |h|^2, b = 0); v = 0 (no change yet)
        key = torch.nn.Parameter((hit / hit.pow(2).sum(-1, keepdim=True).clamp(min=1e-12)).to(dev))
        bias = torch.nn.Parameter(torch.zeros(n, device=dev))
        weight = torch.nn.Parameter(torch.zeros((n, self.value_dim), device=dev))
        hit_dev = hit.to(dev)
        old_k, old_b, old_v = self.log.stacked(dev)
        opt = torch.optim.Adam([key, bias, weight], lr=cfg.lr)
        last_stop = [False]  # whether the final evaluation met the stop criterion

        def trained(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            k = torch.cat([old_k, key])
            v = torch.cat([old_v, weight * cfg.value_scale])
            return y + side_output(x, k, v, cfg.activation, torch.cat([old_b, bias])).to(y.dtype)

        def step() -> Step:
            out = forward_logits(lm, ids, mask, end)
            target_loss = -next_token_logp(out, ids)[0, first:].mean()
            a_edit = (hit_dev * key).sum(-1) + bias
            a_mem = mem @ key.T + bias
            loss = (target_loss + cfg.act_weight * activation_loss(a_edit, cfg.act_margin)
                    + cfg.memory_weight * memory_loss(a_mem, a_edit, cfg.memory_margin,
                                                      cfg.memory_gap, cfg.memory_top))
            value = float(target_loss.detach())
            fixed = bool((out[0, first:width - 1].argmax(-1) == gold).all())
            done = (value < cfg.stop_loss and fixed and bool((a_edit > cfg.act_margin).all())
                    and bool((a_mem < cfg.memory_margin).all()))
            last_stop[0] = done
            return Step(loss, value, done)

        with frozen(lm.model), self.hooks.suspended(), contextlib.ExitStack() as stack:
            self._enter(stack, trained)
            result = optimise(opt, step, cfg.steps, fresh_last=True)
        edit = Edit(edit_id, prompt, target, positions, rows, key.detach().cpu().clone(),
                    bias.detach().cpu().clone(),
                    (weight.detach() * cfg.value_scale).cpu().clone())
        return edit, LoopResult(loss0, result.last, result.steps), last_stop[0]

    def _memory_for(self, hit: torch.Tensor) -> torch.Tensor:
        """The rows the new neurons must stay silent on: the unrelated memory and every earlier
        edit's tokens, less any row that is one of the edit's own keyed inputs (the same
        prompt edited or listed before: silence there would contradict the edit)."""
        memory = torch.cat([self.memory, self.log.rows()])
        if memory.shape[0] == 0:
            return memory
        dist = torch.cdist(memory.double(), hit.double())  # (m, n)
        same = (dist <= SAME_INPUT * hit.double().norm(dim=-1).unsqueeze(0)).any(dim=1)
        return memory[~same]

    # ---- retraction ---------------------------------------------------------------------
    def retract(self, edit_id: str) -> None:
        """Exact: drop the edit and re-train every later edit in order, each as it was trained
        the first time but without the dropped edit's neurons serving or its tokens in memory;
        the newest edit costs nothing to retract."""
        if self.config.retract == "unsupported":
            raise NotSupported("t-patcher cannot retract one edit here (retract = "
                               "'unsupported'): every later patch was trained with it serving "
                               "and its tokens in their memory; set retract = 'replay'")
        ids = self.log.ids()
        if edit_id not in ids:
            raise UnknownEdit(f"t-patcher: no active edit {edit_id!r} to retract")
        later = self.log.truncate(ids.index(edit_id))[1:]
        for e in later:
            edit, _, _ = self._train(e.edit_id, e.prompt, e.target)
            self.log.append(edit)

    # ---- state --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"memory": self.memory.clone(), "log": [e.to_state() for e in self.log.edits]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.memory = state["memory"].clone()
        self.log.replace([Edit.from_state(s) for s in state["log"]])

    def footprint(self) -> int:
        """The neurons, plus the memory they are trained against (the unrelated rows and every
        active edit's token rows), which later edits and replays need."""
        return tensor_bytes(self.memory) + self.log.nbytes()
