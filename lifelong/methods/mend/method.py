"""The `mend` method: attach (train or read the editor), edit in place, log, replay, state.

Invariants: the edited weights are a pure function of the base weights, the editor (itself a
pure function of the base model, the settings, the training seed and the train split) and
the log (the edit batches, in order): an edit draws nothing at random, so `retract` (restore
the base weights, re-apply the log without the edit) gives bit for bit the weights of a
stream that never made it. Only the weights named in `names` ever change; `detach` copies
the base weights back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ... import layers
from ...errors import LifelongError, NotSupported
from ...model import LM
from ...progress import Reporter
from ...scoring import batch_target_loss, encode_pairs
from .._common.rng import seeded_rng
from ..base import (
    BatchEditing,
    EditReceipt,
    EditRequest,
    MemoryBase,
    Retractable,
    UnknownEdit,
    tensor_bytes,
)
from ..context import AttachContext, TrainRecord
from .config import MendConfig
from .editor import MendEditor
from .train import Training, cache_entry, factors, split_digest, train_editor

PARTS = {"in+out": ("mlp.in", "mlp.out"), "out": ("mlp.out",), "in": ("mlp.in",)}
#: the cache's folder for trained editors (`Cache.load(layer, what)`'s `layer`)
CACHE_FOLDER = "mend"
NO_SPLIT = ("mend trains its editor on a train split before the stream, and this run has none: "
            "set the scenario's `stream.train_file` (a stream file of edits; Python API: "
            "train_split=)")


def mend_layers(model: torch.nn.Module, chosen: tuple[int, ...] | None) -> list[int]:
    """`chosen` (negative counts from the end), else the last 3 blocks (fewer when the model
    has fewer); sorted, without repeats."""
    if chosen:
        return sorted({layers.layer_index(model, i) for i in chosen})
    n = layers.num_layers(model)
    return list(range(max(0, n - 3), n))


class Mend(MemoryBase, BatchEditing, Retractable):
    """MEND (`mend/__init__.py`). State: the edited weights, the log and the editor.
    Footprint: the edited weights' bytes plus the editor's."""

    name = "mend"
    Config = MendConfig
    summary = ("MEND: a meta-trained editor maps each edit's fine-tuning gradient to a "
               "low-rank update of the last MLPs")
    memory_kind = "weights"
    no_retraction = "mend with retract = \"unsupported\" cannot retract"

    def __init__(self, config: MendConfig, seed: int = 0):
        super().__init__(config, seed)
        self.retraction = "exact" if config.retract == "replay" else None

    # ---- attach: the edited weights and the editor --------------------------------------------
    def attach(self, lm: LM, ctx: AttachContext) -> None:
        cfg = self.config
        self.lm = lm
        self.layer_ids = mend_layers(lm.model, cfg.layers)
        self.names = [f"layers.{i}.{p}" for i in self.layer_ids for p in PARTS[cfg.parts]]
        self.modules = [layers.resolve(lm.model, n) for n in self.names]
        self.base = [layers.weight_out_in(m).detach().clone() for m in self.modules]
        self.train_seed = self.seed if cfg.editor_seed is None else cfg.editor_seed
        self.editor = self.fresh_editor()
        self.training: Training | None = None
        self.info = self._train_or_read(ctx)
        self.editor.requires_grad_(False)
        self.log: list[list[EditRequest]] = []

    def fresh_editor(self) -> MendEditor:
        """An untrained editor for this model's edited weights (the paper's initialisation:
        the identity on the normalised factors; statistics empty)."""
        cfg = self.config
        seed = seeded_rng(self.train_seed, "mend-init").getrandbits(63)
        return MendEditor([layers.in_out_features(m) for m in self.modules], rank=cfg.rank,
                          n_hidden=cfg.n_hidden, shared=cfg.shared, norm=cfg.norm,
                          edit_lr=cfg.edit_lr, seed=seed).to(self.lm.device)

    def _train_or_read(self, ctx: AttachContext) -> dict[str, Any]:
        """Read the trained editor from the cache, else train it (and cache it when the
        context knows the model's fingerprint). Returns what happened, for `info`."""
        records: Sequence[TrainRecord] = ctx.train_records()
        if not records:
            raise LifelongError(NO_SPLIT)
        entry = cache_entry(self.config, self.layer_ids, self.train_seed, split_digest(records))
        try:
            cache = ctx.cache()
        except LifelongError:
            cache = None
        saved = cache.load(CACHE_FOLDER, entry) if cache is not None else None
        if saved is not None:
            meta = {k: float(saved.pop(k)) for k in ("steps", "seconds", "first", "last")}
            self.editor.load_tensors(saved)
            Reporter().note(f"{self.name}: editor read from the cache ({entry}; trained "
                            f"{meta['steps']:.0f} steps, {meta['seconds']:.1f} s)")
            return {"editor": "read from the cache", "entry": entry, **meta}
        self.training = train_editor(self.lm, self.modules, self.editor, self.config, records,
                                     self.train_seed, self.name)
        t = self.training
        meta = {"steps": float(t.steps), "seconds": t.seconds,
                "first": t.losses[0] if t.losses else float("nan"),
                "last": t.losses[-1] if t.losses else float("nan")}
        if cache is not None:
            cache.save(CACHE_FOLDER, entry, {**{k: v.cpu() for k, v in self.editor.tensors().items()},
                                             **{k: torch.tensor(v, dtype=torch.float64)
                                                for k, v in meta.items()}})
        where = f"cached as {entry}" if cache is not None else "not cached: no model fingerprint"
        Reporter().note(f"{self.name}: editor trained, {t.steps} steps, {t.seconds:.1f} s (loss "
                        f"{meta['first']:.4f} -> {meta['last']:.4f}; {where})")
        return {"editor": "trained", "entry": entry, **meta}

    # ---- editing -----------------------------------------------------------------------------
    def weights(self) -> list[torch.Tensor]:
        """The edited weights, (out, in), views of the modules' parameters."""
        return [layers.weight_out_in(m) for m in self.modules]

    @torch.no_grad()
    def target_loss(self, request: EditRequest) -> float:
        return float(batch_target_loss(self.lm, encode_pairs(self.lm, [request.prompt],
                                                             [request.target])))

    def edit_batch(self, requests: Sequence[EditRequest]) -> list[EditReceipt]:
        """One update from the batch's joint edit gradient (its rows together), added to the
        weights; a receipt per request with its own target loss before and after."""
        before = [self.target_loss(r) for r in requests]
        batch = encode_pairs(self.lm, [r.prompt for r in requests], [r.target for r in requests])
        _, facs = factors(self.lm, self.modules, batch)
        norms = []
        with torch.no_grad():
            for i, ((u, d), w) in enumerate(zip(facs, self.weights())):
                delta = self.editor.delta(i, u, d)
                w.add_(delta.to(w.dtype))
                norms.append(float(delta.norm()) ** 2)
        self.log.append(list(requests))
        detail: dict[str, Any] = {"layers": list(self.names), "update_norm": sum(norms) ** 0.5,
                                  "rows": int(facs[0][0].shape[0])}
        if len(requests) > 1:
            detail["batch"] = len(requests)
        return [EditReceipt(applied=True, loss_before=b, loss_after=self.target_loss(r),
                            steps=1, detail=dict(detail), converged=None)
                for r, b in zip(requests, before)]

    def edit(self, requests: Sequence[EditRequest]) -> EditReceipt:
        receipts = self.edit_batch(requests)
        if len(receipts) == 1:
            return receipts[0]
        return EditReceipt(applied=True, loss_before=receipts[0].loss_before,
                           loss_after=receipts[-1].loss_after, steps=1,
                           detail=receipts[0].detail, converged=None)

    # ---- retraction -----------------------------------------------------------------------------
    def retract(self, edit_id: str) -> None:
        """Restore the base weights and re-apply the log without the edit (exact)."""
        if self.retraction is None:
            raise NotSupported(f"{self.name} with retract = \"unsupported\" cannot retract: its "
                               "updates share the edited weights")
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

    # ---- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"weights": [w.detach().clone() for w in self.weights()],
                "log": [[vars(r).copy() for r in batch] for batch in self.log],
                "editor": self.editor.tensors()}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        for w, saved in zip(self.weights(), state["weights"], strict=True):
            w.copy_(saved)
        self.log = [[EditRequest(**r) for r in batch] for batch in state["log"]]
        self.editor.load_tensors(state["editor"])

    def footprint(self) -> int:
        """Bytes of the edited weights (what a merged export writes) and of the editor."""
        return tensor_bytes(*self.weights()) + self.editor.nbytes()

    def detach(self) -> None:
        self._restore_base()
