"""The `ike` method: attach (the key block and the standardisation), the store of
demonstrations, the serving hooks, routing, retraction and state.

Invariants: nothing is trained and no weight changes; the standardisation is fixed at attach
(or loaded with a state); what a row is served is a pure function of the log of edits (in
order), the row's tokens and its key, so removing an edit from the log (`retract`) gives
exactly the memory of a stream that never made it; only hooks are added to the base model
(`detach` removes them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ... import layers
from ...errors import LifelongError
from ...model import LM
from ...progress import Reporter
from ...scoring import batch_target_loss, encode_pairs, tokenize_pair
from .._common.conditioning import RowServed, edit_prefix, forward_rows, max_positions, replace_rows
from .._common.facts import as_seen
from .._common.features import block_features, cached_block_features
from .._common.hooks import Hooks
from .._common.keys import read_keys
from ..base import EditReceipt, EditRequest, MemoryBase, Retractable, Routing, UnknownEdit
from ..context import AttachContext
from .bank import DemoBank, cached_demos
from .config import IkeConfig
from .keys import Standardiser, standardisation_texts
from .memory import DemoMemory
from .prompt import fitting, written

#: what a row is served: (the served index of its nearest demonstration, the tokens written
#: before it), or (None, []) for a row the base model answers alone
Plan = tuple[int | None, list[int]]


class Ike(RowServed, MemoryBase, Retractable, Routing):
    """IKE (`ike/__init__.py`). State: the log of edits with their keys and demonstration
    tokens, the standardisation and the key block. Footprint: the stored edits (texts,
    tokens, keys), the FAISS index of the served keys, the standardisation."""

    name = "ike"
    Config = IkeConfig
    summary = ("IKE: no weight changes; the stored edits nearest to a query are written "
               "before it as demonstrations and the base model answers in context (exact "
               "retraction)")
    memory_kind = "hooks"
    exact_retraction = "exact"

    # ---- attach ------------------------------------------------------------------------------
    def attach(self, lm: LM, ctx: AttachContext) -> None:
        cfg = self.config
        self.lm = lm
        self.layer = layers.layer_index(lm.model, -1 if cfg.layer is None else cfg.layer)
        self.block = layers.resolve(lm.model, f"layers.{self.layer}")
        self.head = layers.resolve(lm.model, "lm_head")
        self.embedding = layers.resolve(lm.model, "embed")
        self.limit = max_positions(lm.model)
        width = layers.hidden_size(lm.model)
        self.norm = Standardiser(width)
        texts = standardisation_texts(ctx)
        if texts:  # the model is pristine here: no hook of ours is open yet; cached, as
            # each chunk of the T = N protocol attaches to a fresh copy of the same model
            self.norm.fit(cached_block_features(lm, self.block, texts, "last",
                                                ctx.cache_if_known(), f"layers.{self.layer}"))
        self.memory = DemoMemory(width)
        self.hooks = Hooks(self._serving)
        self.hooks.open()
        self.bank = self._bank(ctx)

    def _bank(self, ctx: AttachContext) -> DemoBank:
        """The paper's demonstrations from the train split (`bank.py`); an empty bank when
        they are off or there is no train split (said once: the stored edits alone are
        a variant of the paper's method)."""
        records = ctx.train_records() if self.config.corpus_demonstrations else ()
        if self.config.corpus_demonstrations and not records:
            Reporter().note(f"{self.name}: no train split (stream.train_file): the stored "
                            "edits alone are written, without the paper's copy/update/retain "
                            "demonstrations")
        sep = self.config.separator
        prompts = [r.request.prompt for r in records]
        with self.hooks.suspended():  # the train split's features: the same in every chunk
            keys = self.norm.apply(cached_block_features(
                self.lm, self.block, prompts, "last", ctx.cache_if_known(),
                f"layers.{self.layer}")) if prompts else torch.zeros((0, 1))
        demos = cached_demos(records, lambda p, t: edit_prefix(self.lm, p, t, sep), sep,
                             ctx.cache_if_known(), "ike-demos")
        return DemoBank(demos, keys)

    # ---- keys, demonstrations, routing ------------------------------------------------------
    def _keys(self, prompts: Sequence[str]) -> torch.Tensor:
        """(len(prompts), width) keys of `prompts`, each read from a forward of the prompts
        with the serving hooks out of the way."""
        with self.hooks.suspended():
            return self.norm.apply(block_features(self.lm, self.block, list(prompts), "last"))

    def _plan(self, keys: torch.Tensor, lengths: Sequence[int],
              valid: Sequence[bool]) -> list[Plan]:
        """What each row (its key, its number of real tokens, whether it has a prompt token)
        is served: its nearest stored edit (the new fact), the train split's demonstrations
        nearest to that edit (`corpus_demonstrations`), then its further nearest stored edits
        (`demonstrations` in all), as many of these as fit the context with the row, in that
        priority (`prompt.fitting`), written in reverse; none when the row is out of scope
        (`scope = "radius"`) or when not even the nearest edit fits."""
        plans: list[Plan] = [(None, [])] * len(lengths)
        rows = [i for i, ok in enumerate(valid) if ok]
        if not rows or not len(self.memory):
            return plans
        for i, near in zip(rows, self.memory.nearest(keys[rows], self.config.demonstrations)):
            if not near or not self._in_scope(*near[0]):
                continue
            stored = [self.memory.prefix(m) for _, m in near]
            corpus = self.bank.nearest(self.memory.key(near[0][1]),
                                       self.config.corpus_demonstrations)
            # priority: the nearest stored edit (the new fact), the paper's demonstrations,
            # then further stored edits; written in reverse, so the new fact is next to the row
            prefixes = stored[:1] + corpus + stored[1:]
            kept = fitting(prefixes, lengths[i], self.limit)
            if kept:
                plans[i] = (near[0][1], written(prefixes[:kept]))
        return plans

    def _in_scope(self, distance: float, index: int) -> bool:
        """Every row is in scope ("all", the paper); with "radius" a row whose nearest key is
        within `radius` x that key's norm."""
        if self.config.scope == "all":
            return True
        return distance <= self.config.radius * float(self.memory.key(index).double().norm())

    def route(self, prompts: Sequence[str], router: str | None = None) -> list[int | None]:
        """The served index of each prompt's nearest demonstration (None: no demonstration is
        written, the base model answers), from a forward of the prompt alone with the serving
        hooks suspended, fitted to the prompt's own tokens (what the serving hook decides up
        to the rounding of a padded batch)."""
        if router is not None:
            raise LifelongError(f"{self.name} has one router; got {router!r}")
        if not prompts or not len(self.memory):
            return [None] * len(prompts)
        lengths = [len(tokenize_pair(self.lm, p, "x")[0]) for p in prompts]
        plans = self._plan(self._keys(prompts), lengths, [n > 0 for n in lengths])
        return [route for route, _ in plans]

    # ---- serving -------------------------------------------------------------------------------
    def _serve(self, ids: Any, hidden: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """The logits with every conditioned row replaced by the base model's own on the
        demonstrations + the row (`conditioning.replace_rows`, run with the serving hooks
        suspended); other rows bit for bit as they were."""
        if not len(self.memory):
            return logits
        if not isinstance(ids, torch.Tensor):
            raise LifelongError(f"{self.name} serves forwards given input_ids")
        batch, width = ids.shape
        mask, end = forward_rows(self.lm, ids)
        key_pos = (end - 1).clamp(0, width - 1)
        rows = torch.arange(batch, device=ids.device)
        valid = ((end > 0) & (mask[rows, key_pos] > 0)).tolist()
        keys = self.norm.apply(read_keys(hidden, key_pos.to(hidden.device), None, "last"))
        plans = self._plan(keys, mask.sum(1).tolist(), valid)
        prefixes = {i: p for i, (route, p) in enumerate(plans) if route is not None}
        if not prefixes:
            return logits
        with self.hooks.suspended():
            return replace_rows(self.lm, logits, ids, mask, end, prefixes, self.limit)

    # ---- editing -------------------------------------------------------------------------------
    @torch.no_grad()
    def _loss(self, req: EditRequest) -> float:
        return float(batch_target_loss(self.lm, encode_pairs(self.lm, [req.prompt], [req.target])))

    def edit(self, requests: Sequence[EditRequest]) -> EditReceipt:
        """Store each request verbatim with its key and its demonstration tokens; nothing is
        trained. The receipt's losses are the served model's target loss before and after."""
        before = after = None
        for r in (as_seen(r, self.config.use_fact_identity) for r in requests):
            loss = self._loss(r)
            before = loss if before is None else before
            self.memory.add(r, self._keys([r.prompt])[0],
                            edit_prefix(self.lm, r.prompt, r.target, self.config.separator))
            after = self._loss(r)
        return EditReceipt(applied=True, loss_before=before, loss_after=after, steps=0,
                           converged=None, detail={"memory": len(self.memory)})

    def retract(self, edit_id: str) -> None:
        """Remove the edit from the log (exact: nothing else depends on it)."""
        if not self.memory.remove(edit_id):
            raise UnknownEdit(f"{self.name}: no active edit {edit_id!r} to retract")

    # ---- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**self.memory.state_dict(), **self.norm.tensors(), "layer": self.layer}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["layer"]) != self.layer:
            raise ValueError(f"{self.name}: this state's keys were read at block "
                             f"{state['layer']}, this method reads block {self.layer}")
        self.norm.load_tensors({"mu": state["mu"], "sd": state["sd"]})
        self.memory.load_state_dict(state)

    def footprint(self) -> int:
        """Stored edits (texts, demonstration tokens, keys), the FAISS index of the served
        keys and the standardisation."""
        return self.memory.nbytes() + self.norm.nbytes() + self.bank.nbytes()
