"""The saved-memory format: a method's state as JSON + safetensors, never pickle.

A saved memory is a directory holding two files:

    memory.json          what the memory is: format and version, method name and resolved
                         config, seed, base model (reference and `LM.fingerprint()`), the
                         attach context, the edit log, and the method's state as a JSON tree
                         whose tensors are references into ...
    tensors.safetensors  ... every tensor and numpy array of the state, keyed by its path in
                         the state tree ("memories/0/merged").

`flatten` turns a state (nested dicts, lists and tuples of tensors, numpy arrays and scalars,
bytes, str, int, float, bool, None) into (JSON tree, {key: tensor}); `unflatten` is its exact
inverse: same types, same values bit for bit, same dict key types and order. Anything else (a
set, an arbitrary object, a complex tensor) is refused with a `LifelongError` naming where it
sits in the state: a method must expose a state made of those types.

Encoding (a JSON object with a key starting with "$" is a marker; so a dict whose keys are
not all strings, or has a key starting with "$", is written as a "$dict" list of pairs):

    {"$tensor": key}   torch tensor (contiguous, requires_grad False; from a GPU, also
                       "device": it comes back on the model's device when loaded)
    {"$ndarray": key}  numpy array          {"$npscalar": key}  numpy scalar (0-d array)
    {"$bytes": key}    bytes (uint8)        {"$tuple": [...]}   tuple
    {"$dict": [[k, v], ...]}                {"$float": "nan" | "inf" | "-inf"}
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import LifelongError

FORMAT = "lifelong-memory"
VERSION = 1
META_FILE = "memory.json"
TENSOR_FILE = "tensors.safetensors"

#: dtypes safetensors stores (torch names)
_DTYPES = {torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
           torch.uint16, torch.uint32, torch.uint64, torch.float16, torch.bfloat16,
           torch.float32, torch.float64}
_SAVABLE = ("tensors, numpy arrays and scalars, bytes, dicts, lists, tuples, str, int, "
            "float, bool, None")


class _Flattener:
    """One flatten pass: collects tensors under unique keys derived from their paths."""

    def __init__(self, what: str):
        self.what = what
        self.tensors: dict[str, torch.Tensor] = {}

    def refuse(self, path: str, problem: str) -> LifelongError:
        return LifelongError(f"cannot save {self.what}: {path or '(root)'} {problem} "
                             f"(savable: {_SAVABLE})")

    def put(self, path: str, tensor: torch.Tensor) -> str:
        if tensor.dtype not in _DTYPES:
            raise self.refuse(path, f"is a tensor of dtype {tensor.dtype}, which safetensors "
                                    "cannot hold")
        key, n = path or "state", 1
        while key in self.tensors:  # paths are unique unless dict keys contain "/"
            n += 1
            key = f"{path}#{n}"
        # a private copy: safetensors refuses tensors that share memory
        self.tensors[key] = tensor.detach().to("cpu").contiguous().clone()
        return key

    def encode(self, value: Any, path: str) -> Any:
        if isinstance(value, torch.Tensor):
            if value.device.type == "cpu":
                return {"$tensor": self.put(path, value)}
            return {"$tensor": self.put(path, value), "device": str(value.device)}
        if isinstance(value, np.ndarray):
            return {"$ndarray": self.put(path, self.from_numpy(value, path))}
        if isinstance(value, np.generic):
            return {"$npscalar": self.put(path, self.from_numpy(np.asarray(value), path))}
        if isinstance(value, (bytes, bytearray)) and type(value) in (bytes, bytearray):
            arr = np.frombuffer(bytes(value), dtype=np.uint8).copy()
            return {"$bytes": self.put(path, torch.from_numpy(arr))}
        if value is None or type(value) in (bool, int, str):
            return value
        if type(value) is float:
            return value if math.isfinite(value) else {"$float": repr(value)}
        if type(value) is list:
            return [self.encode(v, _join(path, i)) for i, v in enumerate(value)]
        if type(value) is tuple:
            return {"$tuple": [self.encode(v, _join(path, i)) for i, v in enumerate(value)]}
        if type(value) is dict:
            return self.encode_dict(value, path)
        raise self.refuse(path, f"is a {type(value).__module__}.{type(value).__qualname__}")

    def encode_dict(self, value: dict, path: str) -> Any:
        plain = all(type(k) is str and not k.startswith("$") for k in value)
        if plain:
            return {k: self.encode(v, _join(path, k)) for k, v in value.items()}
        pairs = []
        for k, v in value.items():
            pairs.append([self.encode_key(k, path), self.encode(v, _join(path, k))])
        return {"$dict": pairs}

    def encode_key(self, key: Any, path: str) -> Any:
        """Dict keys: str, int, float, bool, None, or tuples of those."""
        if key is None or type(key) in (bool, int, str):
            return key
        if type(key) is float:
            return key if math.isfinite(key) else {"$float": repr(key)}
        if type(key) is tuple:
            return {"$tuple": [self.encode_key(k, path) for k in key]}
        raise self.refuse(_join(path, repr(key)), f"is a dict key of type {type(key).__name__}")

    def from_numpy(self, arr: np.ndarray, path: str) -> torch.Tensor:
        if arr.dtype.hasobject or arr.dtype.kind not in "biuf":
            raise self.refuse(path, f"is a numpy array of dtype {arr.dtype}")
        # a native-order C copy (np.ascontiguousarray would turn a 0-d array into 1-d)
        return torch.from_numpy(arr.astype(arr.dtype.newbyteorder("="), order="C", copy=True))


def _join(path: str, key: Any) -> str:
    return f"{path}/{key}" if path else str(key)


def flatten(state: Any, what: str = "the state") -> tuple[Any, dict[str, torch.Tensor]]:
    """(JSON-able tree, tensors by key) of `state`; `unflatten` inverts it exactly.

    Raises LifelongError naming the first value that cannot be saved (`what` says whose
    state it is)."""
    f = _Flattener(what)
    return f.encode(state, ""), f.tensors


def unflatten(tree: Any, tensors: dict[str, torch.Tensor], device: str | None = None) -> Any:
    """Inverse of `flatten`: the original types and values. Tensors that were on the CPU come
    back on the CPU; the others on `device` (the model's device now; default: where they were)."""
    if isinstance(tree, list):
        return [unflatten(v, tensors, device) for v in tree]
    if not isinstance(tree, dict):
        return tree
    marker = next((k for k in tree if k.startswith("$")), None)
    if marker is not None:  # a plain dict with a "$" key was written as "$dict"
        return _decode_marker(tree, marker, tensors, device)
    return {k: unflatten(v, tensors, device) for k, v in tree.items()}


def _decode_marker(tree: dict, marker: str, tensors: dict[str, torch.Tensor],
                   device: str | None) -> Any:
    arg = tree[marker]
    if marker == "$tuple":
        return tuple(unflatten(v, tensors, device) for v in arg)
    if marker == "$dict":
        return {unflatten(k, tensors, device): unflatten(v, tensors, device) for k, v in arg}
    if marker == "$float":
        return float(arg)
    if marker not in ("$tensor", "$ndarray", "$npscalar", "$bytes"):
        raise LifelongError(f"saved memory: unknown marker {marker!r} (written by a newer "
                            "lifelong?)")
    if arg not in tensors:
        raise LifelongError(f"saved memory: tensor {arg!r} is missing from {TENSOR_FILE}")
    t = tensors[arg]
    if marker == "$tensor":
        return t.to(device or tree["device"]) if "device" in tree else t
    if marker == "$bytes":
        return t.numpy().tobytes()
    arr = t.numpy().copy()
    return arr if marker == "$ndarray" else arr[()]


# ---- the directory -------------------------------------------------------------------------
def write(path: str | Path, meta: dict[str, Any], state: Any, overwrite: bool = False) -> Path:
    """Write a saved memory: `meta` (JSON-able) plus `state` (flattened) into directory `path`.

    Refuses a non-empty directory unless `overwrite` (then only the two files are replaced;
    the tensors first and memory.json last, each atomically, so a reader never sees a
    memory.json that points at tensors it does not have)."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise LifelongError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise LifelongError(f"{out}: directory is not empty; choose another one or allow "
                            "overwriting")
    out.mkdir(parents=True, exist_ok=True)
    tree, tensors = flatten(state, f"the {meta.get('method', 'method')} state")
    doc = {"format": FORMAT, "version": VERSION, **meta, "state": tree}
    try:
        text = json.dumps(doc, indent=1, allow_nan=False, ensure_ascii=False) + "\n"
    except (TypeError, ValueError) as exc:  # meta is ours: a bug, but say where
        raise LifelongError(f"cannot save the memory's metadata as JSON: {exc}") from None
    meta_tmp, tensor_tmp = out / f"{META_FILE}.tmp", out / f"{TENSOR_FILE}.tmp"
    meta_tmp.write_text(text, encoding="utf-8")
    save_file(tensors, str(tensor_tmp), metadata={"format": FORMAT})
    # safetensors creates its file private (0600); give it the umask's mode, as memory.json
    os.chmod(tensor_tmp, stat.S_IMODE(meta_tmp.stat().st_mode))
    os.replace(tensor_tmp, out / TENSOR_FILE)
    os.replace(meta_tmp, out / META_FILE)
    return out


def read(path: str | Path, device: str | None = None) -> tuple[dict[str, Any], Any]:
    """(metadata without "state", state) of a saved memory directory; tensors saved from a
    GPU go to `device` (see `unflatten`)."""
    where = Path(path)
    meta_file = where / META_FILE
    if not meta_file.is_file():
        raise LifelongError(f"{where}: not a saved memory (no {META_FILE})")
    try:
        doc = json.loads(meta_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LifelongError(f"{meta_file}: not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise LifelongError(f"{meta_file}: not a lifelong memory file")
    if doc.get("version") != VERSION:
        raise LifelongError(f"{meta_file}: format version {doc.get('version')} is not {VERSION}")
    try:
        tensors = load_file(str(where / TENSOR_FILE))
    except (FileNotFoundError, SafetensorError, OSError) as exc:
        raise LifelongError(f"{where / TENSOR_FILE}: cannot read: {exc}") from None
    state = unflatten(doc.pop("state"), tensors, device)
    return doc, state
