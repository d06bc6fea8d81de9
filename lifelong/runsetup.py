"""What a simulate command checks before anything is recorded: the model loads and is a
supported causal LM (`model.load_model`), and the stream's answers are words it can say.

Runs whose answers tokenize to the model's unknown token measure nothing: a method that
learns to emit `[UNK]` "answers" every such edit (GRACE scored 0.978 on a real data set
replayed on the built-in model, 27 of 30 targets being `[UNK]`). `unknown_answers` counts
them; `check_unknown` refuses a run above `stream.max_unknown_share`, naming the share and
which model to use instead.

Invariant: `preflight` writes nothing; a failure in it leaves no store file and no run row.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError
from .model import LM, load_model
from .scenario import Scenario
from .stream import Edit, Event, file_sha256

ORGANISMS = Path(__file__).resolve().parent / "organisms"


@dataclass(frozen=True)
class Setup:
    """The checked model (pristine, for the first run to use) and the unknown-token count."""

    lm: LM
    unknown: dict


def answer_texts(events: Sequence[Event]) -> list[str]:
    """Every text a run asks the model to produce: edit targets, locality and portability
    answers (rephrases share their edit's target)."""
    edits = [e for e in events if isinstance(e, Edit)]
    return [e.target for e in edits] + [p.answer for e in edits for p in e.locality + e.portability]


def unknown_answers(tok, texts: Sequence[str]) -> dict:
    """How many of `texts` contain the tokenizer's unknown token (`unknown_share`: that over
    all of them; 0 for a tokenizer without one, such as byte-level BPE)."""
    unk = getattr(tok, "unk_token_id", None)
    bad = 0
    if unk is not None and texts:
        bad = sum(unk in ids for ids in tok(list(texts), add_special_tokens=False)["input_ids"])
    return {"unknown_share": round(bad / len(texts), 4) if texts else 0.0,
            "unknown_answers": bad, "answers": len(texts), "unk_token": getattr(tok, "unk_token", None)}


def _organisms_that_know(texts: Sequence[str], limit: float, stream: str) -> list[str]:
    """Shipped model organisms made from the file `stream` (organism.json's digest), and
    word-level ones whose tokenizer knows all but `limit` of `texts`. A tokenizer without an
    unknown token (byte-level BPE) spells every text, so that it "knows" them says nothing
    of whether the organism knows the stream's facts: such organisms count only as made from
    the stream."""
    from transformers import AutoTokenizer
    try:
        digest = file_sha256(stream)
    except OSError:
        digest = None
    found = []
    for d in sorted(p for p in ORGANISMS.iterdir() if (p / "tokenizer.json").exists()):
        try:
            made_from = json.loads((d / "organism.json").read_text()).get("stream_sha256")
        except (OSError, ValueError):
            made_from = None
        tok = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
        word_level = getattr(tok, "unk_token_id", None) is not None
        if (made_from is not None and made_from == digest) or (
                word_level and unknown_answers(tok, texts)["unknown_share"] <= limit):
            found.append(_shown(d))
    return found


def _shown(path: Path) -> str:
    """A path as the user would type it: relative to the working directory when inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def check_unknown(info: dict, sc: Scenario, texts: Sequence[str]) -> None:
    """Refuse (one line) when the unknown share is above `stream.max_unknown_share`."""
    limit = sc.stream.max_unknown_share
    if info["unknown_share"] <= limit:
        return
    know = _organisms_that_know(texts, limit, sc.stream.file)
    hint = (f"run it on {' or '.join(know)} (--model), which knows its words" if know else
            "no shipped organism (lifelong/organisms/) knows its words: train one with "
            "`lifelong pretrain --facts STREAM` and give it as --model PATH")
    raise ConfigError(
        f"{sc.stream.file}: {info['unknown_answers']} of {info['answers']} answers "
        f"({info['unknown_share']:.0%}: edit targets, locality and portability answers) contain "
        f"the unknown token {info['unk_token']!r} of model {sc.model}, which can neither learn "
        f"nor say them (limit stream.max_unknown_share = {limit:g}); {hint}; or pass "
        "--allow-unknown to run anyway")


def preflight(sc: Scenario, events: Sequence[Event]) -> Setup:
    """Load and check the model, count unknown answers, refuse what cannot be measured."""
    lm = load_model(sc.model, sc.device)
    texts = answer_texts(events)
    info = unknown_answers(lm.tok, texts)
    check_unknown(info, sc, texts)
    return Setup(lm, info)

