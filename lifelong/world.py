"""A synthetic world of facts, deterministic from a seed: what the built-in model knows.

The world has entities with generated pronounceable names, relations (employer, city of
birth, ...) each with its own vocabulary of one-word objects and several phrasing templates
(statements and questions), the initial value of every (entity, relation) fact, and a
timeline of later changes to those facts, from which edit streams are drawn.

Invariants (checked by tests/test_world.py):
- the same `WorldConfig` always gives the same world, down to the JSON bytes;
- entity names are unique and share no word with templates or objects;
- every fact keeps at least one trained template, and every template of a relation is
  trained with some facts and held out from others (held-out pairs measure generalization);
- each timeline change has `new != old`, chains (`old` is the previous change's `new`), and
  its timestamp is later than the fact's previous change.

A fact is keyed `"<entity_id>|<relation>"`, e.g. `"E0042|employer"`.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from .config import from_mapping, setting, to_dict
from .tokenizer import build_word_tokenizer

FORMAT = "lifelong-world/1"

# Templates: "{s}" is the subject's name. The object always follows the prompt after a space.
# Statements and questions are mixed so that a model must map phrasings onto one fact.
RELATIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "employer": (
        ("{s} works for", "The employer of {s} is", "Who employs {s}? Answer:",
         "{s} is employed by", "Q: Which company does {s} work for? A:"),
        ("Vantex", "Orbica", "Quillon", "Marabel", "Zentro", "Halvik", "Corvane", "Lumora",
         "Brixel", "Tandor", "Ferrovia", "Pellium", "Oskaro", "Nimbrel", "Dravex", "Solvane",
         "Kestrel", "Ambrix", "Velloro", "Cindara", "Trovix", "Galdur", "Merriot", "Zephyra"),
    ),
    "birth_city": (
        ("{s} was born in", "The city of birth of {s} is", "Where was {s} born? Answer:",
         "{s} is a native of the city of", "Q: In which city was {s} born? A:"),
        ("Lisbon", "Oslo", "Nairobi", "Kyoto", "Lima", "Dublin", "Cairo", "Quito", "Hanoi",
         "Vienna", "Dakar", "Perth", "Tbilisi", "Bogota", "Riga", "Seoul", "Havana", "Tunis",
         "Zagreb", "Manila", "Accra", "Montreal", "Krakow", "Valencia"),
    ),
    "language": (
        ("{s} speaks", "The native language of {s} is", "Which language does {s} speak? Answer:",
         "The mother tongue of {s} is", "Q: What is the first language of {s}? A:"),
        ("French", "Swahili", "Japanese", "Portuguese", "Finnish", "Greek", "Hindi", "Polish",
         "Turkish", "Korean", "Dutch", "Arabic", "Tagalog", "Hungarian", "Welsh", "Basque",
         "Icelandic", "Malay", "Czech", "Yoruba"),
    ),
    "sport": (
        ("{s} plays the sport of", "The favourite sport of {s} is",
         "Which sport does {s} play? Answer:", "On weekends {s} competes in",
         "Q: What sport is {s} known for? A:"),
        ("tennis", "rugby", "cricket", "fencing", "rowing", "hockey", "volleyball", "golf",
         "badminton", "lacrosse", "curling", "archery", "handball", "squash", "polo", "judo",
         "surfing", "karate", "baseball", "netball"),
    ),
    "instrument": (
        ("{s} plays the", "The instrument of {s} is the",
         "Which instrument does {s} play? Answer: the", "In the band {s} plays the",
         "Q: What instrument does {s} perform on? A: the"),
        ("violin", "cello", "trumpet", "harp", "oboe", "banjo", "clarinet", "flute", "tuba",
         "accordion", "mandolin", "saxophone", "bassoon", "ukulele", "sitar", "harmonica",
         "trombone", "xylophone", "bagpipes", "marimba"),
    ),
    "colour": (
        ("The favourite colour of {s} is", "{s} likes the colour",
         "What is the favourite colour of {s}? Answer:", "{s} always dresses in",
         "Q: Which colour does {s} prefer? A:"),
        ("crimson", "teal", "amber", "violet", "indigo", "scarlet", "olive", "maroon", "ochre",
         "turquoise", "lavender", "magenta", "cobalt", "emerald", "saffron", "charcoal",
         "ivory", "coral", "mustard", "silver"),
    ),
}

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr",
           "kr", "tr", "st", "sh", "th")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ei", "ou")
_CODAS = ("", "", "", "n", "r", "l", "s", "k", "m")


@dataclass(frozen=True)
class WorldConfig:
    """How to generate a world. The whole world is a pure function of this config."""

    seed: int = setting(0, "random seed: the same config always gives the same world")
    n_entities: int = setting(1000, "number of entities (people)", min=2)
    relations: tuple[str, ...] = setting(tuple(RELATIONS), "relations every entity has, "
                                         f"from: {', '.join(RELATIONS)}")
    n_templates: int = setting(5, "phrasing templates used per relation", min=2, max=5)
    name_tokens: int = setting(2, "word tokens per entity name (1: 'Tamor'; 2: 'Tamor Velisk')",
                               choices=(1, 2))
    first_names: int = setting(60, "distinct first names (two-token names)", min=1)
    surname_share: float = setting(0.75, "distinct surnames as a share of entities (two-token "
                                   "names): high means most surnames name one entity",
                                   min=0.0, max=10.0)
    heldout_per_fact: int = setting(1, "templates of each fact held out of pretraining "
                                    "(the held-out pairs measure generalization)", min=0)
    timeline_start: str = setting("2020-01-01", "date (YYYY-MM-DD) the timeline of changes starts")
    timeline_years: float = setting(10.0, "years over which fact changes happen", min=0.01)
    change_weights: tuple[float, ...] = setting(
        (0.25, 0.4, 0.25, 0.1), "relative weights of a fact changing 0, 1, 2, 3, ... times")

    def __post_init__(self) -> None:
        unknown = [r for r in self.relations if r not in RELATIONS]
        if unknown or not self.relations or len(set(self.relations)) != len(self.relations):
            raise ValueError(f"relations must be distinct names from {', '.join(RELATIONS)}; "
                             f"got {list(self.relations)}")
        if self.heldout_per_fact >= self.n_templates:
            raise ValueError("heldout_per_fact must leave at least one trained template")
        if self.heldout_per_fact and self.n_entities * (self.n_templates - self.heldout_per_fact) \
                < self.n_templates:
            raise ValueError("too few entities for every template to be trained with some fact")
        if not self.change_weights or min(self.change_weights) < 0 or sum(self.change_weights) <= 0:
            raise ValueError("change_weights must be non-negative with a positive sum")
        dt.date.fromisoformat(self.timeline_start)


@dataclass(frozen=True)
class Change:
    """One change in a fact's timeline: at time `t` (ISO-8601 UTC) the value goes old -> new."""

    t: str
    old: str
    new: str


@dataclass(frozen=True)
class Fact:
    """One (entity, relation) fact. `value` is the initial value (what pretraining teaches);
    `heldout` are the template indices never shown with this fact in pretraining."""

    key: str
    entity: str
    subject: str
    relation: str
    value: str
    heldout: tuple[int, ...]
    changes: tuple[Change, ...] = field(default=())


def fact_key(entity_id: str, relation: str) -> str:
    """The fact identity used everywhere (streams, stores): `"E0042|employer"`."""
    return f"{entity_id}|{relation}"


def _syllable_word(rng: random.Random, n_syllables: int) -> str:
    parts = [rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(n_syllables)]
    return ("".join(parts) + rng.choice(_CODAS)).capitalize()


def _name_pool(rng: random.Random, size: int, taken: set[str]) -> list[str]:
    """`size` distinct new pronounceable words, none in `taken` (which is updated)."""
    pool: list[str] = []
    while len(pool) < size:
        word = _syllable_word(rng, rng.choice((2, 2, 3)))
        if word not in taken:
            taken.add(word)
            pool.append(word)
    return pool


def _entity_names(rng: random.Random, cfg: WorldConfig, taken: set[str]) -> list[str]:
    """Unique entity names of `cfg.name_tokens` words. Two-word names pair a first name from
    a small pool with a surname from a larger one, so first names are shared by many
    entities and surnames by a few (as with people): only the pair identifies an entity."""
    if cfg.name_tokens == 1:
        return _name_pool(rng, cfg.n_entities, taken)
    n_last = max(1, round(cfg.surname_share * cfg.n_entities))
    # enough first names for twice as many distinct pairs as entities
    n_first = max(cfg.first_names, -(-2 * cfg.n_entities // n_last))
    firsts = _name_pool(rng, n_first, taken)
    lasts = _name_pool(rng, n_last, taken)
    pairs = [f"{a} {b}" for a in firsts for b in lasts]
    return rng.sample(pairs, cfg.n_entities)


def _timeline(rng: random.Random, cfg: WorldConfig, value: str,
              objects: tuple[str, ...]) -> tuple[Change, ...]:
    """0..k changes at increasing whole-second times inside the timeline span."""
    n = rng.choices(range(len(cfg.change_weights)), weights=cfg.change_weights)[0]
    span = int(cfg.timeline_years * 365.25 * 86400)
    start = dt.datetime.fromisoformat(cfg.timeline_start).replace(tzinfo=dt.timezone.utc)
    offsets = sorted(rng.sample(range(span), n))
    changes, current = [], value
    for off in offsets:
        new = rng.choice([o for o in objects if o != current])
        t = (start + dt.timedelta(seconds=off)).strftime("%Y-%m-%dT%H:%M:%SZ")
        changes.append(Change(t=t, old=current, new=new))
        current = new
    return tuple(changes)


def _heldout_sets(rng: random.Random, cfg: WorldConfig, n_facts: int) -> list[tuple[int, ...]]:
    """Held-out template sets for the facts of one relation, rotated through a shuffled
    template order so that each template is held out for about the same share of facts."""
    order = list(range(cfg.n_templates))
    rng.shuffle(order)
    k = cfg.heldout_per_fact
    sets = [tuple(sorted(order[(j * k + m) % cfg.n_templates] for m in range(k)))
            for j in range(n_facts)]
    rng.shuffle(sets)
    return sets


class World:
    """Entities, relations, facts and their timeline. Build with `World.generate(cfg)` or
    load with `World.from_json(path)`; treat as read-only."""

    def __init__(self, config: WorldConfig, relations: dict[str, dict],
                 entities: list[dict], facts: list[Fact]):
        self.config = config
        self.relations = relations  # name -> {"templates": [...], "objects": [...]}
        self.entities = entities    # [{"id": "E0000", "name": "..."}]
        self.facts = tuple(facts)
        self._by_key = {f.key: f for f in self.facts}

    # -- building -------------------------------------------------------------------------
    @classmethod
    def generate(cls, cfg: WorldConfig) -> "World":
        """The world of `cfg`. Deterministic: one `random.Random(cfg.seed)` drives everything."""
        rng = random.Random(cfg.seed)
        relations = {r: {"templates": list(RELATIONS[r][0][: cfg.n_templates]),
                         "objects": list(RELATIONS[r][1])} for r in cfg.relations}
        taken = {w.capitalize() for text in _static_texts(relations) for w in text.split()}
        names = _entity_names(rng, cfg, taken)
        entities = [{"id": f"E{i:04d}", "name": name} for i, name in enumerate(names)]
        heldout = {r: _heldout_sets(rng, cfg, len(entities)) for r in cfg.relations}
        facts = []
        for i, ent in enumerate(entities):
            for r in cfg.relations:
                objects = RELATIONS[r][1]
                value = rng.choice(objects)
                facts.append(Fact(key=fact_key(ent["id"], r), entity=ent["id"],
                                  subject=ent["name"], relation=r, value=value,
                                  heldout=heldout[r][i],
                                  changes=_timeline(rng, cfg, value, objects)))
        return cls(cfg, relations, entities, facts)

    # -- access ---------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Fact]:
        return iter(self.facts)

    def __len__(self) -> int:
        return len(self.facts)

    def fact(self, key: str) -> Fact:
        """The fact with key `"<entity_id>|<relation>"` (KeyError if unknown)."""
        return self._by_key[key]

    def templates(self, relation: str) -> list[str]:
        return self.relations[relation]["templates"]

    def objects(self, relation: str) -> list[str]:
        return self.relations[relation]["objects"]

    def prompt(self, fact: Fact, template_index: int) -> str:
        """The prompt of `fact` in template `template_index` (the object is not included)."""
        return self.templates(fact.relation)[template_index].format(s=fact.subject)

    def trained_templates(self, fact: Fact) -> list[int]:
        return [t for t in range(len(self.templates(fact.relation))) if t not in fact.heldout]

    def trained_pairs(self) -> list[tuple[Fact, int]]:
        """(fact, template) pairs pretraining shows, in a fixed order."""
        return [(f, t) for f in self.facts for t in self.trained_templates(f)]

    def heldout_pairs(self) -> list[tuple[Fact, int]]:
        """(fact, template) pairs pretraining never shows: generalization probes."""
        return [(f, t) for f in self.facts for t in f.heldout]

    def stable_facts(self) -> list[Fact]:
        """Facts whose timeline has no change: streams use them as untouched locality facts."""
        return [f for f in self.facts if not f.changes]

    def texts(self) -> list[str]:
        """Every word the world can produce (templates, objects, names), in a fixed order."""
        return _static_texts(self.relations) + [e["name"] for e in self.entities]

    def tokenizer(self):
        """The word-level tokenizer covering every word of the world."""
        return build_word_tokenizer(self.texts())

    def summary(self) -> dict:
        """Sizes, for reports and pretrain.json."""
        return {"entities": len(self.entities), "relations": len(self.relations),
                "templates_per_relation": self.config.n_templates, "facts": len(self.facts),
                "name_tokens": self.config.name_tokens,
                "trained_pairs": len(self.trained_pairs()),
                "heldout_pairs": len(self.heldout_pairs()),
                "facts_with_changes": sum(1 for f in self.facts if f.changes),
                "changes": sum(len(f.changes) for f in self.facts)}

    # -- persistence ----------------------------------------------------------------------
    def to_dict(self) -> dict:
        # One compact row per fact: [key, value, heldout templates, [[t, old, new], ...]].
        facts = [[f.key, f.value, list(f.heldout), [[c.t, c.old, c.new] for c in f.changes]]
                 for f in self.facts]
        return {"format": FORMAT, "config": to_dict(self.config), "relations": self.relations,
                "entities": self.entities, "facts": facts}

    def to_json(self) -> str:
        """Compact, deterministic JSON text (what `save` writes)."""
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n", encoding="utf-8")

    @classmethod
    def from_dict(cls, data: dict) -> "World":
        if data.get("format") != FORMAT:
            raise ValueError(f"not a world file (format {data.get('format')!r}, want {FORMAT!r})")
        cfg = from_mapping(WorldConfig, data["config"], "world.config")
        names = {e["id"]: e["name"] for e in data["entities"]}
        facts = []
        for key, value, heldout, changes in data["facts"]:
            entity, relation = key.split("|")
            facts.append(Fact(key=key, entity=entity, subject=names[entity], relation=relation,
                              value=value, heldout=tuple(heldout),
                              changes=tuple(Change(*c) for c in changes)))
        return cls(cfg, data["relations"], data["entities"], facts)

    @classmethod
    def from_json(cls, path: str | Path) -> "World":
        """Load a world saved by `save` (e.g. lifelong/builtin/world.json)."""
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def _static_texts(relations: dict[str, dict]) -> list[str]:
    """Template and object words, before any name: fixes the tokenizer's id order."""
    texts = []
    for rel in relations.values():
        texts += [t.replace("{s}", " ") for t in rel["templates"]]
        texts += rel["objects"]
    return texts


def builtin_world_path() -> Path:
    return Path(__file__).resolve().parent / "builtin" / "world.json"


def load_builtin_world() -> World:
    """The world the shipped built-in model was pretrained on."""
    return World.from_json(builtin_world_path())
