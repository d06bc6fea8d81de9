"""Loading a causal language model: the built-in one or any Hugging Face directory.

`LM` bundles the model with its tokenizer and the per-forward context that hook-based
methods may read (`LM.forward_info`): where each row's prompt ends. Nothing here is global:
two `LM`s never share state.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.utils import logging as hf_logging

from .errors import LifelongError

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

    def clone(self) -> "LM":
        """An independent copy (weights deep-copied; the tokenizer is shared, it is read-only)."""
        return LM(copy.deepcopy(self.model), self.tok, self.name, self.path)

    def fingerprint(self) -> str:
        """A short hash of the weights: tells two models apart in a store."""
        h = hashlib.sha256()
        for name, tensor in sorted(self.model.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()[:4096])
            h.update(str(tuple(tensor.shape)).encode())
        return h.hexdigest()[:16]


def load_model(path: str | None = None, device: str = "cpu") -> LM:
    """Load the built-in model (path None or "builtin") or a local Hugging Face directory.

    Never downloads: `local_files_only=True`. A missing directory is a clear error.
    """
    if path in (None, "", BUILTIN):
        where, name = builtin_dir(), BUILTIN
        if not (where / "config.json").exists():
            raise LifelongError(f"the built-in model is missing from {where}; run `lifelong pretrain`")
    else:
        where, name = Path(path), str(path)
        if not (where / "config.json").exists():
            raise LifelongError(f"{path}: not a model directory (no config.json)")
    hf_logging.disable_progress_bar()  # loading a few-MB model needs no progress bar
    tok = AutoTokenizer.from_pretrained(str(where), local_files_only=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(str(where), local_files_only=True,
                                                 dtype=torch.float32)
    model.to(device).eval()
    return LM(model=model, tok=tok, name=name, path=str(where))
