"""Shared helpers of the importers: reading records, reporting problems, coercing fields,
timestamps, and the `Format` descriptor that every format module fills in.

A converter gets a `_Rec` (one record: its object, number, problems and notes) and builds
the stream fields with `_text` / `_texts` / `_answer` / `_target` (strings stripped, never
truncated; a wrong type, a missing required field or a string longer than MAX_CHARS is a
problem of the record) and `_Probes` (locality / portability probes with their groups; an
answer with several aliases becomes the probe's list of answers, the first alias canonical; a
probe whose answer is empty is dropped with a note).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import StreamError
from ..stream import MAX_CHARS, MAX_ITEMS, parse_time, read_bytes

if TYPE_CHECKING:
    from .convert import ImportOptions

_MISSING = object()
_JSON = {type(None): "null", bool: "boolean", int: "number", float: "number", str: "string",
         list: "array", dict: "object"}


# ------------------------------------------------------------------------- reading records

def read_records(path: str | os.PathLike) -> list[tuple[int, Any]]:
    """(record number, parsed value) for every record of a JSON array (1-based index) or a
    JSONL file (1-based line; blank lines skipped; a line that is not JSON becomes a
    `_BadJson` value, reported as that record's problem). A whole-file JSON object is one
    record. An unreadable file or a JSON array that does not parse raises `StreamError`."""
    name = os.fsdecode(path)
    data = read_bytes(name, "input")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        why = f"invalid UTF-8 at byte {exc.start}"
        raise StreamError(f"{name}: {why}", [f"{name}:0: encoding: {why}"]) from None
    head = text.lstrip()[:1]
    if head in ("[", "{"):
        try:
            whole = json.loads(text)
        except json.JSONDecodeError as exc:
            if head == "[":
                why = f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
                raise StreamError(f"{name}: {why}", [f"{name}:0: json: {why}"]) from None
        else:
            return list(enumerate(whole, start=1)) if isinstance(whole, list) else [(1, whole)]
    out = []
    for i, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            try:
                out.append((i, json.loads(line)))
            except json.JSONDecodeError as exc:
                out.append((i, _BadJson(f"{exc.msg} (column {exc.colno})")))
    return out


@dataclass(frozen=True)
class _BadJson:
    message: str


# ------------------------------------------------------------------------- field helpers

def _jtype(v: Any) -> str:
    return _JSON.get(type(v), type(v).__name__)


class _Rec:
    """One record being converted: its object, number, problems and notes; `read` holds the
    top-level keys the converter asked for (so fields it never looked at can be told) and
    `left_out` the nested keys it saw and did not carry over (`locality.NAME[].KEY`)."""

    def __init__(self, obj: dict, n: int):
        self.obj, self.n = obj, n
        self.errs: list[tuple[str, str]] = []
        self.notes: list[tuple[str, str]] = []
        self.read: set[str] = set()
        self.left_out: set[str] = set()

    def not_carried(self) -> list[str]:
        """Keys of the record that are not in its edit: top-level keys never read (`case_id`
        goes to meta) and the nested keys in `left_out`, sorted."""
        top = {k for k in self.obj if k not in self.read and k != "case_id"}
        return sorted(top | self.left_out)

    def get(self, path: str, obj: Any = _MISSING) -> Any:
        """The value at a dotted path (`_MISSING` where any step is absent or null)."""
        if obj is _MISSING:
            self.read.add(path.split(".", 1)[0])
        cur = self.obj if obj is _MISSING else obj
        for key in path.split("."):
            if not isinstance(cur, dict) or cur.get(key) is None:
                return _MISSING
            cur = cur[key]
        return cur

    def problem(self, where: str, why: str) -> None:
        self.errs.append((where, why))


def _clean(rec: _Rec, where: str, v: str) -> str | None:
    """`v` stripped; None (with a problem) if too long or not encodable; '' if blank."""
    s = v.strip()
    if len(s) > MAX_CHARS:
        rec.problem(where, f"{len(s)} characters, longer than the stream format's limit of "
                           f"{MAX_CHARS} (the importer does not truncate)")
        return None
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        rec.problem(where, "contains an unpaired surrogate")
        return None
    return s


def _text(rec: _Rec, where: str, v: Any, required: bool = False) -> str | None:
    """A single string (a one-element list of strings is accepted). Optional: absent or
    blank -> None; required: a problem."""
    if isinstance(v, list) and len(v) == 1:
        v = v[0]
    if v is _MISSING or v is None:
        if required:
            rec.problem(where, "missing (required)")
        return None
    if not isinstance(v, str):
        rec.problem(where, f"must be a string (got {_jtype(v)})")
        return None
    s = _clean(rec, where, v)
    if s == "" and required:
        rec.problem(where, "empty (a non-empty string is required)")
    return s or None


def _texts(rec: _Rec, where: str, v: Any, required: bool = False) -> list[str]:
    """A string or a list of strings -> the non-blank ones (at most MAX_ITEMS)."""
    if v is _MISSING or v is None:
        if required:
            rec.problem(where, "missing (required)")
        return []
    items = v if isinstance(v, list) else [v]
    out, before = [], len(rec.errs)
    for i, x in enumerate(items):
        w = f"{where}[{i}]" if isinstance(v, list) else where
        if not isinstance(x, str):
            rec.problem(w, f"must be a string (got {_jtype(x)})")
            continue
        s = _clean(rec, w, x)
        out += [s] if s else []
    if len(out) > MAX_ITEMS:
        rec.problem(where, f"{len(out)} items, more than the stream format's limit of {MAX_ITEMS}")
        return []
    if required and not out and len(rec.errs) == before:
        rec.problem(where, "empty (at least one non-empty string is required)")
    return out


def _strings(v: Any) -> list[str] | None:
    """Depth-first strings of a string or (nested) list of strings; None if anything else."""
    if isinstance(v, str):
        return [v]
    if isinstance(v, list):
        out: list[str] = []
        for x in v:
            sub = _strings(x)
            if sub is None:
                return None
            out += sub
        return out
    return None


def _answer(rec: _Rec, where: str, v: Any, required: bool = False) -> tuple[str | None, list[str]]:
    """An answer given as a string, a list of aliases or a list of alias lists -> (first
    non-blank alias, all distinct aliases). Blank or absent: (None, [])."""
    if v is _MISSING or v is None:
        if required:
            rec.problem(where, "missing (required)")
        return None, []
    found = _strings(v)
    if found is None:
        rec.problem(where, f"must be a string or a list of strings (got {_jtype(v)})")
        return None, []
    aliases: list[str] = []
    for s in found:
        c = _clean(rec, where, s)
        if c is None:
            return None, []
        if c and c not in aliases:
            aliases.append(c)
    if not aliases and required:
        rec.problem(where, "empty (a non-empty answer is required)")
    return (aliases[0] if aliases else None), aliases


def _target(rec: _Rec, where: str, v: Any) -> str | None:
    """The edit's new value: one non-empty string (or a one-element list)."""
    if isinstance(v, list) and len(v) > 1:
        rec.problem(where, f"{len(v)} values; an edit needs exactly one target")
        return None
    return _text(rec, where, v, required=True)


class _Probes:
    """Probes being collected for one stream field, with their groups. A probe's `answer`
    is its one answer, or the list of its aliases when it has several (first: canonical)."""

    def __init__(self, rec: _Rec, field_name: str):
        self.rec, self.field = rec, field_name
        self.items: list[dict] = []
        self.groups: dict[str, int] = {}

    def add(self, where_p: str, prompts: list[str], where_a: str, answer: str | None,
            aliases: list[str], group: str = "") -> None:
        if not answer:
            for _ in prompts:
                self.rec.notes.append((where_a, f"empty answer; {self.field} probe dropped"))
            return
        if len(aliases) > MAX_ITEMS:
            self.rec.problem(where_a, f"{len(aliases)} aliases, more than the stream format's "
                                      f"limit of {MAX_ITEMS}")
            return
        for p in prompts:
            self.items.append({"prompt": p, "answer": list(aliases) if len(aliases) > 1 else answer})
            if group:
                self.groups[group] = self.groups.get(group, 0) + 1

    def pairs(self, pkey: str, akey: str, group: str = "") -> None:
        """Flat layout: `pkey` a prompt or list of prompts, `akey` the answer(s): one answer
        (string or alias list) for one prompt, or one answer per prompt."""
        rec = self.rec
        pv, av = rec.get(pkey), rec.get(akey)
        if pv is _MISSING and av is _MISSING:
            return
        if pv is _MISSING or av is _MISSING:
            have, lack = (pkey, akey) if av is _MISSING else (akey, pkey)
            rec.problem(lack, f"missing (required with {have})")
            return
        if isinstance(pv, list) and len(pv) != 1:
            if not isinstance(av, list) or len(av) != len(pv):
                n = len(av) if isinstance(av, list) else 1
                rec.problem(akey, f"{n} answers for {len(pv)} prompts in {pkey}")
                return
            for i, (p, a) in enumerate(zip(pv, av)):
                prompts = _texts(rec, f"{pkey}[{i}]", p)
                ans, al = _answer(rec, f"{akey}[{i}]", a)
                self.add(f"{pkey}[{i}]", prompts, f"{akey}[{i}]", ans, al, group)
            return
        prompts = _texts(rec, pkey, pv)
        ans, al = _answer(rec, akey, av)
        self.add(pkey, prompts, akey, ans, al, group)

    def nested(self, key: str) -> None:
        """KnowEdit layout: key {name: [{prompt, ground_truth}, ...]} (a bare list of
        probes, or one probe object instead of a list, are accepted too)."""
        rec = self.rec
        v = rec.get(key)
        if v is _MISSING:
            return
        if isinstance(v, list):
            v = {key: v}
        if not isinstance(v, dict):
            rec.problem(key, f"must be an object {{name: [{{prompt, ground_truth}}]}} (got {_jtype(v)})")
            return
        for name, items in v.items():
            if items is None:
                continue
            items = [items] if isinstance(items, dict) else items
            if not isinstance(items, list):
                rec.problem(f"{key}.{name}", f"must be a list of {{prompt, ground_truth}} objects "
                                             f"(got {_jtype(items)})")
                continue
            for i, it in enumerate(items):
                w = f"{key}.{name}[{i}]"
                if not isinstance(it, dict):
                    rec.problem(w, f"must be an object with prompt and ground_truth (got {_jtype(it)})")
                    continue
                akey = "ground_truth" if "ground_truth" in it or "answer" not in it else "answer"
                self.rec.left_out.update(f"{key}.{name}[].{k}" for k in it if k not in ("prompt", akey))
                prompts = _texts(rec, f"{w}.prompt", rec.get("prompt", it), required=True)
                if rec.get(akey, it) is _MISSING:
                    rec.problem(f"{w}.ground_truth", "missing (required)")
                    continue
                ans, al = _answer(rec, f"{w}.{akey}", rec.get(akey, it))
                self.add(f"{w}.prompt", prompts, f"{w}.{akey}", ans, al, name)

    def into(self, out: dict, meta: dict, groups: bool = True) -> None:
        if len(self.items) > MAX_ITEMS:
            self.rec.problem(self.field, f"{len(self.items)} probes, more than the stream format's "
                                         f"limit of {MAX_ITEMS}")
            return
        if self.items:
            out[self.field] = self.items
        if groups and self.groups:
            meta[f"{self.field}_groups"] = self.groups


def _previous(rec: _Rec, where: str, v: Any, out: dict, meta: dict) -> None:
    prev, aliases = _answer(rec, where, v)
    if prev:
        out["previous"] = prev
    if len(aliases) > 1:
        meta["previous_aliases"] = aliases


# ------------------------------------------------------------------------- timestamps

def _start(text: str | float) -> dt.datetime:
    """ISO-8601 (naive = UTC) or seconds since the epoch (a number or a numeric string)."""
    try:
        text = float(text)
    except (TypeError, ValueError):
        pass
    try:
        return dt.datetime.fromtimestamp(parse_time(text), tz=dt.timezone.utc)
    except (OverflowError, OSError):
        raise ValueError("timestamp out of range") from None


def _iso(t: dt.datetime) -> str:
    spec = "seconds" if t.microsecond == 0 else "microseconds"
    return t.isoformat(timespec=spec).replace("+00:00", "Z")


# ------------------------------------------------------------------------- formats

@dataclass(frozen=True)
class Format:
    """One importable data-set layout. `expects` names the keys a record must have (for
    messages); `detect(record)` is True when a record (a dict) has them, so that `--format
    auto` picks this format only for records it can read (None: never picked by auto)."""

    name: str
    source: str      # meta.source and the id prefix
    convert: Callable[[_Rec, ImportOptions], dict]
    summary: str
    expects: str = ""
    detect: Callable[[dict], bool] | None = None


def _has(record: dict, *keys: str) -> bool:
    """Every key is present with a value that is not null."""
    return all(record.get(k) is not None for k in keys)
