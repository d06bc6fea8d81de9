"""The base ROME, MEMIT and AlphaEdit share: statistics and prefixes at attach, on top of
`_common.replayed.ReplayedWeights` (weights edited in place, a log, exact retraction by
replay, state, detach).

Invariant: the edited weights are a pure function of the base weights, the attach context
(statistics, prefixes from the seed) and the log (the edit batches, in order).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ... import layers
from ...errors import LifelongError
from ...model import LM
from ...progress import Reporter
from .._common.replayed import ReplayedWeights
from ..base import EditReceipt, EditRequest, tensor_bytes
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


class LocateEdit(ReplayedWeights):
    """Subclasses set `name`, `Config`, `summary`, `_layers(model)` and `_apply(requests)`
    (edit the weights; one receipt per request); `_extra_state` / `_load_extra` / `_reset`
    for state of their own (AlphaEdit's accumulated keys)."""

    entangled = "its rank-one updates share the edited weights"

    # ---- what a subclass says -------------------------------------------------------------
    def _layers(self, model: torch.nn.Module) -> list[int]:
        raise NotImplementedError

    def _apply(self, requests: Sequence[EditRequest]) -> list[EditReceipt]:
        raise NotImplementedError

    def _prepare(self, ctx: AttachContext) -> None:
        """After the statistics are known (AlphaEdit: its projections; `ctx.memo` keeps what
        the chunks of one run can share)."""

    # ---- lifecycle --------------------------------------------------------------------------
    def attach(self, lm: LM, ctx: AttachContext) -> None:
        cfg = self.config
        self.lm = lm
        self.layer_ids = self._layers(lm.model)
        self.names = [f"layers.{i}.mlp.out" for i in self.layer_ids]
        self.modules = [layers.resolve(lm.model, n) for n in self.names]
        self.base = [layers.weight_out_in(m).detach().clone() for m in self.modules]
        self._say_if_unreachable(lm, ctx)
        if cfg.covariance == "corpus":
            self.cov, info = key_covariances(lm, ctx, self.names, cfg.stats_texts,
                                             cfg.stats_fallback)
        else:
            self.cov = {n: torch.eye(self.base[i].shape[1], device=lm.device)
                        for i, n in enumerate(self.names)}
            info = {"source": "identity (no statistics)"}
        self.info = info
        # said when computed (a cost worth seeing once); a read from the cache is silent, or a
        # chunked run would print it for every chunk (`info` still says which it was)
        for name, cost in info.get("layers", {}).items():
            if not cost["read"]:
                Reporter().note(f"{self.name}: key statistics of {name} computed "
                                f"({cost['tokens']} tokens, {cost['seconds']:.1f} s)")
        self.prefixes = self._prefixes(ctx)
        self.log: list[list[EditRequest]] = []
        self._prepare(ctx)
        self._reset()

    def _say_if_unreachable(self, lm: LM, ctx: AttachContext) -> None:
        """Say once per run (the chunks share `ctx.memo`) when the edit can reach the answer
        only where the subject ends the prompt: the value is written at the subject's last
        token of the model's last block, and no later block reads that position (causal
        attention), so the answer, read at the prompt's last token, cannot see it. A one-layer
        model always is this case; the edit still runs, as the paper's method would."""
        last = layers.num_layers(lm.model) - 1
        if self.config.key_position != "subject_last" or self.layer_ids[-1] != last:
            return
        said = ("unreachable", self.name)
        if said not in ctx.memo:
            ctx.memo[said] = True
            Reporter().note(f"{self.name}: the edit writes layer {last}, the model's last "
                            "block, at the subject's last token; no later block reads that "
                            "position, so only prompts that end with their subject can "
                            "change (key_position = 'prompt_last' edits where the answer "
                            "is read)")

    def _prefixes(self, ctx: AttachContext) -> list[str]:
        """The prefix contexts (`lookup.make_prefixes`) from corpus texts (else the unrelated
        prompts), kept in the cache beside the statistics when the corpus is a file."""
        cfg = self.config
        key = corpus_key(ctx)
        cache = ctx.cache_if_known() if key is not None and cfg.prefixes else None
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

    def detail(self, site: Site, **more: Any) -> dict[str, Any]:
        stats = {k: self.info[k] for k in ("source", "texts", "entry") if k in self.info}
        return {"layers": list(self.names), "lookup": site.how, "statistics": stats, **more}

    # ---- editing -----------------------------------------------------------------------------
    def edit_batch(self, requests: Sequence[EditRequest]) -> list[EditReceipt]:
        receipts = self._apply(requests)
        self.log.append(list(requests))
        return receipts

    # ---- state: the prefixes besides the weights and the log ------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "prefixes": list(self.prefixes)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.prefixes = list(state["prefixes"])

    def _extra_bytes(self) -> int:
        """Accumulated state's tensors (AlphaEdit's keys)."""
        extra = [t for v in self._extra_state().values()
                 for t in (v if isinstance(v, list) else [v]) if isinstance(t, torch.Tensor)]
        return tensor_bytes(*extra)
