"""`LM.fingerprint` hashes every byte of every weight: a change anywhere in a tensor (not
only in its first kilobytes) gives another fingerprint, so two checkpoints never share a
store's reference outputs."""

from __future__ import annotations

import torch
from conftest import make_tiny_model, tiny_tokenizer

from lifelong.model import LM


def test_a_change_at_the_end_of_a_tensor_changes_the_fingerprint():
    lm = LM(make_tiny_model("gpt2"), tiny_tokenizer(), "tiny", "")
    before = lm.fingerprint()
    assert before == LM(make_tiny_model("gpt2"), tiny_tokenizer(), "tiny", "").fingerprint()
    weight = lm.model.transformer.wte.weight  # > 4 KB: the old hash never saw its end
    assert weight.numel() * 4 > 4096
    with torch.no_grad():
        weight[-1, -1] += 1e-3
    assert lm.fingerprint() != before
