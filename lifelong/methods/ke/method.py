"""The `ke` method: attach (train or read the hyper-network), edit in place, log, replay, state.

What KE shares with MEND is taken from `Mend` itself (this class derives from it): the edited
weights and their base copies (`attach`: the last 3 blocks' MLP projections), the log, the
exact retraction by replay, the state (weights, log, hyper-network), `footprint` (edited
weights + hyper-network) and `detach`. KE brings its own hyper-network (`fresh_editor`), its
training and cache entry (`_train_or_read`) and its update (`edit_batch`).

Invariants (MEND's): the edited weights are a pure function of the base weights, the
hyper-network (a pure function of the base model, the settings, the training seed and the
train split) and the log: an edit draws nothing at random (its prediction ``y`` is the model's
greedy one at the current weights), so `retract` (restore the base weights, re-apply the log
without the edit) gives bit for bit the weights of a stream that never made it. Only the
weights named in `names` ever change; `detach` copies the base weights back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ... import layers
from ...errors import LifelongError
from ...progress import Reporter
from .._common.rng import seeded_rng
from ..base import EditReceipt, EditRequest
from ..context import AttachContext, TrainRecord
from ..mend.method import Mend
from ..mend.train import cache_entry, split_digest
from .config import KeConfig
from .hypernet import HyperNetwork
from .train import FORMAT, Training, predictions, train_hypernet, update

#: the cache's folder for trained hyper-networks (`Cache.load(layer, what)`'s `layer`)
CACHE_FOLDER = "ke"
NO_SPLIT = ("ke trains its hyper-network on a train split before the stream, and this run has "
            "none: set the scenario's `stream.train_file` (a stream file of edits; Python API: "
            "train_split=)")


class KnowledgeEditor(Mend):
    """KE (`ke/__init__.py`). State: the edited weights, the log and the hyper-network.
    Footprint: the edited weights' bytes plus the hyper-network's."""

    name = "ke"
    Config = KeConfig
    summary = ("KE (KnowledgeEditor): a hyper-network conditioned on the edit's text turns its "
               "fine-tuning gradient into an update of the last MLPs")
    memory_kind = "weights"
    no_retraction = "ke with retract = \"unsupported\" cannot retract"

    def fresh_editor(self) -> HyperNetwork:  # type: ignore[override]
        """An untrained hyper-network for this model's edited weights (its initialisation is
        a pure function of the training seed)."""
        cfg = self.config
        seed = seeded_rng(self.train_seed, "ke-init").getrandbits(63)
        d_embed = int(layers.resolve(self.lm.model, "embed").weight.shape[1])
        return HyperNetwork(d_embed, [layers.in_out_features(m) for m in self.modules],
                            hidden=cfg.hidden, cond_dim=cfg.cond_dim, max_scale=cfg.max_scale,
                            seed=seed).to(self.lm.device)

    def _train_or_read(self, ctx: AttachContext) -> dict[str, Any]:
        """Read the trained hyper-network from the cache, else train it (and cache it when
        the context knows the model's fingerprint). Returns what happened, for `info` (MEND's
        keys: `lifelong bench edit` reads them)."""
        records: Sequence[TrainRecord] = ctx.train_records()
        if not records:
            raise LifelongError(NO_SPLIT)
        # MEND's entry name (every shaping setting, layers, seed, split), KE's format in it
        entry = cache_entry(self.config, self.layer_ids, self.train_seed,
                            f"{split_digest(records)}:ke-format-{FORMAT}")
        try:
            cache = ctx.cache()
        except LifelongError:
            cache = None
        saved = cache.load(CACHE_FOLDER, entry) if cache is not None else None
        if saved is not None:
            meta = {k: float(saved.pop(k)) for k in ("steps", "seconds", "first", "last")}
            self.editor.load_tensors(saved)
            Reporter().note(f"{self.name}: hyper-network read from the cache ({entry}; trained "
                            f"{meta['steps']:.0f} steps, {meta['seconds']:.1f} s)")
            return {"editor": "read from the cache", "entry": entry, **meta}
        t: Training = train_hypernet(self.lm, self.modules, self.editor, self.config, records,
                                     self.train_seed, self.name)
        self.training = t
        meta = {"steps": float(t.steps), "seconds": t.seconds,
                "first": t.losses[0] if t.losses else float("nan"),
                "last": t.losses[-1] if t.losses else float("nan")}
        if cache is not None:
            cache.save(CACHE_FOLDER, entry, {**{k: v.cpu() for k, v in self.editor.tensors().items()},
                                             **{k: torch.tensor(v, dtype=torch.float64)
                                                for k, v in meta.items()}})
        where = f"cached as {entry}" if cache is not None else "not cached: no model fingerprint"
        Reporter().note(f"{self.name}: hyper-network trained, {t.steps} steps, {t.seconds:.1f} s "
                        f"(edit loss {meta['first']:.4f} -> {meta['last']:.4f}, KL "
                        f"{t.kls[-1] if t.kls else float('nan'):.2e}, margin {t.margin:.1e}, "
                        f"λ {t.multiplier:.3g}; {where})")
        return {"editor": "trained", "entry": entry, **meta}

    def edit_batch(self, requests: Sequence[EditRequest]) -> list[EditReceipt]:
        """Each request's update at the current weights (its own gradient and condition), the
        updates summed and added to the weights; a receipt per request with its own target
        loss before and after."""
        before = [self.target_loss(r) for r in requests]
        preds = predictions(self.lm, requests)
        total = [torch.zeros_like(w, dtype=torch.float32) for w in self.weights()]
        for r, (ids, _) in zip(requests, preds):
            with torch.no_grad():
                for acc, delta in zip(total, update(self.lm, self.modules, self.editor, r, ids)):
                    acc.add_(delta)
        with torch.no_grad():
            for w, delta in zip(self.weights(), total):
                w.add_(delta.to(w.dtype))
        self.log.append(list(requests))
        detail: dict[str, Any] = {"layers": list(self.names),
                                  "update_norm": sum(float(d.norm()) ** 2 for d in total) ** 0.5,
                                  "predictions": [text for _, text in preds]}
        if len(requests) > 1:
            detail["batch"] = len(requests)
        return [EditReceipt(applied=True, loss_before=b, loss_after=self.target_loss(r),
                            steps=1, detail=dict(detail), converged=None)
                for r, b in zip(requests, before)]
