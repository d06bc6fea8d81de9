"""Which memory serves each row: the paper's activation score, or the nearest edit key.

`activation`: score(x) = mean over the router tokens of ||x_t (W_side - W_main)^T||; the
memory with the highest score serves the row if that score passes act_ratio x the smallest
score an edit of the memory reached. `faiss`: every edit's key (the projection's input over
the router tokens, `key_token`) is in a `KeyTable` labelled with its memory (a FAISS index,
searched exactly by float64 distance); a row goes to its nearest key's memory when it lies within `key_radius` x that key's norm x the guard's common factor
(`_common.guard`: at most `claim_rate` of the unrelated pool within reach), else to the main
memory: one search per batch, whatever the number of memories; with `faiss_check` the
memory's score must also pass its threshold. Keys of edits retracted by unrouting stay as
tombstones in a second table: a row nearer to one of them than to any live key goes to the
main memory (the retracted edit's trained step stays in its memory's weights, and without
the tombstone its prompt could reach it through a neighbouring edit's key).

Rows are routed one by one (a route never depends on the other rows of the batch); -1 is
the main memory.
"""

from __future__ import annotations

import torch

from .._common.keys import row_keys
from .._common.keytable import KeyTable
from .config import WiseFaissConfig
from .memory import SideMemory, activation_score


def thresholds(memories: list[SideMemory], ratio: float) -> torch.Tensor:
    return torch.tensor([m.threshold(ratio) for m in memories])


def by_score(x: torch.Tensor, mask: torch.Tensor, deltas: list[torch.Tensor],
             limits: torch.Tensor) -> torch.Tensor:
    """(B,) the best-scoring memory of each row, -1 where its score does not pass its limit."""
    scores = torch.stack([activation_score(x, mask, d) for d in deltas]).cpu()  # (M, B)
    best = scores.argmax(0)
    passed = scores.gather(0, best.unsqueeze(0)).squeeze(0) > limits[best]
    return torch.where(passed, best, torch.full_like(best, -1))


def by_key(table: KeyTable, x: torch.Tensor, mask: torch.Tensor, radius: float,
           tombs: KeyTable | None = None) -> torch.Tensor:
    """(B,) the memory of each row's nearest edit key, -1 where none lies within
    `radius` x that key's norm, or where a tombstone (a retracted edit's key, `tombs`) lies
    strictly nearer than that key and within its own reach."""
    route = torch.full((x.shape[0],), -1, dtype=torch.long)
    if not len(table):
        return route
    keys = row_keys(x, mask)
    live = table.nearest(keys, within=radius)  # (inf, -1) where no key is within its reach
    dead = tombs.nearest(keys, within=radius) if tombs is not None and len(tombs) \
        else [(0.0, -1)] * len(live)
    for row, ((d, i), (dt, t)) in enumerate(zip(live, dead)):
        if t >= 0 and dt < d and dt <= radius * tombs.norm[t]:
            continue
        if i >= 0 and d <= radius * table.norm[i]:
            route[row] = table.label[i]
    return route


def check_scores(route: torch.Tensor, x: torch.Tensor, mask: torch.Tensor,
                 deltas: list[torch.Tensor], memories: list[SideMemory],
                 ratio: float) -> torch.Tensor:
    """`route` where each routed row's score also passes its memory's threshold, else -1."""
    for m in [m for m in route.unique().tolist() if m >= 0]:
        rows = route == m
        s = activation_score(x[rows.to(x.device)], mask[rows.to(x.device)], deltas[m]).cpu()
        route[rows] = torch.where(s > memories[m].threshold(ratio), m, -1)
    return route


def route_rows(cfg: WiseFaissConfig, router: str, table: KeyTable, memories: list[SideMemory],
               deltas: list[torch.Tensor], x: torch.Tensor, mask: torch.Tensor,
               factor: float = 1.0, tombs: KeyTable | None = None) -> torch.Tensor:
    """(B,) memory index per row (-1: the main memory) by `router` ("faiss"/"activation");
    `factor` scales the FAISS router's radius, `tombs` holds retracted edits' keys."""
    if router != "faiss":
        return by_score(x, mask, deltas, thresholds(memories, cfg.act_ratio))
    route = by_key(table, x, mask, cfg.key_radius * factor, tombs)
    if cfg.faiss_check and len(table):
        route = check_scores(route, x, mask, deltas, memories, cfg.act_ratio)
    return route
