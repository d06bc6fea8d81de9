"""The unrelated pool as a calibration set: radii scaled until the pool is (almost) unclaimed.

A key-routed method (GRACE's codebook, the FAISS-routed WISE variant) serves an input from an
edit when the input's key lies within that edit's radius. A radius set as a share of the key's
norm and chosen on one model's dev stream does not transfer: on a one-layer word-level
CounterFact organism the keys of an edit's paraphrases and of its neighbourhood prompts (same
relation, other subject) lie at the same distances, and the radius chosen on the built-in
model (0.5 x the key's norm) claims 0.97 of the unrelated prompts.

The guard holds the keys of the attach context's unrelated prompts (the stream's locality
prompts that are never probed while the method is attached: data the method may train on,
never what locality is measured on) and, by `claim_pool`, the train split's locality
prompts (`AttachContext.calibration_prompts`: a stream whose every locality prompt is probed,
or a chunk holding the whole stream, leaves no pool of its own). It gives the largest common
factor ``c <= 1`` by which every radius may be scaled so that at most ``claim_rate`` of those
prompts lie within reach of an edit: with ``m_p = min_e d(p, k_e) / r_e`` (the smallest
factor at which pool prompt ``p`` is claimed), ``c`` is just below (by 1e-5, relative) the
``floor(claim_rate * n) + 1``-th smallest ``m_p``, or 1 when that many are never claimed.
The false-positive rate is calibrated on data of the run's own distribution, the way a
detection threshold is set on held-out negatives; where the radii already claim fewer (the
built-in model, ZsRE at their defaults) nothing changes.

Invariants: `factor` is a pure function of the pool keys, the edit keys and their radii (the
method's memory; so retraction by replay stays exact); the pool keys are computed once per
(model, key reader, prompts) and cached (`AttachContext.cache`), so a chunked run that
re-attaches per chunk pays the forward passes once. Cost of `factor`: one distance matrix
pool x edit keys (``limit`` pool prompts); the methods keep its inputs across edits instead of
calling it after each (GRACE: `grace.calibration`; `wise-faiss`: `keptfactor`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence

import torch

from ..context import CALIBRATION_POOL_SIZE, AttachContext

CLAIM_RATE_HELP = ("the largest share of the unrelated pool (the stream's locality prompts "
                   "never probed while the method is attached, and the train split's: "
                   "claim_pool) the router may claim: every "
                   "radius is scaled by one common factor (at most 1) until at most this share "
                   "of the pool lies within reach of an edit, so the radius is calibrated on the "
                   "data at hand. 0.01: chosen on dev organisms (CounterFact, ZsRE) and the "
                   "built-in dev stream (sweeps/dev-claim-rate.toml); 1: off")

#: help text of a `claim_pool` setting (choices: `CALIBRATION_POOLS`)
CLAIM_POOL_HELP = ("the unrelated pool claim_rate is measured on: the stream's locality "
                   "prompts never probed while the method is attached ('stream'); those topped "
                   "up to the pool's size (1024 prompts) with the locality prompts of the "
                   "scenario's train split (stream.train_file) where it names one "
                   "('stream+train'); or the train split's only when the stream leaves none "
                   "('stream-or-train'); never a probed prompt. Without the train split a "
                   "stream whose every locality prompt is probed (300 or fewer at the default "
                   "locality_sample), or a chunk holding the whole stream, leaves the pool "
                   "empty and the radius uncalibrated")


class Guard:
    """The keys of known-unrelated prompts, and the radius factor they allow."""

    def __init__(self, keys: torch.Tensor):
        self.keys = keys.detach().double().cpu()

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    def nearest(self, key: torch.Tensor) -> float:
        """The distance from `key` to the nearest pool key (inf with no pool)."""
        if not len(self):
            return float("inf")
        return float(torch.cdist(key.detach().double().cpu().reshape(1, -1), self.keys).min())

    def factor(self, keys: torch.Tensor, radii: torch.Tensor, rate: float,
               floors: torch.Tensor | None = None, chunk: int = 1024) -> float:
        """The largest c <= 1 such that at most floor(rate x pool) pool keys lie within
        max(c x radius, floor) of one of `keys` ((n, d), (n,), (n,)), or, when the floors
        alone claim more, the largest c that claims no further pool key; 1.0 with no pool,
        no keys or rate >= 1. A floor is a distance an entry must keep covering whatever the
        factor (GRACE: its farthest member key, so no edit loses its own prompt)."""
        n = len(self)
        if not n or not keys.shape[0] or math.floor(rate * n) >= n:
            return 1.0
        r = radii.detach().double().cpu()
        f = torch.zeros_like(r) if floors is None else floors.detach().double().cpu()
        need = torch.full((n,), float("inf"), dtype=torch.float64)
        forced = torch.zeros(n, dtype=torch.bool)
        for i in range(0, keys.shape[0], chunk):  # bounded memory: pool x chunk distances
            d = torch.cdist(self.keys, keys[i:i + chunk].detach().double().cpu())
            part_need, part_forced = claims(d, r[i:i + chunk], f[i:i + chunk])
            need, forced = torch.minimum(need, part_need), forced | part_forced
        return factor_of(need, forced, rate)


def claims(d: torch.Tensor, radii: torch.Tensor, floors: torch.Tensor,
           live: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """For pool-to-key distances `d` (pool, m >= 1) of keys with `radii` and `floors` (m,): per
    pool key, the smallest radius factor at which one of the (`live`) keys claims it, and
    whether a floor claims it at any factor. Both combine over key sets by min and or."""
    ratio = torch.where(d > 0, d / radii.clamp_min(1e-300), torch.zeros_like(d))
    hit = d <= floors
    if live is not None:
        ratio = torch.where(live, ratio, torch.full_like(ratio, float("inf")))
        hit &= live
    return ratio.min(dim=1).values, hit.any(dim=1)


#: columns per block of kept claims (a changed column costs pool x BLOCK work)
BLOCK = 64


class BlockClaims:
    """The inputs of `Guard.factor` kept for columns (keys) that change a few at a time: per
    column its pool distances, radius, floor and liveness; per block of `BLOCK` columns the
    pool's `claims`, recomputed only for the blocks a change touched. The factor over columns
    ``0..n-1`` is then a min / any over blocks: what `Guard.factor` gives for the live columns
    from the same distances. Capacity grows by a quarter (at most a fifth is spare); radii of
    columns never set are NaN (unequal to anything, so callers can find them changed)."""

    def __init__(self, pool: int):
        f64 = {"dtype": torch.float64}
        self.dist = torch.zeros((pool, 0), **f64)
        self.radii = torch.zeros(0, **f64)
        self.floors = torch.zeros(0, **f64)
        self.live = torch.zeros(0, dtype=torch.bool)
        self.need = torch.zeros((pool, 0), **f64)
        self.forced = torch.zeros((pool, 0), dtype=torch.bool)
        self.dirty: set[int] = set()  # blocks to recompute

    def grow(self, n: int) -> None:
        """Room for `n` columns."""
        cap = self.radii.shape[0]
        if n <= cap:
            return
        cap, p = max(n, cap * 5 // 4, BLOCK), self.dist.shape[0]
        f64 = {"dtype": torch.float64}
        self.dist = _padded(self.dist, torch.zeros((p, cap), **f64))
        self.radii = _padded(self.radii, torch.full((cap,), float("nan"), **f64))
        self.floors = _padded(self.floors, torch.zeros(cap, **f64))
        self.live = _padded(self.live, torch.zeros(cap, dtype=torch.bool))
        blocks = -(-cap // BLOCK)
        self.need = _padded(self.need, torch.full((p, blocks), float("inf"), **f64))
        self.forced = _padded(self.forced, torch.zeros((p, blocks), dtype=torch.bool))

    def set(self, cols: list[int], *, dist: torch.Tensor | None = None,
            radii: torch.Tensor | None = None, floors: torch.Tensor | None = None,
            live: torch.Tensor | bool | None = None) -> None:
        """Change some columns' figures (the others given stay); their blocks go stale."""
        for name, value in (("radii", radii), ("floors", floors), ("live", live)):
            if value is not None:
                getattr(self, name)[cols] = value
        if dist is not None:
            self.dist[:, cols] = dist
        self.dirty.update(c // BLOCK for c in cols)

    def factor(self, n: int, rate: float) -> float:
        """`Guard.factor` over the live columns among ``0..n-1`` (1.0 when none is live)."""
        for b in sorted(self.dirty):
            s = slice(b * BLOCK, min(n, (b + 1) * BLOCK))
            if s.start < s.stop:
                self.need[:, b], self.forced[:, b] = claims(self.dist[:, s], self.radii[s],
                                                            self.floors[s], self.live[s])
        self.dirty.clear()
        if n == 0 or not bool(self.live[:n].any()):
            return 1.0
        blocks = -(-n // BLOCK)
        return factor_of(self.need[:, :blocks].min(dim=1).values,
                         self.forced[:, :blocks].any(dim=1), rate)

    def nbytes(self) -> int:
        """Bytes held: the pool distances dominate (pool x columns x 8)."""
        return sum(t.numel() * t.element_size() for t in (self.dist, self.radii, self.floors,
                                                          self.live, self.need, self.forced))


def _padded(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """`new` with `old` copied into its leading entries along the last dimension."""
    new[..., :old.shape[-1]] = old
    return new


def factor_of(need: torch.Tensor, forced: torch.Tensor, rate: float) -> float:
    """`Guard.factor` from the pool's `claims` over every key."""
    allowed = math.floor(rate * need.shape[0])
    rest = need[~forced].sort().values
    left = max(0, allowed - int(forced.sum()))
    if left >= rest.shape[0]:
        return 1.0
    kth = float(rest[left])  # the first pool key too many is claimed at any c >= kth
    return 1.0 if kth > 1 else kth * (1 - 1e-5)  # below it, room for float32 lookups


def pool_digest(prompts: Sequence[str]) -> str:
    """A short digest naming a pool of prompts (the cache entry's name)."""
    h = hashlib.sha256()
    for p in prompts:
        h.update(p.encode("utf-8") + b"\0")
    return h.hexdigest()[:16]


def guard_from_context(ctx: AttachContext, reader: str, dim: int, rate: float,
                       keys_of: Callable[[list[str]], torch.Tensor], limit: int = CALIBRATION_POOL_SIZE,
                       batch: int = 64, pool: str = "stream") -> Guard:
    """The guard of `ctx`'s calibration prompts (`AttachContext.calibration_prompts`: at most
    `limit`, the train split's by `pool`; none when `rate` >= 1), their keys computed by
    `keys_of` (a batch of prompts -> (n, dim) keys) in batches, or read from the cache under
    `reader` (it names the layer and the key reading: keys of different readers never mix)."""
    prompts = ctx.calibration_prompts(limit, pool) if rate < 1 else []
    if not prompts:
        return Guard(torch.zeros((0, dim)))
    what = f"guard-{pool_digest(prompts)}"
    cache = ctx.cache_if_known()
    saved = cache.load(reader, what) if cache else None
    if saved is not None and tuple(saved["keys"].shape) == (len(prompts), dim):
        return Guard(saved["keys"])
    keys = torch.cat([keys_of(prompts[i:i + batch]).detach().float().cpu()
                      for i in range(0, len(prompts), batch)])
    if cache:
        cache.save(reader, what, {"keys": keys})
    return Guard(keys)

