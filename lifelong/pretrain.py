"""Pretrain a small GPT-2 on a synthetic world, on CPU, deterministically.

Every training sequence is one trained (fact, template) pair: `prompt + " " + object + [EOS]`.
Held-out pairs are never shown; they measure whether the model maps a phrasing it never saw
with a fact onto that fact. The loss weights the object (and EOS) tokens 1 and the prompt
tokens `prompt_weight` (0 by default: predicting the template and the name teaches nothing
about facts and costs capacity).

Invariants: the same (WorldConfig, PretrainConfig) and thread count give identical weights
(torch.manual_seed for the init, a seeded torch.Generator for the data order, no dropout);
positions start at 0 in every row (right padding), matching how `scoring` feeds prompts
(left padding with position ids that skip the pads).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from .config import setting, to_dict
from .tokenizer import build_bpe_tokenizer
from .world import World, WorldConfig


@dataclass(frozen=True)
class PretrainConfig:
    """Model shape and optimisation of `lifelong pretrain`. The defaults are the built-in
    model's recipe (streams/README.md lists what else was tried): one wide layer memorizes
    the world far faster per CPU second than deeper, narrower models, and 8 heads let that
    layer gather both words of a name and the relation's words into the last position."""

    seed: int = setting(0, "seed of the weight init and of the data order")
    n_layer: int = setting(1, "transformer blocks", min=1)
    n_embd: int = setting(256, "hidden width", min=8)
    n_head: int = setting(8, "attention heads (must divide n_embd)", min=1)
    n_positions: int = setting(48, "longest sequence the model accepts (tokens)", min=8)
    vocab_size: int = setting(2048, "byte-level BPE vocabulary trained on the world's text "
                                    "(an organism's: on its stream's texts, with [organism] "
                                    "tokenizer = bpe; unused by word-level organisms)", min=300)
    steps: int = setting(4000, "optimiser steps", min=1)
    batch_size: int = setting(128, "sequences per step", min=1)
    lr: float = setting(2e-3, "peak learning rate (AdamW)", min=0.0)
    warmup_steps: int = setting(200, "steps of linear warmup", min=0)
    min_lr_ratio: float = setting(0.05, "final lr as a share of the peak (cosine decay)",
                                  min=0.0, max=1.0)
    weight_decay: float = setting(0.01, "AdamW weight decay", min=0.0)
    embed_lr_mult: float = setting(1.0, "learning-rate multiplier of the token embeddings (the "
                                   "facts of one-token entities live there; >1 learns them "
                                   "several times faster)", min=0.0)
    bucket_by_length: bool = setting(False, "batch sequences of similar length together (each "
                                     "epoch: shuffle, sort windows of 64 batches by length, "
                                     "shuffle the batches): far less padding, same data")
    grad_clip: float = setting(1.0, "gradient norm clip (0: none)", min=0.0)
    prompt_weight: float = setting(0.0, "loss weight of prompt tokens (object and EOS "
                                   "tokens weigh 1)", min=0.0)
    threads: int = setting(2, "torch CPU threads", min=1)
    trace_facts: int = setting(0, "after training, causal-trace this many facts and name the "
                               "layer whose MLP carries their recall at the subject's last token "
                               "in config.json (`lifelong_edit_layer`: methods edit it by "
                               "default); 0: no trace", min=0)
    trace_samples: int = setting(5, "noise samples per traced fact", min=1)
    edit_layer: int | None = setting(None, "the layer to name in config.json as the methods' "
                                     "default (a choice made on a dev stream among the layers "
                                     "the trace shows at work); none: the trace's MLP peak",
                                     min=0)
    eval_every: int = setting(500, "steps between monitoring evaluations (0: none)", min=0)
    eval_sample: int = setting(2000, "pairs per split in a monitoring evaluation", min=1)
    log_seconds: float = setting(5.0, "seconds between progress lines", min=0.0)

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_head ({self.n_head}) must divide n_embd ({self.n_embd})")


#: A training sequence as token ids and its per-position loss weights (weights[k] weighs
#: the prediction of ids[k + 1]; len(weights) == len(ids) - 1).
Row = tuple[list[int], list[float]]
Encoded = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def pair_rows(tok, pairs: list[tuple[str, str]], prompt_weight: float) -> list[Row]:
    """(prompt, target) pairs as rows `prompt target [EOS]`: the target and the EOS weigh 1,
    the prompt's later tokens `prompt_weight`."""
    rows = []
    for prompt, target in pairs:
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        t = tok(prompt + " " + target, add_special_tokens=False)["input_ids"][len(p):]
        rows.append((p + t + [tok.eos_token_id], [prompt_weight] * (len(p) - 1) + [1.0] * (len(t) + 1)))
    return rows


def pad_rows(rows: list[Row], pad_id: int, max_len: int) -> Encoded:
    """Right-padded ids, per-position loss weights (aligned with the *predicted* token), and
    row lengths; a ValueError for a row longer than `max_len`."""
    for ids, _ in rows:
        if len(ids) > max_len:
            raise ValueError(f"sequence of {len(ids)} tokens exceeds n_positions={max_len}")
    width = max(len(r) for r, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    w = torch.zeros((len(rows), width - 1))
    for i, (r, wr) in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        w[i, : len(wr)] = torch.tensor(wr)
    return ids, w, torch.tensor([len(r) for r, _ in rows])


def _encode(tok, pairs: list[tuple[str, str]], prompt_weight: float, max_len: int) -> Encoded:
    """`pad_rows` of `pair_rows`."""
    return pad_rows(pair_rows(tok, pairs, prompt_weight), tok.pad_token_id, max_len)


def _pairs(world: World, split: list) -> list[tuple[str, str]]:
    return [(world.prompt(f, t), f.value) for f, t in split]


def world_tokenizer(world: World, vocab_size: int):
    """The BPE tokenizer of a world: trained on its pretraining text and every phrasing and
    name it has (held-out and out-of-distribution phrasings included: the tokenizer knows
    their words, the model never trains on them)."""
    return build_bpe_tokenizer(world.corpus() + world.texts(), vocab_size)


def build_model(cfg: PretrainConfig, tok) -> GPT2LMHeadModel:
    """A fresh GPT-2 (no dropout, tied embeddings) initialised from `cfg.seed`."""
    torch.manual_seed(cfg.seed)
    gcfg = GPT2Config(vocab_size=len(tok), n_positions=cfg.n_positions, n_embd=cfg.n_embd,
                      n_layer=cfg.n_layer, n_head=cfg.n_head, resid_pdrop=0.0,
                      embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=tok.eos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=True)
    return GPT2LMHeadModel(gcfg)


def lr_at(step: int, cfg: PretrainConfig) -> float:
    """Linear warmup to `lr`, then cosine decay to `lr * min_lr_ratio` at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(cfg.steps - cfg.warmup_steps, 1)
    cos = 0.5 * (1 + math.cos(math.pi * min(step - cfg.warmup_steps, span) / span))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cos)


def _batch_loss(model, ids: torch.Tensor, w: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """Weighted next-token loss. The LM head runs only where the weight is non-zero (with
    the default prompt_weight 0 that is the object and EOS positions: a cheaper step)."""
    width = int(lens.max())
    ids, w = ids[:, :width], w[:, : width - 1]
    hidden = model.transformer(input_ids=ids).last_hidden_state[:, :-1]
    keep = w > 0
    logits = model.lm_head(hidden[keep])
    nll = torch.nn.functional.cross_entropy(logits, ids[:, 1:][keep], reduction="none")
    return (nll * w[keep]).sum() / w[keep].sum()


@torch.no_grad()
def quick_accuracy(model, encoded: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                   batch_size: int = 512) -> float:
    """Teacher-forced exact-match accuracy of the objects of `_encode`d pairs (encoded with
    prompt_weight 0). Monitoring only: reported numbers come from `modelcheck.check_model`."""
    ids, w, lens = encoded
    model.eval()
    hits = 0
    for start in range(0, len(ids), batch_size):
        b_ids, b_w, b_lens = (x[start:start + batch_size] for x in encoded)
        width = int(b_lens.max())
        pred = model(input_ids=b_ids[:, :width]).logits[:, :-1].argmax(-1)
        gold = b_ids[:, 1:width]
        # positions of weight 1 predict the object tokens and the EOS; leave the EOS out
        mask = b_w[:, : width - 1] > 0
        mask[torch.arange(len(b_ids)), b_lens - 2] = False
        hits += int(((pred == gold) | ~mask).all(-1).sum())
    model.train()
    return hits / max(len(ids), 1)


def _epoch_batches(lens: torch.Tensor, cfg: PretrainConfig,
                   gen: torch.Generator) -> list[torch.Tensor]:
    """One epoch of full batches in a seeded order (taken from the end of the list). With
    `bucket_by_length`, each window of 64 batches is sorted by sequence length before it is
    cut, so a batch pads to about its own length; the batches are then shuffled."""
    order = torch.randperm(len(lens), generator=gen)
    n = len(order) // cfg.batch_size * cfg.batch_size
    order = order[:n]
    if cfg.bucket_by_length:
        window = 64 * cfg.batch_size
        parts = []
        for start in range(0, n, window):
            part = order[start:start + window]
            parts.append(part[torch.argsort(lens[part], stable=True)])
        order = torch.cat(parts)
    batches = list(order.split(cfg.batch_size))
    if cfg.bucket_by_length:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]
    return batches[::-1]


def _sample(items: list, n: int, seed: int) -> list:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(items), generator=g)[:n].tolist()
    return [items[i] for i in sorted(idx)]


@contextlib.contextmanager
def _quiet_transformers():
    """Rows are right padded and attention is causal, so pads never reach a real token:
    silence transformers' "pass an attention_mask" warning (logger level restored after)."""
    logger = logging.getLogger("transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def train(world: World, cfg: PretrainConfig, tok, progress: bool = True,
          log: Callable[[str], None] | None = None) -> tuple[GPT2LMHeadModel, dict]:
    """Train a fresh model on the world's trained pairs (held-out pairs only monitored).
    Ctrl-C stops early (the partial model is returned, `info["interrupted"]` is True)."""
    return train_on_pairs(_pairs(world, world.trained_pairs()),
                          _pairs(world, world.heldout_pairs()),
                          cfg, tok, progress=progress, log=log)


def train_on_pairs(train_pairs: list[tuple[str, str]], held_pairs: list[tuple[str, str]],
                   cfg: PretrainConfig, tok, progress: bool = True,
                   log: Callable[[str], None] | None = None,
                   extra_rows: Callable[[int], list[Row]] | None = None,
                   monitors: dict[str, list[Row]] | None = None) -> tuple[GPT2LMHeadModel, dict]:
    """Train a fresh model on (prompt, target) `train_pairs` and `extra_rows(epoch)`
    (token-level sequences drawn afresh for each epoch, e.g. an organism's reading sequences,
    whose random values must not be memorised), in a seeded order; `held_pairs` are never
    trained, only monitored (may be empty: no held-out accuracy then), and so are the rows of
    `monitors` (each named in the progress lines and the history). Without extra rows and
    monitors, exactly as before they existed. Ctrl-C stops early (the partial model is
    returned, `info["interrupted"]` is True)."""
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    pairs = pair_rows(tok, train_pairs, cfg.prompt_weight)

    def epoch_data(epoch: int) -> Encoded:
        rows = pairs + (extra_rows(epoch) if extra_rows else [])
        return pad_rows(rows, tok.pad_token_id, cfg.n_positions)

    ids, w, lens = epoch_data(0)
    epoch = 0
    watched = {name: pad_rows(r, tok.pad_token_id, 10 ** 6) for name, r in (monitors or {}).items() if r}
    mon_train = _encode(tok, _sample(train_pairs, cfg.eval_sample, cfg.seed + 1), 0.0, 10 ** 6)
    mon_held = (_encode(tok, _sample(held_pairs, cfg.eval_sample, cfg.seed + 2), 0.0, 10 ** 6)
                if held_pairs else None)
    model = build_model(cfg, tok)
    model.train()
    embed = [p for n, p in model.named_parameters() if "wte" in n]
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "wte" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay, "mult": 1.0},
                             {"params": no_decay, "weight_decay": 0.0, "mult": 1.0},
                             {"params": embed, "weight_decay": 0.0, "mult": cfg.embed_lr_mult}],
                            lr=cfg.lr, betas=(0.9, 0.98))
    gen = torch.Generator().manual_seed(cfg.seed)
    batches: list[torch.Tensor] = []
    info: dict = {"interrupted": False, "history": []}
    start = last_log = time.perf_counter()
    done, loss_avg = 0, None  # done: optimiser steps completed
    try:
        for step in range(cfg.steps):
            if not batches:  # a new epoch
                if step and extra_rows:
                    epoch += 1
                    ids, w, lens = epoch_data(epoch)
                batches = _epoch_batches(lens, cfg, gen)
            idx = batches.pop()
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg) * group["mult"]
            loss = _batch_loss(model, ids[idx], w[idx], lens[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            done = step + 1
            loss_avg = loss.item() if loss_avg is None else 0.9 * loss_avg + 0.1 * loss.item()
            now = time.perf_counter()
            line = None
            if cfg.eval_every and (step + 1) % cfg.eval_every == 0:
                acc_t = quick_accuracy(model, mon_train)
                acc_h = quick_accuracy(model, mon_held) if mon_held else None
                info["history"].append({"step": step + 1, "loss": round(loss_avg, 4),
                                        "train_acc": acc_t, "heldout_acc": acc_h,
                                        "elapsed_s": round(now - start, 1)})
                line = f" trained-acc {acc_t:.3f}" + (
                    f" held-out-acc {acc_h:.3f}" if acc_h is not None else "")
                if watched:
                    accs = {n: quick_accuracy(model, enc) for n, enc in watched.items()}
                    info["history"][-1]["monitors"] = accs
                    line += "".join(f" {n} {a:.3f}" for n, a in accs.items())
            if progress and (line is not None or now - last_log >= cfg.log_seconds):
                log(f"step {step + 1}/{cfg.steps} loss {loss_avg:.4f} lr {lr_at(step, cfg):.2e} "
                    f"elapsed {now - start:.0f}s{line or ''}")
                last_log = now
    except KeyboardInterrupt:
        info["interrupted"] = True
        log(f"interrupted after {done} steps; keeping the model trained so far")
    info.update(steps_done=done, train_seconds=round(time.perf_counter() - start, 1),
                final_loss=loss_avg)
    model.eval()
    return model, info


def _final_check(model, tok, world: World, sample: int | None) -> dict:
    """Accuracies of the trained model in both protocols (via modelcheck/scoring)."""
    from .model import LM
    from .modelcheck import check_model
    return check_model(LM(model=model, tok=tok, name="pretrained", path=""), world,
                       sample=sample)


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's CPU thread count set to `n` inside, restored after (thread count changes the
    float results, so training pins it)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def write_model_dir(out_dir: str | Path, model, tok, record_name: str, record: dict,
                    threads: int) -> dict:
    """Write a loadable model directory (model.safetensors + config.json, the tokenizer) and
    `record_name` holding `record` plus the weights' size, the software and the thread count
    it was made with."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    record = {**record, "model_bytes": (out / "model.safetensors").stat().st_size,
              "torch": torch.__version__, "threads": threads,
              "python": platform.python_version(), "machine": platform.machine()}
    (out / record_name).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record


def pretrain(world_cfg: WorldConfig, pretrain_cfg: PretrainConfig, out_dir: str | Path,
             progress: bool = True, check_sample: int | None = None) -> dict:
    """Generate the world, train, check (on a seeded sample of `check_sample` pairs per split,
    or all), and write a loadable model directory: model.safetensors + config.json, the
    tokenizer, world.json and pretrain.json. Returns what pretrain.json holds."""
    wall = time.perf_counter()
    with torch_threads(pretrain_cfg.threads):
        world = World.generate(world_cfg)
        tok = world_tokenizer(world, pretrain_cfg.vocab_size)
        with _quiet_transformers():
            model, info = train(world, pretrain_cfg, tok, progress=progress)
            check = _final_check(model, tok, world, check_sample)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    world.save(Path(out_dir) / "world.json")
    record = {"world_config": to_dict(world_cfg), "pretrain_config": to_dict(pretrain_cfg),
              "world": world.summary(), "parameters": sum(p.numel() for p in model.parameters()),
              **info, "check": check}
    written = write_model_dir(out_dir, model, tok, "pretrain.json", record, pretrain_cfg.threads)
    if pretrain_cfg.trace_facts:
        written = trace_model_dir(out_dir, world, pretrain_cfg, written)
    written["wall_seconds"] = round(time.perf_counter() - wall, 1)
    (Path(out_dir) / "pretrain.json").write_text(json.dumps(written, indent=2) + "\n",
                                                 encoding="utf-8")
    return written


def trace_model_dir(out_dir: str | Path, world: World, cfg: PretrainConfig, record: dict) -> dict:
    """Causal-trace the model just written (`lifelong.trace`), name its edit layer in
    config.json (`lifelong_edit_layer`: the methods' default layer) and add the trace's
    summary to the record. Also used on its own for a model pretrained before this step."""
    from .model import load_model
    from .trace import TraceConfig, annotate_model_dir, world_facts
    tcfg = TraceConfig(facts=cfg.trace_facts, samples=cfg.trace_samples, seed=cfg.seed)
    with torch_threads(cfg.threads):
        lm = load_model(str(out_dir))
        return {**record, "trace": annotate_model_dir(out_dir, lm, world_facts(world, cfg.seed),
                                                      tcfg, cfg.edit_layer)}
