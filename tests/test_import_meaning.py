"""Imports that mean what the field means (issue 18): a layout no importer reads is refused in
one line instead of being read in the nearest format and every record rejected; relations
with several values per subject (twin cities, official languages) give one fact per old
value, so that replacing one value is not a re-edit of another. (The MQuAKE importer and
the `needs` of its probes: tests/test_mquake.py; `previous` warnings: tests/test_stream.py.)
"""

from __future__ import annotations

import copy

import pytest
from test_importers import COUNTERFACT, DATA, ROME_COUNTERFACT, cli, problems_of, run, write_json

from lifelong.importers import FORMATS, detect_format, import_file
from lifelong.importers.convert import COPIED_REPHRASE

# ----------------------------------------------------------------------------- unsupported layouts

UNSUPPORTED = [  # layouts that look like a format (a key it keys on) but lack what it needs
    ({"prompt": "Tonga is in", "locality": {"x": [{"prompt": "Fiji is in", "ground_truth": "Oceania"}]}},
     "keys prompt, locality"),  # KnowEdit-like, no target_new
    ({"requested_rewrite": {"prompt": "{} is in", "target_new": {"str": "Europe"}}, "case_id": 4},
     "keys requested_rewrite, case_id"),  # ROME-like, no subject
    ({"requested_rewrite": [{"prompt": "{} is in", "subject": "Tonga", "target_new": {"str": "Europe"}}],
      "new_answer": "Europe"}, "keys requested_rewrite, new_answer"),  # MQuAKE-like, no questions
    ({"ent": "Estero", "sentiment": "positive"}, "keys ent, sentiment"),  # ConvSent-like, no pos/neg
    ({"ood_rephrase": "Tesla is", "prompt": "Tesla"}, "keys ood_rephrase, prompt"),  # no target_new
    ({"question": "Where is Tonga?", "answer": "Oceania"}, "keys question, answer"),
    ({}, "no keys"),
    ([1, 2], "a JSON array, not an object"),
]


@pytest.mark.parametrize("first,got", UNSUPPORTED, ids=[g for _, g in UNSUPPORTED])
def test_auto_on_an_unsupported_layout_says_so_in_one_line(first, got, tmp_path):
    msg, probs = problems_of([first, first], tmp_path)
    assert probs == [] and "\n" not in msg  # not one rejection per record in some wrong format
    assert msg.startswith(f"{tmp_path / 'data.json'}: --format auto: no supported format reads "
                          f"this layout (record 1 has {got}); the formats and the keys each expects: ")
    for f in FORMATS.values():  # every format, with the keys it expects
        assert f"{f.name} ({f.expects})" in msg and f.expects
    assert "zsre (src, alt)" in msg and "wise-hallucination (prompt, target_new)" in msg
    assert detect_format(first) is None


def test_cli_auto_on_an_unsupported_layout_is_one_line(tmp_path):
    src = write_json([UNSUPPORTED[0][0]] * 3, tmp_path / "odd.json")
    res = cli("streams", "import", str(src), "-o", str(tmp_path / "o.jsonl"))
    assert res.returncode == 2 and res.stdout == ""
    (line,) = res.stderr.splitlines()
    assert line.startswith(f"lifelong: {src}: --format auto: no supported format reads this layout "
                           "(record 1 has keys prompt, locality); the formats and the keys each expects: zsre")


# ----------------------------------------------------------------------------- many-valued relations

def twin(case_id, subject, old, new, prompt="The twin city of {} is"):
    return {"case_id": case_id, "prompt": prompt.format(subject), "subject": subject,
            "ground_truth": old, "target_new": new}


def test_many_valued_relations_get_a_fact_per_old_value(tmp_path):
    recs = [twin(1, "Tirana", "Beijing", "Shanghai"), twin(2, "Oslo", "Warsaw", "Rome"),
            twin(3, "Tirana", "Istanbul", "Budapest"),  # another value of Tirana's twin cities
            twin(4, "Tirana", "Beijing", "Paris"),  # Beijing again: a re-edit of record 1
            twin(5, "Tirana", "Paris", "Lima"),  # continues record 4's chain (Beijing -> Paris -> Lima)
            dict(COUNTERFACT[1], case_id=6), dict(COUNTERFACT[1], case_id=7, target_new="German")]
    res = run(recs, tmp_path, format="counterfact")
    facts = [e["fact"] for e in res.events]
    assert facts[:5] == ["Tirana|The twin city of Tirana is|Beijing", "Oslo|The twin city of Oslo is|Warsaw",
                         "Tirana|The twin city of Tirana is|Istanbul", "Tirana|The twin city of Tirana is|Beijing",
                         "Tirana|The twin city of Tirana is|Beijing"]
    # one value per subject: Finland's official language stays one fact, re-edited
    assert facts[5] == facts[6] == "Finland|The official language of Finland is"
    assert res.many_valued == {"The twin city of {} is": 5}
    # ROME layout: the relation is the relation id
    rome = [copy.deepcopy(ROME_COUNTERFACT[0]) for _ in range(3)]
    rome[1]["requested_rewrite"]["target_true"]["str"] = "German"  # a second mother tongue
    rome[2]["requested_rewrite"]["subject"] = "Léon Blum"
    res = run(rome, tmp_path, format="rome-counterfact")
    assert [e["fact"] for e in res.events] == ["Danielle Darrieux|P103|French", "Danielle Darrieux|P103|German",
                                               "Léon Blum|P103|French"]
    assert res.many_valued == {"P103": 3}
    # no old value: nothing to tell the values apart by, the fact stays subject|relation
    res = run([dict(r, ground_truth=None) for r in recs[:3]], tmp_path, format="counterfact")
    assert res.many_valued == {} and res.events[0]["fact"] == res.events[2]["fact"]


def test_cli_summary_counts_many_valued_edits(tmp_path):
    src = write_json([twin(1, "Tirana", "Beijing", "Shanghai"), twin(2, "Tirana", "Istanbul", "Budapest"),
                      COUNTERFACT[1]], tmp_path / "cf.json")
    res = cli("streams", "import", str(src), "-o", str(tmp_path / "cf.jsonl"))
    assert res.returncode == 0, res.stderr
    assert res.stdout.rstrip().endswith("; 2 edits of 1 many-valued relation ('The twin city of {} is' "
                                        "in 2 edits) have one fact per old value")


def test_real_counterfact_many_valued_relations():
    edit, train = DATA / "counterfact" / "counterfact-edit-1k.json", DATA / "counterfact" / "counterfact-train.json"
    if not edit.exists() or not train.exists():
        pytest.skip("CounterFact data not present")
    res = import_file(edit)
    assert res.many_valued == {"The twin city of {} is": 8}
    tirana = {e["meta"]["record"]: e["fact"] for e in res.events if e["subject"] == "Tirana"}
    assert tirana == {215: "Tirana|The twin city of Tirana is|Beijing", 645: "Tirana|The twin city of Tirana is|Istanbul"}
    assert len({e["fact"] for e in res.events}) == 1000  # no edit of this file re-edits another
    res = import_file(train)
    assert len(res.many_valued) == 12 and sum(res.many_valued.values()) == 938
    assert {"The twin city of {} is", "{} is a twin city of", "What is the twin city of {}? It is",
            "The official language of {} is", "In {}, they understand"} <= set(res.many_valued)
    bmw = [e["fact"] for e in res.events if e["prompt"] == "BMW 3 Series, produced by"]
    assert len(bmw) == 2 and bmw[0] == bmw[1] == "BMW 3 Series|BMW 3 Series, produced by"  # one old value



def test_a_rephrase_that_copies_the_prompt_is_dropped_and_counted(tmp_path):
    """CounterFact train record 60 gives its prompt as its own rephrase: not a generalization
    probe (it would score reliability twice), so the importer drops it and says so."""
    recs = copy.deepcopy([COUNTERFACT[0], dict(COUNTERFACT[0], case_id=4)])
    recs[0]["rephrase_prompt"] = recs[0]["prompt"]
    res = run(recs, tmp_path, format="counterfact")
    assert not res.events[0].get("rephrases")
    assert res.events[1].get("rephrases") == [COUNTERFACT[0]["rephrase_prompt"]]
    assert sum(n.endswith(COPIED_REPHRASE) for n in res.notes) == 1
