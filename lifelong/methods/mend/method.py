"""The `mend` method: attach (train or read the editor), then `ReplayedWeights`' edits in
place, log, exact retraction by replay, state and detach.

Invariants: the edited weights are a pure function of the base weights, the editor (itself a
pure function of the base model, the settings, the training seed and the train split) and
the log (the edit batches, in order): an edit draws nothing at random, so `retract` gives bit
for bit the weights of a stream that never made it. Only the weights named in `names` ever
change; `detach` copies the base weights back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ... import layers
from ...errors import LifelongError
from ...scoring import encode_pairs
from .._common.rng import seeded_rng
from .._common.trained import TrainedUpdates, train_or_read
from ..base import EditReceipt, EditRequest
from ..context import AttachContext, TrainRecord
from .config import MendConfig
from .editor import MendEditor
from .train import cache_entry, factors, split_digest, train_editor

NO_SPLIT = ("{name} trains its editor on a train split before the stream, and this run has none: "
            "set the scenario's `stream.train_file` (a stream file of edits; Python API: "
            "train_split=)")


class Mend(TrainedUpdates):
    """MEND (`mend/__init__.py`). State: the edited weights, the log and the editor.
    Footprint: the edited weights' bytes plus the editor's."""

    name = "mend"
    Config = MendConfig
    summary = ("MEND: a meta-trained editor maps each edit's fine-tuning gradient to a "
               "low-rank update of the last MLPs")
    no_retraction = "mend with retract = \"unsupported\" cannot retract"
    #: the cache's folder for trained editors (`Cache.load(layer, what)`'s `layer`)
    cache_folder = "mend"
    #: settings that act only after training (left out of the cache entry's name)
    test_time_settings: tuple[str, ...] = ()

    # ---- the editor ------------------------------------------------------------------------
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
        records = self.training_records(ctx.train_records())
        if not records:
            raise LifelongError(NO_SPLIT.format(name=self.name))
        entry = cache_entry(self.config, self.layer_ids, self.train_seed, split_digest(records),
                            self.test_time_settings)
        info, self.training = train_or_read(
            ctx, self.cache_folder, entry, self.editor,
            lambda checkpoint: train_editor(self.lm, self.modules, self.editor, self.config,
                                            records, self.train_seed, self.name, checkpoint),
            f"{self.name}: editor")
        return info

    def training_records(self, records: Sequence[TrainRecord]) -> Sequence[TrainRecord]:
        """The records the editor trains on (MEND: the train split as it is; a subclass may
        rewrite them, e.g. InstructEdit's instructions)."""
        return records

    def edit_prompt(self, request: EditRequest) -> str:
        """The prompt whose fine-tuning gradient the editor maps to the update (MEND: the
        request's own)."""
        return request.prompt

    # ---- editing -----------------------------------------------------------------------------
    def edit_batch(self, requests: Sequence[EditRequest]) -> list[EditReceipt]:
        """One update from the batch's joint edit gradient (its rows together), added to the
        weights; a receipt per request with its own target loss before and after."""
        before = [self.target_loss(r) for r in requests]
        batch = encode_pairs(self.lm, [self.edit_prompt(r) for r in requests],
                             [r.target for r in requests])
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
