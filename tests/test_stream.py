"""Tests for lifelong.stream: round trips, every class of bad input, ordering, encoding."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lifelong.errors import StreamError
from lifelong.stream import (
    MAX_CHARS,
    MAX_ITEMS,
    Edit,
    Merge,
    ParsedStream,
    Probe,
    Query,
    Retract,
    dump_stream,
    event_to_dict,
    load_events_from_dicts,
    parse_stream,
    previous_warnings,
    validate_stream,
)

FAST = settings(max_examples=25, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def write(path: Path, lines: list[bytes]) -> str:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return str(path)


def js(**obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


# ----------------------------------------------------------------------------- strategies

text = st.text(min_size=1, max_size=12).filter(lambda s: s.strip())
scalars = (st.none() | st.booleans() | st.integers(-2 ** 60, 2 ** 60)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8))
metas = st.dictionaries(st.text(max_size=6), st.recursive(
    scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
    max_leaves=6), max_size=3)
probes = st.builds(lambda p, answers: Probe(p, answers[0], tuple(answers[1:])),  # answers: aliases
                   text, st.lists(text, min_size=1, max_size=3, unique=True))


@st.composite
def streams(draw, kinds=("edit", "edit", "edit", "retract", "query", "merge"), needs=True):
    """Valid event lists in replay order: ties, unicode text, re-edits, retracts of live edits,
    portability probes that need earlier edits (retracted or not) or their own (`needs`)."""
    t = draw(st.floats(-1e10, 1e10))
    events, live, facts, edits = [], [], [], []
    for i in range(draw(st.integers(1, 12))):
        t += draw(st.sampled_from([0.0, 0.0, 0.5, 1.0, 86400.0]))
        kind, eid = draw(st.sampled_from(kinds)), f"{i}-{draw(text)}"
        if kind == "retract" and live:
            target = draw(st.sampled_from(live))
            live.remove(target)
            events.append(Retract(eid, t, target))
        elif kind == "query":
            events.append(Query(eid, t, draw(text), draw(st.none() | text)))
        elif kind == "edit":
            fact = draw(st.none() | text | (st.sampled_from(facts) if facts else st.none()))
            ids = st.lists(st.sampled_from(edits + [eid]), max_size=3 if needs else 0, unique=True)
            port = [dataclasses.replace(p, needs=tuple(draw(ids))) for p in draw(st.lists(probes, max_size=2))]
            ev = Edit(eid, t, draw(text), draw(text), subject=draw(st.none() | text), fact=fact or "",
                      rephrases=tuple(draw(st.lists(text, max_size=3))),
                      locality=tuple(draw(st.lists(probes, max_size=2))),
                      portability=tuple(port),
                      previous=draw(st.none() | text), meta=draw(metas))
            events.append(ev)
            live.append(eid)
            edits.append(eid)
            facts.append(ev.fact)
        else:
            events.append(Merge(eid, t))
    return events


# ----------------------------------------------------------------------------- round trips

@FAST
@given(events=streams())
def test_round_trip(tmp_path, events):
    path = str(tmp_path / "rt.jsonl")
    dump_stream(events, path)
    parsed = parse_stream(path)
    assert parsed.events == tuple(events)
    assert [e.line for e in parsed.events] == list(range(1, len(events) + 1))
    assert parsed.skipped == () and validate_stream(path) == []
    assert load_events_from_dicts(map(event_to_dict, events)).events == tuple(events)


def test_event_to_dict_omits_empty_optionals():
    assert event_to_dict(Edit("e1", 5.0, "p", "x")) == {
        "kind": "edit", "id": "e1", "t": 5, "prompt": "p", "target": "x"}
    assert event_to_dict(Edit("e1", 0.5, "p", "x", fact="f"))["fact"] == "f"
    assert event_to_dict(Query("q", 1, "p")) == {"kind": "query", "id": "q", "t": 1, "prompt": "p"}
    assert event_to_dict(Merge("m", 2)) == {"kind": "merge", "id": "m", "t": 2}


def test_events_built_in_code():
    a = Edit("e1", 1, "p", "x", rephrases=["r"], meta={"src": [1]})
    b = Edit("e1", 1.0, "p", "x", fact="e1", rephrases=("r",), meta={"src": [1]}, line=7)
    assert a == b and hash(a) == hash(b) and a.line == 0 and a.fact == "e1"
    assert a != Edit("e1", 1, "p", "x", rephrases=["r"], meta={"src": [2]})
    assert (Edit.kind, Retract.kind, Query.kind, Merge.kind) == ("edit", "retract", "query", "merge")


@pytest.mark.parametrize("t", ["2030-01-01T00:00:00Z", "2030-01-01T00:00:00", "2030-01-01",
                               "2030-01-01T02:00:00+02:00", 1893456000, 1893456000.0])
def test_timestamps_to_utc_seconds(t):
    ev = load_events_from_dicts([{"kind": "merge", "id": "m", "t": t}]).events[0]
    assert ev.t == 1893456000.0 and isinstance(ev.t, float)


def test_crlf_bom_and_blank_lines(tmp_path):
    data = (b"\xef\xbb\xbf" + js(kind="merge", id="m1", t=1) + b"\r\n\r\n  \n"
            + js(kind="query", id="q", t=2, prompt="\u00e9t\u00e9 \u2028 \U0001f600") + b"\r\n")
    (tmp_path / "s.jsonl").write_bytes(data)
    ps = parse_stream(tmp_path / "s.jsonl")
    assert [(e.id, e.line) for e in ps.events] == [("m1", 1), ("q", 4)]
    assert ps.events[1].prompt == "\u00e9t\u00e9 \u2028 \U0001f600"


# ----------------------------------------------------------------------------- ordering

def test_ties_keep_file_order(tmp_path):
    path = write(tmp_path / "s.jsonl", [js(kind="merge", id=f"m{i}", t=5) for i in range(6)])
    assert [e.id for e in parse_stream(path).events] == [f"m{i}" for i in range(6)]


@FAST
@given(events=streams(kinds=("edit", "query", "merge"), needs=False), data=st.data())
def test_sort_is_stable(tmp_path, events, data):  # (any order is valid: no retracts, no needs)
    shuffled = data.draw(st.permutations(events))
    path = str(tmp_path / "shuffled.jsonl")
    dump_stream(shuffled, path)
    got = parse_stream(path, sort=True).events
    assert [e.id for e in got] == [e.id for e in sorted(shuffled, key=lambda e: e.t)]
    descends = any(b.t < a.t for a, b in zip(shuffled, shuffled[1:]))
    assert bool(validate_stream(path)) == descends
    assert all("decreasing timestamp" in p for p in validate_stream(path))


def test_sort_checks_retracts_in_replay_order(tmp_path):
    lines = [js(kind="retract", id="r", t=2, edit_id="e"), js(kind="edit", id="e", t=1,
                                                              prompt="p", target="x")]
    path = write(tmp_path / "s.jsonl", lines)
    assert [e.id for e in parse_stream(path, sort=True).events] == ["e", "r"]
    lines[0] = js(kind="retract", id="r", t=0, edit_id="e")
    path = write(tmp_path / "s.jsonl", lines)
    assert validate_stream(path, sort=True) == [
        f"{path}:1: edit_id: retract of edit 'e' which comes later (line 2)"]


# ----------------------------------------------------------------------------- bad input

BASE = [
    Edit("e0", 0, "The capital of X is", "Y", fact="f"),
    Query("q1", 100, "The capital of X is", "Y"),
    Retract("r2", 200, "e0"),
    Edit("e3", 300, "The capital of X is", "Z", fact="f", previous="Y"),
    Merge("m4", 400),
    Edit("e5", 500, "A", "B", rephrases=("A'",), locality=(Probe("C", "D"),)),
    Edit("e6", 600, "E", "F", subject="E"),
    Edit("e7", 700, "G", "H"),
]
BASE_LINES = [json.dumps(event_to_dict(e)).encode() for e in BASE]


def _q(pos: int, **kw) -> bytes:
    """A query line that fits at `pos` (timestamp between its neighbours) with `kw` changed."""
    obj = {"kind": "query", "id": "bad", "t": 100 * pos - 50, "prompt": "p"} | kw
    return js(**{k: v for k, v in obj.items() if v is not None})


def _e(pos: int, **kw) -> bytes:
    obj = {"kind": "edit", "id": "bad", "t": 100 * pos - 50, "prompt": "p", "target": "x"} | kw
    return js(**{k: v for k, v in obj.items() if v is not None})


def _r(pos: int, edit_id: str) -> bytes:
    return js(kind="retract", id="bad", t=100 * pos - 50, edit_id=edit_id)


BAD = {  # name: (line maker, field, substring of the message, lowest pos, highest pos)
    "json": (lambda p: b'{"kind": "merge", "id": "x" "t": 1}', "json",
             "Expecting ',' delimiter (column 29)", 0, 8),
    "not_object": (lambda p: b"[1, 2]", "json", "expected an object, got array", 0, 8),
    "string_line": (lambda p: b'"edit"', "json", "expected an object, got string", 0, 8),
    "missing_target": (lambda p: _e(p, target=None), "target", "missing (required for edit)", 0, 8),
    "missing_id": (lambda p: _q(p, id=None), "id", "missing", 0, 8),
    "missing_t": (lambda p: _q(p, t=None), "t", "missing", 0, 8),
    "missing_kind": (lambda p: _q(p, kind=None), "kind", "expected one of", 0, 8),
    "prompt_not_str": (lambda p: _q(p, prompt=5), "prompt", "non-empty string (got number)", 0, 8),
    "id_not_str": (lambda p: _q(p, id=["a"]), "id", "non-empty string (got array)", 0, 8),
    "rephrases_not_list": (lambda p: _e(p, rephrases="r"), "rephrases", "must be a list", 0, 8),
    "rephrase_empty": (lambda p: _e(p, rephrases=["ok", " "]), "rephrases[1]", "non-empty", 0, 8),
    "rephrase_not_str": (lambda p: _e(p, rephrases=[3]), "rephrases[0]", "(got number)", 0, 8),
    "locality_item_str": (lambda p: _e(p, locality=["x"]), "locality[0]", "must be an object", 0, 8),
    "locality_extra": (lambda p: _e(p, locality=[{"prompt": "a", "answer": "b", "c": 1}]),
                       "locality[0].c", "unknown field", 0, 8),
    "portability_no_answer": (lambda p: _e(p, portability=[{"prompt": "a"}]),
                              "portability[0].answer", "missing", 0, 8),
    "meta_not_object": (lambda p: _e(p, meta=[1]), "meta", "must be an object", 0, 8),
    "needs_not_list": (lambda p: _e(p, portability=[{"prompt": "a", "answer": "b", "needs": "e0"}]),
                       "portability[0].needs", "must be a non-empty list of edit ids (got string)", 0, 8),
    "needs_empty": (lambda p: _e(p, portability=[{"prompt": "a", "answer": "b", "needs": []}]),
                    "portability[0].needs", "(got an empty list)", 0, 8),
    "needs_not_str": (lambda p: _e(p, portability=[{"prompt": "a", "answer": "b", "needs": ["bad", 3]}]),
                      "portability[0].needs[1]", "(got number)", 0, 8),
    "needs_duplicate": (lambda p: _e(p, portability=[{"prompt": "a", "answer": "b", "needs": ["bad", "bad"]}]),
                        "portability[0].needs[1]", "duplicate of needs[0]", 0, 8),
    "needs_on_locality": (lambda p: _e(p, locality=[{"prompt": "a", "answer": "b", "needs": ["bad"]}]),
                          "locality[0].needs", "unknown field (only portability probes have needs)", 0, 8),
    "needs_unknown": (lambda p: _e(p, portability=[{"prompt": "a", "answer": "b", "needs": ["e99"]}]),
                      "portability[0].needs[0]", "'e99' is not an edit of this stream", 0, 8),
    "needs_later": (lambda p: _e(p, portability=[{"prompt": "a", "answer": "b", "needs": ["bad", "e7"]}]),
                    "portability[0].needs[1]", "edit 'e7' comes later (line", 0, 7),
    "needs_non_edit": (lambda p: _e(p, portability=[{"prompt": "a", "answer": "b", "needs": ["q1"]}]),
                       "portability[0].needs[0]", "'q1' is a query, not an edit (line", 2, 8),
    "unknown_field": (lambda p: _q(p, foo=1), "foo", "unknown field", 0, 8),
    "unknown_kind": (lambda p: _q(p, kind="delete"), "kind",
                     "expected one of edit, retract, query, merge", 0, 8),
    "bad_timestamp": (lambda p: _q(p, t="yesterday"), "t", "unparsable timestamp", 0, 8),
    "bool_timestamp": (lambda p: _q(p, t=True), "t", "(got boolean)", 0, 8),
    "nan_timestamp": (lambda p: _q(p).replace(f'"t": {100 * p - 50}'.encode(), b'"t": NaN'),
                      "t", "finite", 0, 8),
    "inf_in_meta": (lambda p: _e(p).replace(b'"x"}', b'"x", "meta": {"a": [Infinity]}}'),
                    "meta.a[0]", "non-finite", 0, 8),
    "decreasing_t": (lambda p: _q(p, t=-1), "t", "decreasing timestamp (-1 after", 1, 8),
    "decreasing_iso": (lambda p: _q(p, t="1969-12-31T23:59:59Z"), "t",
                       "decreasing timestamp (1969-12-31T23:59:59Z after", 1, 8),
    "duplicate_id": (lambda p: _q(p, id=BASE[p - 1].id), "id", "duplicate id", 1, 8),
    "retract_unknown": (lambda p: _r(p, "e99"), "edit_id", "retract of unknown edit 'e99'", 0, 8),
    "retract_non_edit": (lambda p: _r(p, "q1"), "edit_id", "is a query, not an edit (line", 2, 8),
    "retract_twice": (lambda p: _r(p, "e0"), "edit_id", "'e0' already retracted on line", 3, 8),
    "retract_later": (lambda p: _r(p, "e7"), "edit_id", "which comes later", 0, 7),
    "empty_target": (lambda p: _e(p, target=""), "target", "must be a non-empty string", 0, 8),
    "blank_prompt": (lambda p: _q(p, prompt=" \t\u3000"), "prompt", "non-empty string", 0, 8),
    "blank_answer": (lambda p: _q(p, answer="  "), "answer", "non-empty string", 0, 8),
    "long_prompt": (lambda p: _q(p, prompt="x" * 5000), "prompt",
                    f"longer than {MAX_CHARS} characters (5000)", 0, 8),
    "too_many_items": (lambda p: _e(p, rephrases=["r"] * (MAX_ITEMS + 1)), "rephrases",
                       f"more than {MAX_ITEMS} items ({MAX_ITEMS + 1})", 0, 8),
    "duplicate_key": (lambda p: _q(p).replace(b'"prompt"', b'"prompt": "a", "prompt"'),
                      "prompt", "duplicate key", 0, 8),
    "invalid_utf8": (lambda p: _q(p, prompt="ab").replace(b"ab", b"a\xffb"), "encoding",
                     "invalid UTF-8 at byte", 0, 8),
}


def _insert(tmp_path: Path, bad: list[tuple[int, bytes]], blank_first: bool = False) -> str:
    """BASE with bad lines inserted before the base event at each position."""
    lines = [b""] if blank_first else []
    for i, good in enumerate(BASE_LINES + [None]):
        lines += [line for pos, line in bad if pos == i]
        lines += [good] if good is not None else []
    return write(tmp_path / "stream.jsonl", lines)


@pytest.mark.parametrize("name", sorted(BAD))
@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_one_bad_line(tmp_path, name, data):
    make, field, what, lo, hi = BAD[name]
    pos, blank = data.draw(st.integers(lo, hi)), data.draw(st.booleans())
    bad_line = make(pos)
    path = _insert(tmp_path, [(pos, bad_line)], blank)
    line_no = pos + 1 + blank
    with pytest.raises(StreamError) as err:
        parse_stream(path)
    problems = err.value.problems
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{path}:{line_no}: {field}: "), problems[0]
    assert what in problems[0]
    assert str(err.value) == f"{path}: 1 invalid line (first: {problems[0]})"
    assert validate_stream(path) == problems
    if name == "invalid_utf8":
        assert f"at byte {bad_line.index(0xFF)} " in problems[0]
    kept = parse_stream(path, skip_bad=True)
    assert kept.events == tuple(BASE) and kept.skipped == (problems[0],)
    assert [e.line for e in kept.events] == [
        i + 1 + blank + (i >= pos) for i in range(len(BASE))]


ANYWHERE = sorted(k for k, v in BAD.items() if v[3:] == (0, 8))


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(st.sampled_from(ANYWHERE), min_size=2, max_size=2),
       positions=st.lists(st.integers(0, 8), min_size=2, max_size=2))
def test_all_problems_reported(tmp_path, names, positions):
    bad = sorted(zip(positions, (BAD[n][0](p) for n, p in zip(names, positions))),
                 key=lambda x: x[0])
    path = _insert(tmp_path, [(p, line.replace(b'"bad"', f'"bad{i}"'.encode()))
                              for i, (p, line) in enumerate(bad)])
    with pytest.raises(StreamError) as err:
        parse_stream(path)
    expected_lines = [p + 1 + i for i, (p, _) in enumerate(bad)]
    assert [int(p.split(":")[1]) for p in err.value.problems] == expected_lines
    assert str(err.value).startswith(f"{path}: 2 invalid lines (first: {path}:{expected_lines[0]}:")
    kept = parse_stream(path, skip_bad=True)
    assert kept.events == tuple(BASE) and len(kept.skipped) == 2


def test_several_problems_on_one_line(tmp_path):
    path = write(tmp_path / "s.jsonl", [js(kind="merge", id="m", t=0),
                                        js(kind="edit", id="e", t=1, prompt="", foo=1)])
    assert validate_stream(path) == [f"{path}:2: foo: unknown field",
                                     f"{path}:2: prompt: must be a non-empty string",
                                     f"{path}:2: target: missing (required for edit)"]
    assert parse_stream(path, skip_bad=True).skipped == (f"{path}:2: foo: unknown field",)


def test_retract_of_dropped_edit_is_dropped(tmp_path):
    path = _insert(tmp_path, [(3, _e(3, target=" ")), (6, _r(6, "bad").replace(b'"id": "bad"',
                                                                              b'"id": "rb"'))])
    problems = validate_stream(path)
    assert problems == [f"{path}:4: target: must be a non-empty string",
                        f"{path}:8: edit_id: retract of invalid edit 'bad' (line 4)"]
    kept = parse_stream(path, skip_bad=True)
    assert kept.events == tuple(BASE) and kept.skipped == tuple(problems)


def test_summary_message_counts_lines(tmp_path):
    path = _insert(tmp_path, [(1, b"{"), (4, _q(4, prompt="")), (8, b"[]")])
    with pytest.raises(StreamError) as err:
        parse_stream(path)
    assert str(err.value) == (f"{path}: 3 invalid lines (first: {path}:2: json: "
                              f"Expecting property name enclosed in double quotes (column 2))")
    assert "\n" not in str(err.value)


def test_invalid_utf8_offsets(tmp_path):
    first = js(kind="merge", id="m", t=1)
    second = b'{"kind": "query", "id": "q", "t": 2, "prompt": "\xc3\xa9\xe2\x28\xa1"}'
    path = write(tmp_path / "s.jsonl", [first, second])
    at = second.index(b"\xe2")
    assert validate_stream(path) == [
        f"{path}:2: encoding: invalid UTF-8 at byte {at} (file offset {len(first) + 1 + at})"]


@pytest.mark.parametrize("content", [b"", b"\n  \n\r\n"])
def test_empty_stream(tmp_path, content):
    (tmp_path / "e.jsonl").write_bytes(content)
    path = str(tmp_path / "e.jsonl")
    with pytest.raises(StreamError) as err:
        parse_stream(path, skip_bad=True)
    assert str(err.value) == f"{path}:0: stream: no events"
    assert validate_stream(path) == [f"{path}:0: stream: no events"]


def test_all_lines_bad_with_skip_bad(tmp_path):
    path = write(tmp_path / "s.jsonl", [b"{", b"[]"])
    with pytest.raises(StreamError, match=r"no events \(2 invalid lines skipped\)"):
        parse_stream(path, skip_bad=True)
    assert len(validate_stream(path)) == 2


def test_missing_and_unreadable_file(tmp_path):
    missing = str(tmp_path / "nope.jsonl")
    with pytest.raises(StreamError) as err:
        parse_stream(missing)
    assert str(err.value) == f"{missing}: stream file not found"
    assert validate_stream(missing) == [f"{missing}:0: file: stream file not found"]
    with pytest.raises(StreamError, match="cannot read stream file"):
        parse_stream(tmp_path)


def test_load_events_from_dicts():
    rows = [{"kind": "merge", "id": "m", "t": 0}, "oops", {"kind": "edit", "id": "e", "t": 1,
                                                          "prompt": "p", "target": "x",
                                                          "meta": {"k": {1, 2}}}]
    with pytest.raises(StreamError) as err:
        load_events_from_dicts(rows, source="import")
    assert err.value.problems == ["import:2: json: expected an object, got string",
                                  "import:3: meta.k: not a JSON value (set)"]
    ps = load_events_from_dicts(rows, skip_bad=True)
    assert isinstance(ps, ParsedStream) and ps.events == (Merge("m", 0),)
    assert ps.path == "<memory>" and len(ps.skipped) == 2


def test_dump_writes_one_event_per_line(tmp_path):
    path = tmp_path / "d.jsonl"
    dump_stream(BASE, path)
    lines = path.read_bytes().decode("utf-8").split("\n")
    assert lines[-1] == "" and len(lines) == len(BASE) + 1
    assert [json.loads(line)["id"] for line in lines[:-1]] == [e.id for e in BASE]
    assert os.path.getsize(path) > 0


# ----------------------------------------------------------------------------- previous: warnings

def edit(eid: str, t: int, target: str, previous: str | None = None, fact: str = "Tonga|continent") -> bytes:
    obj = {"kind": "edit", "id": eid, "t": t, "prompt": "Tonga is in", "target": target, "fact": fact}
    return js(**obj, **({"previous": previous} if previous else {}))


def test_previous_that_contradicts_the_stream_is_a_warning(tmp_path):
    path = write(tmp_path / "w.jsonl", [
        edit("e1", 0, "Europe", "Oceania"),
        edit("e2", 1, "Asia", "Europe"),  # agrees with e1
        edit("x1", 2, "Paris", "Oslo", fact="Tonga|capital"),  # another fact: nothing before it
        edit("e3", 3, "Africa", "Oceania"),  # contradicts: the value is e2's Asia
        edit("e4", 4, "Africa", " africa "),  # agrees (case and whitespace aside)
        edit("e5", 5, "America"),  # no previous: nothing to check
    ])
    parsed = parse_stream(path)  # valid: warnings are not problems
    assert validate_stream(path) == [] and len(parsed.events) == 6
    assert previous_warnings(parsed) == [
        f"{path}:4: previous: 'Oceania' but the fact's value before this edit is 'Asia' (edit e2, line 2)"]


def retract(rid: str, t: int, eid: str) -> bytes:
    return js(kind="retract", id=rid, t=t, edit_id=eid)


def test_previous_warnings_follow_retractions(tmp_path):
    path = write(tmp_path / "r.jsonl", [
        edit("e1", 0, "Europe", "Oceania"), edit("e2", 1, "Asia", "Europe"),
        retract("r1", 2, "e2"),
        edit("e3", 3, "Africa", "Europe"),  # e2 retracted: the value is e1's Europe again
        edit("e4", 4, "Asia", "Asia"),  # contradicts e3's Africa (e2's Asia was retracted)
        retract("r2", 5, "e4"), retract("r3", 6, "e3"), retract("r4", 7, "e1"),
        edit("e5", 8, "Africa", "Europe"),  # all retracted: back to e1's previous, Oceania
        edit("e6", 9, "America", "Africa"),  # agrees with e5
    ])
    assert previous_warnings(parse_stream(path)) == [
        f"{path}:5: previous: 'Asia' but the fact's value before this edit is 'Africa' (edit e3, line 4)",
        f"{path}:9: previous: 'Europe' but the fact's value before this edit is 'Oceania' (the value "
        f"before edit e1, line 1, which line 8 retracted)"]


def test_validate_prints_warnings_and_keeps_exit_status_zero(tmp_path):
    from click.testing import CliRunner

    from lifelong.cli import cli
    path = write(tmp_path / "w.jsonl", [edit("e1", 0, "Europe", "Oceania"), edit("e2", 1, "Asia", "Oceania")])
    res = CliRunner().invoke(cli, ["streams", "validate", path])
    assert res.exit_code == 0, res.output
    assert res.stderr == (f"{path}:2: previous: 'Oceania' but the fact's value before this edit is 'Europe' "
                          "(edit e1, line 1)\n")
    assert res.stdout == f"{path}: valid, 2 events (2 edit); 1 warning (previous values the stream contradicts)\n"
    clean = write(tmp_path / "c.jsonl", [edit("e1", 0, "Europe", "Oceania"), edit("e2", 1, "Asia", "Europe")])
    res = CliRunner().invoke(cli, ["streams", "validate", clean])
    assert res.exit_code == 0 and res.stderr == "" and res.stdout == f"{clean}: valid, 2 events (2 edit)\n"


def test_shipped_streams_have_no_contradicting_previous():
    root = Path(__file__).resolve().parent.parent / "streams"
    for name in ("quickstart.jsonl", "dev/edits-1000.jsonl", "test/edits-1000.jsonl"):
        assert previous_warnings(parse_stream(root / name)) == [], name


# ----------------------------------------------------------------------------- needs

def test_needs_parse_round_trip_and_leave_old_streams_unchanged(tmp_path):
    port = {"prompt": "The capital of the country of X is", "answer": ["Rome", "Roma"], "needs": ["e1", "e2"]}
    path = write(tmp_path / "n.jsonl", [js(kind="edit", id="e1", t=0, prompt="X is in", target="Italy"),
                                        js(kind="retract", id="r1", t=1, edit_id="e1"),
                                        js(kind="edit", id="e2", t=2, prompt="Y is in", target="Rome",
                                           portability=[port, {"prompt": "q", "answer": "a", "needs": ["e2"]}])])
    ev = parse_stream(path).events[2]  # a retracted edit may be needed: it is earlier
    assert ev.portability[0] == Probe(port["prompt"], "Rome", ("Roma",), ("e1", "e2"))
    assert event_to_dict(ev)["portability"][0] == port
    again = tmp_path / "again.jsonl"
    dump_stream(parse_stream(path).events, again)
    assert parse_stream(again).events == parse_stream(path).events
    assert event_to_dict(Edit("e", 0, "p", "x", portability=(Probe("q", "a"),)))["portability"] == [
        {"prompt": "q", "answer": "a"}]  # no needs: no key
    root = Path(__file__).resolve().parent.parent / "streams"
    for name in ("quickstart.jsonl", "real/knowedit-zsre-test.jsonl"):  # old streams: the same objects

        def objects(path: Path) -> list[dict]:  # (`t` aside: dump_stream writes seconds)
            return [{k: v for k, v in json.loads(x).items() if k != "t"} for x in path.read_text().splitlines()]

        dump_stream(parse_stream(root / name).events, again)
        assert objects(again) == objects(root / name), name
