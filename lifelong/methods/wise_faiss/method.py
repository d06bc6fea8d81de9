"""`wise-faiss` the method: serving (routing rows to side memories), editing, merging, retraction.

Modes are which `lifelong.nethook` context is open on the projection: serving
(`rewrite_output` routing each row, opened at attach), capturing activations (`Trace`,
serving suspended), training (`trainer.train_delta`: every row through the delta being
trained, serving suspended), the bare model (`bypassed()`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ... import layers
from ...errors import NotSupported
from ...merging import merge as merge_deltas
from ...model import LM
from ...nethook import Trace, rewrite_output
from ...scoring import encode_pairs, forward_logits
from .._common.activations import output_scale
from .._common.facts import as_seen
from .._common.guard import guard_from_context
from .._common.hooks import Hooks, Served
from .._common.keptfactor import KeptFactor
from .._common.keys import forward_router_tokens, router_tokens, row_keys, serve_routed
from .._common.keytable import KeyTable
from .._common.loop import LoopResult, receipt
from .._common.rng import seeded_rng
from ..base import (
    Consolidating,
    EditReceipt,
    EditRequest,
    MemoryBase,
    Retractable,
    Routing,
    UnknownEdit,
    WeightDeltas,
    tensor_bytes,
)
from ..context import AttachContext
from .config import WiseFaissConfig
from .memory import SideMemory, activation_score, by_cycle, cycle_length, shard_mask
from .router import route_rows
from .trainer import Inputs, train_delta


class WiseFaiss(Served, MemoryBase, Retractable, Consolidating, Routing, WeightDeltas):
    """WISE. Invariants: the main weight is never changed; a row routed to the main memory is
    bit-identical to the base model's; every random choice of an edit derives from the seed
    and the edit id, masks from the seed and the shard's position."""

    name = "wise-faiss"
    Config = WiseFaissConfig
    summary = ("key-routed side memory (FAISS nearest edit key + radius), WISE-style sharded side "
               "memory; its default merge is a sum (folds the shards, changes no served weight)")
    memory_kind = "hooks"

    # ---- lifecycle ----------------------------------------------------------------------
    def attach(self, lm: LM, ctx: AttachContext) -> None:
        self.lm, self.ctx = lm, ctx
        self.layer_name, self.module = layers.edit_target(lm.model, self.config.layer)
        self.w_main = layers.weight_out_in(self.module).detach()
        self._limit = max(1, round(self.config.protect_share * self.w_main.shape[1]))
        self.unrelated = list(ctx.unrelated_prompts)
        self.memories: list[SideMemory] = []
        self._where_map: dict[str, int] | None = None
        self._deltas: list[torch.Tensor] | None = None
        self._factor: float | None = None
        self.table = KeyTable(self.w_main.shape[1], "l2")
        self.tombs = KeyTable(self.w_main.shape[1], "l2")  # retracted edits' keys, by fact
        self.since_merge = 0
        self.scale = self._measure_scale()
        self.hooks = Hooks(lambda stack: stack.enter_context(
            rewrite_output(self.module, self._serve)))
        self.hooks.open()
        self.guard = guard_from_context(
            ctx, f"{self.layer_name}/input/{self.config.key_token}", self.w_main.shape[1],
            self.config.claim_rate if self.config.router == "faiss" else 1.0,
            lambda prompts: torch.from_numpy(row_keys(*self._activations(prompts))),
            pool=self.config.claim_pool)
        self._kept = KeptFactor(self.guard)  # the guard's factor, kept as keys come and go

    def footprint(self) -> int:
        return sum(tensor_bytes(m.merged, m.current, m.mask, *m.shards) for m in self.memories) \
            + self.table.nbytes() + self.tombs.nbytes() + self._kept.nbytes()

    def weight_deltas(self) -> dict[str, torch.Tensor]:
        """The largest change any side memory makes to the projection (`WeightDeltas`)."""
        return layers.largest_weight_change(self.lm.model, self.layer_name, self._served_deltas())

    # ---- serving and routing ------------------------------------------------------------
    def _serve(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Each row served by the memory it is routed to; main-memory rows are left as is."""
        if not self.memories:
            return y
        route = self._route(x, self._router_mask(x))
        return serve_routed(x, y, route, self._served_deltas())

    def _router_mask(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T) bool: the tokens the router reads in each row (see `router_tokens`)."""
        return forward_router_tokens(self.lm.forward_info, x, self.config.key_token)

    def _route(self, x: torch.Tensor, mask: torch.Tensor, router: str | None = None) -> torch.Tensor:
        return route_rows(self.config, router or self.config.router, self.table, self.memories,
                          self._served_deltas(), x, mask, self.radius_factor(), self.tombs)

    def radius_factor(self) -> float:
        """The guard's common factor on the FAISS router's radius (`_common.guard`), updated
        for the keys added and removed since (`_common.keptfactor`)."""
        if self._factor is None:
            self._factor = self._kept.factor(self.table, self.config.key_radius,
                                             self.config.claim_rate)
        return self._factor

    @property
    def shadow_routers(self) -> tuple[str, ...]:  # type: ignore[override]
        """Routers measured beside the one serving (`add_routing` records their choices)."""
        return ("activation",) if self.config.router == "faiss" and \
            self.config.measure_activation_router else ()

    @torch.no_grad()
    def route(self, prompts: Sequence[str], router: str | None = None) -> list[int | None]:
        """The memory each prompt is routed to (None: the main memory), by the configured
        router or by `router`: the serving hook's choice, computed from the projection's input
        (which the memories do not change) with the forward stopped there."""
        if not self.memories:
            return [None] * len(prompts)
        ids, mask, end, _, _ = encode_pairs(self.lm, prompts, ["x"] * len(prompts))
        with self.hooks.suspended(), Trace(self.module, capture="input", stop=True) as t:
            forward_logits(self.lm, ids, mask, end)
        x = t.input
        routes = self._route(x, router_tokens(mask, end, self.config.key_token, x.device), router)
        return [None if r < 0 else int(r) for r in routes.tolist()]

    def memory_of(self, edit_id: str) -> int | None:
        return self._where().get(edit_id)

    def _where(self) -> dict[str, int]:
        """edit id -> memory index, rebuilt only after a log changed: the runtime asks
        `memory_of` for every probe row at every checkpoint."""
        if self._where_map is None:
            self._where_map = {r.edit_id: k for k, m in enumerate(self.memories) for r in m.log}
        return self._where_map

    def _changed(self) -> None:
        """A memory's log or weights changed: drop what is derived from them."""
        self._where_map = None
        self._deltas = None
        self._factor = None

    def _served_deltas(self) -> list[torch.Tensor]:
        """Each memory's delta (merged + shards + open shard), summed once per change
        rather than at every forward pass."""
        if self._deltas is None:
            self._deltas = [m.delta() for m in self.memories]
        return self._deltas

    # ---- editing --------------------------------------------------------------------------
    def _measure_scale(self) -> float:
        """Median norm of the main projection's output over unrelated prompts (or 1.0)."""
        return output_scale(self.lm, self.module, self.unrelated[:64])

    def _activations(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The projection's input for `prompts` (it does not depend on the side memory) and
        each row's router mask."""
        ids, mask, end, _, _ = encode_pairs(self.lm, prompts, ["x"] * len(prompts))
        with torch.no_grad(), self.hooks.suspended(), \
                Trace(self.module, capture="input", stop=True) as tr:
            forward_logits(self.lm, ids, mask, end)
        return tr.input, router_tokens(mask, end, self.config.key_token, tr.input.device)

    def _negatives(self, edit_id: str) -> list[str]:
        if not self.unrelated or not self.config.negatives:
            return []
        rng = seeded_rng(self.seed, edit_id)
        return rng.sample(self.unrelated, min(self.config.negatives, len(self.unrelated)))

    def _rehearsal(self, mem: SideMemory, req: EditRequest) -> list[EditRequest]:
        """Up to `replay` earlier edits of `mem` (the newest of each fact, none of `req`'s
        fact), drawn from a generator seeded by the seed and the edit id."""
        if not self.config.replay:
            return []
        newest = {r.fact: r for r in mem.log if r.fact != req.fact}
        pool = list(newest.values())
        rng = seeded_rng(self.seed, "replay", req.edit_id)
        return rng.sample(pool, min(self.config.replay, len(pool)))

    def _new_mask(self, memory: int, shard: int) -> torch.Tensor:
        c = self.config
        return shard_mask(self.w_main.shape, c.mask_ratio, c.mask_unit, c.disjoint_masks,
                          self.seed * 1_000_003 + memory * 10_007, shard).to(self.w_main.device)

    def _memory_for_edit(self) -> int:
        """The newest memory, or a new one if there is none or the newest is full (retrieve
        mode: `memory_size` edits; with `protect`: its protected keys span `protect_share` x
        the key width)."""
        last = self.memories[-1] if self.memories else None
        if last is None or (self.config.mode == "retrieve"
                            and len(last.log) >= self.config.memory_size) \
                or (self.config.protect and last.protected_rank() >= self._limit):
            self.memories.append(SideMemory(merged=torch.zeros_like(self.w_main)))
        return len(self.memories) - 1

    def _open_shard(self, k: int) -> SideMemory:
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
        results = [self._edit_one(as_seen(r, self.config.use_fact_identity)) for r in requests]
        self.since_merge += len(requests)
        if self.config.merge_every and self.since_merge >= self.config.merge_every:
            self.consolidate()
        info = {"memories": len(self.memories)}
        if self.config.router == "faiss":
            info["radius_factor"] = self.radius_factor()
        return receipt(results, self.config.stop_loss, info)

    def _edit_one(self, req: EditRequest, k: int | None = None) -> LoopResult:
        """Train `req` into memory `k` (default: the memory for a new edit) and record it."""
        c = self.config
        k = self._memory_for_edit() if k is None else k
        mem = self._open_shard(k)
        shape_scores = c.router == "activation" or c.faiss_check
        x_edit, m_edit = self._activations([req.prompt])
        negs = self._negatives(req.edit_id) if shape_scores else []
        x_neg, m_neg = self._activations(negs) if negs else (None, None)
        reqs = [req, *self._rehearsal(mem, req)]
        inputs = Inputs(encode_pairs(self.lm, [r.prompt for r in reqs], [r.target for r in reqs]),
                        x_edit, m_edit, x_neg, m_neg,
                        mem.protected_basis(req.fact) if c.protect else None)
        result, step = train_delta(self.lm, self.module, self.hooks, c, self.scale, mem, inputs)
        mem.current = mem.current + step
        mem.remember_key(req.fact, self._protected_keys(req, x_edit, m_edit))
        mem.in_shard += 1
        mem.log.append(req)
        self._changed()
        with torch.no_grad():
            mem.scores.append(float(activation_score(x_edit, m_edit, mem.delta())[0]))
        self._add_key(req, x_edit, m_edit, k)
        return result

    @torch.no_grad()
    def _protected_keys(self, req: EditRequest, x_edit: torch.Tensor,
                        m_edit: torch.Tensor) -> torch.Tensor:
        """(n, in) the activations `protect` keeps this edit's outputs at: every real token
        of its prompt and target (a routed row gets the delta at every token; "all"), or its
        last prompt token ("last": exact only for a one-token row)."""
        if self.config.protect_positions == "last":
            return x_edit[0, int(m_edit[0].nonzero()[-1])].detach().clone().unsqueeze(0)
        ids, mask, end, _, _ = encode_pairs(self.lm, [req.prompt], [req.target])
        with self.hooks.suspended(), Trace(self.module, capture="input", stop=True) as tr:
            forward_logits(self.lm, ids, mask, end)
        return tr.input[0, mask[0].bool().to(tr.input.device)].detach().clone()

    def _add_key(self, req: EditRequest, x: torch.Tensor, mask: torch.Tensor, k: int) -> None:
        """The edit's key goes to the router; a re-edit's key replaces the fact's older ones
        and retires the fact's tombstones."""
        older = {r.edit_id for m in self.memories for r in m.log
                 if r.fact == req.fact and r.edit_id != req.edit_id}
        self.table.remove(self.table.owned_by(older))
        self.tombs.remove(self.tombs.owned_by({req.fact}))
        self.table.add(row_keys(x, mask), k, req.edit_id)
        self._factor = None

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

    def _retract_mode(self) -> str:
        how = self.config.retract
        if how == "auto":
            how = "unroute" if self.config.router == "faiss" else "rebuild"
        return how

    @property
    def retraction(self) -> str | None:  # type: ignore[override]
        """'own' when unrouting, 'exact' when rebuilding, None when configured to refuse."""
        how = self._retract_mode()
        if how == "unsupported" or (how == "unroute" and self.config.router != "faiss"):
            return None
        return "own" if how == "unroute" else "exact"

    def retract(self, edit_id: str) -> None:
        how = self._retract_mode()
        if how == "unsupported":
            raise NotSupported("wise-faiss is configured with retract = 'unsupported'")
        if how == "unroute" and self.config.router != "faiss":
            raise NotSupported("retract = 'unroute' needs the FAISS router")
        k = self.memory_of(edit_id)
        if k is None:
            raise UnknownEdit(f"wise-faiss: no active edit {edit_id!r} to retract")
        if how == "unroute":
            return self._unroute(k, edit_id)
        keep = [r for r in self.memories[k].log if r.edit_id != edit_id]
        self.table.remove(self.table.labelled(k))
        self.memories[k] = SideMemory(merged=torch.zeros_like(self.w_main))
        self._changed()
        for r in keep:  # replay the memory's log without the edit
            self._edit_one(r, k)

    def _drop(self, k: int, edit_id: str) -> EditRequest:
        """Remove an edit from memory `k`'s log and the router; its trained step stays in the
        weights, unreachable once no key routes to it."""
        mem = self.memories[k]
        pos = next(i for i, r in enumerate(mem.log) if r.edit_id == edit_id)
        req = mem.log.pop(pos)
        mem.scores.pop(pos)
        self.table.remove(self.table.owned_by({edit_id}))
        self._changed()
        return req

    def _unroute(self, k: int, edit_id: str) -> None:
        """Retraction without retraining the memory: the edit's prompts route to the main
        memory again (bit-identical outputs there; with `tombstone`, its key stays behind
        to keep them there), unless the fact has an earlier edit left, which is applied
        again as the fact's newest edit (one edit's cost; no tombstone then: the retracted
        prompt is routed as any other prompt)."""
        req = self._drop(k, edit_id)
        mem = self.memories[k]
        if req.fact in mem.keys and not any(r.fact == req.fact for r in mem.log):
            mem.forget_key(req.fact)  # nothing of the fact to protect here any more
        earlier = [(j, r) for j, m in enumerate(self.memories) for r in m.log if r.fact == req.fact]
        if earlier:
            j, previous = earlier[-1]
            self._drop(j, previous.edit_id)
            self._edit_one(previous)
        elif self.config.tombstone:
            self.tombs.add(row_keys(*self._activations([req.prompt])), -1, req.fact)

    # ---- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"memories": [m.to_state() for m in self.memories], **self.table.to_state(),
                "tombstones": self.tombs.to_state(), "since_merge": self.since_merge,
                "scale": self.scale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.memories = [SideMemory.from_state(m, self.w_main) for m in state["memories"]]
        self.table = KeyTable.from_state(state)
        self.tombs = KeyTable.from_state(state["tombstones"]) if "tombstones" in state \
            else KeyTable(self.w_main.shape[1], "l2")  # stored before tombstones: none
        self.since_merge = state["since_merge"]
        self.scale = state["scale"]
        self._kept = KeptFactor(self.guard)  # rebuilt from the loaded table
        self._changed()
