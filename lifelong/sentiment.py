"""A sentiment measure for ConvSent edits: a naive Bayes classifier trained here on ConvSent's
own positive and negative texts (not a pretrained model: nothing is downloaded).

A ConvSent edit asks a model for its opinion of an entity and sets the sentiment of the
answer (`importers.convsent`). Exact match of the one target sentence says little about
that; the field scores the sentiment of what the model says (SERAC and MEND score ConvSent
with a pretrained sentiment classifier). Here:

- features: lowercased words and adjacent word pairs ("don't like" is one feature, so a
  negation next to its verb counts);
- multinomial naive Bayes with add-one smoothing over the features seen at least `min_count`
  times in training; for two classes only each feature's log-odds matters, so the model is
  one number per feature plus the prior log-odds (a few hundred kB of JSON);
- trained on the texts of a seeded share of ConvSent's entities (`entity_split`); its
  accuracy is measured on the texts of the other entities (`accuracy`), and scores of a
  stream are reported for the held-out entities only (`metrics_sentiment`), so the classifier
  never judged a sentence it was trained on.

Invariants: training is deterministic (same records, seed and settings: the same model, byte
for byte once saved); `classify` is a pure function of the model and the text; a text with no
known feature (an empty answer) has no sentiment (None).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import LifelongError

POSITIVE, NEGATIVE = "positive", "negative"
SCHEMA = "lifelong.sentiment/1"
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


def features(text: str) -> list[str]:
    """The words of `text` (lowercased, apostrophes kept inside words) and its adjacent pairs."""
    words = _WORD.findall(text.lower().replace("\u2019", "'"))
    return words + [f"{a} {b}" for a, b in zip(words, words[1:])]


@dataclass(frozen=True)
class SentimentModel:
    """Prior log-odds (positive over negative) and per-feature log-odds; `provenance` says what
    it was trained on (data file digest, seed, entities, settings)."""

    prior: float
    log_odds: dict[str, float]
    provenance: dict

    def classify(self, text: str) -> str | None:
        """POSITIVE or NEGATIVE; None for a text with no feature the model knows (an empty
        answer has no sentiment, whatever the prior says)."""
        known = [self.log_odds[f] for f in features(text) if f in self.log_odds]
        if not known:
            return None
        return POSITIVE if self.prior + sum(known) > 0 else NEGATIVE

    def to_json(self) -> str:
        return json.dumps({"schema": SCHEMA, "prior": self.prior, "provenance": self.provenance,
                           "log_odds": dict(sorted(self.log_odds.items()))}, indent=1) + "\n"

    @classmethod
    def load(cls, path: str | Path) -> SentimentModel:
        """A model saved by `to_json`; a clear one-line error for anything else."""
        try:
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise LifelongError(f"{path}: line {exc.lineno}: not JSON ({exc.msg})") from None
        if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
            raise LifelongError(f"{path}: not a sentiment model (schema {SCHEMA!r} expected)")
        return cls(float(doc["prior"]), {str(k): float(v) for k, v in doc["log_odds"].items()},
                   dict(doc.get("provenance", {})))


def train(positive: Sequence[str], negative: Sequence[str], min_count: int = 2,
          provenance: dict | None = None) -> SentimentModel:
    """Naive Bayes on the two lists of texts (module docstring): add-one smoothing over the
    features seen at least `min_count` times; log-odds rounded to 6 decimals."""
    if not positive or not negative:
        raise LifelongError("a sentiment model needs positive and negative texts")
    counts = {POSITIVE: Counter(f for t in positive for f in features(t)),
              NEGATIVE: Counter(f for t in negative for f in features(t))}
    kept = sorted(f for f in counts[POSITIVE].keys() | counts[NEGATIVE].keys()
                  if counts[POSITIVE][f] + counts[NEGATIVE][f] >= min_count)
    total = {c: sum(counts[c][f] for f in kept) + len(kept) for c in counts}
    odds = {f: round(math.log((counts[POSITIVE][f] + 1) / total[POSITIVE])
                     - math.log((counts[NEGATIVE][f] + 1) / total[NEGATIVE]), 6) for f in kept}
    prior = round(math.log(len(positive) / len(negative)), 6)
    return SentimentModel(prior, odds, {**(provenance or {}), "min_count": min_count,
                                        "texts": {POSITIVE: len(positive), NEGATIVE: len(negative)},
                                        "features": len(kept)})


def accuracy(model: SentimentModel, positive: Iterable[str], negative: Iterable[str]) -> dict:
    """Share of texts classified as their label, per label and overall, with the counts."""
    pos = [model.classify(t) == POSITIVE for t in positive]
    neg = [model.classify(t) == NEGATIVE for t in negative]
    both = pos + neg
    return {"accuracy": sum(both) / len(both) if both else None, "n": len(both),
            POSITIVE: sum(pos) / len(pos) if pos else None,
            NEGATIVE: sum(neg) / len(neg) if neg else None}


# ---- ConvSent ---------------------------------------------------------------------------
def read_convsent(path: str | Path) -> list[dict]:
    """ConvSent records (`ent`, `pos`, `neg`: the KnowEdit layout); a one-line error naming
    the file and record for anything else."""
    try:
        recs = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise LifelongError(f"{path}: line {exc.lineno}: not JSON ({exc.msg})") from None
    if not isinstance(recs, list):
        raise LifelongError(f"{path}: expected a list of ConvSent records")
    for i, r in enumerate(recs, 1):
        if not isinstance(r, dict) or not isinstance(r.get("ent"), str) \
                or not all(isinstance(r.get(k, []), list) for k in ("pos", "neg")):
            raise LifelongError(f"{path}: record {i}: needs 'ent' (text) and 'pos'/'neg' (lists)")
    return recs


def trains_on(entity: str, seed: int, train_share: float = 0.5) -> bool:
    """Whether the classifier of (`seed`, `train_share`) trains on `entity`'s texts: its
    seeded hash falls below `train_share` (stable: an entity's side never depends on which
    others exist, so a stream's edits can be sorted without the data file)."""
    unit = int(hashlib.sha256(f"{seed}:{entity}".encode()).hexdigest()[:12], 16) / 16 ** 12
    return unit < train_share


def entity_split(entities: Iterable[str], seed: int, train_share: float = 0.5) -> set[str]:
    """The entities whose texts train the classifier (`trains_on`)."""
    return {e for e in entities if trains_on(e, seed, train_share)}


def texts_of(records: Iterable[dict], entities: set[str]) -> tuple[list[str], list[str]]:
    """(positive, negative) texts of the records whose entity is in `entities`."""
    pos, neg = [], []
    for r in records:
        if r["ent"] in entities:
            pos += [t for t in r.get("pos", []) if isinstance(t, str) and t.strip()]
            neg += [t for t in r.get("neg", []) if isinstance(t, str) and t.strip()]
    return pos, neg


def train_convsent(path: str | Path, seed: int = 0, train_share: float = 0.5,
                   min_count: int = 2) -> tuple[SentimentModel, dict]:
    """The classifier trained on the seeded training entities of a ConvSent file, and its
    accuracy on the texts of the others."""
    raw = Path(path).read_bytes()
    recs = read_convsent(path)
    entities = sorted({r["ent"] for r in recs})
    chosen = entity_split(entities, seed, train_share)
    digest = hashlib.sha256(raw).hexdigest()[:16]
    model = train(*texts_of(recs, chosen), min_count=min_count, provenance={
        "data": Path(path).name, "sha256": digest, "seed": seed, "train_share": train_share,
        "train_entities": len(chosen), "held_out_entities": len(entities) - len(chosen)})
    acc = accuracy(model, *texts_of(recs, set(entities) - chosen))
    model.provenance["held_out_accuracy"] = acc  # saved with the model: what it is worth
    return model, acc
