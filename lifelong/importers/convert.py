"""The conversion itself: options, the format registry, format detection, records -> a
validated stream (ids, `fact`, `meta.source` / `record` / `case_id`, shuffle, timestamps).
See the package docstring for the rules; each format's module documents its field mapping.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import random
from dataclasses import dataclass, field
from typing import Any

from ..config import setting
from ..errors import ConfigError, StreamError
from ..stream import load_events_from_dicts
from . import convsent, counterfact, knowedit, mquake, wise, zsre
from .cases import Unit, place, share_edits, unique_edits
from .common import Format, _BadJson, _iso, _jtype, _Rec, _start, read_records
from .facts import fact_id, relation_of, split_many_valued


@dataclass(frozen=True)
class ImportOptions:
    """How `import_file` turns a data set into a stream."""

    format: str = setting("auto", "input format, or 'auto' (from the first record's keys)")
    start: str = setting("2030-01-01T00:00:00Z", "timestamp of the first edit (ISO-8601 or seconds)")
    spacing: float = setting(3600.0, "seconds between consecutive edits", min=0.0)
    shuffle: bool = setting(False, "shuffle the records (seeded) instead of keeping file order")
    seed: int = setting(0, "seed of the shuffle")
    skip: int = setting(0, "leave out the first N edits (after shuffling, before `edits`): a "
                           "second, disjoint slice of the same file", min=0)
    edits: int | None = setting(None, "keep only the first N edits (after shuffling and "
                                      "`skip`)", min=1)
    skip_bad: bool = setting(False, "skip invalid records (counted and reported) instead of failing")
    sentiment: str = setting("alternate", "convsent: target sentiment of each edit",
                             choices=("alternate", "positive", "negative"))

    def __post_init__(self) -> None:
        if not math.isfinite(self.spacing):
            raise ValueError(f"spacing: must be a finite number of seconds, got {self.spacing}")
        if self.format != "auto" and self.format not in FORMATS:
            raise ValueError(f"format: {self.format!r} is not one of auto, {', '.join(FORMATS)}")
        try:
            _start(self.start)
        except ValueError as exc:
            raise ValueError(f"start: {exc}") from None


@dataclass(frozen=True)
class ImportResult:
    """A converted data set: `events` are stream dicts in replay order (already validated);
    `skipped` has one problem line per skipped record, `notes` one line per dropped probe.
    `unread` counts what the format never looked at although it looks like probes: records
    with locality/portability under fields of other names (and no probe read), the probes
    in them, and those fields' names. Probes dropped in all: `len(notes) + unread probes`.
    `left_out`: input key -> how many of the records in `events` have it and did not carry it
    over (top-level keys the format does not map, nested probe keys as `FIELD.NAME[].KEY`).
    `many_valued`: relation -> how many of its edits (over all records, before `edits` cuts
    the stream) have a fact per old value, the relation being many-valued in this data (see
    facts.py). `shared`: how many edits several records share (MQuAKE cases with a common
    rewrite: one edit)."""

    source: str
    format: str
    records: int
    events: tuple[dict, ...]
    skipped: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    unread: dict = field(default_factory=lambda: {"records": 0, "probes": 0, "fields": ()})
    left_out: dict = field(default_factory=dict)
    many_valued: dict = field(default_factory=dict)
    shared: int = 0

    @property
    def dropped(self) -> int:
        """Probes of the input that are not in the stream: empty answers and unread fields."""
        return len(self.notes) + self.unread["probes"]


# in this order: --format's choices, `lifelong streams import --help` and error messages
FORMATS: dict[str, Format] = {f.name: f for f in (
    zsre.FORMAT, knowedit.FORMAT, counterfact.COUNTERFACT, counterfact.ROME_COUNTERFACT,
    wise.TEMPORAL, wise.HALLUCINATION, convsent.FORMAT, mquake.FORMAT,
)}


# the order in which --format auto tries the formats: the most specific layouts first
_DETECT_ORDER = ("rome-counterfact", "mquake", "convsent", "zsre", "knowedit", "wise-temporal",
                 "counterfact", "wise-hallucination")


def detect_format(record: Any) -> str | None:
    """The first format (in `_DETECT_ORDER`) whose required keys the record has, or None."""
    if not isinstance(record, dict):
        return None
    return next((n for n in _DETECT_ORDER if FORMATS[n].detect(record)), None)


def _undetected(source: str, n: int, first: Any) -> StreamError:
    """No format reads the first record: one line (no separate problem lines) naming the file,
    the record's keys and the keys each format expects."""
    got = f"keys {', '.join(map(str, first))}" if isinstance(first, dict) and first else \
        "no keys" if isinstance(first, dict) else f"no JSON ({first.message})" \
        if isinstance(first, _BadJson) else f"a JSON {_jtype(first)}, not an object"
    formats = "; ".join(f"{f.name} ({f.expects})" for f in FORMATS.values() if f.expects)
    return StreamError(f"{source}: --format auto: no supported format reads this layout (record "
                       f"{n} has {got}); the formats and the keys each expects: {formats}", [])


# ------------------------------------------------------------------------- conversion

_ORDER = ("kind", "id", "t", "prompt", "target", "subject", "fact", "previous", "rephrases",
          "locality", "portability", "meta")


def _unit(fmt: Format, rec: _Rec, width: int, opts: ImportOptions) -> Unit | None:
    """The edits of one record (without `t`), or None when it has problems. A converter
    gives one edit's fields, or `edits` (a list of them: ids SOURCE-RECORD-K) and the
    `portability` probes that need all of them (see cases.py)."""
    got = fmt.convert(rec, opts)
    parts = got.get("edits", [got] if got else [])
    if rec.errs or not parts or not all(p.get("prompt") and p.get("target") for p in parts):
        if not rec.errs:  # a converter that could not build a prompt/target says why
            rec.problem("record", "no prompt or target could be built")
        return None
    base = f"{fmt.source}-{rec.n:0{width}d}"
    if "edits" not in got:
        return Unit(rec.n, rec.obj.get("case_id"), [_edit(fmt, rec, got, base)], [], rec.not_carried())
    edits = [_edit(fmt, rec, p, f"{base}-{k}") for k, p in enumerate(parts, start=1)]
    return Unit(rec.n, rec.obj.get("case_id"), edits, list(got.get("portability") or ()), rec.not_carried())


#: the note of a rephrase dropped because it is the edit's own prompt (counted apart by the CLI)
COPIED_REPHRASE = "same text as the edit's prompt (not a generalization probe); dropped"


def _edit(fmt: Format, rec: _Rec, got: dict, eid: str) -> dict:
    """One edit dict (with the private `_key`, `_relation`, `_share`) from a converter's fields."""
    meta = {"source": fmt.source, "record": rec.n}
    case_id = rec.obj.get("case_id")
    if case_id is not None:
        meta["case_id"] = case_id
    meta.update(got.get("meta") or {})
    subject, key = got.get("subject"), got.get("fact_key") or got["prompt"]
    fact = fact_id(subject, key) if subject else \
        f"{fmt.source}:{case_id}" if case_id is not None else None
    rephrases = [r for r in got.get("rephrases") or () if r != got["prompt"]]
    if len(rephrases) < len(got.get("rephrases") or ()):  # a data set's copy of the prompt
        rec.notes.append(("rephrases", COPIED_REPHRASE))
    ev = {"kind": "edit", "id": eid, "prompt": got["prompt"],
          "target": got["target"], "subject": subject, "fact": fact,
          "previous": got.get("previous"), "rephrases": rephrases,
          "locality": got.get("locality"), "portability": got.get("portability"), "meta": meta}
    return {**{k: ev[k] for k in _ORDER if ev.get(k)},
            "_key": key, "_relation": got.get("relation") or relation_of(subject, key),
            "_share": got.get("share")}


def convert_records(records: list[tuple[int, Any]], source: str,
                    opts: ImportOptions | None = None) -> ImportResult:
    """Convert (record number, value) pairs read from `source` (see `read_records`)."""
    opts = opts or ImportOptions()
    if not records:
        raise StreamError(f"{source}: no records", [f"{source}:0: file: no records"])
    detected = detect_format(records[0][1])
    name = opts.format
    if name == "auto":
        if detected is None:
            raise _undetected(source, *records[0])
        name = detected
    fmt = FORMATS[name]
    width = len(str(max(n for n, _ in records)))
    units, problems, firsts, notes = [], [], [], []
    unread: dict[str, int] = {}  # field -> probes in it, over records that read no probe
    unread_records = 0
    for n, obj in records:
        if isinstance(obj, _BadJson) or not isinstance(obj, dict):
            why = ("json", obj.message) if isinstance(obj, _BadJson) else \
                ("record", f"must be an object (got {_jtype(obj)})")
            problems.append(f"{source}:{n}: {why[0]}: {why[1]}")
            firsts.append(problems[-1])
            continue
        rec = _Rec(obj, n)
        unit = _unit(fmt, rec, width, opts)
        notes += [f"{source}:{n}: {w}: {m}" for w, m in rec.notes]
        if unit is None:
            lines = [f"{source}:{n}: {w}: {m}" for w, m in rec.errs]
            problems += lines
            firsts.append(lines[0])
        else:
            units.append(unit)
            missed = {} if unit.has_probes() else _unread_probes(rec)
            unread_records += bool(missed)
            for k, v in missed.items():
                unread[k] = unread.get(k, 0) + v
    if problems and not opts.skip_bad or not units:
        bad = len(firsts)
        hint = f"; --format auto would read it as {detected}" \
            if detected and detected != name and bad == len(records) else ""
        if not units and not problems:
            raise StreamError(f"{source}: no records", [f"{source}:0: file: no records"])
        hint += "; --skip-bad skips them" if units else ""
        msg = (f"{source}: {bad} of {len(records)} record{'s' * (len(records) != 1)} invalid "
               f"as {name}{hint} (first: {problems[0]})")
        raise StreamError(msg, problems)
    shared = share_edits(units)  # in file order: a shared edit's id is its first record's
    many_valued = split_many_valued(unique_edits(units))  # in file order, over every record
    if opts.shuffle:
        random.Random(opts.seed).shuffle(units)
    events = _skip(place(units, source, notes), opts.skip, source)
    if opts.edits is not None:
        events = events[:opts.edits]
    probes = sum(len(ev.get("locality", ())) + len(ev.get("portability", ())) for ev in events)
    kept = {id(ev) for ev in events}
    left_out: dict[str, int] = {}  # over the records with an edit in the stream
    for key in (k for u in units if any(id(e) in kept for e in u.edits) for k in u.left_out):
        left_out[key] = left_out.get(key, 0) + 1
    info = {"records": unread_records, "probes": sum(unread.values()), "fields": tuple(sorted(unread))}
    if unread_records and not probes:
        raise StreamError(_unread_message(source, name, detected, len(events), info), [])
    t0 = _start(opts.start)
    try:
        for k, ev in enumerate(events):
            ev["t"] = _iso(t0 + dt.timedelta(seconds=k * opts.spacing))
    except OverflowError:
        raise ConfigError(f"streams import: {len(events)} edits {opts.spacing} s apart from "
                          f"{opts.start} run past the year 9999") from None
    events = [{key: ev[key] for key in _ORDER if key in ev} for ev in events]
    load_events_from_dicts(events, source=f"{source} (converted)")  # raises on a bug
    return ImportResult(source, name, len(records), tuple(events), tuple(firsts), tuple(notes),
                        info, dict(sorted(left_out.items())), many_valued, shared)


def _skip(events: list[dict], n: int, source: str) -> list[dict]:
    """`events` less the first `n`; a one-line error when a kept multi-hop probe `needs` a
    left-out edit (a case cut in two) or nothing is left."""
    if not n:
        return events
    gone = {ev["id"] for ev in events[:n]}
    for ev in events[n:]:
        for p in ev.get("portability", ()):
            if gone & set(p.get("needs", ())):
                raise ConfigError(f"streams import: {source}: --skip {n} leaves out edit(s) that "
                                  f"a kept multi-hop probe of {ev['id']} needs; skip a number "
                                  "that ends between cases")
    if n >= len(events):
        raise ConfigError(f"streams import: {source}: --skip {n} leaves none of its "
                          f"{len(events)} edits")
    return events[n:]


#: top-level keys that hold locality or portability probes in one format or another
_PROBE_PREFIXES = ("loc", "portability", "neighborhood", "neighbourhood", "attribute_prompts")
_ANSWER_HINTS = ("ground_truth", "ans", "answer", "target")


def _unread_probes(rec: _Rec) -> dict[str, int]:
    """Probe-like fields of the record the converter never read -> probes in each (prompts
    only: answer fields such as `locality_ground_truth` are not counted again)."""
    out = {}
    for key, value in rec.obj.items():
        low = key.lower()
        if key in rec.read or not low.startswith(_PROBE_PREFIXES) or value in (None, "", [], {}):
            continue
        out[key] = 0 if any(h in low for h in _ANSWER_HINTS) else _count_prompts(value)
    return out


def _count_prompts(value: Any) -> int:
    """Prompts in a probe field: a string, a list of them, {prompt, ...} objects, or names
    mapping to lists of those (KnowEdit)."""
    if isinstance(value, str):
        return int(bool(value.strip()))
    if isinstance(value, list):
        return sum(_count_prompts(v) for v in value)
    if isinstance(value, dict):
        return 1 if "prompt" in value else sum(_count_prompts(v) for v in value.values())
    return 0


def _unread_message(source: str, name: str, detected: str | None, n: int, info: dict) -> str:
    hint = (f"--format {detected} reads them" if detected and detected != name else
            "give the --format whose fields these are")
    return (f"{source}: format {name} found no locality or portability probe in any of the {n} "
            f"records, but {info['records']} of them hold {info['probes']} such probe(s) under "
            f"field(s) it does not read ({', '.join(info['fields'])}); {hint}")


def import_file(path: str | os.PathLike, opts: ImportOptions | None = None) -> ImportResult:
    """Read and convert one data-set file (see the package docstring)."""
    return convert_records(read_records(path), os.fsdecode(path), opts)


def write_events(events: tuple[dict, ...] | list[dict], path: str | os.PathLike) -> None:
    """Write stream dicts as UTF-8 JSONL, one compact event per line."""
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for ev in events:
            fh.write(json.dumps(ev, ensure_ascii=False, separators=(",", ":")) + "\n")
