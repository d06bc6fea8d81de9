"""The base ROME, MEMIT and AlphaEdit share: weights edited in place, statistics at attach,
a log of edits, exact retraction by replay, state and detach.

Invariants: the edited weights are a pure function of the base weights, the attach context
(statistics, prefixes from the seed) and the log (the edit batches, in order): every edit is
deterministic, so `retract` (restore the base weights and replay the log without the edit)
gives exactly the weights a stream without that edit would have made. It costs one replay
of every remaining edit; `retract = "unsupported"` refuses instead (long sequential runs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ... import layers
from ...errors import LifelongError, NotSupported
from ...model import LM
from ...progress import Reporter
from ..base import (
    BatchEditing,
    EditReceipt,
    EditRequest,
    MemoryBase,
    Retractable,
    UnknownEdit,
    tensor_bytes,
)
from ..context import AttachContext
from .lookup import Site, make_prefixes, sites
from .stats import corpus_key, key_covariances, sample_texts
from .values import ValueSettings


def edit_layers(model: torch.nn.Module, chosen: tuple[int, ...] | None, span: int) -> list[int]:
    """`chosen` (negative counts from the end), else the `span` layers ending at the default
    edit layer (fewer when the model has fewer below it); sorted, without repeats."""
    if chosen:
        return sorted({layers.layer_index(model, i) for i in chosen})
    last = layers.default_edit_layer(model)
    return list(range(max(0, last - span + 1), last + 1))


class LocateEdit(MemoryBase, BatchEditing, Retractable):
    """Subclasses set `name`, `Config`, `summary`, `_layers(model)` and `_apply(requests)`
    (edit the weights; one receipt per request); `_extra_state` / `_load_extra` / `_reset`
    for state of their own (AlphaEdit's accumulated keys)."""

    memory_kind = "weights"

    def __init__(self, config: Any, seed: int = 0):
        super().__init__(config, seed)
        self.retraction = "exact" if config.retract == "replay" else None

    # ---- what a subclass says -------------------------------------------------------------
    def _layers(self, model: torch.nn.Module) -> list[int]:
        raise NotImplementedError

    def _apply(self, requests: Sequence[EditRequest]) -> list[EditReceipt]:
        raise NotImplementedError

    def _prepare(self) -> None:
        """After the statistics are known (AlphaEdit: its projections)."""

    def _reset(self) -> None:
        """Forget what edits accumulated besides the weights (before a replay)."""

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra(self, state: dict[str, Any]) -> None:
        """Restore `_extra_state` output."""

    # ---- lifecycle --------------------------------------------------------------------------
    def attach(self, lm: LM, ctx: AttachContext) -> None:
        cfg = self.config
        self.lm = lm
        self.layer_ids = self._layers(lm.model)
        self.names = [f"layers.{i}.mlp.out" for i in self.layer_ids]
        self.modules = [layers.resolve(lm.model, n) for n in self.names]
        self.base = [layers.weight_out_in(m).detach().clone() for m in self.modules]
        if cfg.covariance == "corpus":
            self.cov, info = key_covariances(lm, ctx, self.names, cfg.stats_texts,
                                             cfg.stats_fallback)
        else:
            self.cov = {n: torch.eye(self.base[i].shape[1], device=lm.device)
                        for i, n in enumerate(self.names)}
            info = {"source": "identity (no statistics)"}
        self.info = info
        for name, cost in info.get("layers", {}).items():
            how = "read from the cache" if cost["read"] else "computed"
            Reporter().note(f"{self.name}: key statistics of {name} {how} ({cost['tokens']} "
                            f"tokens, {cost['seconds']:.1f} s to compute)")
        self.prefixes = self._prefixes(ctx)
        self.log: list[list[EditRequest]] = []
        self._prepare()
        self._reset()

    def _prefixes(self, ctx: AttachContext) -> list[str]:
        """The prefix contexts (`lookup.make_prefixes`) from corpus texts (else the unrelated
        prompts), kept in the cache beside the statistics when the corpus is a file."""
        cfg = self.config
        key = corpus_key(ctx)
        try:
            cache = ctx.cache() if key is not None and cfg.prefixes else None
        except LifelongError:
            cache = None
        what = f"prefixes-{key}-seed{self.seed}-{cfg.prefixes}x{cfg.prefix_tokens}"
        saved = cache.load("prefixes", what) if cache is not None else None
        if saved is not None:
            ids = saved["ids"].tolist()
        else:
            try:
                starts = ctx.corpus_texts()
            except LifelongError:
                starts = ctx.unrelated_prompts
            ids = make_prefixes(self.lm, sample_texts(starts, 1000), cfg.prefixes,
                                cfg.prefix_tokens, self.seed)
            if cache is not None and ids:
                cache.save("prefixes", what, {"ids": torch.tensor(ids)})
        return [self.lm.tok.decode(row, skip_special_tokens=True).strip() for row in ids]

    def value_settings(self) -> ValueSettings:
        c = self.config
        return ValueSettings(c.steps, c.lr, c.kl_factor, c.weight_decay, c.clamp, c.stop_loss)

    def sites(self, requests: Sequence[EditRequest]) -> list[Site]:
        return sites(self.lm, requests, self.prefixes, self.config.key_position)

    def weights(self) -> list[torch.Tensor]:
        """The edited weights, (out, in), views of the modules' parameters."""
        return [layers.weight_out_in(m) for m in self.modules]

    def detail(self, site: Site, **more: Any) -> dict[str, Any]:
        stats = {k: self.info[k] for k in ("source", "texts", "entry") if k in self.info}
        return {"layers": list(self.names), "lookup": site.how, "statistics": stats, **more}

    # ---- editing -----------------------------------------------------------------------------
    def edit_batch(self, requests: Sequence[EditRequest]) -> list[EditReceipt]:
        receipts = self._apply(requests)
        self.log.append(list(requests))
        return receipts

    def edit(self, requests: Sequence[EditRequest]) -> EditReceipt:
        receipts = self.edit_batch(requests)
        if len(receipts) == 1:
            return receipts[0]
        return EditReceipt(applied=all(r.applied for r in receipts),
                           loss_before=receipts[0].loss_before,
                           loss_after=receipts[-1].loss_after,
                           steps=sum(r.steps for r in receipts),
                           detail={**receipts[0].detail, "batch": len(receipts)},
                           converged=all(bool(r.converged) for r in receipts))

    # ---- retraction -----------------------------------------------------------------------------
    def retract(self, edit_id: str) -> None:
        """Restore the base weights and replay the log without the edit (exact)."""
        if self.retraction is None:
            raise NotSupported(f"{self.name} with retract = \"unsupported\" cannot retract: "
                               "its rank-one updates share the edited weights")
        if not any(r.edit_id == edit_id for batch in self.log for r in batch):
            raise UnknownEdit(f"{self.name}: no active edit {edit_id!r} to retract")
        kept = [[r for r in batch if r.edit_id != edit_id] for batch in self.log]
        self._restore_base()
        self.log = []
        for batch in kept:
            if batch:
                self.edit_batch(batch)

    @torch.no_grad()
    def _restore_base(self) -> None:
        for w, b in zip(self.weights(), self.base):
            w.copy_(b)
        self._reset()

    # ---- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"weights": [w.detach().clone() for w in self.weights()],
                "log": [[vars(r).copy() for r in batch] for batch in self.log],
                "prefixes": list(self.prefixes), **self._extra_state()}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        for w, saved in zip(self.weights(), state["weights"]):
            w.copy_(saved)
        self.log = [[EditRequest(**r) for r in batch] for batch in state["log"]]
        self.prefixes = list(state["prefixes"])
        self._load_extra(state)

    def footprint(self) -> int:
        """Bytes of the edited weights (what a merged export writes) and accumulated state."""
        extra = [t for v in self._extra_state().values()
                 for t in (v if isinstance(v, list) else [v]) if isinstance(t, torch.Tensor)]
        return tensor_bytes(*self.weights(), *extra)

    def detach(self) -> None:
        self._restore_base()
