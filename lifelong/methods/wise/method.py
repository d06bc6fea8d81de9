"""`wise` the method: serving (top-1 activation routing to a side memory or the main
one), editing into shards, merging, retraction and state.

Modes are which `lifelong.nethook` context is open on the projection: serving
(`rewrite_output` routing each row, opened at attach), capturing activations (`Trace`,
serving suspended), training (`trainer.train_shard`), the bare model (`bypassed()`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ... import layers
from ...errors import NotSupported
from ...model import LM
from ...nethook import Trace, rewrite_output
from ...scoring import encode_pairs, forward_logits, greedy_ids
from .._common.activations import output_scale
from .._common.hooks import Hooks, Served
from .._common.keys import forward_router_tokens, router_tokens, serve_routed
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
from ..context import CALIBRATION_POOL_SIZE, AttachContext
from ..wise_faiss.memory import activation_score
from .config import WiseConfig
from .memory import Shard, SideMemory, clamp, entry_mask, merge_shards, threshold
from .trainer import Inputs, train_shard

#: where the reference's prefixes start (EasyEdit's WISE: five starts, 5 and 10 tokens written)
STARTS = ("I", "You", "Because", "Yes", "Q:")


def top1(scores: torch.Tensor, limits: torch.Tensor) -> torch.Tensor:
    """(B,) for (C, B) scores: the best candidate among those above their limit (C,), -1
    where none is."""
    passed = scores > limits.unsqueeze(1)
    best = scores.masked_fill(~passed, float("-inf")).argmax(0)
    return torch.where(passed.any(0), best, torch.full_like(best, -1))


class Wise(Served, MemoryBase, Retractable, Consolidating, Routing, WeightDeltas):
    """WISE as the paper describes it. Invariants: the main weight is never changed; a row
    routed to the main memory is bit-identical to the base model's; every random choice
    derives from the seed and the edit id (negatives, prefixes) or the shard's position in
    its memory (masks), so a rebuild that replays a memory's log is exact."""

    name = "wise"
    Config = WiseConfig
    summary = ("WISE (the paper): side FFN memory, activation-score router with margin loss, "
               "shards from one start under random masks, TIES merges (merge/retrieve)")
    memory_kind = "hooks"

    # ---- lifecycle ----------------------------------------------------------------------
    def attach(self, lm: LM, ctx: AttachContext) -> None:
        self.lm = lm
        self.layer_name, self.module = layers.edit_target(lm.model, self.config.layer)
        self.w_main = layers.weight_out_in(self.module).detach()
        # every unrelated prompt of the stream, as before the pool setting; the train split
        # tops up to the calibration pools' size
        self.unrelated = ctx.calibration_prompts(
            max(len(ctx.unrelated_prompts), CALIBRATION_POOL_SIZE), self.config.negative_pool)
        self.memories: list[SideMemory] = []
        self.since_merge = 0
        self._served: list[tuple[int, torch.Tensor, float]] | None = None
        self.scale = output_scale(lm, self.module, self.unrelated[:64])
        self.heads = self._written_heads() if self.config.prefix_source == "generated" else []
        self.hooks = Hooks(lambda stack: stack.enter_context(
            rewrite_output(self.module, self._serve)))
        self.hooks.open()

    def footprint(self) -> int:
        return sum(tensor_bytes(m.merged, *(t for s in m.shards for t in (s.delta, s.mask)))
                   for m in self.memories)

    def weight_deltas(self) -> dict[str, torch.Tensor]:
        """The largest change any served candidate (merged memory or shard) makes to the
        projection (`WeightDeltas`)."""
        return layers.largest_weight_change(self.lm.model, self.layer_name, [d for _, d, _ in self._candidates()])

    # ---- serving and routing ------------------------------------------------------------
    def _candidates(self) -> list[tuple[int, torch.Tensor, float]]:
        """(memory, delta, threshold) of everything that can serve a row, rebuilt only after
        a change."""
        if self._served is None:
            r = self.config.act_ratio
            self._served = [(k, d, threshold(s, r)) for k, m in enumerate(self.memories)
                            for d, s in m.candidates()]
        return self._served

    def _route(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B,) index into `_candidates()` of each row (-1: the main memory): top-1
        activation routing, the highest-scoring candidate among those whose score passes
        their own threshold."""
        cands = self._candidates()
        if not cands:
            return torch.full((x.shape[0],), -1, dtype=torch.long)
        scores = torch.stack([activation_score(x, mask, d) for _, d, _ in cands]).cpu()
        return top1(scores, torch.tensor([t for *_, t in cands]))

    def _serve(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Each row served by the candidate it is routed to; main-memory rows left as is."""
        if not self.memories:
            return y
        route = self._route(x, self._score_mask(x))
        return serve_routed(x, y, route, [d for _, d, _ in self._candidates()])

    def _score_mask(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T) bool: the tokens a row's score reads (see `router_tokens`)."""
        return forward_router_tokens(self.lm.forward_info, x, self.config.score_tokens)

    @torch.no_grad()
    def route(self, prompts: Sequence[str], router: str | None = None) -> list[int | None]:
        """The memory each prompt is served by (None: the main memory), from the projection's
        input with the forward stopped there (the serving hook's choice)."""
        if not self._candidates():
            return [None] * len(prompts)
        x, mask = self._activations(prompts)
        cands = self._candidates()
        return [None if c < 0 else cands[c][0] for c in self._route(x, mask).tolist()]

    def memory_of(self, edit_id: str) -> int | None:
        return next((k for k, m in enumerate(self.memories)
                     if any(r.edit_id == edit_id for r in m.log())), None)

    def _changed(self) -> None:
        self._served = None

    # ---- editing --------------------------------------------------------------------------
    def _activations(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The projection's input for `prompts` (no side memory changes it) and each row's
        score mask."""
        ids, mask, end, _, _ = encode_pairs(self.lm, prompts, ["x"] * len(prompts))
        with torch.no_grad(), self.hooks.suspended(), \
                Trace(self.module, capture="input", stop=True) as tr:
            forward_logits(self.lm, ids, mask, end)
        return tr.input, router_tokens(mask, end, self.config.score_tokens, tr.input.device)

    def _negatives(self, edit_id: str) -> list[str]:
        n = min(self.config.negatives, len(self.unrelated))
        return seeded_rng(self.seed, "neg", edit_id).sample(self.unrelated, n)

    def _written_heads(self) -> list[str]:
        """The prefixes the unedited model writes (`prefix_source = "generated"`): greedy
        continuations of the reference's starts, special tokens dropped; the same at every
        attach of the same model, so nothing of them is saved."""
        c, n = self.config, len(STARTS)
        starts = [STARTS[i % n] for i in range(c.prefixes)]
        out = []
        for k in range(0, c.prefixes, n):  # one batch per length: the starts of one round
            ids = greedy_ids(self.lm, starts[k:k + n], c.prefix_tokens * (1 + k // n))
            out += [f"{s} {self.lm.tok.decode(list(t), skip_special_tokens=True)}".strip()
                    for s, t in zip(starts[k:k + n], ids)]
        return out

    def _prefixed(self, req: EditRequest) -> list[str]:
        """The edit prompt and its prefixed copies: the model-written heads, or random tokens
        drawn from the seed and the edit id (special tokens excluded)."""
        c, tok = self.config, self.lm.tok
        if not c.prefixes:
            return [req.prompt]
        if c.prefix_source == "generated":
            return [req.prompt, *(f"{h} {req.prompt}" for h in self.heads)]
        special = set(tok.all_special_ids)
        pool = [i for i in range(len(tok)) if i not in special]
        rng = seeded_rng(self.seed, "prefix", req.edit_id)
        heads = [tok.decode([rng.choice(pool) for _ in range(c.prefix_tokens)]).strip()
                 for _ in range(c.prefixes)]
        return [req.prompt, *(f"{h}. {req.prompt}" for h in heads)]

    def _memory_for_edit(self) -> int:
        """The newest memory, or a new one if there is none (or, in retrieve mode, the
        newest holds memory_size edits)."""
        last = self.memories[-1] if self.memories else None
        if last is None or (self.config.mode == "retrieve"
                            and len(last.log()) >= self.config.memory_size):
            self.memories.append(SideMemory())
        return len(self.memories) - 1

    def _open_shard(self, k: int) -> Shard:
        """Memory k's open shard, or a new one starting from the cycle's start (the main
        weights, or the merged memory) under its own mask."""
        mem, c = self.memories[k], self.config
        if mem.shards and len(mem.shards[-1].log) < c.shard_size:
            return mem.shards[-1]
        start = mem.merged if c.shard_start == "merged" and mem.merged is not None \
            else torch.zeros_like(self.w_main)
        seed = (self.seed * 1_000_003 + k) * 10_007 + mem.n_shards
        mask = entry_mask(self.w_main.shape, c.mask_ratio, seed).to(self.w_main.device)
        mem.shards.append(Shard(start.clone(), mask))
        mem.n_shards += 1
        return mem.shards[-1]

    def edit(self, requests: Sequence[EditRequest]) -> EditReceipt:
        results = [self._edit_one(r) for r in requests]
        self.since_merge += len(requests)
        if self.config.merge_every and self.since_merge >= self.config.merge_every:
            self.consolidate()
        return receipt(results, self.config.stop_loss, {"memories": len(self.memories)})

    def _edit_one(self, req: EditRequest, k: int | None = None) -> LoopResult:
        """Train `req` into memory `k`'s open shard (default: the memory for a new edit)."""
        k = self._memory_for_edit() if k is None else k
        shard = self._open_shard(k)
        prompts = self._prefixed(req)
        x_edit, m_edit = self._activations(prompts)
        x_neg, m_neg = self._activations(self._negatives(req.edit_id) or ["."])
        batch = encode_pairs(self.lm, prompts, [req.target] * len(prompts))
        result, shard.delta, score = train_shard(
            self.lm, self.module, self.hooks, self.config, self.scale, shard,
            Inputs(batch, x_edit, m_edit, x_neg, m_neg))
        shard.log.append(req)
        shard.scores.append(score)
        self._changed()
        return result

    # ---- merging, retraction ----------------------------------------------------------------
    def consolidate(self) -> dict[str, Any] | None:
        """Merge each memory's shards (those holding edits) into its merged delta."""
        merged = sum(self._merge_memory(k) for k in range(len(self.memories)))
        self.since_merge = 0
        return {"shards_merged": merged} if merged else None

    def _merge_memory(self, k: int) -> int:
        """TIES (or the configured merge) of memory k's shards, weighted against its merged
        delta; returns the number of shards merged."""
        mem, c = self.memories[k], self.config
        shards = [s for s in mem.shards if s.log]
        if shards:
            mem.merged = clamp(merge_shards([s.delta for s in shards], mem.merged, c.merge,
                                            c.density, c.merged_weight, self.seed + k),
                               c.norm_constraint)
            mem.merges.append([r for s in shards for r in s.log])
            mem.merged_scores += [v for s in shards for v in s.scores]
        mem.shards = []
        self._changed()
        return len(shards)

    def retract(self, edit_id: str) -> None:
        """Rebuild the edit's memory from its log without it, merging where it was merged:
        the memory a stream without the edit would have built (exact)."""
        if self.config.retract == "unsupported":
            raise NotSupported("wise is configured with retract = 'unsupported' (a rebuild "
                               "retrains every edit of the memory)")
        k = self.memory_of(edit_id)
        if k is None:
            raise UnknownEdit(f"wise: no active edit {edit_id!r} to retract")
        old = self.memories[k]
        keep = [[r for r in g if r.edit_id != edit_id] for g in old.merges]
        pending = [r for s in old.shards for r in s.log if r.edit_id != edit_id]
        self.memories[k] = SideMemory()
        self._changed()
        for group in keep:
            for r in group:
                self._edit_one(r, k)
            self._merge_memory(k)
        for r in pending:
            self._edit_one(r, k)

    # ---- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"memories": [m.to_state() for m in self.memories],
                "since_merge": self.since_merge, "scale": self.scale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.memories = [SideMemory.from_state(m).to(self.w_main.device) for m in state["memories"]]
        self.since_merge = state["since_merge"]
        self.scale = state["scale"]
        self._changed()
