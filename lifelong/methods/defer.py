"""`defer`: DEFER, the learned-adaptor baseline of the GRACE and WISE papers.

At one MLP output projection (``layers.{layer}.mlp.out``, the same place as GRACE) an adaptor
reads the projection's input ``x`` (the MLP hidden activation, RMS-normalised to ``x̂``):

* a **gate** ``g = sigmoid(w·x̂_key + b)``, read at the row's key token (the last prompt
  token, as in GRACE), decides whether the row is an edited input;
* a **value predictor** ``Δ(x̂) = B tanh(A x̂)``, a trained read-out ``B`` over `hidden` fixed
  random features ``A`` (seeded; training ``A`` too lets Adam kill the features of the edited
  token), changes the layer output at the key token and every later token:
  ``y' = y + Δ(x̂_t)`` where the gate is open (``g > 0.5``); a closed gate leaves the row
  bit-identical.

While training the gate is soft (``y' = y + g Δ``) so the target loss reaches it. Each edit
runs `steps` Adam steps on: the target loss of the edit (and, for a re-edit, of the fact's
earlier prompts, so the newest value answers them), plus `gate_weight` times a binary
cross-entropy that opens the gate on the keys of every active edit and closes it on the keys
of unrelated prompts (``AttachContext.unrelated_prompts``, the stream's locality prompts that
are *not* probed, keyed once at attach; capped at `negatives`). Keys are cached, so the gate
terms cost no forward pass. The value predictor only ever sees the current edit: as in the
papers, sequential edits overwrite each other through the shared weights (forgetting).

The gate's threshold is calibrated on unrelated prompts it was not trained on (`claim_rate`,
not in the papers: their gate opens at 0.5): the unrelated pool is split in two, alternate
prompts, one half the gate's negatives, the other a calibration set; after every edit the
gate opens only above the larger of 0 (probability 0.5) and the logit that keeps at most
`claim_rate` of the calibration prompts open (`_common/guard.py` does the same for the key
routers' radii). A linear gate trained against the pool need not close on unrelated prompts it
never saw: on a CounterFact organism it opened on 0.7 of the neighbourhood prompts. With
`claim_rate` 1 the whole pool is negatives and the threshold is 0, as before. `claim_pool`
takes the train split's locality prompts into the pool (`AttachContext.calibration_prompts`),
as GRACE's and `wise-faiss`'s.

Modes are which `lifelong.nethook` context is open on the projection: serving (opened at
attach), capturing keys (`Trace`, serving suspended), training (a soft-gated
`rewrite_output`, serving suspended).

Retraction (`retract` setting): ``"retrain"`` re-initialises the adaptor from the seed and
re-trains it on the remaining edit log in order: exact (the state equals the one had the edit
never been made; training is deterministic), but it costs as much as replaying every
remaining edit. ``"unsupported"`` raises NotSupported: the edit's effect is entangled with
every later edit in the shared weights, and nothing cheaper undoes it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .. import layers
from ..config import setting
from ..errors import NotSupported
from ..model import LM
from ..nethook import Trace, rewrite_output
from ..scoring import batch_target_loss, encode_pairs, forward_logits
from ._common.facts import FACT_IDENTITY_HELP, as_seen
from ._common.guard import CLAIM_POOL_HELP
from ._common.hooks import Hooks, Served
from ._common.keys import batch_info, key_positions, position_mask
from ._common.loop import Step, frozen, optimise, receipt
from .base import (
    EditReceipt,
    EditRequest,
    MemoryBase,
    Retractable,
    UnknownEdit,
    tensor_bytes,
)
from .context import CALIBRATION_POOLS, AttachContext


@dataclass(frozen=True)
class DeferConfig:
    layer: int | None = setting(None, "layer whose mlp.out output the adaptor changes "
                                      "(negative counts from the end); default: late-middle")
    hidden: int = setting(64, "random features of the value predictor (its rank)", min=1, max=4096)
    steps: int = setting(20, "Adam steps per edit", min=1, max=10_000)
    lr: float = setting(1e-2, "Adam learning rate", min=0.0)
    stop_loss: float = setting(0.02, "stop early once the edit's target loss is below this "
                                     "and the gate is right on every positive and negative key",
                               min=0.0)
    gate_weight: float = setting(1.0, "weight of the gate's cross-entropy against the target loss",
                                 min=0.0)
    negatives: int = setting(1024, "unrelated prompts keyed at attach as gate negatives "
                                   "(the first N of AttachContext.unrelated_prompts)", min=0)
    replace: str = setting("from_key", "positions the adaptor changes (as in grace)",
                           choices=("from_key", "key", "prompt", "all"))
    retract: str = setting("retrain", "'retrain': exact, re-trains on the remaining edit log "
                                      "(cost of every remaining edit); 'unsupported': refuse",
                           choices=("retrain", "unsupported"))
    use_fact_identity: bool = setting(False, FACT_IDENTITY_HELP, before=True)
    claim_rate: float = setting(0.01, "the largest share of held-out unrelated prompts (half "
                                      "the pool, never the gate's negatives) whose gate may "
                                      "open: the gate opens above the logit that keeps at most "
                                      "this share open, and never below 0. 0.01: chosen on "
                                      "dev organisms and the built-in dev stream "
                                      "(sweeps/dev-claim-rate.toml); 1: off, the whole pool is "
                                      "negatives. Not in the papers", min=0.0, max=1.0,
                                before=1.0)
    claim_pool: str = setting("stream+train", CLAIM_POOL_HELP + " (here the pool is the "
                              "negatives and the calibration prompts: 2 x negatives). "
                              "'stream+train': chosen on dev organisms "
                              "(sweeps/dev-claim-pool.toml)",
                              choices=CALIBRATION_POOLS, before="stream")


class Defer(Served, MemoryBase, Retractable):
    """DEFER. Invariants: the adaptor and its threshold are a deterministic function of (seed,
    negatives, calibration prompts, active edit log); detach leaves the model as it was (only hooks are added).
    Every tensor it holds is on the model's device (a loaded state is moved there)."""

    name = "defer"
    Config = DeferConfig
    summary = "DEFER: learned gate + value predictor at one layer (retract by retraining)"
    memory_kind = "hooks"

    def attach(self, lm: LM, ctx: AttachContext) -> None:
        cfg = self.config
        self.lm, self.device = lm, lm.device
        self.layer_name, self.module = layers.edit_target(lm.model, cfg.layer)
        self.key_dim, self.value_dim = layers.in_out_features(self.module)
        self.hooks = Hooks(lambda stack: stack.enter_context(
            rewrite_output(self.module, self._serve)))
        self.hooks.open()
        self.log: list[dict[str, Any]] = []
        pool = ctx.calibration_prompts(2 * cfg.negatives, cfg.claim_pool)
        held_out = cfg.claim_rate < 1
        self.negatives = self._keys((pool[0::2] if held_out else pool)[:cfg.negatives])
        self.calibration = self._keys(pool[1::2][:cfg.negatives] if held_out else [])
        self.threshold = 0.0
        self._init_params()

    def _init_params(self) -> None:
        g = torch.Generator().manual_seed(self.seed)  # on the CPU: the same draw on any device
        h, dk, dv, dev = self.config.hidden, self.key_dim, self.value_dim, self.device
        self.features = (torch.randn(h, dk, generator=g) / dk ** 0.5).to(dev)  # fixed
        self.params = {"w": torch.zeros(dk, device=dev), "b": torch.tensor(-3.0, device=dev),
                       "B": torch.zeros(dv, h, device=dev)}

    # ---- the adaptor --------------------------------------------------------------------
    @staticmethod
    def _norm(x: torch.Tensor) -> torch.Tensor:
        return x / x.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()

    def gate(self, keys: torch.Tensor) -> torch.Tensor:
        """Gate logits of raw keys (n, key_dim)."""
        return self._norm(keys) @ self.params["w"] + self.params["b"]

    def _delta(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self._norm(x) @ self.features.T) @ self.params["B"].T

    def _gate_and_mask(self, x: torch.Tensor, output: torch.Tensor):
        """Each row's gate logit (read at its key token) and the positions it may change."""
        info = self.lm.forward_info
        batch, width = output.shape[0], output.shape[1]
        kpos = key_positions(info, batch, width, output.device)
        keys = x[torch.arange(batch, device=x.device), kpos].float()
        return self.gate(keys), position_mask(info, self.config.replace, kpos, width)

    def _serve(self, x: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """Rows whose gate is open get the predicted change; closed rows are untouched."""
        logit, mask = self._gate_and_mask(x, output)
        open_ = (logit > self.threshold).detach()
        if not bool(open_.any()):
            return output
        new = output + self._delta(x.float()).to(output.dtype)
        return torch.where((mask & open_.unsqueeze(1)).unsqueeze(-1), new, output)

    def _soft(self, x: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """While training: the change weighted by the soft gate, so the target loss reaches it."""
        logit, mask = self._gate_and_mask(x, output)
        weight = torch.sigmoid(logit).unsqueeze(1) * mask
        return output + (weight.unsqueeze(-1) * self._delta(x.float())).to(output.dtype)

    @torch.no_grad()
    def _keys(self, prompts: list[str]) -> torch.Tensor:
        """Keys (key token) of prompts, computed with the adaptor out of the way; the forward
        stops at the projection."""
        if not prompts:
            return torch.zeros((0, self.key_dim), device=self.device)
        out = []
        for i in range(0, len(prompts), 128):
            chunk = prompts[i:i + 128]
            batch = encode_pairs(self.lm, chunk, ["x"] * len(chunk))  # any target: keys precede it
            with self.hooks.suspended(), Trace(self.module, capture="input", stop=True) as t:
                forward_logits(self.lm, *batch[:3])
            kpos = key_positions(batch_info(batch), len(chunk), batch[0].shape[1], t.input.device)
            out.append(t.input[torch.arange(len(chunk), device=t.input.device), kpos]
                       .float().detach().clone())
        return torch.cat(out)

    # ---- editing ------------------------------------------------------------------------
    def edit(self, requests: Sequence[EditRequest]) -> EditReceipt:
        results = []
        for r in (as_seen(r, self.config.use_fact_identity) for r in requests):
            prompts = [r.prompt] + [p for p in self._fact_prompts(r.fact) if p != r.prompt]
            item = {"edit_id": r.edit_id, "fact": r.fact, "target": r.target, "prompts": prompts,
                    "keys": self._keys(prompts)}
            self.log.append(item)
            results.append(self._train(item))
        self._calibrate()
        return receipt(results, self.config.stop_loss, {"layer": self.layer_name,
                                                         "gate_threshold": self.threshold})

    @torch.no_grad()
    def _calibrate(self) -> None:
        """The serving threshold: the smallest logit >= 0 that at most floor(claim_rate x n)
        calibration prompts exceed (0 without calibration prompts)."""
        n = self.calibration.shape[0]
        allowed = math.floor(self.config.claim_rate * n)
        if not n or allowed >= n:
            self.threshold = 0.0
            return
        logits = self.gate(self.calibration).sort(descending=True).values
        self.threshold = max(0.0, float(logits[allowed]))  # open only strictly above it

    def _fact_prompts(self, fact: str) -> list[str]:
        for item in reversed(self.log):
            if item["fact"] == fact:
                return list(item["prompts"])
        return []

    def _positives(self) -> torch.Tensor:
        """Keys of the active edits (only the newest edit of each fact)."""
        newest = {it["fact"]: it for it in self.log}
        keys = [it["keys"] for it in newest.values()]
        return torch.cat(keys) if keys else torch.zeros((0, self.key_dim), device=self.device)

    def _train(self, item: dict[str, Any]):
        cfg, lm = self.config, self.lm
        prompts, targets = item["prompts"], [item["target"]] * len(item["prompts"])
        pos, neg = self._positives(), self.negatives
        gate_x = torch.cat([pos, neg])
        gate_y = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))]).to(self.device)
        # balance: positives and negatives weigh the same in total
        gate_w = torch.cat([torch.full((len(pos),), 0.5 / max(len(pos), 1)),
                            torch.full((len(neg),), 0.5 / max(len(neg), 1))]).to(self.device)
        leaves = list(self.params.values())
        opt = torch.optim.Adam(leaves, lr=cfg.lr)
        batch = encode_pairs(lm, prompts, targets)

        def step() -> Step:
            tl = batch_target_loss(lm, batch)
            logits = self.gate(gate_x)
            gl = (F.binary_cross_entropy_with_logits(logits, gate_y, reduction="none") * gate_w).sum()
            last = float(tl.detach())
            gate_right = bool(((logits > 0) == (gate_y > 0)).all())
            return Step(tl + cfg.gate_weight * gl, last, last < cfg.stop_loss and gate_right)

        with frozen(lm.model), _trainable(leaves), self.hooks.suspended(), \
                rewrite_output(self.module, self._soft):
            return optimise(opt, step, cfg.steps, fresh_last=True)

    def retract(self, edit_id: str) -> None:
        if self.config.retract == "unsupported":
            raise NotSupported("defer cannot retract one edit cheaply: its change is entangled "
                               "with every later edit in the adaptor's shared weights "
                               "(set retract = 'retrain' to re-train on the remaining log)")
        kept = [it for it in self.log if it["edit_id"] != edit_id]
        if len(kept) == len(self.log):
            raise UnknownEdit(f"defer: no active edit {edit_id!r} to retract")
        self._init_params()
        self.log = []
        for item in kept:
            self.log.append(item)
            self._train(item)
        self._calibrate()

    # ---- state --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"params": {k: v.detach().clone() for k, v in self.params.items()},
                "negatives": self.negatives.clone(), "calibration": self.calibration.clone(),
                "threshold": self.threshold,
                "log": [dict(it, keys=it["keys"].clone(), prompts=list(it["prompts"])) for it in self.log]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        dev = self.device
        self.params = {k: v.to(dev).clone() for k, v in state["params"].items()}
        self.negatives = state["negatives"].to(dev).clone()
        self.calibration = state.get("calibration", torch.zeros((0, self.key_dim))).to(dev).clone()
        self.threshold = float(state.get("threshold", 0.0))
        self.log = [dict(it, keys=it["keys"].to(dev).clone(), prompts=list(it["prompts"]))
                    for it in state["log"]]

    def footprint(self) -> int:
        """Adaptor weights + cached negative keys + the log's keys."""
        return (tensor_bytes(*self.params.values(), self.features, self.negatives,
                             self.calibration)
                + sum(tensor_bytes(it["keys"]) for it in self.log))


@contextlib.contextmanager
def _trainable(tensors: list[torch.Tensor]):
    """The adaptor's own tensors require gradients inside the block only."""
    for t in tensors:
        t.requires_grad_(True)
    try:
        yield
    finally:
        for t in tensors:
            t.requires_grad_(False)
