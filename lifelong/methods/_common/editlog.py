"""An edit log of memory-based editors (SERAC, IKE): the edits, verbatim, in the order they
were made, and which of them are served.

Each entry holds the request as the method saw it (`_common.facts.as_seen`), its key (what
the method looks an input up by) and its prefix (the token ids it is written as before an
input, `conditioning.edit_prefix`). What is served is a pure function of the log: an entry is
served unless a later entry displaces it, by sharing its fact (only ever true with
`use_fact_identity`: otherwise every edit is its own fact) or by having an identical key (the
same prompt: the newest edit of an input wins, without the oracle; keys are compared by a
128-bit digest of their bytes). Served entries are numbered 0..n-1 in log order; that number
is the memory a prompt is routed to.

A subclass that indexes the served keys (IKE's FAISS index) overrides `_reset_index` and
`_index_key`: they are called as the view is rebuilt and as an entry is served, in served
order, so an index always holds exactly the served keys under their served numbers.

Invariants: removing an entry from the log leaves exactly the memory of a log that never had
it (the view is rebuilt from the log whenever anything but a plain append happened); keys and
prefixes are never recomputed, so a loaded state serves what the saved one did.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch

from ..base import EditRequest


@dataclass
class _View:
    """The served entries: their log positions (in order), the served index answering each
    edit id and holding each key digest; every fact and key digest of the log (an edit
    repeating one may displace another: the view is then rebuilt)."""

    served: list[int] = field(default_factory=list)
    answering: dict[str, int] = field(default_factory=dict)
    keys: dict[bytes, int] = field(default_factory=dict)
    logged: set[tuple[str, Any]] = field(default_factory=set)
    stacked: torch.Tensor | None = None  # the served keys, (n, dim), built when asked


class EditLog:
    def __init__(self, dim: int):
        self.dim = dim
        self.log: list[dict[str, Any]] = []  # {"request", "key", "prefix"}
        self._view: _View | None = None

    def __len__(self) -> int:
        return len(self._served().served)

    # ---- changes ------------------------------------------------------------------------------
    def add(self, request: EditRequest, key: torch.Tensor, prefix: list[int]) -> None:
        entry = {"request": vars(request).copy(), "key": key.detach().float().cpu().clone(),
                 "prefix": [int(t) for t in prefix]}
        self.log.append(entry)
        view = self._view
        if view is None or {("fact", request.fact), ("key", _digest(entry["key"]))} & view.logged:
            self._view = None  # maybe a displacement: rebuilt from the log when next needed
            return
        self._append(view, len(self.log) - 1)

    def remove(self, edit_id: str) -> bool:
        """Drop the edit from the log; False when the log does not hold it."""
        kept = [e for e in self.log if e["request"]["edit_id"] != edit_id]
        found, self.log = len(kept) != len(self.log), kept
        if found:
            self._view = None
        return found

    # ---- the served view ----------------------------------------------------------------------
    def _reset_index(self) -> None:
        """The view is being rebuilt: an index of served keys starts empty (none here)."""

    def _index_key(self, key: torch.Tensor, index: int) -> None:
        """`key` is served as number `index` (the next one): an index adds it (none here)."""

    def _append(self, view: _View, pos: int) -> None:
        """Serve log entry `pos` as the newest served entry (it displaces nothing)."""
        e, i = self.log[pos], len(view.served)
        view.served.append(pos)
        view.logged |= {("fact", e["request"]["fact"]), ("key", _digest(e["key"]))}
        view.keys[_digest(e["key"])] = i
        view.answering[e["request"]["edit_id"]] = i
        view.stacked = None
        self._index_key(e["key"], i)

    def _served(self) -> _View:
        if self._view is None:
            newest_fact = {e["request"]["fact"]: p for p, e in enumerate(self.log)}
            alive = [p for p, e in enumerate(self.log) if newest_fact[e["request"]["fact"]] == p]
            newest_key = {_digest(self.log[p]["key"]): p for p in alive}
            view = _View()
            self._reset_index()
            for p in alive:
                if newest_key[_digest(self.log[p]["key"])] == p:
                    self._append(view, p)
            for e in self.log:  # a displaced edit is answered by the entry displacing it
                view.logged |= {("fact", e["request"]["fact"]), ("key", _digest(e["key"]))}
                fact = newest_fact[e["request"]["fact"]]
                view.answering[e["request"]["edit_id"]] = view.keys[_digest(self.log[fact]["key"])]
            self._view = view
        return self._view

    def key(self, index: int) -> torch.Tensor:
        """The key of served entry `index`."""
        return self.log[self._served().served[index]]["key"]

    def keys(self) -> torch.Tensor:
        """(n, dim): the served entries' keys, in served order."""
        view = self._served()
        if view.stacked is None:
            view.stacked = (torch.stack([self.log[p]["key"] for p in view.served]) if view.served
                            else torch.zeros((0, self.dim)))
        return view.stacked

    def prefix(self, index: int) -> list[int]:
        """The prefix tokens of served entry `index`."""
        return self.log[self._served().served[index]]["prefix"]

    def serving(self, edit_id: str) -> int | None:
        """The served index of the entry that answers the edit's prompt: its own, or the one
        displacing it; None for an edit the log does not hold."""
        return self._served().answering.get(edit_id)

    # ---- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"entries": [{"request": dict(e["request"]), "prefix": list(e["prefix"])}
                            for e in self.log],
                "keys": (torch.stack([e["key"] for e in self.log]) if self.log
                         else torch.zeros((0, self.dim))).clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.log = [{"request": dict(e["request"]), "key": k.detach().float().clone(),
                     "prefix": [int(t) for t in e["prefix"]]}
                    for e, k in zip(state["entries"], state["keys"], strict=True)]
        self._view = None

    def nbytes(self) -> int:
        """Texts (UTF-8), prefix tokens (8 bytes each) and keys of every logged edit."""
        text = sum(len(str(v).encode()) for e in self.log for v in e["request"].values()
                   if v is not None)
        return text + sum(8 * len(e["prefix"]) + e["key"].numel() * 4 for e in self.log)


def _digest(key: torch.Tensor) -> bytes:
    """A key's identity: a 128-bit digest of its bytes (identical keys, identical digests)."""
    return hashlib.blake2b(key.numpy().tobytes(), digest_size=16).digest()
