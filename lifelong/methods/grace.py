"""`grace`: GRACE (Hartvigsen et al. 2023, "Aging with GRACE"), a codebook at one layer.

Where: one MLP output projection, ``layers.{layer}.mlp.out`` (default: the late-middle layer
of `layers.default_edit_layer`). Its *output* is replaced; the key is, by default, its *input*
(``key="mlp.out"``: the MLP's hidden activation, what the paper and the reference framework
use, 4x the model width), or the input of the whole MLP block (``key="mlp"``: the normalised
residual stream, the model width). A row's key token is its last *prompt* token
(``LM.forward_info.prompt_end - 1``), both while scoring prompt+target teacher-forced and
while generating, so a row's key never depends on its target or on the tokens generated;
without a ForwardInfo (a bare ``model(...)`` call) it is the last token. The key is the
activation there (``key_token="last"``, the paper's choice) or its mean over the prompt span
(``"mean"``: carries the subject, which a small model's last-token activation at a middle
layer barely does, at the price of even less generalization to rephrasings).

What an edit stores: its key(s), a value (one vector of the layer's output width, trained
with Adam for at most `steps` steps so that the model produces the target, starting from the
layer's own output), the target's tokens and an initial deferral radius `eps`. A re-edit of a
fact (same ``EditRequest.fact``) displaces every entry of that fact and also trains an entry
for each displaced prompt, so the newest value answers the old prompts too.

Lookup (per row, in the forward hook): FAISS (`lifelong.index.KeyIndex`) returns the
`candidates` nearest keys; distances are recomputed exactly in torch; the nearest key whose
radius covers the query wins, and its value replaces the layer output at the positions of
`replace` (the key token onward by default, so multi-token targets see it; or only the key
token; or the prompt span; or every real token). Other rows are left bit-identical.

Conflict rules, applied when an entry is placed (invariants, checked by tests/test_grace.py):
  * radii of keys with different targets (compared by token ids) never overlap:
    ``|k_i - k_j| >= eps_i + eps_j``; a new key closer than that to a different-target key
    splits: both radii become at most half their distance;
  * a new key within reach of a same-target key (``d <= eps_j + eps``) is absorbed by it:
    ``conflict="coverage"`` expands ``eps_j`` to cover the new key, ``"moving_average"`` moves
    the key to the running mean of its members and widens its radius to cover both; when the
    rule above leaves no room, the new key becomes its own entry instead;
  * a key identical to a stored one displaces it (the newest edit of an input wins);
  * every key of an active edit stays covered by an entry with its target: an entry keeps its
    members (the keys it absorbed), and a member a split or a displacement leaves uncovered
    is placed again, as its own entry if need be.
Retraction is exact: the codebook is a pure function of the ordered log of active edits
(each with its trained keys and values), so retracting an edit removes it from the log and
replays the placement rules over what is left: no retraining, and the result is exactly the
codebook that would exist had the edit never been made (bit-identical outputs when it was
the newest edit). Cost: O(active edits) range searches.

Defaults scaled from the paper (eps 1.0 and ~100 value steps on 1000s-wide T5/LLaMA
activations): `eps` is measured in units of the key's own norm (``eps_relative``), so one
setting means the same on a 128-wide and a 4096-wide model, and the value's learning rate in
units of the layer output's RMS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from .. import layers
from ..config import setting
from ..errors import LifelongError
from ..index import KeyIndex
from ..model import LM
from ..scoring import batch_target_loss, encode_pairs
from .base import AttachContext, EditReceipt, EditRequest, MemoryBase, tensor_bytes


@dataclass(frozen=True)
class GraceConfig:
    layer: int | None = setting(None, "layer whose mlp.out output is replaced (negative counts "
                                      "from the end); default: the late-middle layer")
    key: str = setting("mlp.out", "key activation: 'mlp.out' = input of the replaced projection "
                                  "(MLP hidden activation, as in the paper), 'mlp' = input of the "
                                  "MLP block (normalised residual stream)", choices=("mlp.out", "mlp"))
    key_token: str = setting("last", "where a row's key is read: its last prompt token ('last', "
                                      "the paper's choice) or the mean over its prompt tokens "
                                      "('mean')", choices=("last", "mean"))
    eps: float = setting(0.02, "initial deferral radius of a new key (see eps_relative)", min=0.0)
    eps_relative: bool = setting(True, "eps is a share of the new key's norm (true) or an "
                                       "absolute Euclidean distance (false)")
    conflict: str = setting("coverage", "same-target key within reach: expand its radius "
                                        "('coverage') or move it to the members' mean "
                                        "('moving_average')", choices=("coverage", "moving_average"))
    replace: str = setting("from_key", "positions whose output a retrieved value replaces: the "
                                       "key token and every later one ('from_key'), the key token "
                                       "only ('key'), the prompt span ('prompt'), every real "
                                       "token ('all')", choices=("from_key", "key", "prompt", "all"))
    steps: int = setting(50, "maximum Adam steps to train a value", min=1, max=10_000)
    lr: float = setting(2.0, "Adam learning rate of the value (relative: multiplied by the "
                             "layer output's RMS)", min=0.0)
    stop_loss: float = setting(0.02, "stop training a value once the target loss is below this "
                                     "(or once it stops improving: 0.1% over 8 steps)", min=0.0)
    candidates: int = setting(4, "nearest keys FAISS returns per query; the nearest covering one wins",
                              min=1, max=256)
    approximate_above: int = setting(100_000, "codebook size above which the key index is "
                                              "approximate (HNSW); 0: always exact", min=0)


def key_positions(lm: LM, batch: int, width: int, device: torch.device) -> torch.Tensor:
    """Index of each row's key token: its last prompt token (the last token without a
    ForwardInfo, or when the ForwardInfo describes another batch)."""
    info = lm.forward_info
    if info is None or info.prompt_end.shape[0] != batch:
        return torch.full((batch,), width - 1, dtype=torch.long, device=device)
    return (info.prompt_end.to(device).long() - 1).clamp(0, width - 1)


def position_mask(lm: LM, mode: str, key_pos: torch.Tensor, width: int) -> torch.Tensor:
    """(batch, width) bool: positions a row's value replaces under `mode` (see GraceConfig)."""
    pos = torch.arange(width, device=key_pos.device).unsqueeze(0)
    kp = key_pos.unsqueeze(1)
    real = torch.ones((key_pos.shape[0], width), dtype=torch.bool, device=key_pos.device)
    info = lm.forward_info
    if info is not None and info.attention_mask.shape == real.shape:
        real = info.attention_mask.to(key_pos.device).bool()
    if mode == "key":
        return pos == kp
    if mode == "from_key":
        return pos >= kp
    if mode == "prompt":
        return (pos <= kp) & real
    return real


class Grace(MemoryBase):
    """GRACE. Invariants: ``self.log`` (active edits, in order) determines the codebook
    (`_replay`); radii of different-target keys never overlap; detach leaves the model as it
    was (only a hook is added)."""

    name = "grace"
    Config = GraceConfig
    summary = "GRACE: codebook of keys with deferral radii at one layer (exact retraction)"
    #: lifelong export: the memory is served by hooks (no merged model exists)
    memory_kind = "hooks"

    # ---- lifecycle ----------------------------------------------------------------------
    def attach(self, lm: LM, ctx: AttachContext) -> None:
        cfg = self.config
        self.lm = lm
        self.layer_name, self.module = layers.edit_target(lm.model, cfg.layer)
        in_f, out_f = layers.in_out_features(self.module)
        self.key_dim = in_f if cfg.key == "mlp.out" else layers.hidden_size(lm.model)
        self.value_dim = out_f
        self.mode = "serve"          # serve | capture | train | off
        self._mlp_in: torch.Tensor | None = None
        self._train_values: torch.Tensor | None = None
        self._captured: tuple[torch.Tensor, torch.Tensor] | None = None
        self.log: list[dict[str, Any]] = []
        self._reset_codebook()
        self._handles = [self.module.register_forward_hook(self._hook)]
        if cfg.key == "mlp":
            mlp = layers.resolve(lm.model, f"layers.{layer}.mlp")
            self._handles.append(mlp.register_forward_pre_hook(self._mlp_pre_hook, with_kwargs=True))

    def detach(self) -> None:
        while self._handles:
            self._handles.pop().remove()

    def _reset_codebook(self) -> None:
        """Empty codebook. Rows ``0..n-1`` of the buffers are entries (capacity doubles as it
        fills); a displaced entry's row stays, dead (``alive`` False, out of the index), until
        a replay compacts."""
        self.n = 0
        self.keys = torch.zeros((16, self.key_dim))
        self.values = torch.zeros((16, self.value_dim))
        self.radii = torch.zeros(16, dtype=torch.float64)
        self.alive = torch.zeros(16, dtype=torch.bool)
        self.targets: list[tuple[int, ...]] = []
        self.facts: list[str] = []
        self.owners: list[str] = []
        self.members: list[list[tuple[int, int]]] = []  # (log position, key index) per entry
        self.absorbed: dict[str, set[int]] = {}  # fact -> rows whose members include its keys
        self.fact_rows: dict[str, list[int]] = {}
        self.fact_prompts: dict[str, list[str]] = {}
        self.index = KeyIndex(self.key_dim, "l2", approximate_above=self.config.approximate_above)

    # ---- the hook -----------------------------------------------------------------------
    def _mlp_pre_hook(self, module, args, kwargs) -> None:
        self._mlp_in = args[0] if args else kwargs.get("hidden_states")

    def _hook(self, module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        source = args[0] if self.config.key == "mlp.out" else self._mlp_in
        batch, width = output.shape[0], output.shape[1]
        kpos = key_positions(self.lm, batch, width, output.device)
        rows = torch.arange(batch, device=output.device)
        if self.mode == "off":  # benchmarks: the bare model, hook in place
            return output
        if self.mode == "capture":
            self._captured = (self._keys(source, kpos).detach().float().clone(),
                              output[rows, kpos].detach().float().clone())
            return output
        if self.mode == "train":
            values, hit = self._train_values, torch.ones(batch, dtype=torch.bool, device=output.device)
        else:
            if len(self.index) == 0:
                return output
            entry, hit = self.lookup(self._keys(source, kpos).detach().float())
            if not bool(hit.any()):
                return output
            values = self.values[entry.clamp(min=0)].to(output.device)
        mask = position_mask(self.lm, self.config.replace, kpos, width) & hit.unsqueeze(1)
        return torch.where(mask.unsqueeze(-1), values.to(output.dtype).unsqueeze(1), output)

    def _keys(self, source: torch.Tensor, kpos: torch.Tensor) -> torch.Tensor:
        """Each row's key: the activation at its key token, or the mean over its prompt."""
        rows = torch.arange(source.shape[0], device=source.device)
        if self.config.key_token == "last":
            return source[rows, kpos]
        span = position_mask(self.lm, "prompt", kpos, source.shape[1]).to(source.dtype)
        return (source * span.unsqueeze(-1)).sum(1) / span.sum(1, keepdim=True).clamp(min=1)

    @torch.no_grad()
    def lookup(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(entry row, hit) per query: the nearest of the FAISS candidates whose radius covers
        the query (exact torch distances; ties go to the older entry)."""
        q = queries.detach().float().cpu()
        _, cand = self.index.search(q.numpy(), min(self.config.candidates, len(self.index)))
        cand = torch.from_numpy(cand)
        valid = cand >= 0
        c = cand.clamp(min=0)
        dist = (self.keys[c] - q.unsqueeze(1)).norm(dim=-1).double()
        covered = valid & (dist <= self.radii[c])
        dist = torch.where(covered, dist, torch.full_like(dist, float("inf")))
        # stable tie-break on the entry row: sort candidates by row first
        order = torch.argsort(c + (~covered).long() * (1 << 40), dim=1, stable=True)
        dist, c = dist.gather(1, order), c.gather(1, order)
        best = dist.argmin(dim=1)
        hit = torch.isfinite(dist.gather(1, best.unsqueeze(1)).squeeze(1))
        entry = torch.where(hit, c.gather(1, best.unsqueeze(1)).squeeze(1), torch.full_like(best, -1))
        return entry, hit

    # ---- editing ------------------------------------------------------------------------
    def edit(self, requests: Sequence[EditRequest]) -> EditReceipt:
        first = last = None
        steps = 0
        details = []
        for r in requests:
            prompts = [r.prompt] + [p for p in self._fact_prompts(r.fact) if p != r.prompt]
            keys, values, targets, lb, la, n = self._train(prompts, [r.target] * len(prompts))
            item = {"edit_id": r.edit_id, "fact": r.fact, "target": r.target,
                    "target_ids": list(targets[0]), "prompts": prompts, "keys": keys,
                    "values": values}
            self.log.append(item)
            details.append(self._insert(len(self.log) - 1))
            first = lb if first is None else first
            last, steps = la, steps + n
        return EditReceipt(applied=True, loss_before=first, loss_after=last, steps=steps,
                           detail={"layer": self.layer_name, "placed": details,
                                   "entries": len(self.index)},
                           converged=last is not None and last < self.config.stop_loss)

    def insert_item(self, item: dict[str, Any]) -> list[str]:
        """Append a ready item to the log and place it, without training: ``edit_id``,
        ``fact``, ``target``, ``target_ids``, ``prompts`` and ``keys``/``values`` tensors of
        shape (len(prompts), dim). For benchmarks and tests of the placement rules."""
        self.log.append(dict(item))
        return self._insert(len(self.log) - 1)

    def _fact_prompts(self, fact: str) -> list[str]:
        """Prompts of the fact's newest active edit (displaced by a re-edit, so re-trained)."""
        return list(self.fact_prompts.get(fact, ()))

    @torch.no_grad()
    def keys_of(self, prompts: list[str], targets: list[str]):
        """(keys, layer outputs at the key token, target token ids) of prompt/target pairs,
        computed with the codebook out of the way; also the mean target loss."""
        batch = encode_pairs(self.lm, prompts, targets)
        target_ids = batch[4]
        self.mode = "capture"
        try:
            loss = float(batch_target_loss(self.lm, batch))
            keys, outputs = self._captured
        finally:
            self.mode, self._captured = "serve", None
        return keys, outputs, [tuple(t) for t in target_ids], loss

    def _train(self, prompts: list[str], targets: list[str]):
        """Keys at the last prompt token and values trained to produce the targets."""
        lm, cfg = self.lm, self.config
        keys, init, target_ids, loss0 = self.keys_of(prompts, targets)
        flags = [p.requires_grad for p in lm.model.parameters()]
        try:
            for p in lm.model.parameters():
                p.requires_grad_(False)
            self.mode = "train"
            value = torch.nn.Parameter(init.clone())
            self._train_values = value
            scale = float(init.pow(2).mean().sqrt().clamp(min=1e-3))
            opt = torch.optim.Adam([value], lr=cfg.lr * scale)
            steps, history = 0, []
            batch = encode_pairs(lm, prompts, targets)
            while True:
                opt.zero_grad(set_to_none=True)
                out = batch_target_loss(lm, batch)
                loss = float(out.detach())
                history.append(loss)
                plateau = len(history) > 8 and history[-9] - loss < 1e-3 * max(history[-9], 1e-6)
                if loss < cfg.stop_loss or steps >= cfg.steps or plateau:
                    break
                out.backward()
                opt.step()
                steps += 1
        finally:
            self.mode, self._train_values, self._captured = "serve", None, None
            for p, f in zip(lm.model.parameters(), flags):
                p.requires_grad_(f)
        return keys, value.detach().clone(), target_ids, loss0, loss, steps

    # ---- placement (the conflict rules) -------------------------------------------------
    def _eps0(self, key: torch.Tensor) -> float:
        return self.config.eps * (float(key.double().norm()) if self.config.eps_relative else 1.0)

    def _neighbours(self, key: torch.Tensor, reach: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Alive entries within `reach` of `key` (exact float64 distances), by row."""
        if len(self.index) == 0:
            return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.float64)
        r2 = (reach * (1 + 1e-4) + 1e-6) ** 2
        _, ids = self.index.range(key.numpy()[None], r2)[0]
        rows = torch.from_numpy(np.sort(ids)).long()
        dist = (self.keys[rows].double() - key.double()).norm(dim=-1)
        keep = dist <= reach
        return rows[keep], dist[keep]

    def _room(self, center: torch.Tensor, target: tuple[int, ...], want: float,
              skip: int = -1) -> float:
        """Largest radius <= want a key at `center` may take without overlapping a
        different-target key."""
        rmax = float(self.radii[self.alive].max()) if bool(self.alive.any()) else 0.0
        rows, dist = self._neighbours(center, want + rmax)
        room = want
        for r, d in zip(rows.tolist(), dist.tolist()):
            if r != skip and self.targets[r] != target:
                room = min(room, (d - float(self.radii[r])) * (1 - 1e-9))
        return room

    def _insert(self, pos: int) -> list[str]:
        """Place the keys of log item `pos` by the conflict rules (module docstring).

        Invariants kept: different-target radii never overlap; every key of an active edit
        lies within the radius of an alive entry with its target (a key left uncovered by a
        split or a displacement is placed again, as its own entry if need be)."""
        item = self.log[pos]
        orphans: list[tuple[int, int]] = []
        for row in self.fact_rows.pop(item["fact"], []):
            if self.alive[row]:  # re-edit: the fact's older entries are displaced
                orphans += [m for m in self._kill(row) if self.log[m[0]]["fact"] != item["fact"]]
        for row in self.absorbed.pop(item["fact"], set()):  # its keys absorbed elsewhere leave
            self.members[row] = [m for m in self.members[row] if self.log[m[0]]["fact"] != item["fact"]]
        self.fact_prompts[item["fact"]] = list(item["prompts"])
        placed = [self._place(pos, k, orphans) for k in range(len(item["keys"]))]
        tries: dict[tuple[int, int], int] = {}
        while orphans:
            m = orphans.pop(0)
            tries[m] = tries.get(m, 0) + 1
            self._place(m[0], m[1], orphans, merge=tries[m] <= 2)
        return placed

    def _member_key(self, m: tuple[int, int]) -> torch.Tensor:
        return self.log[m[0]]["keys"][m[1]]

    def _shrink(self, row: int, radius: float, orphans: list[tuple[int, int]]) -> None:
        """Shrink an entry's radius; members it no longer covers become orphans."""
        self.radii[row] = min(float(self.radii[row]), radius)
        keep = []
        for m in self.members[row]:
            d = float((self._member_key(m).double() - self.keys[row].double()).norm())
            (keep if d <= float(self.radii[row]) else orphans).append(m)
        self.members[row] = keep
        if not keep:  # a moved key that covers none of its members any more
            self._kill(row)

    def _place(self, pos: int, k: int, orphans: list[tuple[int, int]], merge: bool = True) -> str:
        item = self.log[pos]
        key, value, target = item["keys"][k], item["values"][k], tuple(item["target_ids"])
        eps0 = self._eps0(key)
        rmax = float(self.radii[self.alive].max()) if bool(self.alive.any()) else 0.0
        rows, dist = self._neighbours(key, eps0 + rmax)
        for r, d in zip(rows.tolist(), dist.tolist()):
            if d == 0.0:  # identical input: the newest edit wins
                same_input = [m for m in self.members[r] if torch.equal(self._member_key(m), key)]
                if any(m[0] > pos for m in same_input):
                    return "superseded"
                orphans += [m for m in self._kill(r) if m not in same_input]
        near = [(d, r) for r, d in zip(rows.tolist(), dist.tolist())
                if self.alive[r] and d <= float(self.radii[r]) + eps0]
        same = sorted((d, r) for d, r in near if self.targets[r] == target)
        if same and merge:
            d, r = same[0]
            if self.config.conflict == "coverage":
                want = max(float(self.radii[r]), d + 0.01 * eps0)
                room = self._room(self.keys[r], target, want, skip=r)
                if room >= d:
                    self.radii[r] = room
                    self.members[r].append((pos, k))
                    self.absorbed.setdefault(item["fact"], set()).add(r)
                    return f"expanded:{r}"
            else:
                n = len(self.members[r])
                center = (self.keys[r].double() * n + key.double()) / (n + 1)
                shift = float((center - self.keys[r].double()).norm())
                need = float((center - key.double()).norm())
                want = max(float(self.radii[r]) + shift, need + 0.01 * eps0)
                room = self._room(center.float(), target, want, skip=r)
                if room >= max(need, float(self.radii[r]) + shift) - 1e-12:
                    self.keys[r] = center.float()
                    self.radii[r] = room
                    self.members[r].append((pos, k))
                    self.absorbed.setdefault(item["fact"], set()).add(r)
                    self.index.remove([r])
                    self.index.add(self.keys[r].numpy()[None], [r])
                    return f"moved:{r}"
        radius = eps0
        for d, r in near:
            if self.targets[r] != target:  # split: neither ball reaches past half the distance
                self._shrink(r, d / 2, orphans)
                radius = min(radius, d / 2)
        row = self._append(key, value, radius, target, item, (pos, k))
        return f"new:{row}" + (":split" if radius < eps0 else "")

    def _append(self, key: torch.Tensor, value: torch.Tensor, radius: float,
                target: tuple[int, ...], item: dict[str, Any], member: tuple[int, int]) -> int:
        row = self.n
        if row == self.keys.shape[0]:  # grow the buffers (amortised O(1) appends)
            grow = max(16, row)
            self.keys = torch.cat([self.keys, torch.zeros((grow, self.key_dim))])
            self.values = torch.cat([self.values, torch.zeros((grow, self.value_dim))])
            self.radii = torch.cat([self.radii, torch.zeros(grow, dtype=torch.float64)])
            self.alive = torch.cat([self.alive, torch.zeros(grow, dtype=torch.bool)])
        self.keys[row], self.values[row], self.radii[row], self.alive[row] = key, value, radius, True
        self.n += 1
        self.targets.append(target)
        self.facts.append(item["fact"])
        self.owners.append(item["edit_id"])
        self.members.append([member])
        self.fact_rows.setdefault(item["fact"], []).append(row)
        self.index.add(key.numpy()[None], [row])
        return row

    def _kill(self, row: int) -> list[tuple[int, int]]:
        """Remove an entry from the index; returns its members (the callers re-place them)."""
        self.alive[row] = False
        self.index.remove([row])
        members, self.members[row] = self.members[row], []
        return members

    # ---- retraction ---------------------------------------------------------------------
    def retract(self, edit_id: str) -> None:
        """Remove the edit from the log and replay the rest (exact; see the module docstring)."""
        kept = [it for it in self.log if it["edit_id"] != edit_id]
        if len(kept) == len(self.log):
            raise LifelongError(f"grace: no active edit {edit_id!r} to retract")
        self.log = kept
        self._replay()

    def _replay(self) -> None:
        self._reset_codebook()
        for pos in range(len(self.log)):
            self._insert(pos)

    # ---- state --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        n = self.n
        return {"log": [dict(it, keys=it["keys"].clone(), values=it["values"].clone()) for it in self.log],
                "keys": self.keys[:n].clone(), "values": self.values[:n].clone(),
                "radii": self.radii[:n].clone(), "alive": self.alive[:n].clone(),
                "targets": [list(t) for t in self.targets], "facts": list(self.facts),
                "owners": list(self.owners),
                "members": [[list(m) for m in ms] for ms in self.members],
                "fact_prompts": {k: list(v) for k, v in self.fact_prompts.items()},
                "index": torch.from_numpy(self.index.to_bytes())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.log = [dict(it, keys=it["keys"].clone(), values=it["values"].clone()) for it in state["log"]]
        self.n = n = int(state["keys"].shape[0])
        cap = max(16, n)
        self.keys = torch.zeros((cap, self.key_dim))
        self.values = torch.zeros((cap, self.value_dim))
        self.radii = torch.zeros(cap, dtype=torch.float64)
        self.alive = torch.zeros(cap, dtype=torch.bool)
        self.keys[:n], self.values[:n] = state["keys"], state["values"]
        self.radii[:n], self.alive[:n] = state["radii"], state["alive"]
        self.targets = [tuple(t) for t in state["targets"]]
        self.facts, self.owners = list(state["facts"]), list(state["owners"])
        self.members = [[tuple(m) for m in ms] for ms in state["members"]]
        self.absorbed = {}
        for row, ms in enumerate(self.members):
            for m in ms:
                fact = self.log[m[0]]["fact"]
                if fact != self.facts[row]:
                    self.absorbed.setdefault(fact, set()).add(row)
        self.fact_rows = {}
        for row, fact in enumerate(self.facts):
            if self.alive[row]:
                self.fact_rows.setdefault(fact, []).append(row)
        self.fact_prompts = {k: list(v) for k, v in state["fact_prompts"].items()}
        self.index = KeyIndex.from_bytes(state["index"].numpy())

    def footprint(self) -> int:
        """Codebook keys + values + radii + the FAISS index, plus the log's keys and values
        (kept so that retraction can replay without retraining)."""
        log = sum(tensor_bytes(it["keys"], it["values"]) for it in self.log)
        n = self.n
        held = tensor_bytes(self.keys[:n], self.values[:n], self.radii[:n])
        return held + self.index.nbytes() + log
