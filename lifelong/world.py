"""A synthetic world of facts, deterministic from a seed: what the built-in model knows.

People (two-word generated names), companies and cities are the entities; eight relations
(`lifelong.worldtext.RELATIONS`) link them: a person's employer is a company that has its
own headquarters city, a person's mentor is another person, a city lies in a country. Values
are one to three words ("Lisbon", "New Orleans", "the Halvern Group"). Every fact has an
initial value (what pretraining teaches) and the person facts a timeline of later changes,
from which edit streams are drawn. People are split into a `dev` and a `test` part with
disjoint facts: streams for choosing defaults come from one, streams for reporting from the
other.

Invariants (checked by tests/test_world.py):
- the same `WorldConfig` always gives the same world, down to the JSON bytes;
- entity names are unique and none is a value of a vocabulary relation;
- every fact keeps at least one trained template, and every template of a relation is
  trained with some facts and held out from others (held-out pairs measure generalization);
  the `ood` phrasings are never trained for any fact;
- each timeline change has `new != old`, chains (`old` is the previous change's `new`), and
  its timestamp is later than the fact's previous change; only person facts change;
- a mentor's birth city never changes (so the two-hop "mentor's birth city" stays true):
  mentors come from a seeded tenth of the people (at least three) whose birth city is fixed.

A fact is keyed `"<entity_id>|<relation>"`, e.g. `"P0042|employer"`.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .config import from_mapping, setting, to_dict
from .worldtext import CHANGING, CITIES, COMPANIES, PERSON, RELATIONS, TWO_HOP, RelationSpec

FORMAT = "lifelong-world/2"
SPLITS = ("dev", "test")

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr",
           "kr", "tr", "st", "sh", "th")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ei", "ou")
_CODAS = ("", "", "", "n", "r", "l", "s", "k", "m")


@dataclass(frozen=True)
class WorldConfig:
    """How to generate a world. The whole world is a pure function of this config."""

    seed: int = setting(0, "random seed: the same config always gives the same world")
    n_people: int = setting(1800, "number of people", min=4)
    first_names: int = setting(80, "distinct first names", min=1)
    surname_share: float = setting(0.75, "distinct surnames as a share of people: most "
                                   "surnames name one or two people, only the pair is unique",
                                   min=0.05, max=10.0)
    heldout_per_fact: int = setting(1, "in-distribution templates of each fact held out of "
                                    "pretraining (the held-out pairs)", min=0, max=4)
    dev_share: float = setting(0.4, "share of people in the dev split (the rest: test)",
                               min=0.05, max=0.95)
    timeline_start: str = setting("2020-01-01", "date (YYYY-MM-DD) the timeline of changes starts")
    timeline_years: float = setting(10.0, "years over which fact changes happen", min=0.01)
    change_weights: tuple[float, ...] = setting(
        (0.2, 0.3, 0.22, 0.14, 0.09, 0.05),
        "relative weights of a person fact changing 0, 1, 2, ... times")

    def __post_init__(self) -> None:
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
    """The fact identity used everywhere (streams, stores): `"P0042|employer"`."""
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


def _person_names(rng: random.Random, cfg: WorldConfig, taken: set[str]) -> list[str]:
    """Unique two-word names: a first name from a small pool and a surname from a larger
    one, so first names are shared by many people and surnames by a few."""
    n_last = max(1, round(cfg.surname_share * cfg.n_people))
    n_first = max(cfg.first_names, -(-2 * cfg.n_people // n_last))
    firsts = _name_pool(rng, n_first, taken)
    lasts = _name_pool(rng, n_last, taken)
    return rng.sample([f"{a} {b}" for a in firsts for b in lasts], cfg.n_people)


def _heldout_sets(rng: random.Random, n_templates: int, k: int,
                  n_facts: int) -> list[tuple[int, ...]]:
    """Held-out template sets for the facts of one relation, rotated through a shuffled
    template order so that each template is held out for about the same share of facts."""
    order = list(range(n_templates))
    rng.shuffle(order)
    sets = [tuple(sorted(order[(j * k + m) % n_templates] for m in range(k)))
            for j in range(n_facts)]
    rng.shuffle(sets)
    return sets


def _timeline(rng: random.Random, cfg: WorldConfig, value: str,
              choices: list[str]) -> tuple[Change, ...]:
    """0..k changes at increasing whole-second times inside the timeline span."""
    n = rng.choices(range(len(cfg.change_weights)), weights=cfg.change_weights)[0]
    if len(choices) < 2:  # nothing to change to
        return ()
    span = int(cfg.timeline_years * 365.25 * 86400)
    start = dt.datetime.fromisoformat(cfg.timeline_start).replace(tzinfo=dt.timezone.utc)
    changes, current = [], value
    for off in sorted(rng.sample(range(span), n)):
        new = rng.choice([o for o in choices if o != current])
        t = (start + dt.timedelta(seconds=off)).strftime("%Y-%m-%dT%H:%M:%SZ")
        changes.append(Change(t=t, old=current, new=new))
        current = new
    return tuple(changes)


class World:
    """Entities, relations, facts and their timeline. Build with `World.generate(cfg)` or
    load with `World.from_json(path)`; treat as read-only."""

    def __init__(self, config: WorldConfig, entities: list[dict], facts: list[Fact]):
        self.config = config
        self.entities = entities    # [{"id", "type", "name", "split"?}]
        self.facts = tuple(facts)
        self._by_key = {f.key: f for f in self.facts}
        self._by_name = {e["name"]: e for e in entities}
        self._entity = {e["id"]: e for e in entities}

    # -- building -------------------------------------------------------------------------
    @classmethod
    def generate(cls, cfg: WorldConfig) -> World:
        """The world of `cfg`. Deterministic: one `random.Random(cfg.seed)` drives everything."""
        rng = random.Random(cfg.seed)
        taken = {w.strip(".,?:").capitalize() for text in static_texts() for w in text.split()}
        people = _person_names(rng, cfg, taken)
        n_dev = round(cfg.dev_share * cfg.n_people)
        splits = ["dev"] * n_dev + ["test"] * (cfg.n_people - n_dev)
        rng.shuffle(splits)
        entities = [{"id": f"P{i:04d}", "type": PERSON, "name": n, "split": s}
                    for i, (n, s) in enumerate(zip(people, splits))]
        entities += [{"id": f"C{i:03d}", "type": "company", "name": n}
                     for i, n in enumerate(COMPANIES)]
        entities += [{"id": f"T{i:03d}", "type": "city", "name": n} for i, n in enumerate(CITIES)]
        return cls(cfg, entities, _generate_facts(rng, cfg, entities))

    # -- access ---------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Fact]:
        return iter(self.facts)

    def __len__(self) -> int:
        return len(self.facts)

    @property
    def relations(self) -> dict[str, RelationSpec]:
        return RELATIONS

    def fact(self, key: str) -> Fact:
        """The fact with key `"<entity_id>|<relation>"` (KeyError if unknown)."""
        return self._by_key[key]

    def entity(self, entity_id: str) -> dict:
        return self._entity[entity_id]

    def entity_named(self, name: str) -> dict | None:
        """The entity whose name is `name` (values of entity-valued relations are names)."""
        return self._by_name.get(name)

    def split_of(self, fact: Fact) -> str | None:
        """"dev" or "test" for person facts; None for company and city facts."""
        return self._entity[fact.entity].get("split")

    def templates(self, relation: str) -> tuple[str, ...]:
        return RELATIONS[relation].templates

    def ood_templates(self, relation: str) -> tuple[str, ...]:
        return RELATIONS[relation].ood

    def objects(self, relation: str) -> list[str]:
        """Every value a fact of `relation` can take."""
        spec = RELATIONS[relation]
        if spec.object_type is None:
            return list(spec.values)
        return [e["name"] for e in self.entities if e["type"] == spec.object_type]

    def prompt(self, fact: Fact, template_index: int) -> str:
        """The prompt of `fact` in template `template_index` (the object is not included)."""
        return self.templates(fact.relation)[template_index].format(s=fact.subject)

    def ood_prompt(self, fact: Fact, index: int) -> str:
        return self.ood_templates(fact.relation)[index].format(s=fact.subject)

    def trained_templates(self, fact: Fact) -> list[int]:
        return [t for t in range(len(self.templates(fact.relation))) if t not in fact.heldout]

    def trained_pairs(self) -> list[tuple[Fact, int]]:
        """(fact, template) pairs pretraining shows, in a fixed order."""
        return [(f, t) for f in self.facts for t in self.trained_templates(f)]

    def heldout_pairs(self) -> list[tuple[Fact, int]]:
        """(fact, template) pairs pretraining never shows: generalization probes."""
        return [(f, t) for f in self.facts for t in f.heldout]

    def ood_pairs(self) -> list[tuple[str, str, Fact]]:
        """(prompt, value, fact) in the phrasing family pretraining never shows for any fact."""
        return [(self.ood_prompt(f, k), f.value, f) for f in self.facts
                for k in range(len(self.ood_templates(f.relation)))]

    def two_hop(self, fact: Fact, value: str | None = None) -> list[dict]:
        """Two-hop questions through `fact` (a first hop) when it holds `value` (default: its
        initial value): [{"prompt", "answer", "kind"}]. Empty for facts that start none."""
        value = fact.value if value is None else value
        out = []
        for hop in TWO_HOP:
            if hop.first != fact.relation:
                continue
            mid = self.entity_named(value)
            if mid is None:
                continue
            second = self._by_key[fact_key(mid["id"], hop.second)]
            out += [{"prompt": t.format(s=fact.subject), "answer": second.value, "kind": hop.name}
                    for t in hop.templates]
        return out

    def stable_facts(self, split: str | None = None) -> list[Fact]:
        """Facts whose timeline has no change (streams use them as locality facts), of one
        split (person facts) or of every entity when `split` is None."""
        return [f for f in self.facts if not f.changes
                and (split is None or self.split_of(f) == split)]

    def texts(self) -> list[str]:
        """Every text the world can produce: static phrasings and values, then names."""
        return static_texts() + [e["name"] for e in self.entities]

    def corpus(self) -> list[str]:
        """The pretraining text: every trained pair as `prompt + " " + value` (for tokenizer
        training and key statistics)."""
        return [f"{self.prompt(f, t)} {f.value}" for f, t in self.trained_pairs()]

    def summary(self) -> dict:
        """Sizes, for reports and pretrain.json."""
        multi = sum(1 for f in self.facts if " " in f.value)
        return {"entities": len(self.entities),
                "people": sum(e["type"] == PERSON for e in self.entities),
                "relations": len(RELATIONS), "templates_per_relation": 8,
                "ood_templates_per_relation": 2, "facts": len(self.facts),
                "multi_word_values": multi,
                "trained_pairs": len(self.trained_pairs()),
                "heldout_pairs": len(self.heldout_pairs()),
                "facts_with_changes": sum(1 for f in self.facts if f.changes),
                "changes": sum(len(f.changes) for f in self.facts)}

    # -- persistence ----------------------------------------------------------------------
    def to_dict(self) -> dict:
        # One compact row per fact: [key, value, heldout templates, [[t, old, new], ...]].
        facts = [[f.key, f.value, list(f.heldout), [[c.t, c.old, c.new] for c in f.changes]]
                 for f in self.facts]
        return {"format": FORMAT, "config": to_dict(self.config), "entities": self.entities,
                "facts": facts}

    def to_json(self) -> str:
        """Compact, deterministic JSON text (what `save` writes)."""
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n", encoding="utf-8")

    @classmethod
    def from_dict(cls, data: dict) -> World:
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
        return cls(cfg, data["entities"], facts)

    @classmethod
    def from_json(cls, path: str | Path) -> World:
        """Load a world saved by `save` (e.g. lifelong/builtin/world.json)."""
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def _generate_facts(rng: random.Random, cfg: WorldConfig, entities: list[dict]) -> list[Fact]:
    """Initial values, held-out templates and timelines of every fact, relation by relation."""
    by_type: dict[str, list[dict]] = {}
    for e in entities:
        by_type.setdefault(e["type"], []).append(e)
    facts: dict[str, Fact] = {}
    # a tenth of the people (at least three) keep their birth city: they are the mentors
    people = by_type[PERSON]
    mentors = {e["id"] for e in rng.sample(people, min(len(people), max(3, len(people) // 10)))}
    order = ["headquarters", "country", "birth_city", "mentor", "employer", "language",
             "sport", "instrument"]
    for rel in order:
        spec = RELATIONS[rel]
        subjects = by_type[spec.subject]
        held = _heldout_sets(rng, len(spec.templates), cfg.heldout_per_fact, len(subjects))
        for ent, heldout in zip(subjects, held):
            choices = _choices(rel, ent, mentors, by_type)
            value = rng.choice(choices)
            fixed = rel not in CHANGING or (rel == "birth_city" and ent["id"] in mentors)
            changes = () if fixed else _timeline(rng, cfg, value, choices)
            key = fact_key(ent["id"], rel)
            facts[key] = Fact(key, ent["id"], ent["name"], rel, value, heldout, changes)
    return [facts[fact_key(e["id"], r)] for e in entities for r in RELATIONS
            if RELATIONS[r].subject == e["type"]]


def _choices(rel: str, ent: dict, mentors: set[str], by_type: dict[str, list[dict]]) -> list[str]:
    """The values a fact may take: a vocabulary, or entity names of the object type (for a
    mentor: the other people of the mentor pool, whose birth city never changes)."""
    spec = RELATIONS[rel]
    if spec.object_type is None:
        return list(spec.values)
    pool = by_type[spec.object_type]
    if rel == "mentor":
        pool = [p for p in pool if p["id"] in mentors and p["id"] != ent["id"]]
    return [p["name"] for p in pool]


def static_texts() -> list[str]:
    """Phrasings and vocabulary values, before any name: fixes the order of tokenizer texts."""
    texts: list[str] = []
    for spec in RELATIONS.values():
        texts += [t.replace("{s}", " ") for t in spec.templates + spec.ood]
        texts += list(spec.values)
    for hop in TWO_HOP:
        texts += [t.replace("{s}", " ") for t in hop.templates]
    return texts + list(COMPANIES) + list(CITIES)


def builtin_world_path() -> Path:
    return Path(__file__).resolve().parent / "builtin" / "world.json"


def load_builtin_world() -> World:
    """The world the shipped built-in model was pretrained on."""
    return World.from_json(builtin_world_path())
