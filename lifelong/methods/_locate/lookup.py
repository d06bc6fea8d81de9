"""Where a locate-then-edit method reads its key and writes its value.

* The lookup token: the subject's last token ("subject_last", the papers: the causal trace
  of GPT-2 XL and GPT-J puts the recall there) or the prompt's last ("prompt_last": the
  built-in model recalls at the last token, lifelong/builtin/trace/trace.md). A request
  without a subject, or whose subject is not found in its prompt's tokens, falls back to
  the prompt's last token, and the receipt says so.
* Prefix contexts: ROME's context templates, short texts the model itself writes from the
  first word of a corpus text (top-5 sampling, a generator seeded by the run's seed), put
  before the prompt, so k* is a key of the subject in several contexts rather than one.
* Keys: the edited projection's input at the lookup token, averaged over the contexts as
  the papers do (the bare prompt's key and the prefixes' mean key, averaged).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ...model import LM
from ...nethook import TraceDict
from ...scoring import encode_pairs, forward_logits, tokenize_pair
from ..base import EditRequest


@torch.no_grad()
def make_prefixes(lm: LM, starts: Sequence[str], n: int, length: int,
                  seed: int) -> list[list[int]]:
    """The token ids of `n` texts of `length` tokens the model writes, each from the first
    word of a text drawn from `starts` (top-5 sampling, deterministic from `seed`)."""
    words = [s.split()[0] for s in starts if s.split()]
    if not words or n == 0:
        return []
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = lm.tok(rng.choice(words), add_special_tokens=False)["input_ids"][:1]
        while len(ids) < length:
            x = torch.tensor([ids], device=lm.device)
            logits = lm.model(input_ids=x).logits[0, -1].float().cpu()
            top = logits.topk(5)
            pick = torch.multinomial(top.values.softmax(-1), 1, generator=gen)
            ids.append(int(top.indices[pick]))
        out.append(ids)
    return out


def in_context(prefix: str, prompt: str) -> str:
    return f"{prefix} {prompt}" if prefix else prompt


def subject_last(lm: LM, prompt: str, subject: str | None) -> int | None:
    """Index (in the prompt's tokens) of the subject's last token, or None when the request
    has no subject or its tokens are not a prefix of the prompt's."""
    if not subject or subject not in prompt:
        return None
    end = prompt.rindex(subject) + len(subject)
    full = lm.tok(prompt, add_special_tokens=False)["input_ids"]
    head = lm.tok(prompt[:end], add_special_tokens=False)["input_ids"]
    if not head or full[:len(head)] != head:
        return None
    return len(head) - 1


@dataclass(frozen=True)
class Rows:
    """A left-padded batch of prompt+target rows and each row's lookup position in it."""

    batch: tuple
    lookup: torch.Tensor  # (B,) position in the padded batch


def encode_rows(lm: LM, prompts: Sequence[str], targets: Sequence[str],
                where: Sequence[int | None]) -> Rows:
    """Encode prompt+target pairs; a row's lookup is `where[i]` tokens into its prompt, or
    its last prompt token when None (negative counts from the prompt's end)."""
    batch = encode_pairs(lm, prompts, targets)
    width = batch[0].shape[1]
    lookup = []
    for i, (p, t) in enumerate(zip(prompts, targets)):
        p_ids, t_ids = tokenize_pair(lm, p, t)
        offset = width - len(p_ids) - len(t_ids)
        w = where[i]
        pos = len(p_ids) - 1 if w is None else (w if w >= 0 else len(p_ids) + w)
        lookup.append(offset + pos)
    return Rows(batch, torch.tensor(lookup))


@dataclass(frozen=True)
class Site:
    """One request's rows: its prompt in every context (bare first), its lookup offset from
    the prompt's end (so it holds in every context), and how it was found."""

    request: EditRequest
    prompts: tuple[str, ...]
    from_end: int | None  # lookup index counted from the prompt's end; None: the last token
    how: str  # "subject_last", "prompt_last" or "prompt_last (fallback: ...)"


def sites(lm: LM, requests: Sequence[EditRequest], prefixes: Sequence[str],
          position: str) -> list[Site]:
    out = []
    for r in requests:
        prompts = (r.prompt,) + tuple(in_context(p, r.prompt) for p in prefixes)
        if position == "prompt_last":
            out.append(Site(r, prompts, None, "prompt_last"))
            continue
        idx = subject_last(lm, r.prompt, r.subject)
        if idx is None:
            why = "no subject" if not r.subject else "subject not found in the prompt's tokens"
            out.append(Site(r, prompts, None, f"prompt_last (fallback: {why})"))
            continue
        n = len(lm.tok(r.prompt, add_special_tokens=False)["input_ids"])
        out.append(Site(r, prompts, idx - n, "subject_last"))
    return out


def site_rows(lm: LM, site: Site, prompts: Sequence[str] | None = None) -> Rows:
    prompts = site.prompts if prompts is None else prompts
    return encode_rows(lm, prompts, [site.request.target] * len(prompts),
                       [site.from_end] * len(prompts))


def _forward(lm: LM, rows: Rows) -> None:
    ids, mask, end, _, _ = rows.batch
    forward_logits(lm, ids, mask, end)


@torch.no_grad()
def keys_at(lm: LM, names: Sequence[str], site_list: Sequence[Site]) -> dict[str, torch.Tensor]:
    """(n_sites, d_in) keys per module name: the input of the module at each site's lookup
    token, the bare prompt's key and the prefixes' mean key averaged (papers: k*)."""
    out: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    for site in site_list:
        rows = site_rows(lm, site)
        with TraceDict(lm.model, list(names), capture="input", stop=True) as td:
            _forward(lm, rows)
        at = torch.arange(len(site.prompts))
        for n in names:
            k = td[n].input[at, rows.lookup.to(td[n].input.device)].float()
            out[n].append(k[0] if len(k) == 1 else (k[0] + k[1:].mean(0)) / 2)
    return {n: torch.stack(v) for n, v in out.items()}


@torch.no_grad()
def outputs_at(lm: LM, name: str, site_list: Sequence[Site]) -> torch.Tensor:
    """(n_sites, d) output of module `name` at each site's lookup token of its bare prompt."""
    out = []
    for site in site_list:
        rows = site_rows(lm, site, site.prompts[:1])
        with TraceDict(lm.model, [name], capture="output", stop=True) as td:
            _forward(lm, rows)
        out.append(td[name].output[0, int(rows.lookup[0])].float())
    return torch.stack(out)
