"""The `ke` method: attach (train or read the hyper-network), then `TrainedUpdates`' edits in
place, log, exact retraction by replay, state (weights, log, hyper-network) and detach, as
MEND's; KE brings its hyper-network (`fresh_editor`), its training (`_train_or_read`) and its
update (`edit_batch`).

Invariants: the edited weights are a pure function of the base weights, the hyper-network (a
pure function of the base model, the settings, the training seed and the train split) and
the log: an edit draws nothing at random (its prediction ``y`` is the model's greedy one at
the current weights), so `retract` gives bit for bit the weights of a stream that never made
it. Only the weights named in `names` ever change; `detach` copies the base weights back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ... import layers
from ...errors import LifelongError
from .._common.rng import seeded_rng
from .._common.trained import TrainedUpdates, train_or_read
from ..base import EditReceipt, EditRequest
from ..context import AttachContext, TrainRecord
from ..mend.train import cache_entry, split_digest
from .config import KeConfig
from .hypernet import HyperNetwork
from .train import FORMAT, Training, predictions, train_hypernet, update

#: the cache's folder for trained hyper-networks (`Cache.load(layer, what)`'s `layer`)
CACHE_FOLDER = "ke"
NO_SPLIT = ("ke trains its hyper-network on a train split before the stream, and this run has "
            "none: set the scenario's `stream.train_file` (a stream file of edits; Python API: "
            "train_split=)")


def _describe(t: Training) -> str:
    """The end of KE's training, for the note: the last KL, the margin and the multiplier."""
    return (f"KL {t.kls[-1] if t.kls else float('nan'):.2e}, margin {t.margin:.1e}, "
            f"λ {t.multiplier:.3g}")


class KnowledgeEditor(TrainedUpdates):
    """KE (`ke/__init__.py`). State: the edited weights, the log and the hyper-network.
    Footprint: the edited weights' bytes plus the hyper-network's."""

    name = "ke"
    Config = KeConfig
    summary = ("KE (KnowledgeEditor): a hyper-network conditioned on the edit's text turns its "
               "fine-tuning gradient into an update of the last MLPs")
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
        info, self.training = train_or_read(
            ctx, CACHE_FOLDER, entry, self.editor,
            lambda checkpoint: train_hypernet(self.lm, self.modules, self.editor, self.config,
                                              records, self.train_seed, self.name, checkpoint),
            f"{self.name}: hyper-network", _describe)
        return info

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
