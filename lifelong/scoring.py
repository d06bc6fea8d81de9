"""Scoring prompt -> target pairs in the two protocols of the field, and the target loss
that editing methods optimise.

- teacher-forced: the gold target is fed in; a target token counts when it is the argmax
  given the prompt and the gold tokens before it (token accuracy, the common protocol);
- generated: greedy decoding from the prompt must reproduce the target's tokens exactly
  (the stricter protocol).

An item may have several acceptable answers (aliases, `score_answers`): teacher-forced it
scores as its best answer, generated it matches when the greedy continuation reproduces any
of them; `score_pairs` is the case of one answer each.

Batches are left padded with explicit position ids, so every row's last position is a real
token and results do not depend on which other rows share the batch (up to float rounding
of padded matmuls, which argmax comparisons absorb in practice). Generation recomputes the
whole sequence at each step (no KV cache) so that hook-based methods see ordinary forwards.
Scoring computes the output projection only at the positions a figure reads (the last one
when generating, those predicting target tokens when teacher-forcing: `forward_logits`'s
`keep`), most of a small model's forward; the training loss computes every position, so an
edit is trained exactly as before.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .model import LM, ForwardInfo


@dataclass(frozen=True)
class PairScore:
    """One scored pair. `tf_pred` are the argmax tokens at the target positions (teacher-
    forced); `gen_ids` the greedily generated tokens (as many as the target has); `nll` the
    mean negative log-likelihood of the target tokens, teacher-forced (exp(nll): perplexity).
    With several answers (`score_answers`), `tf_alias` is the index of the answer whose
    teacher-forced figures these are, `gen_alias` that of the first answer the generation
    reproduced (None: none did)."""

    tf_acc: float
    tf_exact: bool
    gen_exact: bool
    gen_text: str
    tf_pred: tuple[int, ...]
    gen_ids: tuple[int, ...]
    target_ids: tuple[int, ...]
    nll: float = float("nan")
    tf_alias: int = 0
    gen_alias: int | None = None


def tokenize_pair(lm: LM, prompt: str, target: str) -> tuple[list[int], list[int]]:
    """Token ids of `prompt` and of `target` as it continues the prompt after a space.

    The target ids are taken from tokenizing the joined text when that keeps the prompt's ids
    as a prefix (true for BPE and word-level tokenizers), which avoids the extra-space artefacts
    of tokenizing " target" on its own with SentencePiece tokenizers.
    """
    return pair_ids(lm.tok, prompt, target)


def pair_ids(tok, prompt: str, target: str) -> tuple[list[int], list[int]]:
    """`tokenize_pair` with the tokenizer alone (for code that has no LM yet: an organism's
    training sequences are split exactly as scoring splits them)."""
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    full = tok(prompt + " " + target, add_special_tokens=False)["input_ids"]
    if full[: len(p_ids)] == p_ids and len(full) > len(p_ids):
        return p_ids, full[len(p_ids):]
    return p_ids, tok(" " + target, add_special_tokens=False)["input_ids"]


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and attention mask of `rows` (the padding is `pad_id`, masked 0)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(list(r), dtype=torch.long)
            mask[i, width - len(r):] = 1
    return ids, mask


def forward_logits(lm: LM, ids: torch.Tensor, mask: torch.Tensor,
                   prompt_end: torch.Tensor, keep: int = 0) -> torch.Tensor:
    """Logits for a left-padded batch, with position ids that skip the padding and the
    batch's ForwardInfo exposed to hooks. `keep` > 0: only the last `keep` positions' logits
    (B, keep, V), where the model's output projection is most of a small model's cost; the
    kept logits are those of the full forward. A model whose forward cannot skip the others
    computes them and returns the last `keep`; hooks on the output projection see the kept
    positions only (`conditioning.replace_rows` aligns them on the right)."""
    dev = lm.device
    ids, mask, prompt_end = ids.to(dev), mask.to(dev), prompt_end.to(dev)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    extra = {"logits_to_keep": keep} if keep and _takes_keep(type(lm.model)) else {}
    with lm.batch_context(ForwardInfo(attention_mask=mask, prompt_end=prompt_end)):
        logits = lm.model(input_ids=ids, attention_mask=mask, position_ids=pos, **extra).logits
    return logits[:, -keep:] if keep else logits


def _takes_keep(cls: type) -> bool:
    """Whether a model class's forward takes `logits_to_keep` (every family transformers
    ships for causal LMs does; a custom class may not). Microseconds against a forward's
    milliseconds, so not cached."""
    return "logits_to_keep" in inspect.signature(cls.forward).parameters


def encode_pairs(lm: LM, prompts: Sequence[str], targets: Sequence[str]):
    """Left-padded prompt+target batch. Returns (ids, mask, prompt_end, target_lens, target_ids)."""
    return _encode([tokenize_pair(lm, p, t) for p, t in zip(prompts, targets)], lm.tok.pad_token_id)


def _encode(pairs: list[tuple[list[int], list[int]]], pad_id: int):
    ids, mask = left_pad([p + t for p, t in pairs], pad_id)
    tlens = torch.tensor([len(t) for _, t in pairs])
    return ids, mask, ids.shape[1] - tlens, tlens, [t for _, t in pairs]


def next_token_logp(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(B, T-1): log-probability of each next token of `ids` under `logits` (B, T, V)."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return logp.gather(-1, ids[:, 1:].to(logp.device).unsqueeze(-1)).squeeze(-1)


def target_loss(lm: LM, prompts: Sequence[str], targets: Sequence[str]) -> torch.Tensor:
    """Mean negative log-likelihood of the target tokens given their prompts (gradients flow).

    Each row's loss is the mean over its own target tokens, then rows are averaged, so a long
    target does not outweigh a short one.
    """
    return batch_target_loss(lm, encode_pairs(lm, prompts, targets))


def batch_target_loss(lm: LM, batch) -> torch.Tensor:
    """`target_loss` of an `encode_pairs` batch: training loops encode once, not every step."""
    ids, mask, prompt_end, tlens, _ = batch
    # every position's logits (no `keep`): the gradient of a kept slice differs from the
    # whole forward's in the last bits, and editing results would move with it
    tok_logp = next_token_logp(forward_logits(lm, ids, mask, prompt_end), ids)
    width = ids.shape[1]
    positions = torch.arange(width - 1, device=tok_logp.device).unsqueeze(0)
    # the token at position k is predicted at k-1; target tokens sit at [width - T, width)
    in_target = positions >= (width - 1 - tlens.to(tok_logp.device)).unsqueeze(1)
    per_row = -(tok_logp * in_target).sum(-1) / tlens.to(tok_logp.device)
    return per_row.mean()


@torch.no_grad()
def _teacher_forced(lm: LM, pairs: list[tuple[list[int], list[int]]]):
    ids, mask, prompt_end, tlens, tids = _encode(pairs, lm.tok.pad_token_id)
    width = min(int(tlens.max()) + 1, ids.shape[1])  # positions predicting target tokens, and the last
    logits = forward_logits(lm, ids, mask, prompt_end, keep=width)
    pred = logits.argmax(-1).cpu()
    gold_logp = next_token_logp(logits, ids[:, -width:]).cpu()
    out = []
    for i, t in enumerate(tids):
        n = len(t)
        p = pred[i, width - n - 1: width - 1].tolist()
        nll = -float(gold_logp[i, width - n - 1:].mean()) if n else float("nan")
        out.append((tuple(p), tuple(t), nll))
    return out


@torch.no_grad()
def _generate(lm: LM, p_rows: list[list[int]], lengths: Sequence[int]) -> list[tuple[int, ...]]:
    ids, mask = left_pad(p_rows, lm.tok.pad_token_id)
    prompt_end = torch.full((len(p_rows),), ids.shape[1])
    steps = max(lengths)
    for _ in range(steps):
        nxt = forward_logits(lm, ids, mask, prompt_end, keep=1)[:, -1].argmax(-1).cpu()
        ids = torch.cat([ids, nxt.unsqueeze(1)], dim=1)
        mask = torch.cat([mask, torch.ones_like(nxt).unsqueeze(1)], dim=1)
    gen = ids[:, prompt_end[0]:].tolist()
    return [tuple(g[:n]) for g, n in zip(gen, lengths)]


def greedy_ids(lm: LM, prompts: Sequence[str], n_tokens: int) -> list[tuple[int, ...]]:
    """The `n_tokens` token ids greedy decoding writes after each prompt (never stopped
    early: an end-of-sequence token is written like any other), batched as the generated
    protocol decodes."""
    rows = [lm.tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    return _generate(lm, rows, [n_tokens] * len(rows))


def score_pairs(lm: LM, prompts: Sequence[str], targets: Sequence[str],
                batch_size: int = 128) -> list[PairScore]:
    """Score every (prompt, target) pair in both protocols, in input order.

    Pairs are grouped by length before batching (less padding); results are put back in order.
    """
    if len(prompts) != len(targets):
        raise ValueError("prompts and targets differ in length")
    return score_answers(lm, prompts, [(t,) for t in targets], batch_size)


def score_answers(lm: LM, prompts: Sequence[str], answers: Sequence[Sequence[str]],
                  batch_size: int = 128) -> list[PairScore]:
    """Score every prompt against its acceptable answers (at least one each), in input order.

    Teacher-forced: every (prompt, answer) pair is scored as a single target is, all of them
    in the same length-sorted batches; a prompt's figures (tf_acc, tf_exact, nll, tf_pred,
    target_ids) are those of its best answer: highest token accuracy, then lowest nll, then
    the first (`tf_alias`). Generated: one greedy continuation per prompt, as long as its
    longest answer; it matches when it begins with any answer's tokens (`gen_alias`: the
    first such answer). gen_ids / gen_text are the continuation cut to the length of the
    matched answer (of the first answer when none matched).
    """
    if len(prompts) != len(answers):
        raise ValueError("prompts and answers differ in length")
    if any(not a for a in answers):
        raise ValueError("every prompt needs at least one answer")
    flat = [(i, a) for i, al in enumerate(answers) for a in al]
    toks = [tokenize_pair(lm, prompts[i], a) for i, a in flat]  # tokenized once
    tf: list = [None] * len(flat)
    order = sorted(range(len(flat)), key=lambda k: (len(prompts[flat[k][0]]) + len(flat[k][1]), k))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        for k, got in zip(idx, _teacher_forced(lm, [toks[k] for k in idx])):
            tf[k] = got
    rows: list[list[int]] = [[] for _ in prompts]  # prompt -> its indices into flat
    for k, (i, _) in enumerate(flat):
        rows[i].append(k)
    gens: list = [None] * len(prompts)
    order = sorted(range(len(prompts)),
                   key=lambda i: (len(prompts[i]) + max(len(a) for a in answers[i]), i))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        lengths = [max(len(tf[k][1]) for k in rows[i]) for i in idx]
        for i, gen in zip(idx, _generate(lm, [toks[rows[i][0]][0] for i in idx], lengths)):
            gens[i] = gen
    return [_best(lm, [tf[k] for k in ks], gens[i]) for i, ks in enumerate(rows)]


def _best(lm: LM, tf: list[tuple], gen: tuple[int, ...]) -> PairScore:
    """One prompt's score from its answers' teacher-forced results (pred, gold, nll) and its
    greedy continuation."""
    acc = [sum(a == b for a, b in zip(pred, gold)) / max(len(gold), 1) for pred, gold, _ in tf]
    nan_last = [nll if nll == nll else float("inf") for _, _, nll in tf]  # nan: no target token
    best = min(range(len(tf)), key=lambda j: (-acc[j], nan_last[j], j))
    match = next((j for j, (_, gold, _) in enumerate(tf) if gen[:len(gold)] == gold), None)
    cut = gen[:len(tf[0 if match is None else match][1])]
    pred, gold, nll = tf[best]
    return PairScore(
        tf_acc=acc[best], tf_exact=pred == gold, gen_exact=match is not None,
        gen_text=lm.tok.decode(list(cut)).strip(), tf_pred=pred, gen_ids=cut, target_ids=gold,
        nll=nll, tf_alias=best, gen_alias=match)
