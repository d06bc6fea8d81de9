"""SERAC's edit memory: the edits, verbatim, in the order they were made.

Each entry holds the request as the method saw it (`_common.facts.as_seen`), its key (the
classifier's embedding of its prompt) and its conditioning tokens (the counterfactual model's
prefix). What is served is a pure function of the log: an entry is served unless a later
entry displaces it, by sharing its fact (only ever true with `use_fact_identity`: otherwise
every edit is its own fact) or by having an identical key (the same prompt: the newest edit
of an input wins, without the oracle). Served entries are numbered 0..n-1 in log order;
that number is the memory a prompt is routed to.

Invariants: removing an entry from the log leaves exactly the memory of a log that never had
it (nothing else is stored); keys and prefixes are never recomputed, so a loaded state
serves what the saved one did.
"""

from __future__ import annotations

from typing import Any

import torch

from ..base import EditRequest


class EditMemory:
    def __init__(self, dim: int):
        self.dim = dim
        self.log: list[dict[str, Any]] = []  # {"request", "key", "prefix"}
        self._served: tuple[list[int], dict[str, int], torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self._view()[0])

    def add(self, request: EditRequest, key: torch.Tensor, prefix: list[int]) -> None:
        self.log.append({"request": vars(request).copy(), "key": key.detach().float().clone(),
                         "prefix": [int(t) for t in prefix]})
        self._served = None

    def remove(self, edit_id: str) -> bool:
        """Drop the edit from the log; False when the log does not hold it."""
        kept = [e for e in self.log if e["request"]["edit_id"] != edit_id]
        found, self.log = len(kept) != len(self.log), kept
        self._served = None
        return found

    def _view(self) -> tuple[list[int], dict[str, int], torch.Tensor]:
        """(log positions served, edit id -> served index of the entry answering it, keys)."""
        if self._served is None:
            newest_of_fact = {e["request"]["fact"]: i for i, e in enumerate(self.log)}
            survivors = [i for i, e in enumerate(self.log)
                         if newest_of_fact[e["request"]["fact"]] == i]
            newest_of_key = {self._key_bytes(i): i for i in survivors}
            served = [i for i in survivors if newest_of_key[self._key_bytes(i)] == i]
            index = {pos: k for k, pos in enumerate(served)}
            answering = {}
            for e in self.log:
                fact_pos = newest_of_fact[e["request"]["fact"]]
                answering[e["request"]["edit_id"]] = index[newest_of_key[self._key_bytes(fact_pos)]]
            keys = (torch.stack([self.log[i]["key"] for i in served]) if served
                    else torch.zeros((0, self.dim)))
            self._served = (served, answering, keys)
        return self._served

    def _key_bytes(self, pos: int) -> bytes:
        return self.log[pos]["key"].numpy().tobytes()

    def keys(self) -> torch.Tensor:
        """(n, dim): the served entries' keys, in served order."""
        return self._view()[2]

    def prefix(self, index: int) -> list[int]:
        """The conditioning tokens of served entry `index`."""
        return self.log[self._view()[0][index]]["prefix"]

    def serving(self, edit_id: str) -> int | None:
        """The served index of the entry that answers the edit's prompt: its own, or the one
        displacing it; None for an edit the log does not hold."""
        return self._view()[1].get(edit_id)

    def state_dict(self) -> dict[str, Any]:
        return {"entries": [{"request": dict(e["request"]), "prefix": list(e["prefix"])}
                            for e in self.log],
                "keys": (torch.stack([e["key"] for e in self.log]) if self.log
                         else torch.zeros((0, self.dim))).clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.log = [{"request": dict(e["request"]), "key": k.detach().float().clone(),
                     "prefix": [int(t) for t in e["prefix"]]}
                    for e, k in zip(state["entries"], state["keys"], strict=True)]
        self._served = None

    def nbytes(self) -> int:
        """Texts (UTF-8), conditioning tokens (8 bytes each) and keys of every logged edit."""
        text = sum(len(str(v).encode()) for e in self.log for v in e["request"].values()
                   if v is not None)
        return text + sum(8 * len(e["prefix"]) + e["key"].numel() * 4 for e in self.log)
