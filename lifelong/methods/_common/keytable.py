"""A FAISS index of edit keys, each labelled with the memory that holds its edit and the
edit's id (WISE's router; any method that routes by nearest edit key).

Invariant: the index and the three maps hold the same ids; ids are never reused (`next_id`
only grows), so a saved table loads to the same search results.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from ...index import KeyIndex


class KeyTable:
    def __init__(self, dim: int, metric: str = "l2"):
        self.index = KeyIndex(dim, metric)
        self.label: dict[int, int] = {}   # id -> memory
        self.owner: dict[int, str] = {}   # id -> edit id
        self.norm: dict[int, float] = {}  # id -> norm of the key
        self.next_id = 0

    def __len__(self) -> int:
        return len(self.index)

    def add(self, key: np.ndarray, label: int, owner: str) -> int:
        """Add one key (shape (1, dim)); returns its id."""
        i = self.next_id
        self.index.add(key, [i])
        self.label[i], self.owner[i] = label, owner
        self.norm[i] = float(np.linalg.norm(key))
        self.next_id += 1
        return i

    def remove(self, ids: Iterable[int]) -> None:
        ids = list(ids)
        self.index.remove(ids)
        for i in ids:
            self.label.pop(i), self.owner.pop(i), self.norm.pop(i)

    def owned_by(self, edits: set[str]) -> list[int]:
        """Ids of the keys of `edits`, in insertion order."""
        return [i for i, e in self.owner.items() if e in edits]

    def labelled(self, label: int) -> list[int]:
        """Ids of the keys labelled `label`, in insertion order."""
        return [i for i, m in self.label.items() if m == label]

    def nearest(self, queries: np.ndarray) -> list[tuple[float, int]]:
        """(distance, id) of each query's nearest key (id -1 when there is none)."""
        dist, ids = self.index.search(queries, k=1)
        return [(d ** 0.5, i) for d, i in zip(dist[:, 0].tolist(), ids[:, 0].tolist())]

    def to_state(self) -> dict[str, Any]:
        return {"index": torch.from_numpy(self.index.to_bytes().copy()),
                "key_memory": dict(self.label), "key_edit": dict(self.owner),
                "key_norm": dict(self.norm), "next_key": self.next_id}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> KeyTable:
        table = cls.__new__(cls)
        table.index = KeyIndex.from_bytes(state["index"].numpy())
        table.label = {int(k): int(v) for k, v in state["key_memory"].items()}
        table.owner = {int(k): v for k, v in state["key_edit"].items()}
        table.norm = {int(k): float(v) for k, v in state["key_norm"].items()}
        table.next_id = state["next_key"]
        return table
