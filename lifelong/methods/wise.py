"""`wise`: WISE (Wang et al. 2024, arXiv 2405.14768), dual parametric memory.

A side copy of one FFN output projection (`layers.{L}.mlp.out`) holds the edits; the main
weight is never changed. A routed row is served by a side memory at all its tokens; a row
routed to the main memory is left bit for bit. Rows are routed one by one (mixed batches
are fine). Design, measurements and where this departs from the paper: docs/wise.md.

Routers. `activation` (the paper): score(x) = mean over the router tokens of
||x_t (W_side - W_main)^T||, the memory with the highest score serves the row if that score
passes act_ratio x the smallest score an edit of the memory reached. `faiss` (default): every
edit's key (the projection's input at its last prompt token, `key_token`) is stored in a
FAISS index labelled with its memory; a row goes to its nearest key's memory when it lies
within `key_radius` x that key's norm, else to the main memory: one search per batch,
whatever the number of memories.

Editing trains a delta of the side memory with SGD on the edit's target loss (plus the
paper's margin terms, when a router that reads activation scores is in use: unrelated
inputs below alpha, the edit above beta, a gap gamma; units of `scale`, the median norm of
the projection's output on unrelated prompts). With `protect`, every step is projected off
the span of the memory's earlier edit keys, so an edit cannot move what the memory answers
at the keys before it (the invariant `tests/test_wise.py` checks).

Knowledge sharding: shards of `shard_size` edits, each under its own random gradient mask
(`mask_ratio` of the output rows, or of the entries); `consolidate()` folds the shards into
the memory with TIES (or linear / DARE, `lifelong.merging`), cycle by cycle with disjoint
row masks: the shards of a cycle touch disjoint rows, so their TIES merge is their sum.

WISE-Retrieve (`mode = "retrieve"`) starts a new side memory every `memory_size` edits;
with `protect`, either mode also starts one when the newest holds `protect_share` x key
width facts (past that a memory leaves new edits too little null space). A re-edit of a
fact removes the older edits' keys. Retraction: `unroute` drops the edit's keys
(its prompts go back to the main memory, bit-identical) and re-applies the fact's previous
edit if one is left; `rebuild` retrains the memory from its log without the edit (exact:
every random choice of an edit derives from the seed and the edit id, masks from the seed
and the shard's position).
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np
import torch

from .. import layers
from ..config import setting
from ..errors import NotSupported
from ..index import KeyIndex
from ..merging import merge as merge_deltas
from ..model import LM
from ..nethook import Trace, rewrite_output
from ..scoring import batch_target_loss, encode_pairs, forward_logits
from ._sidememory import (Memory, activation_score, by_cycle, cycle_length, masked_step,
                          router_tokens, row_keys, shard_mask)
from .base import AttachContext, EditReceipt, EditRequest, MemoryBase, tensor_bytes


@dataclass(frozen=True)
class WiseConfig:
    layer: int | None = setting(None, "layer whose mlp.out gets the side memory (negative counts "
                                      "from the end); default: the late-middle layer")
    mode: Literal["merge", "retrieve"] = setting("merge", "one merged side memory while it has "
                                                 "room (WISE-Merge; see protect_share) or a new "
                                                 "one every memory_size edits (WISE-Retrieve)")
    router: Literal["activation", "faiss"] = setting("faiss", "pick the memory (or the main one) "
                                                     "by activation score (the paper) or by the "
                                                     "nearest edit key in a FAISS index")
    key_token: Literal["last", "mean"] = setting("last", "tokens the router reads: the last prompt "
                                                 "token or the mean over the prompt tokens")
    key_radius: float = setting(0.40, "FAISS router: a query within key_radius x |key| of its "
                                      "nearest edit key goes to that key's memory", min=0.0)
    measure_activation_router: bool = setting(False, "FAISS router: also record where the "
                                                "paper's activation router would send each "
                                                "probe (the margin terms stay off: they cost "
                                                "~8x the editing time)")
    faiss_check: bool = setting(False, "FAISS router: also require the activation score above "
                                       "the memory's threshold (the paper's test)")
    steps: int = setting(80, "most optimiser steps per edit", min=1)
    lr: float = setting(1.0, "learning rate of the side-memory delta", min=0.0)
    optimizer: Literal["sgd", "adam"] = setting("sgd", "optimiser of the delta: plain gradient "
                                                "steps (the paper; updates stay in the span of "
                                                "the edit's activations) or Adam")
    momentum: float = setting(0.0, "SGD momentum", min=0.0, max=0.999)
    mask_ratio: float = setting(0.2, "share of weight entries a shard may change", min=0.0, max=1.0)
    mask_unit: Literal["row", "entry"] = setting("row", "what a mask keeps or drops: whole "
                                                 "output rows (commutes with `protect`, so a "
                                                 "masked step stays in the null space) or "
                                                 "single entries (the paper)")
    disjoint_masks: bool = setting(True, "shards of a cycle of round(1 / mask_ratio) get "
                                         "disjoint masks (then a TIES merge of them is their sum)")
    shard_size: int = setting(50, "edits per knowledge shard", min=1)
    merge: Literal["ties", "linear", "dare"] = setting("ties", "how shards are merged")
    density: float = setting(1.0, "TIES: share of each shard kept by magnitude; DARE: 1 - drop",
                             min=0.0, max=1.0)
    merge_every: int = setting(0, "merge automatically every N edits (0: when asked)", min=0)
    memory_size: int = setting(250, "retrieve mode: edits per side memory", min=1)
    alpha: float = setting(0.5, "margin: unrelated scores below alpha x scale", min=0.0)
    beta: float = setting(2.0, "margin: edit scores above beta x scale", min=0.0)
    gamma: float = setting(1.0, "margin: edit minus unrelated score above gamma x scale", min=0.0)
    margin_weight: float = setting(1.0, "weight of the margin loss against the target loss", min=0.0)
    act_ratio: float = setting(0.5, "threshold = act_ratio x smallest edit score", min=0.0)
    negatives: int = setting(4, "unrelated prompts per edit for the margin loss", min=0)
    replay: int = setting(0, "earlier edits of the same memory whose targets are trained again "
                             "with each edit (rehearsal against overwriting; 0: the paper)", min=0)
    protect: bool = setting(True, "train each edit in the null space of the memory's earlier "
                                  "edit keys (AlphaEdit-style; not in the paper), so an edit "
                                  "cannot move the outputs of the edits before it")
    protect_share: float = setting(0.75, "protect: a memory is full once it holds the keys of "
                                         "protect_share x key width facts, and the next edit "
                                         "opens a new one (both modes; near 1.0 the last edits "
                                         "find too little null space to be written)",
                                   min=0.0, max=1.0)
    stop_loss: float = setting(0.1, "stop once the target loss is below this", min=0.0)
    retract: Literal["auto", "unroute", "rebuild", "unsupported"] = setting(
        "auto", "unroute: drop the edit's keys so its prompts go back to the main memory, and "
                "re-apply the fact's previous edit if one is left (FAISS router only); rebuild: "
                "retrain the edit's memory from its log without it (exact, costs one edit per "
                "edit of that memory); auto: unroute with the FAISS router, else rebuild")


class Wise(MemoryBase):
    name = "wise"
    Config = WiseConfig
    summary = "WISE: side memory + router, sharded masks, TIES merges (merge/retrieve modes)"
    #: lifelong export: the memory is served by hooks (no merged model exists)
    memory_kind = "hooks"

    # ---- lifecycle ----------------------------------------------------------------------
    def attach(self, lm: LM, ctx: AttachContext) -> None:
        self.lm, self.ctx = lm, ctx
        _, self.module = layers.edit_target(lm.model, self.config.layer)
        self.w_main = layers.weight_out_in(self.module).detach()
        self._limit = max(1, round(self.config.protect_share * self.w_main.shape[1]))
        self.unrelated = list(ctx.unrelated_prompts)
        self.memories: list[Memory] = []
        self._where_map: dict[str, int] | None = None
        self._deltas: list[torch.Tensor] | None = None
        self.index = KeyIndex(self.w_main.shape[1], "l2")
        self.key_memory: dict[int, int] = {}     # FAISS id -> memory index
        self.key_edit: dict[int, str] = {}       # FAISS id -> edit id
        self.key_norm: dict[int, float] = {}     # FAISS id -> norm of the key
        self.next_key = 0
        self.since_merge = 0
        self._train: tuple[int, torch.Tensor] | None = None  # (memory, delta) while editing
        self._routes: torch.Tensor | None = None
        self._router_override: str | None = None
        self.bypass = False
        self.scale = self._measure_scale()
        self._hooks = contextlib.ExitStack()
        self._hooks.enter_context(rewrite_output(self.module, self._forward))

    def detach(self) -> None:
        self._hooks.close()

    def footprint(self) -> int:
        return sum(tensor_bytes(m.merged, m.current, m.mask, *m.shards) for m in self.memories) \
            + self.index.nbytes()

    # ---- routing (the forward hook) -------------------------------------------------------
    def _router_mask(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T) bool: the tokens the router reads in each row (see `router_tokens`)."""
        info = self.lm.forward_info
        if info is None or info.attention_mask.shape != x.shape[:2]:
            return router_tokens(torch.ones(x.shape[:2], dtype=torch.long, device=x.device),
                                 torch.full((x.shape[0],), x.shape[1], device=x.device),
                                 self.config.key_token)
        return router_tokens(info.attention_mask.to(x.device), info.prompt_end.to(x.device),
                             self.config.key_token)

    def _route(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B,) memory index per row, -1 for the main memory."""
        if (self._router_override or self.config.router) == "faiss":
            return self._route_faiss(x, mask)
        deltas = self._served_deltas()
        scores = torch.stack([activation_score(x, mask, d) for d in deltas]).cpu()  # (M, B)
        thresholds = torch.tensor([m.threshold(self.config.act_ratio) for m in self.memories])
        best = scores.argmax(0)
        passed = scores.gather(0, best.unsqueeze(0)).squeeze(0) > thresholds[best]
        return torch.where(passed, best, torch.full_like(best, -1))

    def _route_faiss(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Nearest edit key per row (one FAISS search for the batch, whatever the number of
        memories); the row goes to that key's memory if it lies within `key_radius` of the
        key's norm (and, with `faiss_check`, if that memory's score passes its threshold)."""
        route = torch.full((x.shape[0],), -1, dtype=torch.long)
        if not len(self.index):
            return route
        dist, ids = self.index.search(row_keys(x, mask), k=1)
        for row, (d, i) in enumerate(zip(dist[:, 0].tolist(), ids[:, 0].tolist())):
            if i >= 0 and d ** 0.5 <= self.config.key_radius * self.key_norm[i]:
                route[row] = self.key_memory[i]
        if self.config.faiss_check:
            for m in [m for m in route.unique().tolist() if m >= 0]:
                rows = route == m
                s = activation_score(x[rows.to(x.device)], mask[rows.to(x.device)],
                                     self._served_deltas()[m]).cpu()
                route[rows] = torch.where(s > self.memories[m].threshold(self.config.act_ratio),
                                          m, -1)
        return route

    def _forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.bypass:  # benchmarks: the bare model with the hook in place
            return y
        if self._train is not None:  # editing: every row goes to the memory being trained
            return y + x @ self._train[1].T
        if not self.memories:
            return y
        route = self._route(x, self._router_mask(x))
        self._routes = route
        if (route < 0).all():
            return y
        out, deltas = y.clone(), self._served_deltas()
        for m in route.unique().tolist():
            if m >= 0:
                rows = (route == m).to(y.device)
                out[rows] = y[rows] + x[rows] @ deltas[m].T
        return out

    @property
    def retraction(self) -> str:  # type: ignore[override]
        return "own" if self._retract_mode() == "unroute" else "exact"

    def _retract_mode(self) -> str:
        how = self.config.retract
        if how == "auto":
            how = "unroute" if self.config.router == "faiss" else "rebuild"
        return how

    @property
    def shadow_routers(self) -> tuple[str, ...]:
        """Routers measured beside the one serving (`add_routing` records their choices)."""
        return ("activation",) if self.config.router == "faiss" and \
            self.config.measure_activation_router else ()

    @torch.no_grad()
    def route(self, prompts: Sequence[str], router: str | None = None) -> list[int | None]:
        """The memory each prompt is routed to (None: the main memory), by the configured
        router or by `router`."""
        if not self.memories:
            return [None] * len(prompts)
        ids, mask, end, _, _ = encode_pairs(self.lm, prompts, ["x"] * len(prompts))
        self._router_override = router
        try:
            forward_logits(self.lm, ids, mask, end)
        finally:
            self._router_override = None
        return [None if r < 0 else int(r) for r in self._routes.tolist()]

    def _changed(self) -> None:
        """A memory's log or weights changed: drop what is derived from them."""
        self._where_map = None
        self._deltas = None

    def _served_deltas(self) -> list[torch.Tensor]:
        """Each memory's delta (merged + shards + open shard), summed once per change
        rather than at every forward pass."""
        if self._deltas is None:
            self._deltas = [m.delta() for m in self.memories]
        return self._deltas

    def memory_of(self, edit_id: str) -> int | None:
        return self._where().get(edit_id)

    def _where(self) -> dict[str, int]:
        """edit id -> memory index, rebuilt only after a log changed: the
        runtime asks `memory_of` for every probe row at every checkpoint."""
        if self._where_map is None:
            self._where_map = {r.edit_id: k for k, m in enumerate(self.memories) for r in m.log}
        return self._where_map

    # ---- editing --------------------------------------------------------------------------
    def _measure_scale(self) -> float:
        """Median norm of the main projection's output over unrelated prompts (or 1.0)."""
        prompts = self.unrelated[:64]
        if not prompts:
            return 1.0
        with torch.no_grad(), Trace(self.module, capture="output") as tr:
            ids, mask, end, _, _ = encode_pairs(self.lm, prompts, ["x"] * len(prompts))
            forward_logits(self.lm, ids, mask, end)
        norms = tr.output.norm(dim=-1)[mask.bool()]
        return float(norms.median()) or 1.0

    def _activations(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The projection's input for `prompts` (it does not depend on the side memory) and
        each row's prompt-token mask."""
        with torch.no_grad(), Trace(self.module, capture="input") as tr:
            ids, mask, end, _, _ = encode_pairs(self.lm, prompts, ["x"] * len(prompts))
            forward_logits(self.lm, ids, mask, end)
        return tr.input, router_tokens(mask, end, self.config.key_token)

    def _negatives(self, edit_id: str) -> list[str]:
        if not self.unrelated or not self.config.negatives:
            return []
        rng = random.Random(hashlib.sha256(f"{self.seed}:{edit_id}".encode()).hexdigest())
        return rng.sample(self.unrelated, min(self.config.negatives, len(self.unrelated)))

    def _rehearsal(self, mem: Memory, req: EditRequest) -> list[EditRequest]:
        """Up to `replay` earlier edits of `mem` (the newest of each fact, none of `req`'s
        fact), drawn from a generator seeded by the seed and the edit id."""
        if not self.config.replay:
            return []
        newest = {r.fact: r for r in mem.log if r.fact != req.fact}
        pool = list(newest.values())
        rng = random.Random(hashlib.sha256(f"{self.seed}:replay:{req.edit_id}".encode()).hexdigest())
        return rng.sample(pool, min(self.config.replay, len(pool)))

    def _new_mask(self, memory: int, shard: int) -> torch.Tensor:
        c = self.config
        return shard_mask(self.w_main.shape, c.mask_ratio, c.mask_unit, c.disjoint_masks,
                          self.seed * 1_000_003 + memory * 10_007, shard)

    def _memory_for_edit(self) -> int:
        """The newest memory, or a new one if there is none or the newest is full (retrieve
        mode: `memory_size` edits; with `protect`: `protect_share` x key width facts' keys)."""
        last = self.memories[-1] if self.memories else None
        if last is None or (self.config.mode == "retrieve"
                            and len(last.log) >= self.config.memory_size) \
                or (self.config.protect and len(last.keys) >= self._limit):
            self.memories.append(Memory(merged=torch.zeros_like(self.w_main)))
        return len(self.memories) - 1

    def _open_shard(self, k: int) -> Memory:
        mem = self.memories[k]
        if mem.current is None or mem.in_shard >= self.config.shard_size:
            if mem.current is not None:
                mem.shards.append(mem.current)
            mem.current = torch.zeros_like(self.w_main)
            mem.mask = self._new_mask(k, mem.n_shards)
            mem.n_shards += 1
            mem.in_shard = 0
        return mem

    def edit(self, requests: Sequence[EditRequest]) -> EditReceipt:
        receipts = [self._edit_one(r) for r in requests]
        self.since_merge += len(requests)
        if self.config.merge_every and self.since_merge >= self.config.merge_every:
            self.consolidate()
        return EditReceipt(applied=True, loss_before=receipts[0][0], loss_after=receipts[-1][1],
                           steps=sum(r[2] for r in receipts), detail={"memories": len(self.memories)},
                           converged=all(r[1] is not None and r[1] < self.config.stop_loss
                                         for r in receipts))

    def _edit_one(self, req: EditRequest, k: int | None = None) -> tuple[float, float, int]:
        k = self._memory_for_edit() if k is None else k
        mem = self._open_shard(k)
        base = mem.delta().detach()
        mask, c = mem.mask.to(base.dtype), self.config
        # the margin terms shape the activation score; with the FAISS router serving nothing
        # reads it, and they cost ~8x the steps (so no negatives are run through the model)
        shape_scores = c.router == "activation" or c.faiss_check
        x_edit, m_edit = self._activations([req.prompt])
        negs = self._negatives(req.edit_id) if shape_scores else []
        x_neg, m_neg = self._activations(negs) if negs else (None, None)
        basis = mem.protected_basis(req.fact) if c.protect else None
        reqs = [req, *self._rehearsal(mem, req)]
        batch = encode_pairs(self.lm, [r.prompt for r in reqs], [r.target for r in reqs])
        rows = mem.mask[:, 0].nonzero()[:, 0] if c.mask_unit == "row" else None
        # a row mask trains only its rows: a smaller parameter, and a cheaper projection
        p = torch.zeros((len(rows), base.shape[1]) if rows is not None else base.shape,
                        dtype=base.dtype, requires_grad=True)
        opt = (torch.optim.SGD([p], lr=c.lr, momentum=c.momentum) if c.optimizer == "sgd"
               else torch.optim.Adam([p], lr=c.lr))
        first, last, steps = None, None, 0
        a, b, g = c.alpha * self.scale, c.beta * self.scale, c.gamma * self.scale
        try:
            for steps in range(1, c.steps + 1):
                step = masked_step(p, mask, rows, basis)
                delta = base + step
                self._train = (k, delta)
                nll = batch_target_loss(self.lm, batch)
                s_edit = activation_score(x_edit, m_edit, delta).mean()
                margin = torch.relu(b - s_edit) if shape_scores else torch.zeros(())
                if x_neg is not None:
                    s_neg = activation_score(x_neg, m_neg, delta)
                    margin = margin + torch.relu(s_neg - a).mean() + torch.relu(g - (s_edit - s_neg)).mean()
                loss = nll + c.margin_weight * margin
                last = float(nll.detach())
                first = last if first is None else first
                if last < c.stop_loss and float(margin.detach()) == 0.0:
                    steps -= 1
                    break
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        finally:
            self._train = None
        with torch.no_grad():  # the final parameter (the loop's `step` predates its update)
            mem.current = mem.current + masked_step(p, mask, rows, basis)
        mem.remember_key(req.fact, x_edit[0, int(m_edit[0].nonzero()[-1])].detach().clone())
        mem.in_shard += 1
        mem.log.append(req)
        self._changed()
        with torch.no_grad():
            mem.scores.append(float(activation_score(x_edit, m_edit, mem.delta())[0]))
        self._add_key(req, x_edit, m_edit, k)
        return first, last, steps

    def _add_key(self, req: EditRequest, x: torch.Tensor, mask: torch.Tensor, k: int) -> None:
        stale = [i for i, e in self.key_edit.items() if e in self._fact_ids(req.fact, req.edit_id)]
        if stale:  # a re-edit: the newest value's key replaces the older ones
            self.index.remove(stale)
            for i in stale:
                self.key_memory.pop(i), self.key_edit.pop(i), self.key_norm.pop(i)
        key = row_keys(x, mask)
        self.index.add(key, [self.next_key])
        self.key_memory[self.next_key], self.key_edit[self.next_key] = k, req.edit_id
        self.key_norm[self.next_key] = float(np.linalg.norm(key))
        self.next_key += 1

    def _fact_ids(self, fact: str, but: str) -> set[str]:
        return {r.edit_id for m in self.memories for r in m.log if r.fact == fact and r.edit_id != but}

    # ---- merging, retraction ----------------------------------------------------------------
    def consolidate(self) -> dict[str, Any] | None:
        """Fold each memory's shards into it; with disjoint masks cycle by cycle (a cycle's
        shards partition the rows, shards of different cycles overlap and a disjoint mean
        would average them), so one late merge equals a merge at every cycle's end."""
        c, merged = self.config, 0
        for k, mem in enumerate(self.memories):
            shards = mem.shards + ([mem.current] if mem.current is not None and mem.in_shard else [])
            if not shards:
                continue
            first = mem.n_shards - 1 - len(mem.shards)  # the open shard is number n_shards - 1
            groups = by_cycle(shards, first, cycle_length(c.mask_ratio)) if c.disjoint_masks \
                else [shards]
            for group in groups:
                mem.merged = mem.merged + merge_deltas(c.merge, group, density=c.density,
                                                       seed=self.seed + k)
            mem.shards, mem.current, mem.mask, mem.in_shard = [], None, None, 0
            merged += len(shards)
        self.since_merge = 0
        self._changed()
        return {"shards_merged": merged} if merged else None

    def retract(self, edit_id: str) -> None:
        k = self.memory_of(edit_id)
        how = self._retract_mode()
        if how == "unsupported":
            raise NotSupported("wise is configured with retract = 'unsupported'")
        if how == "unroute" and self.config.router != "faiss":
            raise NotSupported("retract = 'unroute' needs the FAISS router")
        if k is None:
            return
        if how == "unroute":
            return self._unroute(k, edit_id)
        keep = [r for r in self.memories[k].log if r.edit_id != edit_id]
        ids = [i for i, m in self.key_memory.items() if m == k]
        self.index.remove(ids)
        for i in ids:
            self.key_memory.pop(i), self.key_edit.pop(i), self.key_norm.pop(i)
        self.memories[k] = Memory(merged=torch.zeros_like(self.w_main))
        self._changed()
        for r in keep:  # replay the memory's log without the edit
            self._edit_one(r, k)

    def _drop(self, k: int, edit_id: str) -> EditRequest:
        """Remove an edit from memory `k`'s log and the index; its trained step stays in the
        weights, unreachable once no key routes to it."""
        mem = self.memories[k]
        pos = next(i for i, r in enumerate(mem.log) if r.edit_id == edit_id)
        req = mem.log.pop(pos)
        mem.scores.pop(pos)
        ids = [i for i, e in self.key_edit.items() if e == edit_id]
        self.index.remove(ids)
        for i in ids:
            self.key_memory.pop(i), self.key_edit.pop(i), self.key_norm.pop(i)
        self._changed()
        return req

    def _unroute(self, k: int, edit_id: str) -> None:
        """Retraction without retraining the memory: the edit's prompts route to the main
        memory again (bit-identical outputs there), unless the fact has an earlier edit
        left, which is applied again as the fact's newest edit (one edit's cost)."""
        req = self._drop(k, edit_id)
        mem = self.memories[k]
        if req.fact in mem.keys and not any(r.fact == req.fact for r in mem.log):
            mem.forget_key(req.fact)  # nothing of the fact to protect here any more
        earlier = [(j, r) for j, m in enumerate(self.memories) for r in m.log if r.fact == req.fact]
        if earlier:
            j, previous = earlier[-1]
            self._drop(j, previous.edit_id)
            self._edit_one(previous)

    # ---- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"memories": [m.to_state() for m in self.memories],
                "index": torch.from_numpy(self.index.to_bytes().copy()),
                "key_memory": dict(self.key_memory), "key_edit": dict(self.key_edit),
                "key_norm": dict(self.key_norm),
                "next_key": self.next_key, "since_merge": self.since_merge, "scale": self.scale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.memories = [Memory.from_state(m) for m in state["memories"]]
        self.index = KeyIndex.from_bytes(state["index"].numpy())
        self.key_memory = {int(k): int(v) for k, v in state["key_memory"].items()}
        self.key_edit = {int(k): v for k, v in state["key_edit"].items()}
        self.key_norm = {int(k): float(v) for k, v in state["key_norm"].items()}
        self.next_key, self.since_merge = state["next_key"], state["since_merge"]
        self.scale = state["scale"]
        self._changed()
