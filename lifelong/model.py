"""Loading a causal language model: the built-in one or any Hugging Face directory.

`LM` bundles the model with its tokenizer and the per-forward context that hook-based
methods may read (`LM.forward_info`): where each row's prompt ends. Nothing here is global:
two `LM`s never share state.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .errors import ModelError

if TYPE_CHECKING:  # transformers' model classes take seconds to import: only where a model loads
    from transformers import PreTrainedModel

BUILTIN = "builtin"


def builtin_dir() -> Path:
    """Directory of the shipped model (weights, tokenizer, world.json)."""
    return Path(__file__).resolve().parent / "builtin"


@dataclass
class ForwardInfo:
    """What a hook may need to know about the batch being run.

    prompt_end[i] is the index (in the padded row) one past the last prompt token of row i;
    tokens from there on are target tokens being teacher-forced or generated. Rows are left
    padded, so the final position is always a real token.
    """

    attention_mask: torch.Tensor
    prompt_end: torch.Tensor


class Stopwatch:
    """Wall-clock milliseconds of a ``with`` block (`ms`, set when it ends), the work the
    block queued on `device` included: CUDA runs kernels asynchronously, so the clock is
    read after a synchronize, at the start and at the end (a no-op on the CPU). The device
    is resolved before the clock starts, never inside the timed span."""

    def __init__(self, device: torch.device | str):
        self._cuda = torch.device(device) if torch.device(device).type == "cuda" else None
        self.ms = 0.0

    def _sync(self) -> None:
        if self._cuda is not None:
            torch.cuda.synchronize(self._cuda)

    def start(self) -> Stopwatch:
        """Start the clock (after the work queued so far); returns self."""
        self._sync()
        self._t0 = time.perf_counter()
        return self

    def elapsed_ms(self) -> float:
        """Milliseconds since `start`, the work queued since included; the clock runs on."""
        self._sync()
        return (time.perf_counter() - self._t0) * 1e3

    def __enter__(self) -> Stopwatch:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.ms = self.elapsed_ms()


@dataclass
class LM:
    """A causal LM with its tokenizer. `model` is in eval mode; `tok` pads on the left."""

    model: PreTrainedModel
    tok: object
    name: str
    path: str
    forward_info: ForwardInfo | None = field(default=None, repr=False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @contextlib.contextmanager
    def batch_context(self, info: ForwardInfo) -> Iterator[None]:
        """Expose `info` to hooks for the forwards run inside the block."""
        previous, self.forward_info = self.forward_info, info
        try:
            yield
        finally:
            self.forward_info = previous

    def stopwatch(self) -> Stopwatch:
        """A timer for work on this model's device (see `Stopwatch`)."""
        return Stopwatch(self.device)

    def clone(self) -> LM:
        """An independent copy (weights deep-copied; the tokenizer is shared, it is read-only)."""
        return LM(copy.deepcopy(self.model), self.tok, self.name, self.path)

    def fingerprint(self) -> str:
        """A short hash of every weight, whole (names, shapes and all bytes): two models that
        differ in any weight get different fingerprints, so they never share a store's
        reference outputs or a saved memory."""
        h = hashlib.sha256()
        for name, tensor in sorted(self.model.state_dict().items()):
            h.update(name.encode())
            h.update(str(tuple(tensor.shape)).encode())
            h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


#: files that hold a Hugging Face model's weights (one of them, or a sharded index)
_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
            "pytorch_model.bin.index.json")
#: files a tokenizer is loaded from (any one of them is enough to try)
_TOKENIZER = ("tokenizer.json", "vocab.json", "tokenizer.model", "vocab.txt", "spiece.model")


def _causal_lm(arch: str) -> bool:
    return arch.endswith(("ForCausalLM", "LMHeadModel"))


def check_model_dir(where: Path, label: str) -> dict:
    """Check a model directory without loading any weights; return its parsed config.json.

    Invariant: on return, config.json is a JSON object whose `model_type` is a supported
    family (`layers.FAMILIES`) and whose `architectures` (when given) name a causal LM, and
    the directory holds weights and tokenizer files. Each failure is one `ModelError` line
    naming the path and what is wrong."""
    from .layers import FAMILIES
    if not where.exists():
        raise ModelError(f"{label}: not a model directory (no such directory)")
    if not where.is_dir():
        raise ModelError(f"{label}: not a model directory (a file, not a directory)")
    cfg_path = where / "config.json"
    if not cfg_path.exists():
        raise ModelError(f"{label}: not a model directory (no config.json)")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{cfg_path}: invalid config.json ({exc})") from None
    if not isinstance(cfg, dict):
        raise ModelError(f"{cfg_path}: invalid config.json (not a JSON object)")
    model_type, archs = cfg.get("model_type"), cfg.get("architectures") or []
    known = ", ".join(sorted(FAMILIES))
    if model_type not in FAMILIES:
        raise ModelError(f"{cfg_path}: model_type {model_type!r} is not a supported causal-LM "
                         f"family ({known})")
    if not isinstance(archs, list) or (archs and not any(isinstance(a, str) and _causal_lm(a)
                                                         for a in archs)):
        raise ModelError(f"{cfg_path}: architectures {archs!r} name no causal LM "
                         "(...ForCausalLM or ...LMHeadModel)")
    if not any((where / f).is_file() for f in _WEIGHTS):
        raise ModelError(f"{label}: no weights ({' or '.join(_WEIGHTS[:2])})")
    if not any((where / f).is_file() for f in _TOKENIZER):
        raise ModelError(f"{label}: no tokenizer ({', '.join(_TOKENIZER[:2])} or "
                         f"{_TOKENIZER[2]})")
    return cfg


def _load_tokenizer(where: Path, label: str):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(where), local_files_only=True)
        ids = tok("a b", add_special_tokens=False)["input_ids"]
    except Exception as exc:  # noqa: BLE001  (transformers/tokenizers raise OSError, ValueError, bare Exception)
        raise ModelError(f"{label}: the tokenizer does not load ({type(exc).__name__}: "
                         f"{_first_line(exc)})") from None
    # a tokenizer with no vocabulary loads fine and encodes everything to nothing
    if len(tok) < 2 or not ids:
        raise ModelError(f"{label}: the tokenizer is empty ({len(tok)} tokens; it encodes "
                         "text to nothing)")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    tok.padding_side = "left"
    return tok


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def load_model(path: str | None = None, device: str = "cpu") -> LM:
    """Load the built-in model (path None or "builtin") or a local Hugging Face directory.

    Never downloads: `local_files_only=True`. The directory is checked first
    (`check_model_dir`: config, family, weights, tokenizer), so an unusable one is refused
    with one line before any weights are read.
    """
    if path in (None, "", BUILTIN):
        where, name = builtin_dir(), BUILTIN
        if not (where / "config.json").exists():
            raise ModelError(f"the built-in model is missing from {where}; run `lifelong pretrain`")
    else:
        where, name = Path(path), str(path)
    check_model_dir(where, name)
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device {device!r}: torch sees no CUDA device here; use device = \"cpu\"")
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # loading a few-MB model needs no progress bar
    tok = _load_tokenizer(where, name)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(where), local_files_only=True,
                                                     dtype=torch.float32)
    except Exception as exc:  # noqa: BLE001  (damaged weights, a config that does not fit them, ...)
        raise ModelError(f"{name}: the model does not load ({type(exc).__name__}: "
                         f"{_first_line(exc)})") from None
    model.to(device).eval()
    return LM(model=model, tok=tok, name=name, path=str(where))
