"""Model organisms: a small GPT-2 that knows the ORIGINAL (pre-edit) facts of a real edit
stream, so that the stream can be replayed against a model for which its edits are edits.

What the organism learns (`collect_facts`), in the stream's file order:

- *prompts*: every edit's prompt -> the ground truth of its fact;
- *rephrases*: every rephrase of such an edit -> the same ground truth;
- *locality*: every locality probe's prompt -> its answer.

Invariants:

- The ground truth of a fact is the `previous` of the fact's FIRST edit. A re-edit's own
  `previous` is a value an earlier edit set, so it is never trained; the re-edit's prompt and
  rephrases map to the first edit's `previous`. A fact whose first edit has no `previous`
  has no ground truth: its edits teach nothing (they are counted), their locality probes do.
- Every training prompt appears once: the first (prompt, answer) in file order wins and has
  the role it first appeared with; a later pair with the same prompt and another answer is
  a conflict (dropped, counted). So the roles partition the training pairs.
- Edit targets, portability probes and queries are about the edited state: never trained,
  but their words are in the vocabulary (the tokenizer covers every text of the stream), and
  `n_positions` covers the longest (prompt, answer) sequence of the stream plus EOS.
- Training is `pretrain.train_on_pairs`: the same stream, OrganismConfig, PretrainConfig
  and thread count give identical weights. Ctrl-C keeps (and writes) the partial model.

Tokenizers (`OrganismConfig.tokenizer`): "word" (the default, and every shipped organism
before the subword ones) makes every word one token, so a one-word target is one token and
the teacher-forced and generated protocols can only disagree on multi-word answers; "bpe"
trains a byte-level BPE of `PretrainConfig.vocab_size` on the stream's texts, so targets are
several tokens (as on real models) and the two protocols can disagree: teacher forcing
credits part of an answer (mean token accuracy) where generation, all or nothing, does not.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .config import setting, to_dict
from .errors import LifelongError
from .methods.context import read_train_split
from .modelcheck import _summarise
from .pretrain import (
    PretrainConfig,
    _quiet_transformers,
    pad_rows,
    quick_accuracy,
    torch_threads,
    train_on_pairs,
    write_model_dir,
)
from .reading import KINDS, build_reading, reading_texts, split_facts
from .stream import Edit, Event, Query, file_sha256, parse_stream
from .tokenizer import build_bpe_tokenizer, build_word_tokenizer

#: The roles of training pairs, in report order.
ROLES: tuple[str, ...] = ("prompts", "rephrases", "locality")

Pair = tuple[str, str]


@dataclass(frozen=True)
class OrganismConfig:
    """What makes an organism besides its training recipe (the `[organism]` table)."""

    tokenizer: str = setting("word", "word: every word and punctuation mark of the stream one "
                                     "token (one-word targets are one token); bpe: a byte-level "
                                     "BPE of [pretrain] vocab_size trained on the stream's "
                                     "texts (targets are several tokens, as on real models)",
                             choices=("word", "bpe"))
    reading: str = setting("", "a train split (stream file; never the edited stream) whose "
                               "records teach the organism to read a fact written before its "
                               "input in IKE's format (lifelong/reading.py), and whose facts it "
                               "also learns; empty: none (an organism of facts alone)")
    reading_variants: int = setting(2, "with reading: rows of each kind (copy, update, retain) "
                                       "per train record, each with its own random new value "
                                       "and context", min=1)
    reading_held: int = setting(100, "with reading: the split's last records whose rows are "
                                     "never trained, only checked (their facts are learned)",
                                min=0)
    reading_swap: float = setting(0.5, "with reading: share of rows about another record's "
                                       "subject (a prompt the organism does not know), so "
                                       "reading is not tied to the split's own prompts",
                                  min=0.0, max=1.0)
    reading_separator: str = setting(".", "with reading: written after each fact (IKE's "
                                          "`separator`; the two must agree)")


@dataclass(frozen=True)
class FactSet:
    """The pairs an organism must know, read from one stream.

    `pairs[i]` has role `roles[i]`; prompts are unique across `pairs`. `probes` are all the
    (prompt, answer) sequences the stream can score (trained or not), for sizing positions;
    `texts` every text of the stream in file order, for the vocabulary.
    """

    path: str
    pairs: tuple[Pair, ...]
    roles: tuple[str, ...]
    probes: tuple[Pair, ...]
    texts: tuple[str, ...]
    edits: int
    facts: int
    reedits: int
    edits_without_ground_truth: int
    conflicts: int

    def by_role(self, role: str) -> list[Pair]:
        """The training pairs of `role` (one of ROLES), in file order."""
        return [p for p, r in zip(self.pairs, self.roles) if r == role]

    def counts(self) -> dict:
        """Pair counts per role and the edit counts, for organism.json."""
        return {"pairs": len(self.pairs), **{r: self.roles.count(r) for r in ROLES},
                "edits": self.edits, "facts": self.facts, "reedits": self.reedits,
                "edits_without_ground_truth": self.edits_without_ground_truth,
                "conflicts_dropped": self.conflicts}


def _event_texts(ev: Event) -> list[str]:
    """Every text of one event, in field order (edits and queries; others have none)."""
    if isinstance(ev, Edit):
        probes = [t for p in ev.locality + ev.portability for t in (p.prompt, p.answer)]
        return [ev.prompt, ev.target, *([ev.previous] if ev.previous is not None else []),
                *ev.rephrases, *probes]
    if isinstance(ev, Query):
        return [ev.prompt, *([ev.answer] if ev.answer is not None else [])]
    return []


def _event_probes(ev: Event) -> list[Pair]:
    """Every (prompt, answer) sequence an event can have scored."""
    if isinstance(ev, Edit):
        answers = [ev.target] + ([ev.previous] if ev.previous is not None else [])
        asked = [(p, a) for p in (ev.prompt, *ev.rephrases) for a in answers]
        return asked + [(p.prompt, p.answer) for p in ev.locality + ev.portability]
    if isinstance(ev, Query) and ev.answer is not None:
        return [(ev.prompt, ev.answer)]
    return []


class _Collector:
    """Accumulates unique-prompt pairs (first wins) and counts conflicting ones."""

    def __init__(self) -> None:
        self.answer: dict[str, str] = {}
        self.pairs: list[Pair] = []
        self.roles: list[str] = []
        self.conflicts = 0

    def add(self, prompt: str, answer: str, role: str) -> None:
        known = self.answer.get(prompt)
        if known is None:
            self.answer[prompt] = answer
            self.pairs.append((prompt, answer))
            self.roles.append(role)
        elif known != answer:
            self.conflicts += 1


def collect_facts(path: str | Path) -> FactSet:
    """Read and validate the stream at `path` (a StreamError if invalid) and collect what the
    organism must know (see the module docstring for the rules)."""
    events = parse_stream(path).events
    truth: dict[str, str | None] = {}  # fact -> previous of its first edit
    out = _Collector()
    edits = reedits = no_truth = 0
    for ev in events:
        if not isinstance(ev, Edit):
            continue
        edits += 1
        if ev.fact in truth:
            reedits += 1
        else:
            truth[ev.fact] = ev.previous
        value = truth[ev.fact]
        if value is None:
            no_truth += 1
        else:
            out.add(ev.prompt, value, "prompts")
            for text in ev.rephrases:
                out.add(text, value, "rephrases")
        for probe in ev.locality:
            out.add(probe.prompt, probe.answer, "locality")
    return FactSet(path=str(path), pairs=tuple(out.pairs), roles=tuple(out.roles),
                   probes=tuple(p for ev in events for p in _event_probes(ev)),
                   texts=tuple(t for ev in events for t in _event_texts(ev)),
                   edits=edits, facts=len(truth), reedits=reedits,
                   edits_without_ground_truth=no_truth, conflicts=out.conflicts)


def facts_from_stream(path: str | Path) -> list[Pair]:
    """The (prompt, answer) pairs an organism of the stream at `path` must know, in file
    order, prompts unique (see `collect_facts`)."""
    return list(collect_facts(path).pairs)


def organism_tokenizer(facts: FactSet, organism: OrganismConfig = OrganismConfig(),
                       vocab_size: int = PretrainConfig().vocab_size):
    """The tokenizer over every text of the stream (edit targets included): word-level, or
    with `organism.tokenizer == "bpe"` a byte-level BPE of `vocab_size` trained on them."""
    if organism.tokenizer == "bpe":
        return build_bpe_tokenizer(facts.texts, vocab_size)
    return build_word_tokenizer(facts.texts)


def _lengths(tok, texts: list[str]) -> list[int]:
    """Token counts of `texts` (no special tokens)."""
    return [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]] if texts else []


def needed_positions(tok, pairs: Sequence[Pair]) -> int:
    """Positions that any scoring of `pairs` fits in, rounded up to a multiple of 8: the
    longest prompt plus the longest answer plus EOS. (Greedy generation in `scoring` runs
    every row of a batch for as many steps as the batch's longest answer, so a long prompt
    can meet another pair's long answer.) Covers every `prompt answer [EOS]` of `pairs`."""
    prompts = _lengths(tok, [p for p, _ in pairs])
    full = _lengths(tok, [f"{p} {a}" for p, a in pairs])
    answer = max((f - p for f, p in zip(full, prompts)), default=0)
    return -(-(max(prompts, default=0) + answer + 1) // 8) * 8


def target_tokens(tok, facts: FactSet) -> dict:
    """How many tokens the answers of the stream's probes take after their prompts: the
    share of (prompt, answer) sequences whose answer is more than one token, and the mean."""
    prompts = _lengths(tok, [p for p, _ in facts.probes])
    full = _lengths(tok, [f"{p} {a}" for p, a in facts.probes])
    n = [f - p for f, p in zip(full, prompts)]
    return {"probes": len(n), "multi_token": round(sum(k > 1 for k in n) / max(len(n), 1), 4),
            "mean": round(sum(n) / max(len(n), 1), 3)}


def resolve_config(cfg: PretrainConfig, tok, facts: FactSet) -> PretrainConfig:
    """`cfg` with `n_positions` raised (never lowered) to `needed_positions` of every
    (prompt, answer) sequence of the stream."""
    need = needed_positions(tok, facts.probes + facts.pairs)
    return dataclasses.replace(cfg, n_positions=max(cfg.n_positions, need))


def check_organism(lm, facts: FactSet, batch_size: int = 256) -> dict:
    """Accuracy of `lm` on each role's pairs in both protocols (via `scoring.score_pairs`).
    Returns {role: S, "all": S} with S as in `modelcheck.check_model`."""
    from .scoring import score_pairs
    was_training = lm.model.training
    lm.model.eval()
    try:
        scores = score_pairs(lm, [p for p, _ in facts.pairs], [a for _, a in facts.pairs],
                             batch_size=batch_size)
    finally:
        lm.model.train(was_training)
    result = {r: _summarise([s for s, role in zip(scores, facts.roles) if role == r])
              for r in ROLES}
    result["all"] = _summarise(scores)
    return result


def format_organism_check(result: dict, held_out: Sequence[str] = ()) -> str:
    """A small plain-text table of a `check_organism` result (held-out roles marked)."""
    lines = [f"{'pairs':<22}{'n':>7}{'tf_acc':>9}{'tf_exact':>10}{'gen_exact':>11}"]
    for name in (*ROLES, "all"):
        s = result.get(name)
        if s and s["n"]:
            label = name + (" (held out)" if name in held_out else "")
            lines.append(f"{label:<22}{s['n']:>7}{s['tf_acc']:>9.3f}{s['tf_exact']:>10.3f}"
                         f"{s['gen_exact']:>11.3f}")
    return "\n".join(lines)


def _split(facts: FactSet, hold_out: Sequence[str]) -> tuple[list[Pair], list[Pair]]:
    """(trained, held-out) pairs; a role in `hold_out` is never trained."""
    unknown = sorted(set(hold_out) - set(ROLES))
    if unknown:
        raise LifelongError(f"unknown role(s) to hold out: {', '.join(unknown)}; "
                            f"known: {', '.join(ROLES)}")
    trained = [p for p, r in zip(facts.pairs, facts.roles) if r not in hold_out]
    held = [p for p, r in zip(facts.pairs, facts.roles) if r in hold_out]
    if not trained:
        why = (f"{facts.edits} edit(s), {facts.edits_without_ground_truth} without a "
               f"`previous` value, no locality probes" if not facts.pairs else
               f"every pair is held out ({', '.join(hold_out)})")
        raise LifelongError(f"{facts.path}: no learnable (prompt, answer) pairs ({why})")
    return trained, held


def pretrain_organism(stream: str | Path, cfg: PretrainConfig, out_dir: str | Path,
                      progress: bool = True, hold_out: Sequence[str] = (),
                      organism: OrganismConfig = OrganismConfig()) -> dict:
    """Collect the stream's facts, train, check, and write a loadable model directory:
    model.safetensors + config.json, the tokenizer and organism.json. Returns what
    organism.json holds. Roles in `hold_out` are left out of training (still checked)."""
    from .model import LM
    wall = time.perf_counter()
    facts = collect_facts(stream)
    trained, held = _split(facts, hold_out)
    records = list(read_train_split(organism.reading))
    texts = facts.texts + tuple(reading_texts(records))
    tok = organism_tokenizer(dataclasses.replace(facts, texts=texts), organism, cfg.vocab_size)
    cfg = resolve_config(cfg, tok, facts)
    reading, extra = _reading(records, trained, tok, cfg, organism)
    with torch_threads(cfg.threads), _quiet_transformers():
        model, info = train_on_pairs(trained + extra, held, cfg, tok, progress=progress,
                                     extra_rows=reading.get("rows"),
                                     monitors=reading.get("monitors"))
        check = check_organism(LM(model=model, tok=tok, name="organism", path=""), facts)
        if organism.reading:
            reading["record"]["check"] = {k: quick_accuracy(model, pad_rows(rows, tok.pad_token_id, 10 ** 6))
                                          for k, rows in reading["monitors"].items() if rows}
    record = {"stream": str(stream), "stream_sha256": file_sha256(stream),
              **({"reading": reading["record"]} if organism.reading else {}),
              "counts": facts.counts(), "held_out": list(hold_out),
              "organism": to_dict(organism), "target_tokens": target_tokens(tok, facts),
              "vocab_size": len(tok), "pretrain_config": to_dict(cfg),
              "parameters": sum(p.numel() for p in model.parameters()),
              **info, "check": check, "wall_seconds": round(time.perf_counter() - wall, 1)}
    return write_model_dir(out_dir, model, tok, "organism.json", record, cfg.threads)


def _reading(records, trained: list[Pair], tok, cfg: PretrainConfig,
             organism: OrganismConfig) -> tuple[dict, list[Pair]]:
    """With `organism.reading`: the reading rows to train, the held records' rows to monitor
    (by kind), what organism.json says of them, and the split's own facts to learn (those
    whose prompt the stream's pairs do not already hold). Without: ({}, [])."""
    if not organism.reading:
        return {}, []
    have = {p for p, _ in trained}
    extra: list[Pair] = []
    for p, a in split_facts(records):
        if p not in have:
            have.add(p)
            extra.append((p, a))
    n_held = min(organism.reading_held, len(records) - 1)
    used, held = records[:len(records) - n_held], records[len(records) - n_held:]
    known = trained + extra
    common = {"separator": organism.reading_separator, "limit": cfg.n_positions, "context": used,
              "swap": organism.reading_swap}

    def draw(epoch: int):
        """The epoch's rows: new values and contexts every epoch (`f"{seed}-{epoch}"`)."""
        return build_reading(used, known, tok, variants=organism.reading_variants,
                             seed=f"{cfg.seed}-{epoch}", **common)

    first = draw(0)

    def rows(epoch: int) -> list:
        return first.rows if epoch == 0 else draw(epoch).rows

    check = build_reading(held, known, tok, variants=1, seed=f"{cfg.seed}-held",
                          **{**common, "swap": 0.0})
    record = {"file": organism.reading, "sha256": file_sha256(organism.reading),
              "records": len(used), "held_records": len(held), "facts_learned": len(extra),
              "rows_per_epoch": first.counts(), "held_rows": check.counts()}
    return ({"rows": rows, "monitors": {f"read-{k}": check.of(k) for k in KINDS},
             "record": record}, extra)
