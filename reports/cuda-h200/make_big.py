"""A random-init GPT-2 of the given size with the built-in model's tokenizer and world.json
(for cost measurements only: its answers are noise)."""
import json
import shutil
import sys
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

out, width, layers = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
src = Path("lifelong/builtin")
cfg = json.loads((src / "config.json").read_text())
torch.manual_seed(0)
model = GPT2LMHeadModel(GPT2Config(vocab_size=cfg["vocab_size"], n_positions=cfg["n_positions"],
                                   n_embd=width, n_layer=layers, n_head=max(1, width // 64),
                                   bos_token_id=cfg.get("bos_token_id"), eos_token_id=cfg.get("eos_token_id"),
                                   pad_token_id=cfg.get("pad_token_id")))
model.save_pretrained(out)
for f in ("tokenizer.json", "tokenizer_config.json", "world.json", "generation_config.json"):
    if (src / f).exists():
        shutil.copy(src / f, out / f)
print(out, sum(p.numel() for p in model.parameters()) / 1e6, "M parameters")
