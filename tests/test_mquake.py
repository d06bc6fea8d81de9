"""The MQuAKE importer (`--format mquake`) on a small hand-written file in MQuAKE's layout
(tests/data/mquake-sample.json: 5 cases; cases 1 and 2 share the rewrite "Eiffel Tower is
located in the country of Italy", cases 3 and 4 share "Lionel Messi is a citizen of Brazil"):
one edit per distinct rewrite, multi-hop questions as portability probes with alias lists
and `needs`, on the case's last edit in stream order; what is not carried over is counted.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lifelong.errors import ConfigError, StreamError
from lifelong.importers import ImportOptions, convert_records, detect_format, import_file, read_records
from lifelong.stream import load_events_from_dicts

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "tests" / "data" / "mquake-sample.json"
CASES = json.loads(SAMPLE.read_text(encoding="utf-8"))
EIFFEL, MESSI = "mquake-1-1", "mquake-3-1"


def convert(cases: list, **opts):
    return convert_records(list(enumerate(copy.deepcopy(cases), start=1)), "mq.json",
                           ImportOptions(format="mquake", **opts))


def by_id(res) -> dict[str, dict]:
    return {e["id"]: e for e in res.events}


def test_detected_and_one_edit_per_distinct_rewrite():
    assert [detect_format(c) for c in CASES] == ["mquake"] * 5
    res = import_file(SAMPLE)
    assert res.format == "mquake" and res.records == 5 and res.shared == 2
    assert [e["id"] for e in res.events] == [EIFFEL, "mquake-2-2", MESSI, "mquake-4-2", "mquake-5-1"]
    eiffel = by_id(res)[EIFFEL]
    assert eiffel["prompt"] == "Eiffel Tower is located in the country of" and eiffel["target"] == "Italy"
    assert eiffel["previous"] == "France" and eiffel["fact"] == "Eiffel Tower|P17"
    assert eiffel["meta"] == {"source": "mquake", "record": 1, "case_id": 1, "relation_id": "P17",
                              "target_new_id": "Q38", "target_true_id": "Q142", "rewrite": 1,
                              "case_ids": [1, 2], "portability_groups": {"case 1": 3}}
    assert by_id(res)[MESSI]["meta"]["case_ids"] == [3, 4]
    assert "case_ids" not in by_id(res)["mquake-5-1"]["meta"]  # not shared
    load_events_from_dicts(res.events)


def test_multi_hop_questions_need_every_edit_of_their_case():
    ev = by_id(import_file(SAMPLE))
    # case 1: one rewrite; its questions sit on it and need it alone
    assert [p["needs"] for p in ev[EIFFEL]["portability"]] == [[EIFFEL]] * 3
    # case 2: the shared Eiffel edit and its own; the questions sit on the later one
    (q, *_) = ev["mquake-2-2"]["portability"]
    assert q == {"prompt": CASES[1]["questions"][0], "answer": ["Naples", "Napoli", "Neapolis"],
                 "needs": [EIFFEL, "mquake-2-2"]}
    assert [p["prompt"] for p in ev["mquake-2-2"]["portability"]] == CASES[1]["questions"]
    assert ev["mquake-4-2"]["portability"][0]["needs"] == [MESSI, "mquake-4-2"]
    assert ev["mquake-4-2"]["portability"][0]["answer"] == ["Italian", "Italian language", "italiano"]
    # an answer without aliases' duplicates: new_answer first, then new_answer_alias
    assert ev["mquake-5-1"]["portability"][0]["answer"] == ["Akshata Murty", "Akshata Murthy"]


def test_single_hops_about_an_edit_are_its_rephrases():
    ev = by_id(import_file(SAMPLE))
    # the rewrite's question; the hop's cloze is the edit's own prompt: never a rephrase of it
    assert ev[EIFFEL]["rephrases"] == ["Which country is the Eiffel Tower located in?"]
    # a cloze that differs from the prompt is a rephrase too
    assert ev["mquake-2-2"]["rephrases"] == ["Where was Sergio Mattarella born?",
                                             "The birthplace of Sergio Mattarella is the city of"]
    assert ev["mquake-4-2"]["rephrases"] == ["What is the official language of Brazil?",
                                             "Brazil's official language is"]


def test_what_is_not_carried_over_is_counted():
    res = import_file(SAMPLE)
    assert res.left_out == {"answer": 5, "answer_alias": 5, "new_single_hops[] (unedited facts)": 4,
                            "new_single_hops[].answer_alias": 5, "orig": 5, "single_hops": 5}
    assert res.dropped == 0 and res.notes == () and res.many_valued == {}
    extra = copy.deepcopy(CASES[:1])
    extra[0]["requested_rewrite"][0]["paraphrase"] = "The Eiffel Tower stands in"
    assert convert(extra).left_out["requested_rewrite[].paraphrase"] == 1


def test_shuffle_keeps_cases_together_and_needs_before_the_probe():
    orders = set()
    for seed in range(12):
        res = import_file(SAMPLE, ImportOptions(shuffle=True, seed=seed))
        ids = [e["id"] for e in res.events]
        orders.add(tuple(ids))
        assert sorted(ids) == sorted([EIFFEL, "mquake-2-2", MESSI, "mquake-4-2", "mquake-5-1"])
        for k, ev in enumerate(res.events):
            for p in ev.get("portability", ()):
                assert p["needs"][-1] == ev["id"] and all(ids.index(x) <= k for x in p["needs"])
        assert ids.index(EIFFEL) < ids.index("mquake-2-2") and ids.index(MESSI) < ids.index("mquake-4-2")
        load_events_from_dicts(res.events)
    assert len(orders) > 3


def test_shared_edit_placed_with_its_first_case_in_stream_order():
    # case 2 before case 1 in the file: the shared rewrite is record 1's (case 2's) first edit
    res = convert([CASES[1], CASES[0]])
    assert [e["id"] for e in res.events] == ["mquake-1-1", "mquake-1-2"]
    first, second = res.events
    assert first["meta"]["case_ids"] == [2, 1]
    assert [p["needs"] for p in second["portability"]] == [["mquake-1-1", "mquake-1-2"]] * 3
    assert [p["needs"] for p in first["portability"]] == [["mquake-1-1"]] * 3  # case 1's
    assert first["meta"]["portability_groups"] == {"case 1": 3}
    # the case lists the shared rewrite last: its questions still go on the edit placed last
    flipped = copy.deepcopy(CASES[:2])
    flipped[1]["requested_rewrite"].reverse()
    ev = by_id(convert(flipped))
    assert [p["needs"] for p in ev["mquake-2-1"]["portability"]] == [["mquake-1-1", "mquake-2-1"]] * 3


def test_edits_cut_keeps_only_probes_whose_edits_are_kept():
    res = import_file(SAMPLE, ImportOptions(edits=3))
    assert [e["id"] for e in res.events] == [EIFFEL, "mquake-2-2", MESSI]
    assert res.left_out["orig"] == 4  # records 1-4 have an edit in the stream
    load_events_from_dicts(res.events)


def test_skip_that_cuts_a_case_in_two_is_refused_in_one_line():
    assert [e["id"] for e in import_file(SAMPLE, ImportOptions(skip=2)).events] == \
        [e["id"] for e in import_file(SAMPLE).events][2:]
    with pytest.raises(ConfigError, match="--skip 1 leaves out edit.* mquake-2-2 needs"):
        import_file(SAMPLE, ImportOptions(skip=1))


def test_bad_cases_are_named_file_record_field():
    bad = copy.deepcopy(CASES[:3])
    del bad[0]["requested_rewrite"][0]["subject"]
    bad[1]["requested_rewrite"][1]["target_new"] = {"id": "Q1"}
    bad[2]["requested_rewrite"] = {"prompt": "{} is", "subject": "S", "target_new": {"str": "T"}}
    with pytest.raises(StreamError) as info:
        convert(bad)
    assert info.value.problems == [
        "mq.json:1: requested_rewrite[0].subject: missing (required)",
        "mq.json:2: requested_rewrite[1].target_new.str: missing (required)",
        "mq.json:3: requested_rewrite: must be a non-empty list of rewrites (got object)"]
    res = convert(bad + CASES[3:], skip_bad=True)
    assert [e["id"] for e in res.events] == ["mquake-4-1", "mquake-4-2", "mquake-5-1"]
    assert len(res.skipped) == 3


def test_cli_summary(tmp_path):
    out = tmp_path / "mq.jsonl"
    res = subprocess.run([sys.executable, "-m", "lifelong.cli", "streams", "import", str(SAMPLE), "-o", str(out)],
                         capture_output=True, text=True, timeout=120, cwd=ROOT,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    assert (f"5 edits from 5 records of {SAMPLE} (format mquake, file order, 2 of them shared by several "
            "records); 0 invalid records skipped, 0 probes dropped, 6 input keys not carried over (answer in "
            "5 records") in res.stdout
    assert "new_single_hops[] (unedited facts) in 4 records" in res.stdout
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == [e["id"] for e in import_file(SAMPLE).events]
    assert len(read_records(SAMPLE)) == 5
