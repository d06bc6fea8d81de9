"""Networks a method trains at attach on the train split (MEND's editor, KE's hyper-network):
read from the cache when trained before, else trained and cached.

The cache entry names everything the trained tensors depend on (the caller's `entry`: the
settings that shape the network, the edited layers, the training seed, the split's digest),
under the method's `folder` of the model's cache (`AttachContext.cache()`, keyed by the
model's fingerprint). What happened is returned for the method's `info` in one structure
(`lifelong bench edit` reads it): {"editor": "read from the cache" | "trained", "entry",
"steps", "seconds", "first", "last"} (the training loss's first and last figures).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

from ... import layers
from ...model import LM
from ...progress import Reporter
from ...scoring import batch_target_loss, encode_pairs
from ..base import EditReceipt, EditRequest
from ..context import AttachContext, Cache
from .checkpoint import Checkpoint, Network
from .replayed import ReplayedWeights

META = ("steps", "seconds", "first", "last")


class Trained(Protocol):
    steps: int
    seconds: float
    losses: list[float]


def train_or_read(ctx: AttachContext, folder: str, entry: str, net: Network,
                  train: Callable[[Checkpoint], Trained], label: str,
                  describe: Callable[[Any], str] | None = None) -> tuple[dict[str, Any], Any]:
    """(what happened, for `info`; the training's record, None when read). `train` gets the
    training's resume point (`_common.checkpoint`: beside the entry, removed once it is
    cached; nowhere without a cache). `label` names the network in the note a training
    prints ("mend: editor"; a read prints nothing); `describe(training)` adds to the note.
    One process at a time trains an entry (`Cache.exclusive`): another that needs it waits,
    then reads it."""
    cache = ctx.cache_if_known()  # None: no model fingerprint to key the entry by
    if cache is None:
        return _trained(None, folder, entry, net, train, Checkpoint(), label, describe)
    with cache.load_or_lock(folder, entry, lambda: Reporter().note(
            f"{label}: another process is training {entry}; waiting to read it")) as saved:
        if saved is None:
            checkpoint = Checkpoint(cache.path(folder, f"{entry}-resume").with_suffix(".pt"))
            return _trained(cache, folder, entry, net, train, checkpoint, label, describe)
    meta = {k: float(saved.pop(k)) for k in META}
    net.load_tensors(saved)
    # silent: a chunked run re-attaches per chunk (`info` and `lifelong bench edit` say it)
    return {"editor": "read from the cache", "entry": entry, **meta}, None


def _trained(cache: Cache | None, folder: str, entry: str, net: Network,
             train: Callable[[Checkpoint], Trained], checkpoint: Checkpoint, label: str,
             describe: Callable[[Any], str] | None) -> tuple[dict[str, Any], Any]:
    """Train `net` from `checkpoint`, cache it (with the training's figures; the resume point
    removed) and say so: `train_or_read`'s result for a training."""
    t = train(checkpoint)
    meta = {"steps": float(t.steps), "seconds": t.seconds,
            "first": t.losses[0] if t.losses else float("nan"),
            "last": t.losses[-1] if t.losses else float("nan")}
    if cache is not None:
        cache.save(folder, entry, {**{k: v.cpu() for k, v in net.tensors().items()},
                                   **{k: torch.tensor(v, dtype=torch.float64)
                                      for k, v in meta.items()}})
        checkpoint.clear()
    where = f"cached as {entry}" if cache is not None else "not cached: no model fingerprint"
    more = f", {describe(t)}" if describe is not None else ""
    Reporter().note(f"{label} trained, {t.steps} steps, {t.seconds:.1f} s (loss "
                    f"{meta['first']:.4f} -> {meta['last']:.4f}{more}; {where})")
    return {"editor": "trained", "entry": entry, **meta}, t


#: the MLP projections of each edited block, by the `parts` setting
PARTS = {"in+out": ("mlp.in", "mlp.out"), "out": ("mlp.out",), "in": ("mlp.in",)}


def last_blocks(model: torch.nn.Module, chosen: tuple[int, ...] | None, n: int = 3) -> list[int]:
    """`chosen` (negative counts from the end), else the last `n` blocks (fewer when the model
    has fewer); sorted, without repeats."""
    if chosen:
        return sorted({layers.layer_index(model, i) for i in chosen})
    total = layers.num_layers(model)
    return list(range(max(0, total - n), total))


class TrainedUpdates(ReplayedWeights):
    """A method whose update comes from a network trained at attach on the train split (MEND,
    KE): the MLP projections of `config.layers` (default: the last 3 blocks) by
    `config.parts`, the network (`fresh_editor`, then `_train_or_read` fills it and returns
    `info`), frozen for the stream; its tensors are part of the state and the footprint.
    Subclasses implement `fresh_editor`, `_train_or_read` and `edit_batch`."""

    trains_at_attach = True

    def attach(self, lm: LM, ctx: AttachContext) -> None:
        cfg = self.config
        self.lm = lm
        self.layer_ids = last_blocks(lm.model, cfg.layers)
        self.names = [f"layers.{i}.{p}" for i in self.layer_ids for p in PARTS[cfg.parts]]
        self.modules = [layers.resolve(lm.model, n) for n in self.names]
        self.base = [layers.weight_out_in(m).detach().clone() for m in self.modules]
        self.train_seed = self.seed if cfg.editor_seed is None else cfg.editor_seed
        self.editor = self.fresh_editor()
        self.training: Any = None
        self.info = self._train_or_read(ctx)
        self.editor.requires_grad_(False)
        self.log = []

    def fresh_editor(self) -> Any:
        raise NotImplementedError

    def _train_or_read(self, ctx: AttachContext) -> dict[str, Any]:
        raise NotImplementedError

    @torch.no_grad()
    def target_loss(self, request: EditRequest) -> float:
        """The request's target NLL at the current weights (receipts' before and after)."""
        return float(batch_target_loss(self.lm, encode_pairs(self.lm, [request.prompt],
                                                             [request.target])))

    def edit(self, requests: Sequence[EditRequest]) -> EditReceipt:
        """As `ReplayedWeights.edit`, but a batch is one update (steps = 1)."""
        rc = super().edit(requests)
        return dataclasses.replace(rc, steps=1) if len(requests) > 1 else rc

    def _extra_state(self) -> dict[str, Any]:
        return {"editor": self.editor.tensors()}

    def _load_extra(self, state: dict[str, Any]) -> None:
        self.editor.load_tensors(state["editor"])

    def _extra_bytes(self) -> int:
        return self.editor.nbytes()
