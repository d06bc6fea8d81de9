"""IKE's store of demonstrations: the shared edit log (`_common.editlog.EditLog`: the edits,
verbatim, in order, which of them are served, a re-edit of the same prompt displacing the
older one) with a FAISS index of the served keys.

Each entry's key is its prompt's standardised feature (`keys.py`), its prefix its
demonstration tokens (`edit_prefix`). A served entry's number is the memory a prompt is routed
to and the id of its key in the index.

Lookups (`nearest`): an exact FAISS search (flat L2, `lifelong.index.KeyIndex`, never the
approximate regime) returns each query's k nearest served keys; their distances are then
recomputed in float64 from the stored keys and the k sorted by (distance, newest first), so
the order does not depend on FAISS's rounding or on the other queries of a batch.

Invariant: the index holds exactly the served keys under their served numbers (the log
rebuilds it with its view: keys with the same ids in the same order, hence identical
searches after a retraction as in a log that never had the edit).
"""

from __future__ import annotations

import torch

from ...index import KeyIndex
from .._common.editlog import EditLog


class DemoMemory(EditLog):
    def __init__(self, dim: int):
        self.index = KeyIndex(dim, "l2", approximate_above=0)
        super().__init__(dim)

    def _reset_index(self) -> None:
        self.index = KeyIndex(self.dim, "l2", approximate_above=0)

    def _index_key(self, key: torch.Tensor, index: int) -> None:
        self.index.add(key.numpy()[None, :], [index])

    def nearest(self, queries: torch.Tensor, k: int) -> list[list[tuple[float, int]]]:
        """Per query (rows of (m, dim) float32 keys): its min(k, len) nearest served entries
        as (Euclidean distance, served index), nearest first, newest first among equally
        near ones (module docstring)."""
        n = len(self)  # builds the view, and with it the index
        if not n or queries.shape[0] == 0:
            return [[] for _ in range(queries.shape[0])]
        _, ids = self.index.search(queries.numpy(), min(k, n))
        out = []
        for q, row in zip(queries.double(), ids.tolist()):
            found = [i for i in row if i >= 0]
            keys = torch.stack([self.key(i) for i in found]).double()
            dist = (keys - q).norm(dim=1).tolist()
            out.append(sorted(zip(dist, found), key=lambda t: (t[0], -t[1])))
        return out

    def nbytes(self) -> int:
        """The log's texts, demonstration tokens and keys, and the FAISS index."""
        len(self)  # the index as the view has it
        return super().nbytes() + self.index.nbytes()
