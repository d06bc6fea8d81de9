"""Importers: published knowledge-editing data sets -> `lifelong` edit streams.

`lifelong streams import --format F INPUT -o STREAM.jsonl` reads a JSON array (record = its
1-based index) or a JSONL file (record = its 1-based line) in one of the formats below and
writes one `edit` event per record. The data sets have no timestamps: the importer gives the
k-th edit `start + k * spacing`, in file order or in a seeded shuffle. Every edit keeps where
it came from in `meta` (`source`, `record`, and the data set's `case_id` where it has one),
and its id is `SOURCE-RECORD` (stable under shuffling).

Field mapping (the stream field <- the format's field):

=================  ========================================================================
format             mapping
=================  ========================================================================
zsre               MEND/ROME zsRE. prompt <- src, target <- alt, previous <- answers[0]
                   (all answers in meta.previous_aliases when there are several),
                   rephrases <- rephrase (string or list), locality <- (loc, loc_ans),
                   kept verbatim including the "nq question:" prefix; meta.pred <- pred.
knowedit           KnowEdit ZsRE / WikiData-CounterFact / WikiData-Recent (and WikiBio:
                   text, labels, concept stand in for prompt, target_new, subject).
                   prompt, target <- target_new, previous <- ground_truth (first of a list),
                   rephrases <- rephrase_prompt or rephrase, locality <- every probe of
                   locality{name: [{prompt, ground_truth}]}, portability <- every probe of
                   portability{name: [...]}, in the file's order; meta.locality_groups /
                   portability_groups give each name's count in that order (so probe i's
                   kind is recoverable); answers that are lists (of lists) of aliases use
                   the first alias, all aliases in meta.locality_aliases /
                   portability_aliases {index: [...]}.
counterfact        EasyEdit CounterFact. prompt, target <- target_new, previous <-
                   ground_truth, rephrases <- rephrase_prompt, locality <- (locality_prompt,
                   locality_ground_truth), portability <- (portability_prompt,
                   portability_ground_truth) where present; meta.case_id <- case_id.
rome-counterfact   ROME CounterFact. prompt <- requested_rewrite.prompt with the subject in
                   its "{}", target <- target_new.str, previous <- target_true.str, fact <-
                   subject|relation_id, rephrases <- paraphrase_prompts, locality <-
                   neighborhood_prompts (answer: target_true.str) then attribute_prompts
                   (other subjects whose true value is target_new.str; answer: that);
                   meta.locality_groups {"neighborhood": n, "attribute": m}; relation_id and
                   the Wikidata ids of both targets in meta. generation_prompts are dropped.
wise-temporal      WISE Temporal. prompt, target <- target_new (a long description),
                   rephrases <- ood_rephrase (out-of-distribution: meta.rephrase_kind "ood";
                   a rephrase_prompt, if any, comes first and meta.rephrase_groups counts
                   both), locality <- (locality_prompt, locality_ground_truth).
wise-hallucination WISE hallucination (WikiBio/SelfCheckGPT). prompt (a passage), target
                   <- target_new (the correct next sentence), locality <- (locality_prompt,
                   locality_ground_truth). No previous: the hallucinated text is not given.
convsent           ConvSent (blender). An edit sets the model's sentiment about an entity:
                   prompt "What do you think of ENT?", target <- the first sentence of the
                   chosen sentiment's list (pos or neg), rephrases <- twelve other ways to
                   ask for an opinion of ENT, fact "ENT|sentiment", meta.sentiment. The
                   sentiment alternates by record (odd records positive, even negative) or
                   is fixed with --sentiment. No locality: every entity of the file is
                   edited, so none stays unrelated over a whole stream.
=================  ========================================================================

`fact` (re-edit identity): the data set's subject+relation where it has one (ROME
CounterFact: subject|relation_id), else subject|prompt (a prompt that would make it longer
than 256 characters, such as a passage, by its SHA-1: subject|sha1:16 hex digits), else
SOURCE:case_id, else the edit's own id. Records
with the same fact are re-edits (the later one wins in replay).

Text: every string is taken with surrounding whitespace removed (the stream joins prompt
and target with one space), never truncated: a string longer than the stream format's
MAX_CHARS is a problem of its record. Tolerated: extra keys, missing optional fields, a
string where a list is allowed and the other way round, answers as strings, lists or lists
of alias lists, empty optional strings (treated as absent). A locality/portability probe
whose answer is empty is dropped with a note (the record's edit stays). Required fields that
are missing, empty or of the wrong type are problems `FILE:RECORD: FIELD: what is wrong`;
every bad record is listed in one `StreamError`, or skipped and counted with `skip_bad`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import random
from dataclasses import dataclass
from typing import Any, Callable

import click

from .config import from_mapping, setting
from .errors import ConfigError, StreamError
from .stream import MAX_CHARS, MAX_ITEMS, load_events_from_dicts, parse_time

_MISSING = object()
_JSON = {type(None): "null", bool: "boolean", int: "number", float: "number", str: "string",
         list: "array", dict: "object"}
CONVSENT_PROMPT = "What do you think of {}?"
CONVSENT_REPHRASES = ("What do you feel about {}?", "How do you view {}?") + tuple(
    f"What is your {p} {{}}?" for p in (
        "opinion of", "stance on", "position on", "attitude about", "view on", "take on",
        "impression of", "assessment of", "judgment of", "sentiment of"))


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
        if self.format != "auto" and self.format not in FORMATS:
            raise ValueError(f"format: {self.format!r} is not one of auto, {', '.join(FORMATS)}")
        try:
            _start(self.start)
        except ValueError as exc:
            raise ValueError(f"start: {exc}") from None


@dataclass(frozen=True)
class ImportResult:
    """A converted data set: `events` are stream dicts in replay order (already validated);
    `skipped` has one problem line per skipped record, `notes` one line per dropped probe."""

    source: str
    format: str
    records: int
    events: tuple[dict, ...]
    skipped: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


# ------------------------------------------------------------------------- reading records

def read_records(path: str | os.PathLike) -> list[tuple[int, Any]]:
    """(record number, parsed value) for every record of a JSON array (1-based index) or a
    JSONL file (1-based line; blank lines skipped; a line that is not JSON becomes a
    `_BadJson` value, reported as that record's problem). A whole-file JSON object is one
    record. An unreadable file or a JSON array that does not parse raises `StreamError`."""
    name = os.fsdecode(path)
    try:
        with open(name, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        why = "input file not found" if isinstance(exc, FileNotFoundError) else \
            f"cannot read input file ({exc.strerror or exc})"
        raise StreamError(f"{name}: {why}", [f"{name}:0: file: {why}"]) from None
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
    """One record being converted: its object, number, problems and notes."""

    def __init__(self, obj: dict, n: int):
        self.obj, self.n = obj, n
        self.errs: list[tuple[str, str]] = []
        self.notes: list[tuple[str, str]] = []

    def get(self, path: str, obj: Any = _MISSING) -> Any:
        """The value at a dotted path (`_MISSING` where any step is absent or null)."""
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
    """Probes being collected for one stream field, with their groups and aliases."""

    def __init__(self, rec: _Rec, field_name: str):
        self.rec, self.field = rec, field_name
        self.items: list[dict] = []
        self.groups: dict[str, int] = {}
        self.aliases: dict[str, list[str]] = {}

    def add(self, where_p: str, prompts: list[str], where_a: str, answer: str | None,
            aliases: list[str], group: str = "") -> None:
        if not answer:
            for _ in prompts:
                self.rec.notes.append((where_a, f"empty answer; {self.field} probe dropped"))
            return
        for p in prompts:
            if len(aliases) > 1:
                self.aliases[str(len(self.items))] = list(aliases)
            self.items.append({"prompt": p, "answer": answer})
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
        if self.aliases:
            meta[f"{self.field}_aliases"] = self.aliases


def _previous(rec: _Rec, where: str, v: Any, out: dict, meta: dict) -> None:
    prev, aliases = _answer(rec, where, v)
    if prev:
        out["previous"] = prev
    if len(aliases) > 1:
        meta["previous_aliases"] = aliases


# ------------------------------------------------------------------------- formats

def _zsre(rec: _Rec, opts: ImportOptions) -> dict:
    out, meta = {"prompt": _text(rec, "src", rec.get("src"), True),
                 "target": _target(rec, "alt", rec.get("alt")),
                 "subject": _text(rec, "subject", rec.get("subject"))}, {}
    _previous(rec, "answers", rec.get("answers"), out, meta)
    out["rephrases"] = _texts(rec, "rephrase", rec.get("rephrase"))
    loc = _Probes(rec, "locality")
    loc.pairs("loc", "loc_ans")
    loc.into(out, meta)
    pred = rec.get("pred")
    if isinstance(pred, str) and pred.strip():
        meta["pred"] = pred.strip()
    return {**out, "meta": meta}


def _knowedit(rec: _Rec, opts: ImportOptions) -> dict:
    def pick(*keys: str) -> str:
        return next((k for k in keys if rec.get(k) is not _MISSING), keys[0])

    pk, tk, sk, rk = pick("prompt", "text"), pick("target_new", "labels"), \
        pick("subject", "concept"), pick("rephrase_prompt", "rephrase")
    out, meta = {"prompt": _text(rec, pk, rec.get(pk), True),
                 "target": _target(rec, tk, rec.get(tk)),
                 "subject": _text(rec, sk, rec.get(sk))}, {}
    _previous(rec, "ground_truth", rec.get("ground_truth"), out, meta)
    out["rephrases"] = _texts(rec, rk, rec.get(rk))
    for name in ("locality", "portability"):
        probes = _Probes(rec, name)
        probes.nested(name)
        probes.into(out, meta)
    return {**out, "meta": meta}


def _flat(rec: _Rec, opts: ImportOptions, ood: bool = False) -> dict:
    """EasyEdit's flat layout (CounterFact, WISE Temporal and hallucination)."""
    out, meta = {"prompt": _text(rec, "prompt", rec.get("prompt"), True),
                 "target": _target(rec, "target_new", rec.get("target_new")),
                 "subject": _text(rec, "subject", rec.get("subject"))}, {}
    _previous(rec, "ground_truth", rec.get("ground_truth"), out, meta)
    rk = "rephrase_prompt" if rec.get("rephrase_prompt") is not _MISSING else "rephrase_prompts"
    reph = _texts(rec, rk, rec.get(rk))
    ood_reph = _texts(rec, "ood_rephrase", rec.get("ood_rephrase")) if ood else []
    out["rephrases"] = reph + ood_reph
    if ood_reph and reph:
        meta["rephrase_groups"] = {"in_distribution": len(reph), "ood": len(ood_reph)}
    elif ood_reph:
        meta["rephrase_kind"] = "ood"
    for name in ("locality", "portability"):
        probes = _Probes(rec, name)
        probes.pairs(f"{name}_prompt", f"{name}_ground_truth")
        probes.into(out, meta)
    return {**out, "meta": meta}


def _rome_counterfact(rec: _Rec, opts: ImportOptions) -> dict:
    rr = "requested_rewrite"
    if not isinstance(rec.obj.get(rr), dict):
        rec.problem(rr, "missing (required)" if rec.obj.get(rr) is None else
                    f"must be an object (got {_jtype(rec.obj[rr])})")
        return {}
    template = _text(rec, f"{rr}.prompt", rec.get(f"{rr}.prompt"), True)
    subject = _text(rec, f"{rr}.subject", rec.get(f"{rr}.subject"), True)
    if template and "{}" not in template:
        rec.problem(f"{rr}.prompt", "must contain {} where the subject goes")
    out: dict = {"prompt": template.replace("{}", subject, 1) if template and subject else None,
                 "target": None, "subject": subject}
    meta: dict = {}
    new = rec.get(f"{rr}.target_new")
    new_key = f"{rr}.target_new" + (".str" if isinstance(new, dict) else "")
    out["target"] = _target(rec, new_key, rec.get("str", new) if isinstance(new, dict) else new)
    true = rec.get(f"{rr}.target_true")
    true_key = f"{rr}.target_true" + (".str" if isinstance(true, dict) else "")
    truth = _text(rec, true_key, rec.get("str", true) if isinstance(true, dict) else true)
    if truth:
        out["previous"] = truth
    rel = rec.get(f"{rr}.relation_id")
    if isinstance(rel, str) and rel.strip():
        meta["relation_id"] = rel.strip()
    out["fact_key"] = meta.get("relation_id") or template
    for side, v in (("target_new_id", new), ("target_true_id", true)):
        if isinstance(v, dict) and isinstance(v.get("id"), (str, int)):
            meta[side] = v["id"]
    out["rephrases"] = _texts(rec, "paraphrase_prompts", rec.get("paraphrase_prompts"))
    loc = _Probes(rec, "locality")
    for key, answer, kind, needs, raw in (
            ("neighborhood_prompts", truth, "neighborhood", true_key, true),
            ("attribute_prompts", out["target"], "attribute", new_key, new)):
        prompts = _texts(rec, key, rec.get(key))
        if prompts and not answer:
            if raw is _MISSING:  # (otherwise its problem is already reported)
                rec.problem(needs, f"missing (required with {key})")
            continue
        loc.add(key, prompts, needs, answer, [answer] if answer else [], kind)
    loc.into(out, meta)
    if "pararel_idx" in rec.obj:
        meta["pararel_idx"] = rec.obj["pararel_idx"]
    return {**out, "meta": meta}


def _convsent(rec: _Rec, opts: ImportOptions) -> dict:
    ent = _text(rec, "ent", rec.get("ent"), True)
    sentiment = opts.sentiment if opts.sentiment != "alternate" else \
        ("positive" if rec.n % 2 else "negative")
    key = sentiment[:3]
    sentences = _texts(rec, key, rec.get(key), required=True)
    if not ent:
        return {}
    return {"prompt": CONVSENT_PROMPT.format(ent), "target": sentences[0] if sentences else None,
            "subject": ent, "fact_key": "sentiment",
            "rephrases": [t.format(ent) for t in CONVSENT_REPHRASES],
            "meta": {"sentiment": sentiment}}


@dataclass(frozen=True)
class Format:
    """One importable data-set layout."""

    name: str
    source: str      # meta.source and the id prefix
    convert: Callable[[_Rec, ImportOptions], dict]
    summary: str


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("zsre", "zsre", _zsre, "MEND/ROME zsRE: src, alt, answers, rephrase, loc, loc_ans"),
    Format("knowedit", "knowedit", _knowedit,
           "KnowEdit (ZsRE, WikiData-CounterFact, Recent, WikiBio): prompt, target_new, "
           "ground_truth, locality{name: [...]}, portability{name: [...]}"),
    Format("counterfact", "counterfact", _flat,
           "EasyEdit CounterFact: case_id, prompt, target_new, ground_truth, rephrase_prompt, "
           "locality_prompt, locality_ground_truth"),
    Format("rome-counterfact", "rome-counterfact", _rome_counterfact,
           "ROME CounterFact: requested_rewrite{prompt, subject, target_new, target_true}, "
           "paraphrase_prompts, neighborhood_prompts, attribute_prompts"),
    Format("wise-temporal", "temporal", lambda rec, o: _flat(rec, o, ood=True),
           "WISE Temporal: prompt, target_new, ood_rephrase, locality_prompt, locality_ground_truth"),
    Format("wise-hallucination", "hallucination", _flat,
           "WISE hallucination: prompt, target_new, locality_prompt, locality_ground_truth"),
    Format("convsent", "convsent", _convsent, "ConvSent: ent, pos, neg"),
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


_ORDER = ("kind", "id", "t", "prompt", "target", "subject", "fact", "previous", "rephrases",
          "locality", "portability", "meta")


def _fact(subject: str, key: str) -> str:
    """`subject|key`; a key that would make it longer than 256 characters (a passage used
    as a prompt) is replaced by `sha1:` and 16 hex digits of its SHA-1 (same identity)."""
    fact = f"{subject}|{key}"
    if len(fact) <= 256:
        return fact
    return f"{subject}|sha1:{hashlib.sha1(key.encode('utf-8')).hexdigest()[:16]}"


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
            events.append(ev)
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
    t0 = _start(opts.start)
    try:
        for k, ev in enumerate(events):
            ev["t"] = _iso(t0 + dt.timedelta(seconds=k * opts.spacing))
    except OverflowError:
        raise ConfigError(f"streams import: {len(events)} edits {opts.spacing} s apart from "
                          f"{opts.start} run past the year 9999") from None
    events = [{key: ev[key] for key in _ORDER if key in ev} for ev in events]
    load_events_from_dicts(events, source=f"{source} (converted)")  # raises on a bug
    return ImportResult(source, name, len(records), tuple(events), tuple(firsts), tuple(notes))


def import_file(path: str | os.PathLike, opts: ImportOptions | None = None) -> ImportResult:
    """Read and convert one data-set file (see the module docstring)."""
    return convert_records(read_records(path), os.fsdecode(path), opts)


def write_events(events: tuple[dict, ...] | list[dict], path: str | os.PathLike) -> None:
    """Write stream dicts as UTF-8 JSONL, one compact event per line."""
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for ev in events:
            fh.write(json.dumps(ev, ensure_ascii=False, separators=(",", ":")) + "\n")


# ------------------------------------------------------------------------- command line

_IMPORT_HELP = ("Convert a knowledge-editing data set (JSON array or JSONL) into an edit stream.\n\n"
                "Formats:\n\n" + "\n\n".join(f"{f.name}: {f.summary}" for f in FORMATS.values()))


@click.command("import", help=_IMPORT_HELP)
@click.argument("input_file", metavar="INPUT", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="JSONL stream to write")
@click.option("-f", "--format", "fmt", type=click.Choice(["auto", *FORMATS]), default="auto",
              show_default=True, help="input format (auto: from the first record's keys)")
@click.option("--spacing", type=float, help="seconds between consecutive edits  [default: 3600]")
@click.option("--start", help="timestamp of the first edit, ISO-8601 or seconds  [default: 2030-01-01T00:00:00Z]")
@click.option("--shuffle", is_flag=True, help="shuffle the records (seeded) instead of keeping file order")
@click.option("--seed", type=int, default=0, show_default=True, help="seed of --shuffle")
@click.option("--edits", type=click.IntRange(min=1), help="keep only the first N edits (after shuffling)")
@click.option("--skip-bad", is_flag=True, help="skip invalid records (counted and reported)")
@click.option("--sentiment", type=click.Choice(["alternate", "positive", "negative"]), default="alternate",
              show_default=True, help="convsent: target sentiment (alternate: odd records positive)")
def streams_import(input_file, output, fmt, spacing, start, shuffle, seed, edits, skip_bad, sentiment):
    given = {"format": fmt, "spacing": spacing, "start": start, "shuffle": shuffle, "seed": seed,
             "edits": edits, "skip_bad": skip_bad, "sentiment": sentiment}
    opts = from_mapping(ImportOptions, {k: v for k, v in given.items() if v is not None},
                        "streams import")
    result = import_file(input_file, opts)
    for what, lines in (("skipped", result.skipped), ("note", result.notes)):
        for line in lines[:20]:
            click.echo(f"  {what}: {line}", err=True)
        if len(lines) > 20:
            click.echo(f"  ... and {len(lines) - 20} more", err=True)
    write_events(result.events, output)
    order = f"shuffled with seed {opts.seed}" if opts.shuffle else "file order"
    click.echo(f"{output}: {len(result.events)} edits from {result.records} records of "
               f"{input_file} (format {result.format}, {order}); "
               f"{_count(len(result.skipped), 'invalid record')} skipped, "
               f"{_count(len(result.notes), 'probe')} dropped")


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'s' * (n != 1)}"

