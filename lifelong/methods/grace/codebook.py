"""GRACE's codebook: keys with deferral radii and values, placed by the conflict rules.

Rows ``0..n-1`` of the buffers are entries (capacity doubles as it fills); a displaced
entry's row stays, dead (``alive`` False, out of the index), until a replay compacts.

Conflict rules, applied when an entry is placed (invariants, checked by tests/test_grace.py):
  * radii of keys with different targets (compared by token ids) never overlap:
    ``|k_i - k_j| >= eps_i + eps_j``; a new key closer than that to a different-target key
    splits: both radii become at most half their distance;
  * a new key within reach of a same-target key (``d <= eps_j + eps``) is absorbed by it:
    ``conflict="coverage"`` expands ``eps_j`` to cover the new key, ``"moving_average"`` moves
    the key to the running mean of its members and widens its radius to cover both; when the
    rule above leaves no room, the new key becomes its own entry instead;
  * a key identical to a stored one displaces it (the newest edit of an input wins);
  * lookups scale every radius by the guard's common factor (`_common.guard`: at most
    ``claim_rate`` of the unrelated pool within reach), never below the distance to the
    entry's farthest member key; an expanded or moved entry never reaches an unrelated-pool
    key (so those floors claim none of the pool); the rules above act on the radii
    themselves;
  * every key of an active edit stays covered by an entry with its target: an entry keeps its
    members (the keys it absorbed), and a member a split or a displacement leaves uncovered
    is placed again, as its own entry if need be.

The codebook is a pure function of its ordered log of items (each an edit with its trained
keys and values): `retract` removes an item and replays the rest, giving exactly the codebook
that would exist had the edit never been made. Cost: O(active edits) range searches.

The codebook lives on the CPU, beside its FAISS index. Lookups of queries on a GPU run there,
against a copy of the keys, served radii and values made after each change (`Mirror`), so a
forward never waits for the host (`Codebook.lookup_on`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ...index import KeyIndex
from .._common.guard import Guard
from .._common.nearest import nearest_covering, nearest_rows, squared_norms
from .._common.sketch import MIN_ROWS, RANK, Sketch
from ..base import UnknownEdit, tensor_bytes
from .calibration import Calibration
from .config import GraceConfig

Member = tuple[int, int]  # (log position, key index)

#: how far (relative) beyond its served radius a lookup on a GPU still counts a key covered
#: (`Codebook.lookup_on`): above float64 rounding of a distance over 10^4 terms (~1e-12 at
#: worst), below the 1e-9 margins the placement rules keep between radii (`Codebook._room`)
DEVICE_SLACK = 1e-11


@dataclass(frozen=True)
class Mirror:
    """A codebook's lookup tensors on a device: keys, squared norms (+inf: dead rows), served
    radii (float64) and values, rows ``0..n-1``."""

    device: torch.device
    keys: torch.Tensor
    norms: torch.Tensor
    radii: torch.Tensor
    values: torch.Tensor


def first_covering(rows: torch.Tensor, dist: torch.Tensor,
                   radii: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(entry, hit) per query from its candidates (rows -1 pad, by (distance, row)): the
    first candidate within its radius, -1 where none is. On the candidates' device."""
    c = rows.clamp(min=0)
    # float64, as placement measures: a member a split left exactly at the radius stays in
    covered = (rows >= 0) & (dist <= radii[c])
    dist = torch.where(covered, dist, torch.full_like(dist, float("inf")))
    best = dist.argmin(dim=1)  # candidates come by (distance, row): the first is the older
    hit = torch.isfinite(dist.gather(1, best.unsqueeze(1)).squeeze(1))
    entry = torch.where(hit, c.gather(1, best.unsqueeze(1)).squeeze(1), torch.full_like(best, -1))
    return entry, hit


class Codebook:
    """Invariant: ``self.log`` (the active edits, in order) determines every other field."""

    #: the lookup sketch's basis width and the codebook size it starts at (`_common.sketch`;
    #: class attributes so that tests can run the sketch on small codebooks)
    sketch_rank, sketch_min_rows = RANK, MIN_ROWS

    def __init__(self, config: GraceConfig, key_dim: int, value_dim: int,
                 guard: Guard | None = None):
        self.config = config
        self.key_dim, self.value_dim = key_dim, value_dim
        self.guard = guard or Guard(torch.zeros((0, key_dim)))
        self.log: list[dict[str, Any]] = []
        self.reset()

    def reset(self) -> None:
        """An empty codebook (the log is kept)."""
        self.n = 0
        self.keys = torch.zeros((16, self.key_dim))
        self.values = torch.zeros((16, self.value_dim))
        self.radii = torch.zeros(16, dtype=torch.float64)
        self.alive = torch.zeros(16, dtype=torch.bool)
        self.targets: list[tuple[int, ...]] = []
        self.facts: list[str] = []
        self.owners: list[str] = []
        self.members: list[list[Member]] = []  # (log position, key index) per entry
        self.absorbed: dict[str, set[int]] = {}  # fact -> rows whose members include its keys
        self.fact_rows: dict[str, list[int]] = {}
        self.fact_prompts: dict[str, list[str]] = {}
        self._factor: float | None = None  # the guard's radius factor, None: to recompute
        self._norms: torch.Tensor | None = None  # squared key norms for lookups, None: stale
        self._served: np.ndarray | None = None  # `served_radii()` for lookups, None: stale
        self._mirror: Mirror | None = None  # the lookup's tensors on a GPU, None: stale
        # distance bounds for lookups, touched wherever a key changes
        self._sketch = Sketch(self.sketch_rank, self.sketch_min_rows)
        self._calib = Calibration(self.guard)  # per-entry inputs of the factor, kept across edits
        self.index = KeyIndex(self.key_dim, "l2", approximate_above=self.config.approximate_above)

    # ---- lookups ------------------------------------------------------------------------
    def factor(self) -> float:
        """The common factor lookups scale every radius by (`_common.guard`; 1.0: no pool)."""
        if self._factor is None and (not len(self.guard) or self.config.claim_rate >= 1):
            self._factor = 1.0  # no pool, or off: nothing to scale, no member reach to find
        if self._factor is None:
            self._factor, self._reach = self._calib.factor(self, self.config.claim_rate)
        return self._factor

    def farthest_member(self, row: int) -> float:
        """How far from its key an entry must reach to cover every key it holds."""
        if not self.alive[row] or not self.members[row]:
            return 0.0
        key = self.keys[row].double()
        return max(float((self._member_key(m).double() - key).norm()) for m in self.members[row])

    def served_radii(self) -> torch.Tensor:
        """(n,) the radius lookups use: the radius x `factor`, never less than the distance
        to the entry's farthest member key (an edit's own key stays covered)."""
        c = self.factor()
        if c >= 1:  # nothing scaled: the radii themselves (bit for bit the uncalibrated rule)
            return self.radii[:self.n]
        return torch.maximum(self.radii[:self.n] * c, self._reach)

    @torch.no_grad()
    def lookup(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(entry row, hit) per query: of the `candidates` entries nearest to it, the nearest
        whose radius, scaled by `factor`, covers it (exact float64 distances; ties go to the
        older entry). Queries on a GPU are looked up there (`lookup_on`), on the CPU here."""
        if queries.device.type != "cpu" and not self.index.approximate:
            return self.lookup_on(queries)
        q = queries.detach().float().cpu()
        k = min(self.config.candidates, len(self.index))
        found = self._covering(q, k)
        if found is not None:
            return found
        rows, dist = self._nearest(q, k)
        return first_covering(rows, dist, self.served_radii())

    @torch.no_grad()
    def lookup_on(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`lookup` on the queries' device, against a copy of the keys and served radii kept
        there (`Mirror`, made again after any change): one scan (`nearest_rows`), no trip to
        the host and no wait for the GPU. Float64 on a GPU rounds differently from the CPU,
        and an entry's served radius can be exactly its farthest member's distance (as the
        CPU measured it): so a radius here covers ``DEVICE_SLACK`` (relative) beyond itself."""
        m = self.mirror(queries.device)
        k = min(self.config.candidates, len(self.index))
        rows, dist = nearest_rows(m.keys, m.norms, queries.detach().float(), k)
        return first_covering(rows, dist, m.radii * (1 + DEVICE_SLACK))

    def mirror(self, device: torch.device) -> Mirror:
        """The lookup's tensors on `device` (made on first use after a change)."""
        if self._mirror is None or self._mirror.device != torch.device(device):
            n = self.n
            if self._norms is None:
                self._norms = squared_norms(self.keys[:n], self.alive[:n])
            self._mirror = Mirror(torch.device(device), self.keys[:n].to(device),
                                  self._norms.to(device), self.served_radii().to(device),
                                  self.values[:n].to(device))
        return self._mirror

    def values_of(self, entry: torch.Tensor) -> torch.Tensor:
        """(B, value_dim) the values of `lookup`'s entries (a miss: any row's), on their device."""
        if entry.device.type == "cpu":
            return self.values[entry.clamp(min=0)]
        return self.mirror(entry.device).values[entry.clamp(min=0)]

    def _covering(self, q: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """`lookup`'s answer from the sketch's distance bounds (`_common.nearest.
        nearest_covering`), without a full scan; None where the bounds rule out too little
        (or the index is approximate, or the codebook small): scan instead."""
        if self.index.approximate:
            return None
        n = self.n
        bounds = self._sketch.lower_bounds(self.keys[:n], self.alive[:n], q)
        if bounds is None:
            return None
        if self._served is None:
            self._served = self.served_radii().numpy().copy()  # radii change in place
        return nearest_covering(self.keys[:n], self._served, q, k, bounds, limit=max(32, n // 8))

    def _nearest(self, q: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, float64 distances), (B, k), ordered by (distance, row); -1 / inf pad. Exact
        (`_common.nearest`: one matrix product per batch) unless the index is approximate,
        whose HNSW candidates are then measured exactly."""
        if not self.index.approximate:
            if self._norms is None:
                self._norms = squared_norms(self.keys[:self.n], self.alive[:self.n])
            return nearest_rows(self.keys[:self.n], self._norms, q, k)
        _, cand = self.index.search(q.numpy(), k)
        rows = torch.from_numpy(cand).sort(dim=1).values  # by row first: ties to the older
        dist = (self.keys[rows.clamp(min=0)].double() - q.double().unsqueeze(1)).norm(dim=-1)
        dist = torch.where(rows >= 0, dist, torch.full_like(dist, float("inf")))
        order = dist.argsort(dim=1, stable=True)
        return rows.gather(1, order), dist.gather(1, order)

    def prompts_of(self, fact: str) -> list[str]:
        """Prompts of the fact's newest active edit (displaced by a re-edit, so re-trained)."""
        return list(self.fact_prompts.get(fact, ()))

    # ---- the log --------------------------------------------------------------------------
    def add(self, item: dict[str, Any]) -> list[str]:
        """Append an item (``edit_id``, ``fact``, ``target``, ``target_ids``, ``prompts`` and
        ``keys``/``values`` tensors of shape (len(prompts), dim), on any device) and place
        it. The codebook lives on the CPU beside its FAISS index: the tensors are copied there."""
        item = {**item, "keys": item["keys"].detach().float().cpu(),
                "values": item["values"].detach().float().cpu()}
        self.log.append(item)
        self._factor = self._norms = self._served = self._mirror = None
        return self._insert(len(self.log) - 1)

    def retract(self, edit_id: str) -> None:
        """Remove the edit from the log and replay the rest (exact; module docstring)."""
        kept = [it for it in self.log if it["edit_id"] != edit_id]
        if len(kept) == len(self.log):
            raise UnknownEdit(f"grace: no active edit {edit_id!r} to retract")
        self.log = kept
        self.reset()
        for pos in range(len(self.log)):
            self._insert(pos)

    # ---- placement (the conflict rules) -------------------------------------------------
    def _eps0(self, key: torch.Tensor) -> float:
        return self.config.eps * (float(key.double().norm()) if self.config.eps_relative else 1.0)

    def _neighbours(self, key: torch.Tensor, extra: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Alive entries whose own radius plus `extra` reaches `key`, by row, with exact
        float64 distances. Rows up to 1e-6 (relative) beyond are kept too, so that the
        callers' own comparisons (with their 1e-9 margins) see every row that can matter."""
        if len(self.index) == 0:
            return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.float64)
        reach = extra + float(self.radii[self.alive].max())
        # a shortlist by each row's own reach (its margin far above float32 rounding), so that
        # float64 distances are computed for the few rows near the key, not for all: by the
        # lookup sketch where it runs (`Sketch.within`), else a FAISS range search
        own = (self.radii[:self.n] + extra).numpy() * (1 + 1e-4) + 1e-6
        ids = None if self.index.approximate else \
            self._sketch.within(self.keys[:self.n], self.alive[:self.n], key, own)
        if ids is None:
            d2, ids = self.index.range(key.numpy()[None], (reach * (1 + 1e-4) + 1e-6) ** 2)[0]
            ids = np.sort(ids[np.sqrt(d2) <= own[ids]])
        rows = torch.from_numpy(ids).long()
        dist = (self.keys[rows].double() - key.double()).norm(dim=-1)
        keep = (dist <= reach) & (dist <= (self.radii[rows] + extra) * (1 + 1e-6))
        return rows[keep], dist[keep]

    def _room(self, center: torch.Tensor, target: tuple[int, ...], want: float,
              skip: int = -1) -> float:
        """Largest radius <= want a key at `center` may take without overlapping a
        different-target key, nor, while the guard is on, reaching an unrelated-pool key
        (an expansion's reach is a floor the guard's factor cannot shrink)."""
        if self.config.claim_rate < 1:
            want = min(want, self.guard.nearest(center) * (1 - 1e-5))
        rows, dist = self._neighbours(center, want)
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
        orphans: list[Member] = []
        for row in self.fact_rows.pop(item["fact"], []):
            if self.alive[row]:  # re-edit: the fact's older entries are displaced
                orphans += [m for m in self._kill(row) if self.log[m[0]]["fact"] != item["fact"]]
        for row in self.absorbed.pop(item["fact"], set()):  # its keys absorbed elsewhere leave
            self.members[row] = [m for m in self.members[row] if self.log[m[0]]["fact"] != item["fact"]]
            self._calib.touch(row)
        self.fact_prompts[item["fact"]] = list(item["prompts"])
        placed = [self._place(pos, k, orphans) for k in range(len(item["keys"]))]
        tries: dict[Member, int] = {}
        while orphans:
            m = orphans.pop(0)
            tries[m] = tries.get(m, 0) + 1
            self._place(m[0], m[1], orphans, merge=tries[m] <= 2)
        return placed

    def _member_key(self, m: Member) -> torch.Tensor:
        return self.log[m[0]]["keys"][m[1]]

    def _shrink(self, row: int, radius: float, orphans: list[Member]) -> None:
        """Shrink an entry's radius; members it no longer covers become orphans."""
        self.radii[row] = min(float(self.radii[row]), radius)
        keep = []
        for m in self.members[row]:
            d = float((self._member_key(m).double() - self.keys[row].double()).norm())
            (keep if d <= float(self.radii[row]) else orphans).append(m)
        self.members[row] = keep
        self._calib.touch(row)
        if not keep:  # a moved key that covers none of its members any more
            self._kill(row)

    def _place(self, pos: int, k: int, orphans: list[Member], merge: bool = True) -> str:
        item = self.log[pos]
        key, value, target = item["keys"][k], item["values"][k], tuple(item["target_ids"])
        eps0 = self._eps0(key)
        rows, dist = self._neighbours(key, eps0)
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
            absorbed = self._absorb(pos, k, key, target, eps0, *same[0])
            if absorbed:
                return absorbed
        radius = eps0
        for d, r in near:
            if self.targets[r] != target:  # split: neither ball reaches past half the distance
                self._shrink(r, d / 2, orphans)
                radius = min(radius, d / 2)
        row = self._append(key, value, radius, target, item, (pos, k))
        return f"new:{row}" + (":split" if radius < eps0 else "")

    def _absorb(self, pos: int, k: int, key: torch.Tensor, target: tuple[int, ...],
                eps0: float, d: float, r: int) -> str | None:
        """Let same-target entry `r` (at distance `d`) take the key (expanded or moved, by
        `conflict`); None when that would overlap a different-target key."""
        fact = self.log[pos]["fact"]
        if self.config.conflict == "coverage":
            want = max(float(self.radii[r]), d + 0.01 * eps0)
            room = self._room(self.keys[r], target, want, skip=r)
            if not room >= d:
                return None
            self.radii[r] = room
            self.members[r].append((pos, k))
            self.absorbed.setdefault(fact, set()).add(r)
            self._calib.touch(r)
            return f"expanded:{r}"
        n = len(self.members[r])
        # the key as it will be stored (float32): every distance below is measured from it,
        # so rounding the mean cannot leave a member just outside the radius
        center = ((self.keys[r].double() * n + key.double()) / (n + 1)).float()
        shift = float((center.double() - self.keys[r].double()).norm())
        need = float((center.double() - key.double()).norm())
        reach = max([need] + [float((self._member_key(m).double() - center.double()).norm())
                              for m in self.members[r]])
        want = max(float(self.radii[r]) + shift, need + 0.01 * eps0, reach)
        room = self._room(center, target, want, skip=r)
        if not (room >= reach and room >= float(self.radii[r]) + shift - 1e-12):
            return None
        self.keys[r] = center
        self._sketch.touch(r)
        self.radii[r] = room
        self.members[r].append((pos, k))
        self.absorbed.setdefault(fact, set()).add(r)
        self._calib.touch(r)
        self.index.remove([r])
        self.index.add(self.keys[r].numpy()[None], [r])
        return f"moved:{r}"

    def _append(self, key: torch.Tensor, value: torch.Tensor, radius: float,
                target: tuple[int, ...], item: dict[str, Any], member: Member) -> int:
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

    def _kill(self, row: int) -> list[Member]:
        """Remove an entry from the index; returns its members (the callers re-place them)."""
        self.alive[row] = False
        self._calib.touch(row)
        self.index.remove([row])
        members, self.members[row] = self.members[row], []
        return members

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
        self.log = [dict(it, keys=it["keys"].cpu().clone(), values=it["values"].cpu().clone())
                    for it in state["log"]]
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
        self._factor = self._norms = self._served = self._mirror = None
        self._calib = Calibration(self.guard)
        self._sketch = Sketch(self.sketch_rank, self.sketch_min_rows)

    def footprint(self) -> int:
        """Keys + values + radii + the FAISS index, plus the log's keys and values (kept so
        that retraction can replay without retraining), plus the radius calibration's
        per-entry figures (`calibration.Calibration`)."""
        log = sum(tensor_bytes(it["keys"], it["values"]) for it in self.log)
        n = self.n
        held = tensor_bytes(self.keys[:n], self.values[:n], self.radii[:n])
        return held + self.index.nbytes() + log + self._calib.nbytes() + self._sketch.nbytes()
