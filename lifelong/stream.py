"""Edit streams: a strict and friendly JSONL parser/validator, and a serializer (the event
types are in `lifelong.events`, re-exported here).

A stream is UTF-8 JSONL, one event object per line; blank lines are ignored. Every problem is
reported as one line `FILE:LINE: field: what is wrong` (LINE is 1-based, 0 for whole-file
problems). Invariants of a successfully parsed stream:

- every event passed its per-line checks (types, required/unknown fields, sizes);
- ids are unique across all kinds;
- events are in replay order: non-decreasing `t`, ties in file order (with `sort=True` the
  file may be out of order and is stably sorted by `t`; otherwise decreasing `t` is an error);
- every retract names an edit that precedes it in replay order and is retracted only once;
- every id in a portability probe's `needs` names an edit that precedes the probe's edit in
  replay order, or that edit itself.

`previous_warnings` lists what is valid but doubtful: an edit's `previous` that contradicts
the value the stream gave its fact.

`dump_stream` writes events so that `parse_stream` gives back equal events (`line` is not
part of equality).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .errors import StreamError
from .events import Edit, Event, Merge, Probe, Query, Retract, event_to_dict

__all__ = ["KINDS", "MAX_CHARS", "MAX_ITEMS", "Edit", "Event", "Merge", "ParsedStream", "Probe",
           "Query", "Retract", "dump_stream", "event_to_dict", "load_events_from_dicts",
           "parse_stream", "parse_time", "previous_warnings", "read_bytes", "validate_stream"]

MAX_CHARS = 4096  # per string
MAX_ITEMS = 256  # per list
KINDS = ("edit", "retract", "query", "merge")
_COMMON = ("kind", "id", "t")
_FIELDS = types.MappingProxyType({
    "edit": _COMMON + ("prompt", "target", "subject", "fact", "rephrases", "ood_rephrases",
                       "locality", "portability", "previous", "meta"),
    "retract": _COMMON + ("edit_id",),
    "query": _COMMON + ("prompt", "answer", "fact"),
    "merge": _COMMON,
})
_SURROGATE = "contains an unpaired surrogate"
_JSON_TYPES = types.MappingProxyType({
    type(None): "null", bool: "boolean", int: "number", float: "number", str: "string",
    list: "array", tuple: "array", dict: "object"})
_REQUIRED = types.MappingProxyType({
    "edit": ("prompt", "target"), "retract": ("edit_id",), "query": ("prompt",), "merge": ()})


@dataclass(frozen=True)
class ParsedStream:
    """Validated events in replay order; `skipped` has one problem line per dropped line;
    `sha256` the hex digest of the file's bytes as read ("" when not read from a file): the
    stream's identity wherever it is checked out."""
    path: str
    events: tuple[Event, ...]
    skipped: tuple[str, ...] = ()
    sha256: str = ""


# ----------------------------------------------------------------------------- field checks

def _json_type(v: Any) -> str:
    return _JSON_TYPES.get(type(v), type(v).__name__)


def _text_problem(v: Any) -> str | None:
    """Why `v` is not an acceptable string (non-empty, not too long, encodable), or None."""
    if not isinstance(v, str):
        return f"must be a non-empty string (got {_json_type(v)})"
    if not v.strip():
        return "must be a non-empty string"
    if len(v) > MAX_CHARS:
        return f"longer than {MAX_CHARS} characters ({len(v)})"
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE
    return None


def _text(errs: list, obj: dict, key: str, kind: str | None) -> str | None:
    """A string field: required if `key` is common or required for `kind` (None: unknown
    kind), else optional (absent or null)."""
    v = obj.get(key)
    if v is None:
        if key in _COMMON or key in _REQUIRED.get(kind, ()):
            errs.append((key, "must be a non-empty string (got null)" if key in obj
                         else f"missing (required for {kind})" if kind else "missing"))
        return None
    why = _text_problem(v)
    errs.extend([(key, why)] if why else [])
    return None if why else v


def _list(errs: list, obj: dict, key: str, item: Callable[[list, str, Any], Any]) -> tuple:
    """An optional list field (absent/null -> empty), at most MAX_ITEMS long; `item(errs,
    where, value)` checks and converts each element."""
    v = obj.get(key)
    if v is None:
        return ()
    if not isinstance(v, (list, tuple)) or len(v) > MAX_ITEMS:
        why = f"more than {MAX_ITEMS} items ({len(v)})" if isinstance(v, (list, tuple)) else \
            f"must be a list (got {_json_type(v)})"
        errs.append((key, why))
        return ()
    return tuple(item(errs, f"{key}[{i}]", x) for i, x in enumerate(v))


def _item_text(errs: list, where: str, v: Any) -> Any:
    why = _text_problem(v)
    errs.extend([(where, why)] if why else [])
    return v


def _item_probe(errs: list, where: str, v: Any, portability: bool = False) -> Probe | None:
    """A probe is an object with exactly a non-empty `prompt` and `answer`; the answer is a
    string or a list of distinct strings (aliases, the canonical one first). A portability
    probe may also have `needs` (see `_needs`)."""
    if not isinstance(v, dict):
        errs.append((where, f"must be an object with prompt and answer (got {_json_type(v)})"))
        return None
    for k in v:
        if k not in ("prompt", "answer") and (k != "needs" or not portability):
            errs.append((f"{where}.{k}", "unknown field (only portability probes have needs)"
                         if k == "needs" else "unknown field"))
    why = "missing" if "prompt" not in v else _text_problem(v["prompt"])
    errs.extend([(f"{where}.prompt", why)] if why else [])
    answers = _answers(errs, f"{where}.answer", v.get("answer", _ABSENT))
    needs = _needs(errs, f"{where}.needs", v.get("needs")) if portability else ()
    return Probe(v.get("prompt"), answers[0], answers[1:], needs) if answers else None


def _item_portability(errs: list, where: str, v: Any) -> Probe | None:
    return _item_probe(errs, where, v, portability=True)


def _needs(errs: list, where: str, v: Any) -> tuple[str, ...]:
    """A portability probe's `needs`: absent or null, or a non-empty list of distinct edit
    ids (which edits they must be is a stream check: `_needs_problems`)."""
    return () if v is None else _distinct(errs, where, v, "a non-empty list of edit ids")


_ABSENT = object()


def _answers(errs: list, where: str, v: Any) -> tuple[str, ...]:
    """A probe's answer: a string, or a non-empty list of distinct strings -> all answers
    (empty when there is a problem)."""
    if v is _ABSENT or isinstance(v, str):
        why = "missing" if v is _ABSENT else _text_problem(v)
        errs.extend([(where, why)] if why else [])
        return () if why else (v,)
    return _distinct(errs, where, v, "a non-empty string or a non-empty list of strings")


def _distinct(errs: list, where: str, v: Any, what: str) -> tuple[str, ...]:
    """A non-empty list of at most MAX_ITEMS distinct non-empty strings (`what` says what is
    expected) -> its items (empty when there is a problem)."""
    if not isinstance(v, (list, tuple)) or not v:
        got = "an empty list" if isinstance(v, (list, tuple)) else _json_type(v)
        errs.append((where, f"must be {what} (got {got})"))
        return ()
    if len(v) > MAX_ITEMS:
        errs.append((where, f"more than {MAX_ITEMS} items ({len(v)})"))
        return ()
    before, name = len(errs), where.rsplit(".", 1)[-1]
    for i, x in enumerate(v):
        why = _text_problem(x) or (f"duplicate of {name}[{v.index(x)}]" if v.index(x) < i else None)
        errs.extend([(f"{where}[{i}]", why)] if why else [])
    return tuple(v) if len(errs) == before else ()


def _meta(errs: list, obj: dict) -> dict:
    v = obj.get("meta")
    if v is None:
        return {}
    if not isinstance(v, dict):
        errs.append(("meta", f"must be an object (got {_json_type(v)})"))
        return {}
    _check_json_value(errs, v, "meta")  # meta is free-form: no size limits
    return v


def _check_json_value(errs: list, v: Any, where: str) -> None:
    """Free-form values must be plain JSON: finite numbers, encodable strings, string keys."""
    if isinstance(v, dict):
        for k, x in v.items():
            _check_json_value(errs, x, f"{where}.{k}")
            errs.extend([] if isinstance(k, str) else [(where, "keys must be strings")])
    elif isinstance(v, (list, tuple)):
        for i, x in enumerate(v):
            _check_json_value(errs, x, f"{where}[{i}]")
    elif isinstance(v, float) and not math.isfinite(v):
        errs.append((where, f"non-finite number ({v})"))
    elif isinstance(v, str) and _text_problem(v) == _SURROGATE:
        errs.append((where, _SURROGATE))
    elif v is not None and not isinstance(v, (bool, int, float, str)):
        errs.append((where, f"not a JSON value ({type(v).__name__})"))


def parse_time(v: Any) -> float:
    """ISO-8601 string (naive = UTC), datetime, or seconds -> UTC epoch seconds (finite).
    Raises ValueError with a message for a `t:` problem line."""
    if isinstance(v, bool) or not isinstance(v, (int, float, str, datetime)):
        raise ValueError(f"must be an ISO-8601 string or a number of seconds (got {_json_type(v)})")
    if isinstance(v, str):
        if len(v) > MAX_CHARS:
            raise ValueError(f"longer than {MAX_CHARS} characters ({len(v)})")
        s = v.strip()
        s = s[:-1] + "+00:00" if s[-1:] in ("Z", "z") else s
        try:
            v = datetime.fromisoformat(s)
        except ValueError:
            raise ValueError(f"unparsable timestamp {v!r} (expected ISO-8601 such as "
                             f"2030-01-01T00:00:00Z, or a number of seconds)") from None
    try:
        if isinstance(v, datetime):
            return (v if v.tzinfo else v.replace(tzinfo=timezone.utc)).timestamp()
        t = float(v)
    except (OverflowError, ValueError, OSError):
        raise ValueError("timestamp out of range") from None
    if not math.isfinite(t):
        raise ValueError(f"must be a finite number (got {v})")
    return t


def _row_event(obj: Any, line: int) -> tuple[Event | None, list[tuple[str, str]]]:
    """Per-line checks: returns the event (None if any problem) and (field, message) pairs."""
    if not isinstance(obj, dict):
        return None, [("json", f"expected an object, got {_json_type(obj)}")]
    errs: list[tuple[str, str]] = []
    kind = obj.get("kind")
    if kind not in KINDS:
        why = "missing" if "kind" not in obj else f"{kind!r} is not"
        errs.append(("kind", f"expected one of {', '.join(KINDS)} ({why})"))
        kind = None  # still check id and t
    else:
        errs.extend((k, "unknown field") for k in obj if k not in _FIELDS[kind])
    eid = _text(errs, obj, "id", kind)
    t = 0.0
    if "t" not in obj:
        errs.append(("t", f"missing (required for {kind})" if kind else "missing"))
    else:
        try:
            t = parse_time(obj["t"])
        except ValueError as exc:
            errs.append(("t", str(exc)))
    ev = _build(kind, errs, obj, eid, t, line)
    return (None if errs else ev), errs


def _build(kind: str | None, errs: list, obj: dict, eid: Any, t: Any, line: int) -> Event:
    if kind == "edit":
        return Edit(eid, t, _text(errs, obj, "prompt", kind), _text(errs, obj, "target", kind),
                    subject=_text(errs, obj, "subject", kind), fact=_text(errs, obj, "fact", kind),
                    rephrases=_list(errs, obj, "rephrases", _item_text),
                    ood_rephrases=_list(errs, obj, "ood_rephrases", _item_text),
                    locality=_list(errs, obj, "locality", _item_probe),
                    portability=_list(errs, obj, "portability", _item_portability),
                    previous=_text(errs, obj, "previous", kind), meta=_meta(errs, obj), line=line)
    if kind == "retract":
        return Retract(eid, t, _text(errs, obj, "edit_id", kind), line=line)
    if kind == "query":
        return Query(eid, t, _text(errs, obj, "prompt", kind), _text(errs, obj, "answer", kind),
                     fact=_text(errs, obj, "fact", kind), line=line)
    return Merge(eid, t, line=line)


# ----------------------------------------------------------------------------- stream checks

@dataclass
class _Row:
    """One non-blank input line while it is being checked (private, per call)."""
    line: int
    event: Event | None
    errs: list
    raw_id: Any = None
    raw_t: Any = None


def _retract_problem(ev: Retract, seen: dict, dropped: dict, first: dict,
                     retracted: dict) -> str | None:
    target, x = seen.get(ev.edit_id), ev.edit_id
    if target is None:
        if x == ev.id:
            return "a retract cannot retract itself"
        if x in dropped:
            return f"retract of invalid edit {x!r} (line {dropped[x]})"
        if x in first:
            return f"retract of edit {x!r} which comes later (line {first[x]})"
        return f"retract of unknown edit {x!r}"
    if not isinstance(target, Edit):
        return f"{x!r} is a {target.kind}, not an edit (line {target.line})"
    if x in retracted:
        return f"edit {x!r} already retracted on line {retracted[x]}"
    return None


def _needs_problems(ev: Edit, seen: dict, dropped: dict, first: dict) -> list[tuple[str, str]]:
    """Every id in a portability probe's `needs` must be an earlier edit or `ev` itself."""
    out = []
    for i, p in enumerate(ev.portability):
        for j, x in enumerate(p.needs):
            target = seen.get(x)
            if x == ev.id or isinstance(target, Edit):
                continue
            why = f"{x!r} is a {target.kind}, not an edit (line {target.line})" if target is not None else \
                f"{x!r} is an invalid edit (line {dropped[x]})" if x in dropped else \
                f"edit {x!r} comes later (line {first[x]}); needs names earlier edits or this one" \
                if x in first else f"{x!r} is not an edit of this stream"
            out.append((f"portability[{i}].needs[{j}]", why))
    return out


def _stream_checks(rows: list[_Row], sort: bool) -> list[Event]:
    """Cross-line checks in replay order; rows that fail get errs and lose their event."""
    good = [r for r in rows if r.event is not None]
    if sort:
        good.sort(key=lambda r: r.event.t)  # stable: ties keep file order
    first: dict[str, int] = {}
    for r in good:
        first.setdefault(r.event.id, r.line)
    dropped = {r.raw_id: r.line for r in rows if r.event is None and isinstance(r.raw_id, str)}
    seen: dict[str, Event] = {}
    retracted: dict[str, int] = {}
    last: _Row | None = None
    out = []
    for r in good:
        ev, errs = r.event, []
        if ev.id in seen:
            errs.append(("id", f"duplicate id {ev.id!r} (first on line {seen[ev.id].line})"))
        if not sort and last is not None and ev.t < last.event.t:
            errs.append(("t", f"decreasing timestamp ({r.raw_t} after {last.raw_t} "
                              f"on line {last.line})"))
        why = _retract_problem(ev, seen, dropped, first, retracted) if isinstance(ev, Retract) else None
        errs += [("edit_id", why)] if why else []
        errs += _needs_problems(ev, seen, dropped, first) if isinstance(ev, Edit) else []
        if errs:
            r.errs.extend(errs)
            r.event = None
            dropped.setdefault(ev.id, r.line)
            continue
        seen[ev.id] = ev
        last = r if last is None or ev.t >= last.event.t else last
        if isinstance(ev, Retract):
            retracted[ev.edit_id] = r.line
        out.append(ev)
    return out


def _finish(source: str, rows: list[_Row], skip_bad: bool, sort: bool) -> ParsedStream:
    """Run the stream checks; raise StreamError or return the ParsedStream."""
    events = _stream_checks(rows, sort)
    bad = [r for r in rows if r.errs]
    problems = [f"{source}:{r.line}: {f}: {m}" for r in bad for f, m in r.errs]
    firsts = tuple(f"{source}:{r.line}: {r.errs[0][0]}: {r.errs[0][1]}" for r in bad)
    if not events and (skip_bad or not bad):
        empty = f"{source}:0: stream: no events"
        msg = empty + (f" ({len(bad)} invalid line{'s' * (len(bad) != 1)} skipped)" if bad else "")
        raise StreamError(msg, [empty] + problems)
    if bad and not skip_bad:
        n = len(bad)
        raise StreamError(f"{source}: {n} invalid line{'s' * (n != 1)} (first: {problems[0]})",
                          problems)
    return ParsedStream(source, tuple(events), firsts)


def _row_from_obj(obj: Any, line: int, errs: list | None = None) -> _Row:
    ev, more = _row_event(obj, line)
    raw = obj if isinstance(obj, dict) else {}
    raw_t = raw.get("t")
    shown = raw_t if isinstance(raw_t, str) else repr(raw_t) if isinstance(raw_t, float) else str(raw_t)
    errs = (errs or []) + more
    return _Row(line, None if errs else ev, errs, raw.get("id"), shown)


def _loads(text: str) -> tuple[Any, list[tuple[str, str]]]:
    """json.loads that also reports duplicate keys (the last value is kept)."""
    dups: list[tuple[str, str]] = []

    def pairs(items: list) -> dict:
        d: dict = {}
        for k, v in items:
            if k in d:
                dups.append((k, "duplicate key"))
            d[k] = v
        return d

    return json.loads(text, object_pairs_hook=pairs), dups


def _decode_line(raw: bytes, line: int, offset: int) -> _Row:
    """Decode and JSON-parse one line; byte offsets in messages are 0-based."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        where = f"invalid UTF-8 at byte {exc.start} (file offset {offset + exc.start})"
        return _Row(line, None, [("encoding", where)])
    try:
        obj, dups = _loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        why = f"{exc.msg} (column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else \
            "nested too deeply" if isinstance(exc, RecursionError) else str(exc).split("\n")[0]
        return _Row(line, None, [("json", why)])
    return _row_from_obj(obj, line, dups)


def _read_rows(source: str, data: bytes) -> list[_Row]:
    rows, offset = [], 0
    if data.startswith(b"\xef\xbb\xbf"):
        data, offset = data[3:], 3
    for i, raw in enumerate(data.split(b"\n"), start=1):
        if raw.strip():
            rows.append(_decode_line(raw[:-1] if raw.endswith(b"\r") else raw, i, offset))
        offset += len(raw) + 1
    return rows


# ----------------------------------------------------------------------------- public API

def read_bytes(path: str, what: str) -> bytes:
    """The bytes of an input file; a missing or unreadable file is a StreamError whose one
    problem line is `FILE:0: file: ...` (`what` names the kind of file in the message)."""
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        why = f"{what} file not found" if isinstance(exc, FileNotFoundError) else \
            f"cannot read {what} file ({exc.strerror or exc})"
        raise StreamError(f"{path}: {why}", [f"{path}:0: file: {why}"]) from None


def file_sha256(path: str | os.PathLike) -> str:
    """The hex sha256 of a file's bytes, read in blocks: a stream's identity, as
    `ParsedStream.sha256` and an organism's `stream_sha256` record it."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def parse_stream(path: str | os.PathLike, *, skip_bad: bool = False,
                 sort: bool = False) -> ParsedStream:
    """Read and validate a JSONL stream. Collects every problem; raises StreamError (one-line
    message, `problems` = all `FILE:LINE: field: message` lines) unless `skip_bad`, in which
    case bad lines (and retracts of dropped edits) are dropped and listed in `skipped`. An
    unreadable file or a stream with no events always raises."""
    source = os.fsdecode(path)
    raw = read_bytes(source, "stream")
    parsed = _finish(source, _read_rows(source, raw), skip_bad, sort)
    return dataclasses.replace(parsed, sha256=hashlib.sha256(raw).hexdigest())


def validate_stream(path: str | os.PathLike, sort: bool = False) -> list[str]:
    """All problem lines of the stream at `path`; empty when it is valid."""
    try:
        parse_stream(path, sort=sort)
    except StreamError as exc:
        return list(exc.problems)
    return []


def previous_warnings(parsed: ParsedStream) -> list[str]:
    """Edits whose `previous` contradicts the stream, one line each (warnings: the stream is
    valid). The fact's value just before an edit is the target of the last earlier edit of
    the same fact that was not retracted; when every earlier edit of it was retracted, the
    `previous` of the first of them (the value before the stream), if it has one. A fact
    with no earlier edit, or an edit without `previous`, is not checked. Values are compared
    without surrounding whitespace and case."""
    live: dict[str, list[Edit]] = {}  # fact -> its edits not retracted, in replay order
    first: dict[str, Edit] = {}  # fact -> its first edit
    edits: dict[str, Edit] = {}
    retracted: dict[str, int] = {}  # edit id -> line of the retract
    out = []
    for ev in parsed.events:
        if isinstance(ev, Retract) and ev.edit_id in edits:
            fact = edits[ev.edit_id].fact
            live[fact] = [e for e in live[fact] if e.id != ev.edit_id]
            retracted[ev.edit_id] = ev.line
        if not isinstance(ev, Edit):
            continue
        before, base = live.get(ev.fact), first.get(ev.fact)
        value, why = (before[-1].target, f"edit {before[-1].id}, line {before[-1].line}") if before \
            else (base.previous, f"the value before edit {base.id}, line {base.line}, which line "
                                 f"{retracted[base.id]} retracted") if base else (None, "")
        if ev.previous is not None and value is not None and \
                ev.previous.strip().casefold() != value.strip().casefold():
            out.append(f"{parsed.path}:{ev.line}: previous: {ev.previous!r} but the fact's value "
                       f"before this edit is {value!r} ({why})")
        live.setdefault(ev.fact, []).append(ev)
        first.setdefault(ev.fact, ev)
        edits[ev.id] = ev
    return out


def load_events_from_dicts(rows: Iterable[Any], source: str = "<memory>", *,
                           skip_bad: bool = False, sort: bool = False) -> ParsedStream:
    """Same validation as `parse_stream`, from dicts; row i (0-based) is reported as line i+1."""
    return _finish(source, [_row_from_obj(obj, i) for i, obj in enumerate(rows, start=1)],
                   skip_bad, sort)


def dump_stream(events: Iterable[Event], path: str | os.PathLike) -> None:
    """Write `events` as UTF-8 JSONL in the given order (which should be replay order)."""
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for ev in events:
            fh.write(json.dumps(event_to_dict(ev), ensure_ascii=False, allow_nan=False) + "\n")
