"""The events of an edit stream (`edit`, `retract`, `query`, `merge`) and their JSON form.

`lifelong.stream` parses and validates streams into these types (and re-exports them);
`event_to_dict` is the JSON object of one event, as `dump_stream` writes it.

A probe's answer is one string or, in JSON, a list of acceptable answers (aliases), the
first being the canonical one: `Probe("Which continent?", "Europe", ("European continent",))`
is `{"prompt": "Which continent?", "answer": ["Europe", "European continent"]}`. A match
against any of them counts (see `lifelong.scoring.score_answers`). Locality probes are
judged against the pre-stream model's output over the canonical answer's tokens, so their
aliases are carried (and round-trip) but never used.

A portability probe may name the edits its answer depends on, `needs` (edit ids: earlier
edits of the stream, or the edit that carries the probe), as a multi-hop question whose
answer follows from several edits together does (MQuAKE). The stream carries and validates
it; it means: the answer is expected only once all of them are applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True)
class Probe:
    """A prompt and the answer expected for it (locality / portability checks). `aliases`
    are further acceptable answers (empty for a plain answer); `answers` = all of them,
    canonical first. `needs` (portability only): the ids of the edits the answer depends on
    (empty: the edit that carries the probe alone)."""
    prompt: str
    answer: str
    aliases: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "aliases", tuple(self.aliases))
        object.__setattr__(self, "needs", tuple(self.needs))

    @property
    def answers(self) -> tuple[str, ...]:
        return (self.answer, *self.aliases)

    def to_dict(self) -> dict:
        """`answer` is a string without aliases, else the list of all answers; `needs` only
        when there are any."""
        d = {"prompt": self.prompt, "answer": list(self.answers) if self.aliases else self.answer}
        return d | ({"needs": list(self.needs)} if self.needs else {})


@dataclass(frozen=True)
class _EventBase:
    """Fields every event has: `t` is UTC epoch seconds; `line` is the 1-based source line
    (0 when built in code) and is not part of equality."""
    kind: ClassVar[str] = ""
    id: str
    t: float
    line: int = field(default=0, compare=False, kw_only=True)

    def __post_init__(self) -> None:
        object.__setattr__(self, "t", float(self.t))


@dataclass(frozen=True)
class Edit(_EventBase):
    """Set `fact` to `target` given `prompt`. `fact` defaults to `id`; two edits with the same
    fact are a re-edit and the later one wins. `meta` is free-form (compared by value)."""
    kind: ClassVar[str] = "edit"
    prompt: str
    target: str
    subject: str | None = None
    fact: str = ""
    rephrases: tuple[str, ...] = ()
    locality: tuple[Probe, ...] = ()
    ood_rephrases: tuple[str, ...] = ()
    portability: tuple[Probe, ...] = ()
    previous: str | None = None
    meta: dict = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("rephrases", "ood_rephrases", "locality", "portability"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "fact", self.fact or self.id)
        object.__setattr__(self, "meta", dict(self.meta or {}))


@dataclass(frozen=True)
class Retract(_EventBase):
    """Undo the edit `edit_id` (which precedes this event in replay order)."""
    kind: ClassVar[str] = "retract"
    edit_id: str


@dataclass(frozen=True)
class Query(_EventBase):
    """A probe asked by the stream itself; `answer` is the expected answer, if known, and
    `fact` the fact it asks about, if known (a seeded replay order keeps it with that fact)."""
    kind: ClassVar[str] = "query"
    prompt: str
    answer: str | None = None
    fact: str | None = None


@dataclass(frozen=True)
class Merge(_EventBase):
    """Force a consolidation of the memory subsystem."""
    kind: ClassVar[str] = "merge"


Event = Edit | Retract | Query | Merge


def _num(t: float) -> int | float:
    return int(t) if t.is_integer() and abs(t) < 2 ** 53 else t


def event_to_dict(ev: Event) -> dict:
    """The JSON object for `ev`: `t` in seconds; empty/None optional fields and a `fact` equal
    to the id are omitted."""
    d: dict[str, Any] = {"kind": ev.kind, "id": ev.id, "t": _num(float(ev.t))}
    if isinstance(ev, Edit):
        d.update(prompt=ev.prompt, target=ev.target)
        opt = {"subject": ev.subject, "fact": ev.fact if ev.fact != ev.id else None,
               "rephrases": list(ev.rephrases), "ood_rephrases": list(ev.ood_rephrases),
               "locality": [p.to_dict() for p in ev.locality],
               "portability": [p.to_dict() for p in ev.portability],
               "previous": ev.previous, "meta": dict(ev.meta)}
        d.update((k, v) for k, v in opt.items() if v)
    elif isinstance(ev, Retract):
        d["edit_id"] = ev.edit_id
    elif isinstance(ev, Query):
        d["prompt"] = ev.prompt
        if ev.answer is not None:
            d["answer"] = ev.answer
        if ev.fact is not None:
            d["fact"] = ev.fact
    elif not isinstance(ev, Merge):
        raise TypeError(f"not a stream event: {type(ev).__name__}")
    return d
