"""The `serac` method: attach (train or read the classifier and the counterfactual model),
the edit memory, the serving hooks, routing, retraction and state.

Invariants: the classifier and the counterfactual model are pure functions of the base
model, the settings that shape them, the training seed and the train split, and never change
after attach; the served memory is a pure function of the log of edits (in order), so
removing an edit from the log (`retract`) gives exactly the memory of a stream that never
made it; only hooks are added to the base model (`detach` removes them).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Sequence
from typing import Any

import torch

from ... import layers
from ...errors import LifelongError
from ...model import LM
from ...progress import Reporter
from ...scoring import batch_target_loss, encode_pairs
from .._common.checkpoint import Checkpoint
from .._common.conditioning import RowServed, edit_prefix, forward_rows, max_positions, replace_rows
from .._common.editlog import EditLog
from .._common.facts import as_seen
from .._common.features import block_features, pooled
from .._common.guard import Guard, guard_from_context
from .._common.hooks import Hooks
from .._common.keys import router_tokens
from ..base import (
    EditReceipt,
    EditRequest,
    MemoryBase,
    Retractable,
    Routing,
    UnknownEdit,
    tensor_bytes,
)
from ..context import AttachContext, Cache, TrainRecord
from .classifier import ScopeClassifier, train_classifier
from .config import SeracConfig
from .counterfactual import parameters_of, train_counterfactual

#: the cache's folder for trained parts (`Cache.load(layer, what)`'s `layer`)
CACHE_FOLDER = "serac"
#: bump when what is cached changes meaning (invalidates older entries)
FORMAT = 1
NO_SPLIT = ("serac trains its scope classifier and counterfactual model on a train split "
            "before the stream, and this run has none: set the scenario's `stream.train_file` "
            "(a stream file of edits; Python API: train_split=)")
#: relative distance within which a key is an edit's own prompt's (the rounding of a padded
#: batch moves an embedding by ~1e-7 of its norm): the guard shrinks no radius below it
SAME_KEY = 1e-4
META = ("cls_first", "cls_last", "cf_first", "cf_last", "cls_updates", "cf_updates", "seconds")


def split_digest(records: Sequence[TrainRecord]) -> str:
    """A hash of the train split's content (requests, rephrases, locality pairs)."""
    rows = [[vars(r.request), list(r.rephrases), [list(p) for p in r.locality]] for r in records]
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16]


class Serac(RowServed, MemoryBase, Retractable, Routing):
    """SERAC (`serac/__init__.py`). State: the log of edits with their keys, and the digest of
    the trained parts it was made with. Footprint: the stored edits (texts, conditioning
    tokens, keys), the classifier's tensors and every parameter of the counterfactual model."""

    name = "serac"
    Config = SeracConfig
    summary = ("SERAC: edits kept verbatim; a trained scope classifier sends inputs in an "
               "edit's scope to a counterfactual model conditioned on it (exact retraction)")
    memory_kind = "hooks"
    trains_at_attach = True
    retraction = "exact"

    # ---- attach ------------------------------------------------------------------------------
    def attach(self, lm: LM, ctx: AttachContext) -> None:
        cfg = self.config
        records = ctx.train_records()
        if not records:
            raise LifelongError(NO_SPLIT)
        self.lm = lm
        self.layer = layers.layer_index(lm.model, -1 if cfg.layer is None else cfg.layer)
        self.block = layers.resolve(lm.model, f"layers.{self.layer}")
        self.head = layers.resolve(lm.model, "lm_head")
        self.embedding = layers.resolve(lm.model, "embed")
        self.train_seed = self.seed if cfg.train_seed is None else cfg.train_seed
        width = layers.hidden_size(lm.model)
        self.dim = cfg.embed_dim or width
        self.cf = self._second_model(ctx)
        self.limit = max_positions(self.cf.model)
        self.classifier = ScopeClassifier(width, self.dim, self.train_seed).to(lm.device)
        self.memory = EditLog(self.dim)
        self.hooks = Hooks(self._serving)  # opened once the parts are ready
        self.info = self._train_or_read(ctx, records)
        self.classifier.requires_grad_(False)
        self.cf.model.requires_grad_(False).eval()
        self.digest = self._digest()
        self.guard = self._pool_guard(ctx, width)
        self._cached: tuple[float, torch.Tensor] | None = None  # `_scope`, None: to recompute
        self.hooks.open()

    def _second_model(self, ctx: AttachContext) -> LM:
        """The counterfactual model's starting point: a fresh copy of the base model from the
        context, else a copy of `lm` (pristine at attach, before any hook of ours)."""
        try:
            cf = ctx.new_model()
        except LifelongError:
            cf = self.lm.clone()
        cf.model.to(self.lm.device).eval()
        return cf

    def cache_entry(self, records: Sequence[TrainRecord]) -> str:
        """Every setting that shapes the trained parts, the block read, the projection's
        width, the training seed and the split's hash (never `threshold`, `claim_rate`,
        `use_fact_identity`: they do not shape the parts)."""
        keys = {k: v for k, v in vars(self.config).items()
                if k not in ("threshold", "claim_rate", "use_fact_identity", "train_seed",
                             "layer", "embed_dim")}
        spec = json.dumps({"format": FORMAT, **keys, "layer": self.layer, "dim": self.dim,
                           "seed": self.train_seed, "split": split_digest(records)},
                          sort_keys=True)
        return "parts-" + hashlib.sha256(spec.encode()).hexdigest()[:16]

    def _train_or_read(self, ctx: AttachContext, records: Sequence[TrainRecord]) -> dict[str, Any]:
        """Read the trained parts from the cache, else train them (and cache them when the
        context knows the model's fingerprint); one process at a time trains an entry
        (`Cache.exclusive`: another waits, then reads it). Returns what happened, for
        `info`."""
        entry = self.cache_entry(records)
        cache = ctx.cache_if_known()
        if cache is None:
            return self._train(None, entry, records)
        with cache.load_or_lock(CACHE_FOLDER, entry, lambda: Reporter().note(
                f"{self.name}: another process is training {entry}; waiting to read it")) as saved:
            if saved is None:
                return self._train(cache, entry, records)
        meta = {k: float(saved.pop(k)) for k in META}
        self.classifier.load_tensors({k[4:]: v for k, v in saved.items() if k.startswith("cls.")})
        with torch.no_grad():
            for name, p in parameters_of(self.cf.model).items():
                p.copy_(saved[f"cf.{name}"])
        # silent: a chunked run re-attaches per chunk (`info` says it was read)
        return self._info("read from the cache", entry, meta)

    def _train(self, cache: Cache | None, entry: str,
               records: Sequence[TrainRecord]) -> dict[str, Any]:
        """Train the classifier, then the counterfactual model; cache both under `entry`.
        Each part keeps a resume point beside the entry (`_common.checkpoint`), removed once
        the parts are cached: an interrupted training takes its remaining updates at the next
        attach. `seconds` counts this attach's training only."""
        cfg, start = self.config, time.monotonic()
        points = [Checkpoint(cache.path(CACHE_FOLDER, f"{entry}-resume-{part}").with_suffix(".pt")
                             if cache is not None else None) for part in ("cls", "cf")]
        self.cls_losses = train_classifier(
            self.classifier, self._features, records, cfg.cls_steps, cfg.cls_lr,
            cfg.batch_size, self.train_seed, points[0])
        self.cf_losses = train_counterfactual(
            self.cf, self.lm, records, cfg.separator, cfg.cf_steps, cfg.cf_lr, cfg.batch_size,
            self.train_seed, points[1])
        nan = float("nan")
        meta = {"cls_first": self.cls_losses[0] if self.cls_losses else nan,
                "cls_last": self.cls_losses[-1] if self.cls_losses else nan,
                "cf_first": self.cf_losses[0] if self.cf_losses else nan,
                "cf_last": self.cf_losses[-1] if self.cf_losses else nan,
                "cls_updates": float(len(self.cls_losses)), "cf_updates": float(len(self.cf_losses)),
                "seconds": time.monotonic() - start}
        if cache is not None:
            cache.save(CACHE_FOLDER, entry, {
                **{f"cls.{k}": v.cpu().clone() for k, v in self.classifier.tensors().items()},
                **{f"cf.{k}": v.cpu().clone() for k, v in parameters_of(self.cf.model).items()},
                **{k: torch.tensor(v, dtype=torch.float64) for k, v in meta.items()}})
            for point in points:
                point.clear()
        where = f"cached as {entry}" if cache is not None else "not cached: no model fingerprint"
        Reporter().note(f"{self.name}: classifier and counterfactual model trained, "
                        f"{meta['seconds']:.1f} s (classifier loss {meta['cls_first']:.4f} -> "
                        f"{meta['cls_last']:.4f}, counterfactual loss {meta['cf_first']:.4f} -> "
                        f"{meta['cf_last']:.4f}; {where})")
        return self._info("trained", entry, meta)

    @staticmethod
    def _info(how: str, entry: str, meta: dict[str, float]) -> dict[str, Any]:
        """What attach did, in the shape `lifelong bench edit` reads (``editor``: "trained" or
        "read from the cache", ``steps``: the updates of both parts, ``seconds``), with each
        part's updates and first and last training loss."""
        return {"editor": how, "entry": entry,
                "steps": meta["cls_updates"] + meta["cf_updates"], **meta}

    def _digest(self) -> str:
        """A hash of every trained tensor: a state is loaded only onto the same parts."""
        h = hashlib.sha256()
        for prefix, tensors in (("cls", self.classifier.tensors()),
                                ("cf", parameters_of(self.cf.model))):
            for name, t in tensors.items():
                h.update(f"{prefix}.{name}{tuple(t.shape)}".encode())
                h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    # ---- routing -------------------------------------------------------------------------------
    def _pool_guard(self, ctx: AttachContext, width: int) -> Guard:
        """The unrelated pool (`_common.guard`) in the classifier's embedding: the pool's
        block features (cached per block and pooling, shared by every seed and classifier),
        embedded by the trained classifier."""
        feats = guard_from_context(ctx, f"layers.{self.layer}/output/{self.config.pool}", width,
                                   self.config.claim_rate, self._features)
        if not len(feats):
            return feats
        with torch.no_grad():
            return Guard(self.classifier.embed(feats.keys.float().to(self.lm.device)))

    def scope_factor(self) -> float:
        """The guard's common factor c <= 1 on the scope radius ``r = sqrt(-ln threshold /
        scale)``: the largest at which at most `claim_rate` of the unrelated pool lies within
        ``c x r`` of a served key (`Guard.factor`; 1.0: no pool, no edit, or off)."""
        return self._scope()[0]

    def _scope(self) -> tuple[float, torch.Tensor]:
        """(c, bounds): the guard's factor and, per served key, the log-probability an input
        nearest to it must exceed to be in scope: ln `threshold` while c = 1, else ``-scale x
        max(c r, floor)^2``, the floor being `SAME_KEY` x the key's norm (at most r: an edit
        keeps its own prompt, even one the pool also holds). Recomputed only when the served
        edits change (a function of them, so retraction stays exact)."""
        if self._cached is None:
            keys, rate, r = self.memory.keys(), self.config.claim_rate, self._radius()
            n = keys.shape[0]
            floors = torch.clamp(keys.detach().double().cpu().norm(dim=1) * SAME_KEY, max=r)
            c = 1.0 if not len(self.guard) or not n or rate >= 1 else self.guard.factor(
                keys, torch.full((n,), r, dtype=torch.float64), rate, floors)
            if c >= 1:
                bound = math.log(self.config.threshold) if self.config.threshold > 0 else -math.inf
                bounds = torch.full((n,), bound, dtype=torch.float64)
            else:
                bounds = -float(self.classifier.log_scale.exp()) * floors.clamp(min=c * r).square()
            self._cached = (c, bounds)
        return self._cached

    def _radius(self) -> float:
        """The embedding distance at which the probability equals `threshold` (a large finite
        stand-in for threshold 0: every input in scope)."""
        scale = float(self.classifier.log_scale.exp())
        if self.config.threshold <= 0:
            return 1e150
        return math.sqrt(-math.log(self.config.threshold) / scale)

    def _features(self, prompts: Sequence[str]) -> torch.Tensor:
        """Pooled features of `prompts` with the serving hooks out of the way."""
        with self.hooks.suspended():
            return block_features(self.lm, self.block, list(prompts), self.config.pool)

    @torch.no_grad()
    def _decide(self, feats: torch.Tensor, valid: torch.Tensor) -> list[int | None]:
        """The served memory's index for each row of pooled features (None: out of scope of
        every edit, or a row without prompt tokens): the nearest key, the newest among equally
        near ones, in scope when its log-probability exceeds that key's bound (`_scope`)."""
        keys = self.memory.keys()
        if keys.shape[0] == 0:
            return [None] * feats.shape[0]
        log_p = self.classifier.log_prob(self.classifier.embed(feats), keys.to(self.lm.device))
        best = keys.shape[0] - 1 - log_p.flip(-1).argmax(-1)
        top = log_p.gather(1, best.unsqueeze(1)).squeeze(1).double().cpu()
        hit = (top > self._scope()[1][best.cpu()]) & valid.cpu()
        return [int(b) if h else None for b, h in zip(best.tolist(), hit.tolist())]

    def route(self, prompts: Sequence[str], router: str | None = None) -> list[int | None]:
        """The served memory each prompt goes to (None: the base model), from a forward of
        the prompt alone with the serving hooks suspended (what the serving hook decides up
        to the rounding of a padded batch)."""
        if router is not None:
            raise LifelongError(f"{self.name} has one router; got {router!r}")
        if not prompts or not len(self.memory):
            return [None] * len(prompts)
        return self._decide(self._features(prompts), torch.ones(len(prompts), dtype=torch.bool))

    # ---- serving -------------------------------------------------------------------------------
    def _serve(self, ids: Any, hidden: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """The logits with every row in an edit's scope replaced by the counterfactual model's
        (`_common.conditioning.replace_rows`); other rows bit for bit as they were."""
        if not len(self.memory):
            return logits
        if not isinstance(ids, torch.Tensor):
            raise LifelongError(f"{self.name} serves forwards given input_ids")
        mask, end = forward_rows(self.lm, ids)
        tokens = router_tokens(mask.to(hidden.device), end.to(hidden.device), self.config.pool)
        routes = self._decide(pooled(hidden, tokens), tokens.any(1))
        prefixes = {i: self.memory.prefix(m) for i, m in enumerate(routes) if m is not None}
        return replace_rows(self.cf, logits, ids, mask, end, prefixes, self.limit)

    # ---- editing -------------------------------------------------------------------------------
    @torch.no_grad()
    def _loss(self, req: EditRequest) -> float:
        return float(batch_target_loss(self.lm, encode_pairs(self.lm, [req.prompt], [req.target])))

    def edit(self, requests: Sequence[EditRequest]) -> EditReceipt:
        """Store each request verbatim with its key (the classifier's embedding of its prompt)
        and its conditioning tokens; nothing is trained. The receipt's losses are the served
        model's target loss before and after."""
        before = after = None
        for r in (as_seen(r, self.config.use_fact_identity) for r in requests):
            loss = self._loss(r)
            before = loss if before is None else before
            with torch.no_grad():
                key = self.classifier.embed(self._features([r.prompt]))[0].cpu()
            self.memory.add(r, key, edit_prefix(self.lm, r.prompt, r.target,
                                                self.config.separator))
            self._cached = None
            after = self._loss(r)
        last = requests[-1].edit_id if requests else None
        return EditReceipt(applied=True, loss_before=before, loss_after=after, steps=0,
                           converged=None, detail={
                               "memory": len(self.memory), "scope_factor": self.scope_factor(),
                               "in_scope": bool(requests) and
                               self.route([requests[-1].prompt])[0] == self.memory_of(last)})

    def retract(self, edit_id: str) -> None:
        """Remove the edit from the log (exact: the parts never change after attach)."""
        if not self.memory.remove(edit_id):
            raise UnknownEdit(f"{self.name}: no active edit {edit_id!r} to retract")
        self._cached = None

    # ---- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**self.memory.state_dict(), "parts": self.digest}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("parts") != self.digest:
            raise ValueError(f"{self.name}: this state was saved with other trained parts "
                             f"({state.get('parts')}, attached: {self.digest}); attach with the "
                             "same model, settings, seed and train split")
        self.memory.load_state_dict(state)
        self._cached = None

    def footprint(self) -> int:
        """Stored edits (texts, conditioning tokens, keys) + the classifier's tensors + every
        parameter of the counterfactual model (a whole second copy of the base model)."""
        return (self.memory.nbytes() + self.classifier.nbytes()
                + tensor_bytes(*parameters_of(self.cf.model).values()))
