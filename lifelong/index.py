"""The project's one door to FAISS: a small index of float32 keys labelled by int64 ids.

`KeyIndex` is what every method that looks keys up uses (GRACE's codebook, DEFER's nothing,
WISE's retrieval router later): add / remove by id, k-nearest search, range search, `len`,
and a byte round trip that fits in a method's state_dict as a uint8 tensor (the store loads
states with ``torch.load(weights_only=True)``: tensors and plain data only).

Two regimes, switched by size:

* **exact** (default, up to ``approximate_above`` keys): ``IndexIDMap2(IndexFlatL2 | IndexFlatIP)``.
  Search is exhaustive and deterministic; removal is real.
* **approximate** (more keys than ``approximate_above``; 0 never switches): ``IndexIDMap2(
  IndexHNSWFlat)``. FAISS's HNSW cannot delete, so a removed id becomes a tombstone that every
  search filters out (an ``IDSelector``); the graph is rebuilt from the live keys when
  tombstones exceed ``compact_ratio`` of it, or when a removed id is added again. HNSW graph
  construction is multi-threaded in FAISS and may differ between runs with different thread
  counts; a saved index reloads bit-for-bit, so the results of a reloaded index do not.

Conventions (those of FAISS, kept so that results mean the same everywhere):

* ``metric="l2"``: distances are *squared* Euclidean, smaller is nearer; ``range`` takes a
  squared radius.  ``metric="ip"``: scores are inner products, larger is nearer; ``range``
  returns scores above the threshold.
* Missing neighbours (fewer keys than ``k``) come back as id ``-1`` with distance ``inf``
  (l2) or ``-inf`` (ip).
* Keys are ``(n, dim)`` float32 arrays (anything array-like is converted, one key may be a 1-D
  array); ids are int64 and unique within an index (adding a present id is an error).

Threads: searches run with `search_threads` OpenMP threads (default 1) and restore FAISS's
setting afterwards. Lookups of a few queries gain nothing from threads, and on a busy
machine OpenMP threads waiting for a core turn a 0.1 ms search into a 20-60 ms one; 0 keeps
FAISS's default (one per core), which pays off for large batches. Builds use FAISS's default.

GPU: with ``device="auto"`` (or ``"gpu"``) and a FAISS build with GPU support and a visible
GPU, exact searches run on a GPU copy of the flat index (refreshed lazily after changes). The
CPU index stays the source of truth, so saving and the results' meaning do not change.
Nothing in the tests needs a GPU; ``"gpu"`` without one is an error, ``"auto"`` falls back.
"""

from __future__ import annotations

import contextlib
import io
import json
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np

_MAGIC = b"LLKI"
_VERSION = 1


def gpu_available() -> bool:
    """Whether this FAISS build has GPU support and sees at least one GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _as_keys(keys: Any, dim: int) -> np.ndarray:
    arr = np.asarray(keys, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise ValueError(f"keys must have shape (n, {dim}), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("keys must be finite")
    return np.ascontiguousarray(arr)


def _as_ids(ids: Any) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.ndim == 0:
        arr = arr[None]
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"ids must be a 1-D array of integers, got {arr.dtype} {arr.shape}")
    return np.ascontiguousarray(arr.astype(np.int64))


class KeyIndex:
    """Float32 keys under int64 ids, exact below a size threshold and HNSW above it.

    Invariants: ``len(self)`` is the number of live keys; every live id is found by
    ``get``/``in``; a search never returns a removed id; ``from_bytes(to_bytes())`` gives an
    index whose searches return identical ids and distances.
    """

    def __init__(self, dim: int, metric: str = "l2", *, approximate_above: int = 50_000,
                 hnsw_m: int = 32, ef_construction: int = 64, ef_search: int = 64,
                 compact_ratio: float = 0.25, device: str = "cpu", search_threads: int = 1):
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        if metric not in ("l2", "ip"):
            raise ValueError(f"metric must be 'l2' or 'ip', got {metric!r}")
        if device not in ("cpu", "gpu", "auto"):
            raise ValueError(f"device must be 'cpu', 'gpu' or 'auto', got {device!r}")
        if device == "gpu" and not gpu_available():
            raise ValueError("device='gpu' but this FAISS build has no GPU support or no GPU")
        self.dim = int(dim)
        self.metric = metric
        self.approximate_above = int(approximate_above)
        self.hnsw_m, self.ef_construction, self.ef_search = int(hnsw_m), int(ef_construction), int(ef_search)
        self.compact_ratio = float(compact_ratio)
        self.device = device
        self.search_threads = int(search_threads)
        self._dead: set[int] = set()
        self._live: set[int] = set()
        self._index = self._new_index(approximate=False)
        self._gpu: Any = None  # (gpu index, internal->external ids) or None when stale

    # ---- construction --------------------------------------------------------------------
    def _new_index(self, approximate: bool) -> Any:
        faiss_metric = faiss.METRIC_L2 if self.metric == "l2" else faiss.METRIC_INNER_PRODUCT
        if approximate:
            inner = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss_metric)
            inner.hnsw.efConstruction = self.ef_construction
            inner.hnsw.efSearch = self.ef_search
        else:
            inner = faiss.IndexFlatL2(self.dim) if self.metric == "l2" else faiss.IndexFlatIP(self.dim)
        return faiss.IndexIDMap2(inner)

    @property
    def approximate(self) -> bool:
        """True while the keys live in an HNSW graph."""
        return isinstance(faiss.downcast_index(self._index.index), faiss.IndexHNSW)

    def _all_ids(self) -> np.ndarray:
        """Ids in insertion order, tombstones included."""
        return faiss.vector_to_array(self._index.id_map).astype(np.int64)

    def ids(self) -> np.ndarray:
        """Live ids, in insertion order."""
        ids = self._all_ids()
        if self._dead:
            ids = ids[~np.isin(ids, np.fromiter(self._dead, np.int64, len(self._dead)))]
        return ids

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, key_id: int) -> bool:
        return int(key_id) in self._live

    # ---- changes ---------------------------------------------------------------------------
    def add(self, keys: Any, ids: Any) -> None:
        """Add keys under ids (unique, not present). May switch to the approximate regime."""
        keys = _as_keys(keys, self.dim)
        ids = _as_ids(ids)
        if len(ids) != len(keys):
            raise ValueError(f"{len(keys)} keys but {len(ids)} ids")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("ids must be unique")
        if len(ids) == 0:
            return
        present = [int(i) for i in ids if int(i) in self._live]
        if present:
            raise ValueError(f"ids already present: {present[:5]}")
        if any(int(i) in self._dead for i in ids):
            self._rebuild()  # a tombstoned id cannot sit twice in the HNSW graph
        self._index.add_with_ids(keys, ids)
        self._live.update(int(i) for i in ids)
        self._gpu = None
        if not self.approximate and self.approximate_above and len(self) > self.approximate_above:
            self._rebuild()

    def remove(self, ids: Iterable[int] | np.ndarray) -> int:
        """Remove ids (absent ones are ignored); returns how many were removed."""
        live = np.array(sorted({int(i) for i in _as_ids(np.asarray(list(ids)))} & self._live),
                        dtype=np.int64)
        if len(live) == 0:
            return 0
        self._gpu = None
        self._live.difference_update(int(i) for i in live)
        if not self.approximate:
            return int(self._index.remove_ids(live))
        self._dead.update(int(i) for i in live)
        if len(self._dead) > self.compact_ratio * self._index.ntotal:
            self._rebuild()
        return len(live)

    def _rebuild(self) -> None:
        """Rebuild from the live keys in insertion order (drops tombstones; picks the regime
        for the live size)."""
        ids = self._all_ids()
        keys = self._index.index.reconstruct_n(0, len(ids)) if len(ids) else np.zeros((0, self.dim), np.float32)
        if self._dead:
            live = ~np.isin(ids, np.fromiter(self._dead, np.int64, len(self._dead)))
            ids, keys = ids[live], keys[live]
        approx = bool(self.approximate_above) and len(ids) > self.approximate_above
        self._index = self._new_index(approx)
        self._dead = set()
        self._gpu = None
        if len(ids):
            self._index.add_with_ids(keys, ids)

    def clear(self) -> None:
        """Remove everything (back to the exact regime)."""
        self._index = self._new_index(approximate=False)
        self._dead = set()
        self._live = set()
        self._gpu = None

    # ---- lookups ---------------------------------------------------------------------------
    def get(self, ids: Any) -> np.ndarray:
        """The stored keys of live ids, ``(n, dim)``; KeyError for an absent id."""
        ids = _as_ids(ids)
        missing = [int(i) for i in ids if int(i) not in self._live]
        if missing:
            raise KeyError(f"ids not in the index: {missing[:5]}")
        out = np.empty((len(ids), self.dim), np.float32)
        for row, i in enumerate(ids):
            out[row] = self._index.reconstruct(int(i))
        return out

    def search(self, queries: Any, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest live keys of each query: ``(distances, ids)``, both ``(n, k)``."""
        queries = _as_keys(queries, self.dim)
        if k < 1:
            raise ValueError(f"k must be positive, got {k}")
        if self._use_gpu():
            return self._gpu_search(queries, k)
        params = self._params()
        with self._threads():
            dist, ids = (self._index.search(queries, k) if params is None
                         else self._index.search(queries, k, params=params))
        return self._fill_missing(dist, ids)

    @contextlib.contextmanager
    def _threads(self) -> Iterator[None]:
        if self.search_threads <= 0:
            yield
            return
        before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(self.search_threads)
        try:
            yield
        finally:
            faiss.omp_set_num_threads(before)

    def _fill_missing(self, dist: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        missing = ids < 0
        if missing.any():
            dist = dist.copy()
            dist[missing] = np.inf if self.metric == "l2" else -np.inf
        return dist, ids.astype(np.int64)

    def range(self, queries: Any, radius: float) -> list[tuple[np.ndarray, np.ndarray]]:
        """Every live key within `radius` of each query (squared L2 below `radius`, or inner
        product above it): one ``(distances, ids)`` pair per query, nearest first."""
        queries = _as_keys(queries, self.dim)
        if len(self) == 0:
            return [(np.zeros(0, np.float32), np.zeros(0, np.int64)) for _ in queries]
        params = self._params()
        with self._threads():
            lims, dist, ids = (self._index.range_search(queries, float(radius)) if params is None
                               else self._index.range_search(queries, float(radius), params=params))
        out = []
        for q in range(len(queries)):
            d, i = dist[lims[q]:lims[q + 1]], ids[lims[q]:lims[q + 1]].astype(np.int64)
            order = np.argsort(d if self.metric == "l2" else -d, kind="stable")
            out.append((d[order], i[order]))
        return out

    def _params(self) -> Any:
        if not self._dead:
            return None
        sel = faiss.IDSelectorNot(faiss.IDSelectorBatch(np.fromiter(sorted(self._dead), np.int64)))
        params = faiss.SearchParametersHNSW(sel=sel, efSearch=self.ef_search)
        params._keep = sel  # the selector must outlive the call
        return params

    def _use_gpu(self) -> bool:
        return self.device != "cpu" and not self.approximate and gpu_available() and len(self) > 0

    def _gpu_search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self._gpu is None:
            res = faiss.StandardGpuResources()
            gpu_index = faiss.index_cpu_to_gpu(res, 0, faiss.downcast_index(self._index.index))
            self._gpu = (res, gpu_index, self._all_ids())
        _, gpu_index, labels = self._gpu
        dist, pos = gpu_index.search(queries, k)
        return self._fill_missing(dist, np.where(pos >= 0, labels[np.clip(pos, 0, None)], -1))

    # ---- persistence -----------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """The constructor arguments (plain data)."""
        return {"dim": self.dim, "metric": self.metric, "approximate_above": self.approximate_above,
                "hnsw_m": self.hnsw_m, "ef_construction": self.ef_construction,
                "ef_search": self.ef_search, "compact_ratio": self.compact_ratio,
                "device": self.device, "search_threads": self.search_threads}

    def to_bytes(self) -> np.ndarray:
        """The whole index (settings, tombstones, FAISS index) as a uint8 array; wrap with
        ``torch.from_numpy`` to keep it in a state_dict."""
        header = json.dumps({"version": _VERSION, **self.settings(),
                             "dead": sorted(self._dead)}).encode()
        body = faiss.serialize_index(self._index)
        buf = io.BytesIO()
        buf.write(_MAGIC)
        buf.write(struct.pack("<I", len(header)))
        buf.write(header)
        buf.write(body.tobytes())
        return np.frombuffer(buf.getvalue(), dtype=np.uint8).copy()

    @classmethod
    def from_bytes(cls, data: Any, device: str | None = None) -> KeyIndex:
        """Inverse of `to_bytes` (accepts a uint8 numpy array, a CPU tensor, or bytes)."""
        raw = bytes(data) if isinstance(data, (bytes, bytearray)) else np.asarray(data, np.uint8).tobytes()
        if raw[:4] != _MAGIC:
            raise ValueError("not a KeyIndex byte string")
        (n,) = struct.unpack("<I", raw[4:8])
        header = json.loads(raw[8:8 + n].decode())
        if header.pop("version") != _VERSION:
            raise ValueError("unsupported KeyIndex format version")
        dead = header.pop("dead")
        if device is not None:
            header["device"] = device
        elif header["device"] == "gpu" and not gpu_available():
            header["device"] = "auto"
        out = cls(**header)
        out._index = faiss.deserialize_index(np.frombuffer(raw[8 + n:], dtype=np.uint8).copy())
        out._dead = {int(i) for i in dead}
        out._live = set(out._all_ids().tolist()) - out._dead
        return out

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(self.to_bytes().tobytes())

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> KeyIndex:
        return cls.from_bytes(Path(path).read_bytes(), device=device)

    def nbytes(self) -> int:
        """Approximate bytes held: keys, ids (twice: map and reverse map) and HNSW links."""
        n = int(self._index.ntotal)
        links = n * self.hnsw_m * 2 * 4 if self.approximate else 0
        return n * (self.dim * 4 + 8 + 16) + links

    def __repr__(self) -> str:
        kind = "hnsw" if self.approximate else "flat"
        return f"KeyIndex(dim={self.dim}, metric={self.metric!r}, {kind}, {len(self)} keys)"


__all__ = ["KeyIndex", "gpu_available"]
