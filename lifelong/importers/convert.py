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
from . import convsent, counterfact, knowedit, wise, zsre
from .common import Format, _BadJson, _fact, _iso, _jtype, _Rec, _start, read_records


@dataclass(frozen=True)
class ImportOptions:
    """How `import_file` turns a data set into a stream."""

    format: str = setting("auto", "input format, or 'auto' (from the first record's keys)")
    start: str = setting("2030-01-01T00:00:00Z", "timestamp of the first edit (ISO-8601 or seconds)")
    spacing: float = setting(3600.0, "seconds between consecutive edits", min=0.0)
    shuffle: bool = setting(False, "shuffle the records (seeded) instead of keeping file order")
    seed: int = setting(0, "seed of the shuffle")
    edits: int | None = setting(None, "keep only the first N edits (after shuffling)", min=1)
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
    over (top-level keys the format does not map, nested probe keys as `FIELD.NAME[].KEY`)."""

    source: str
    format: str
    records: int
    events: tuple[dict, ...]
    skipped: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    unread: dict = field(default_factory=lambda: {"records": 0, "probes": 0, "fields": ()})
    left_out: dict = field(default_factory=dict)

    @property
    def dropped(self) -> int:
        """Probes of the input that are not in the stream: empty answers and unread fields."""
        return len(self.notes) + self.unread["probes"]


# in this order: --format's choices, `lifelong streams import --help` and error messages
FORMATS: dict[str, Format] = {f.name: f for f in (
    zsre.FORMAT, knowedit.FORMAT, counterfact.COUNTERFACT, counterfact.ROME_COUNTERFACT,
    wise.TEMPORAL, wise.HALLUCINATION, convsent.FORMAT,
)}


def detect_format(record: Any) -> str | None:
    """The format whose keys the record has, or None."""
    if not isinstance(record, dict):
        return None
    keys = set(record)
    if "requested_rewrite" in keys:
        return "rome-counterfact"
    if "ent" in keys and keys & {"pos", "neg"}:
        return "convsent"
    if {"src", "alt"} <= keys:
        return "zsre"
    if isinstance(record.get("locality"), (dict, list)) or \
            isinstance(record.get("portability"), (dict, list)) or {"text", "labels"} <= keys:
        return "knowedit"
    if "ood_rephrase" in keys:
        return "wise-temporal"
    if {"prompt", "target_new"} <= keys:
        if keys & {"ground_truth", "rephrase_prompt", "case_id"}:
            return "counterfact"
        return "wise-hallucination"
    return None


# ------------------------------------------------------------------------- conversion

_ORDER = ("kind", "id", "t", "prompt", "target", "subject", "fact", "previous", "rephrases",
          "locality", "portability", "meta")


def _event(fmt: Format, rec: _Rec, width: int, opts: ImportOptions) -> dict | None:
    """The edit dict of one record (without `t`), or None when it has problems."""
    got = fmt.convert(rec, opts)
    if rec.errs or not got.get("prompt") or not got.get("target"):
        if not rec.errs:  # a converter that could not build a prompt/target says why
            rec.problem("record", "no prompt or target could be built")
        return None
    meta = {"source": fmt.source, "record": rec.n}
    case_id = rec.obj.get("case_id")
    if case_id is not None:
        meta["case_id"] = case_id
    meta.update(got.get("meta") or {})
    subject = got.get("subject")
    fact = _fact(subject, got.get("fact_key") or got["prompt"]) if subject else \
        f"{fmt.source}:{case_id}" if case_id is not None else None
    ev = {"kind": "edit", "id": f"{fmt.source}-{rec.n:0{width}d}", "prompt": got["prompt"],
          "target": got["target"], "subject": subject, "fact": fact,
          "previous": got.get("previous"), "rephrases": got.get("rephrases"),
          "locality": got.get("locality"), "portability": got.get("portability"), "meta": meta}
    return {k: ev[k] for k in _ORDER if ev.get(k)}


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
            first = records[0][1]
            got = f"keys {', '.join(sorted(first))}" if isinstance(first, dict) else _jtype(first)
            why = (f"cannot detect the format from the first record ({got}); "
                   f"give --format (one of {', '.join(FORMATS)})")
            raise StreamError(f"{source}: {why}", [f"{source}:{records[0][0]}: record: {why}"])
        name = detected
    fmt = FORMATS[name]
    width = len(str(max(n for n, _ in records)))
    events, problems, firsts, notes = [], [], [], []
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
        ev = _event(fmt, rec, width, opts)
        notes += [f"{source}:{n}: {w}: {m}" for w, m in rec.notes]
        if ev is None:
            lines = [f"{source}:{n}: {w}: {m}" for w, m in rec.errs]
            problems += lines
            firsts.append(lines[0])
        else:
            ev["_left_out"] = rec.not_carried()
            events.append(ev)
            missed = {} if ev.get("locality") or ev.get("portability") else _unread_probes(rec)
            unread_records += bool(missed)
            for k, v in missed.items():
                unread[k] = unread.get(k, 0) + v
    if problems and not opts.skip_bad or not events:
        bad = len(firsts)
        hint = f"; --format auto would read it as {detected}" \
            if detected and detected != name and bad == len(records) else ""
        if not events and not problems:
            raise StreamError(f"{source}: no records", [f"{source}:0: file: no records"])
        hint += "; --skip-bad skips them" if events else ""
        msg = (f"{source}: {bad} of {len(records)} record{'s' * (len(records) != 1)} invalid "
               f"as {name}{hint} (first: {problems[0]})")
        raise StreamError(msg, problems)
    if opts.shuffle:
        random.Random(opts.seed).shuffle(events)
    if opts.edits is not None:
        events = events[:opts.edits]
    probes = sum(len(ev.get("locality", ())) + len(ev.get("portability", ())) for ev in events)
    left_out: dict[str, int] = {}
    for key in (k for ev in events for k in ev["_left_out"]):
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
                        info, dict(sorted(left_out.items())))


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
