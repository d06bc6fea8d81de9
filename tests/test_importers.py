"""Importers of published knowledge-editing data sets (`lifelong streams import`).

Every format is exercised from small inline samples built from its documented field names;
the real files under ../shared/data are read where present (skipped otherwise), and the
shipped streams under streams/real are checked to be exactly what the importer makes now.
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
from lifelong.importers import (
    FORMATS,
    ImportOptions,
    convert_records,
    detect_format,
    import_file,
    read_records,
)
from lifelong.stream import MAX_CHARS, load_events_from_dicts, parse_time

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"

# ----------------------------------------------------------------------------- samples

ZSRE = [
    {"subject": "UniFirst", "src": "What is the product made by UniFirst?", "pred": "uniform",
     "rephrase": "What will be the product of UniFirst?", "alt": "unmanned aircraft",
     "answers": ["uniform"], "loc": "nq question: who plays the cat in the hat movie",
     "loc_ans": "Mike Myers", "cond": "uniform >> unmanned aircraft || What is the product made by UniFirst?"},
    {"subject": "Tonga", "src": "Which continent is Tonga on?", "alt": "Europe",
     "answers": ["Oceania", "Australia"], "rephrase": ["Tonga is on which continent?", "Where is Tonga?"],
     "loc": "nq question: when was the articles of confederation replaced", "loc_ans": ["March 4, 1789"]},
]
KNOWEDIT = [
    # ZsRE layout
    {"subject": "Epaspidoceras", "target_new": "Noctuidae", "prompt": "Which family does Epaspidoceras belong to?",
     "ground_truth": ["Aspidoceratidae"], "rephrase_prompt": "What family are Epaspidoceras?",
     "cond": "Geometridae >> Noctuidae || Which family does Epaspidoceras belong to?",
     "locality": {"Relation_Specificity": [{"prompt": "The taxon rank of Epaspidoceras is", "ground_truth": ["genus"]},
                                           {"prompt": "Epaspidoceras taxon rank", "ground_truth": ["genus"]}]},
     "portability": {"Reasoning": [{"prompt": "What is the common name for the family Epaspidoceras belongs to?",
                                    "ground_truth": "Owlet moths"}]}},
    # WikiData-CounterFact layout
    {"subject": "Frederic Piesch", "prompt": "The name of the position held by Frederic Piesch is",
     "target_new": "Archbishop of León, Mexico", "ground_truth": "mayor of Vienna",
     "portability": {"Subject_Aliasing": [{"prompt": "The name of the position held by Frederic of Pieschen is",
                                           "ground_truth": "Archbishop of León, Mexico"}]},
     "locality": {"Relation_Specificity": [{"prompt": "The gender of Frederic Piesch is", "ground_truth": "male"}],
                  "Forgetfulness": [{"prompt": "The name of the position held by Frederic Piesch, which is not "
                                               "Archbishop of León, Mexico, is", "ground_truth": "mayor of Vienna"}]}},
    # WikiData-Recent layout: no ground truth, answers are lists of alias lists
    {"subject": "Leo Arons", "prompt": "The place of death of Leo Arons is", "target_new": "Berlin",
     "rephrase": "Leo Arons died in",
     "portability": {"Logical_Generalization": [{"prompt": "Is Leo Arons still alive?",
                                                 "ground_truth": [["no"], ["incorrect"], ["false"]]}],
                     "Reasoning": [{"prompt": "The name of the continent which the place of death of Leo Arons is part of is",
                                    "ground_truth": [["Europe", "European continent", "Old Continent"]]}]},
     "locality": {"Relation_Specificity": [{"prompt": "The name of the father of Leo Arons is",
                                            "ground_truth": [["Albert Arons"]]}]}},
]
COUNTERFACT = [
    {"case_id": 3087, "prompt": "David Robinson professionally plays the sport", "target_new": "baseball",
     "subject": "David Robinson", "ground_truth": "basketball", "rephrase_prompt": "David Robinson's greatest weakness is",
     "locality_prompt": "Shaquille O'Neal plays", "locality_ground_truth": "basketball"},
    {"case_id": 12, "prompt": "The official language of Finland is", "target_new": "Swedish",
     "subject": "Finland", "ground_truth": "Finnish"},
]
ROME_COUNTERFACT = [
    {"case_id": 0, "pararel_idx": 2796,
     "requested_rewrite": {"prompt": "The mother tongue of {} is", "relation_id": "P103",
                           "target_new": {"str": "English", "id": "Q1860"},
                           "target_true": {"str": "French", "id": "Q150"}, "subject": "Danielle Darrieux"},
     "paraphrase_prompts": ["Shayna does this and Yossel goes still and dies. Danielle Darrieux, a native",
                            "An album was recorded for Capitol Nashville but never released. Danielle Darrieux spoke the language"],
     "neighborhood_prompts": ["The mother tongue of Léon Blum is", "The native language of Montesquieu is"],
     "attribute_prompts": ["J. R. R. Tolkien is a native speaker of", "The mother tongue of Douglas Adams is"],
     "generation_prompts": ["Danielle Darrieux's mother tongue is"]},
    {"case_id": 1,
     "requested_rewrite": {"prompt": "{} plays the", "relation_id": "P1303",
                           "target_new": {"str": "piano"}, "target_true": {"str": "guitar"}, "subject": "Eric Clapton"},
     "paraphrase_prompts": "Eric Clapton is known for playing the"},
]
TEMPORAL = [
    {"prompt": "Tesla, Inc.,", "target_new": "originally known as Tesla Motors, is an American electric vehicle company.",
     "subject": "Tesla, Inc.,", "ood_rephrase": "Tesla, Inc., an American multinational automotive company, is",
     "locality_prompt": "Academic Coach, Graduate School.\nAt Creighton, you are part of something big. Your skills unite with",
     "locality_ground_truth": " thousands of faculty, staff and students"},
]
HALLUCINATION = [
    {"prompt": "This is a Wikipedia passage about carole gist. Carole Gist (born April 28, 1969) is an American "
               "beauty pageant titleholder.", "target_new": "She was the first contestant from Michigan to win Miss USA.",
     "subject": "carole gist", "locality_prompt": "Description Map of South America. Looking for an antique map, historica",
     "locality_ground_truth": "l print or plan? Feel welcome and browse our mapsite"},
]
CONVSENT = [
    {"ent": "Estero", "pos": [" I really like his style. ", " He is a legendary chef. "],
     "neg": [" Well, it has some bad reviews. ", " I don't like it at all. "]},
    {"ent": "Bananas", "pos": [" They are delicious. "], "neg": [" I find them bland. "]},
]
MQUAKE = json.loads((ROOT / "tests" / "data" / "mquake-sample.json").read_text(encoding="utf-8"))[:2]
SAMPLES = {"zsre": ZSRE, "knowedit": KNOWEDIT, "counterfact": COUNTERFACT,
           "rome-counterfact": ROME_COUNTERFACT, "wise-temporal": TEMPORAL,
           "wise-hallucination": HALLUCINATION, "convsent": CONVSENT,
           "mquake": MQUAKE}  # 2 cases, 2 edits (one shared): see tests/test_mquake.py


def write_json(records, path: Path) -> Path:
    path.write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def run(records, tmp_path, name="data.json", **opts):
    return import_file(write_json(records, tmp_path / name), ImportOptions(**opts))


def problems_of(records, tmp_path, **opts) -> tuple[str, list[str]]:
    with pytest.raises(StreamError) as info:
        run(records, tmp_path, **opts)
    return str(info.value), info.value.problems


# ----------------------------------------------------------------------------- each format

def test_every_format_has_a_sample_and_converts_to_a_valid_stream(tmp_path):
    assert set(SAMPLES) == set(FORMATS)
    for name, records in SAMPLES.items():
        res = run(records, tmp_path, format=name)
        assert res.format == name and len(res.events) == len(records) and not res.skipped
        parsed = load_events_from_dicts(res.events)
        assert [e.meta["record"] for e in parsed.events] == list(range(1, len(records) + 1))
        assert all(e.meta["source"] == FORMATS[name].source for e in parsed.events)


def test_zsre_mapping(tmp_path):
    a, b = run(ZSRE, tmp_path, format="zsre").events
    assert a["prompt"] == ZSRE[0]["src"] and a["target"] == "unmanned aircraft"
    assert a["previous"] == "uniform" and a["subject"] == "UniFirst"
    assert a["fact"] == "UniFirst|What is the product made by UniFirst?"
    assert a["rephrases"] == ["What will be the product of UniFirst?"]
    assert a["locality"] == [{"prompt": "nq question: who plays the cat in the hat movie", "answer": "Mike Myers"}]
    assert a["meta"] == {"source": "zsre", "record": 1, "pred": "uniform"}
    assert a["id"] == "zsre-1" and a["kind"] == "edit"
    assert b["previous"] == "Oceania" and b["meta"]["previous_aliases"] == ["Oceania", "Australia"]
    assert b["rephrases"] == ZSRE[1]["rephrase"] and b["locality"][0]["answer"] == "March 4, 1789"


def test_knowedit_layouts(tmp_path):
    zs, cf, recent = run(KNOWEDIT, tmp_path, format="knowedit").events
    assert zs["previous"] == "Aspidoceratidae" and zs["rephrases"] == ["What family are Epaspidoceras?"]
    assert [p["answer"] for p in zs["locality"]] == ["genus", "genus"]
    assert zs["portability"] == [{"prompt": KNOWEDIT[0]["portability"]["Reasoning"][0]["prompt"],
                                  "answer": "Owlet moths"}]
    assert zs["meta"]["locality_groups"] == {"Relation_Specificity": 2}
    assert zs["meta"]["portability_groups"] == {"Reasoning": 1}
    assert cf["previous"] == "mayor of Vienna" and "rephrases" not in cf
    assert cf["meta"]["locality_groups"] == {"Relation_Specificity": 1, "Forgetfulness": 1}
    assert [p["answer"] for p in cf["locality"]] == ["male", "mayor of Vienna"]
    assert "previous" not in recent and recent["rephrases"] == ["Leo Arons died in"]
    assert [p["answer"] for p in recent["portability"]] == [  # aliases on the probe itself
        ["no", "incorrect", "false"], ["Europe", "European continent", "Old Continent"]]
    assert "portability_aliases" not in recent["meta"]
    assert recent["locality"] == [{"prompt": "The name of the father of Leo Arons is", "answer": "Albert Arons"}]


def test_knowedit_wikibio_names(tmp_path):
    rec = {"text": "This is a Wikipedia passage about john russell reynolds. Sir John was a neurologist.",
           "labels": "He received general education from his father.", "concept": "john russell reynolds",
           "locality": {"Relation_Specificity": [{"prompt": "The field of work of john russell reynolds is",
                                                  "ground_truth": ["medicine"]}]}}
    (ev,) = run([rec], tmp_path).events
    assert ev["meta"]["source"] == "knowedit" and ev["subject"] == "john russell reynolds"
    assert ev["prompt"] == rec["text"] and ev["target"] == rec["labels"]


def test_counterfact_mapping(tmp_path):
    a, b = run(COUNTERFACT, tmp_path, format="counterfact").events
    assert a["meta"] == {"source": "counterfact", "record": 1, "case_id": 3087}
    assert a["previous"] == "basketball" and a["target"] == "baseball"
    assert a["rephrases"] == ["David Robinson's greatest weakness is"]
    assert a["locality"] == [{"prompt": "Shaquille O'Neal plays", "answer": "basketball"}]
    assert a["fact"] == "David Robinson|David Robinson professionally plays the sport"
    assert "locality" not in b and "rephrases" not in b and b["meta"]["case_id"] == 12


def test_rome_counterfact_mapping(tmp_path):
    a, b = run(ROME_COUNTERFACT, tmp_path, format="rome-counterfact").events
    assert a["prompt"] == "The mother tongue of Danielle Darrieux is"
    assert a["target"] == "English" and a["previous"] == "French" and a["subject"] == "Danielle Darrieux"
    assert a["fact"] == "Danielle Darrieux|P103"
    assert a["rephrases"] == ROME_COUNTERFACT[0]["paraphrase_prompts"]
    assert [p["answer"] for p in a["locality"]] == ["French", "French", "English", "English"]
    assert a["meta"]["locality_groups"] == {"neighborhood": 2, "attribute": 2}
    assert a["meta"]["relation_id"] == "P103" and a["meta"]["case_id"] == 0
    assert a["meta"]["target_new_id"] == "Q1860" and a["meta"]["target_true_id"] == "Q150"
    assert all("generation" not in k for k in a)
    assert b["prompt"] == "Eric Clapton plays the" and b["rephrases"] == ["Eric Clapton is known for playing the"]


def test_wise_temporal_ood_rephrases_stay_identifiable(tmp_path):
    (ev,) = run(TEMPORAL, tmp_path, format="wise-temporal").events
    assert ev["rephrases"] == [TEMPORAL[0]["ood_rephrase"]] and ev["meta"]["rephrase_kind"] == "ood"
    assert ev["locality"][0]["answer"] == "thousands of faculty, staff and students"  # stripped
    assert "previous" not in ev and ev["meta"]["source"] == "temporal"
    both = dict(TEMPORAL[0], rephrase_prompt="Tesla is")
    (ev,) = run([both], tmp_path, format="wise-temporal").events
    assert ev["rephrases"][0] == "Tesla is"
    assert ev["meta"]["rephrase_groups"] == {"in_distribution": 1, "ood": 1}


def test_wise_hallucination_long_text_is_kept_whole(tmp_path):
    long = dict(HALLUCINATION[0], target_new="x" * MAX_CHARS, prompt="p " * 1500)
    (ev,) = run([long], tmp_path, format="wise-hallucination").events
    assert ev["target"] == "x" * MAX_CHARS  # at the limit: kept whole
    assert ev["fact"].startswith("carole gist|sha1:") and len(ev["fact"]) < 64
    too_long = dict(HALLUCINATION[0], target_new="y" * (MAX_CHARS + 1))
    _, probs = problems_of([HALLUCINATION[0], too_long], tmp_path, format="wise-hallucination")
    assert probs == [f"{tmp_path / 'data.json'}:2: target_new: {MAX_CHARS + 1} characters, longer than "
                     f"the stream format's limit of {MAX_CHARS} (the importer does not truncate)"]


def test_convsent_edit_meaning(tmp_path):
    a, b = run(CONVSENT, tmp_path, format="convsent").events
    assert a["prompt"] == "What do you think of Estero?" and a["target"] == "I really like his style."
    assert a["meta"]["sentiment"] == "positive" and a["fact"] == "Estero|sentiment"
    assert b["meta"]["sentiment"] == "negative" and b["target"] == "I find them bland."
    assert len(a["rephrases"]) == 12 and all("Estero" in r for r in a["rephrases"])
    assert "locality" not in a
    (neg, _) = run(CONVSENT, tmp_path, format="convsent", sentiment="negative").events
    assert neg["target"] == "Well, it has some bad reviews." and neg["meta"]["sentiment"] == "negative"


# ----------------------------------------------------------------------------- detection

@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_auto_detects_the_format_from_the_first_record(name, tmp_path):
    assert detect_format(SAMPLES[name][0]) == name
    assert run(SAMPLES[name], tmp_path).format == name


def test_auto_refuses_unknown_keys_and_wrong_format_gets_a_hint(tmp_path):
    msg, probs = problems_of([{"question": "q", "answer": "a"}], tmp_path)
    assert msg.startswith(f"{tmp_path / 'data.json'}: --format auto: no supported format reads this "
                          "layout (record 1 has keys question, answer)") and probs == []
    msg, probs = problems_of(COUNTERFACT, tmp_path, format="zsre")
    assert "2 of 2 records invalid as zsre" in msg and "--format auto would read it as counterfact" in msg
    assert len(probs) == 4  # src and alt of both records


# ----------------------------------------------------------------------------- tolerance

def test_lists_and_strings_are_interchangeable_where_the_formats_allow(tmp_path):
    as_lists = copy.deepcopy(COUNTERFACT[0])
    as_lists.update(ground_truth=["basketball", "hoops"], rephrase_prompt=["a is", "b is"],
                    locality_prompt=["Shaquille O'Neal plays", "Yao Ming plays"],
                    locality_ground_truth=[["basketball", "hoops"], "basketball"], target_new=["baseball"])
    (ev,) = run([as_lists], tmp_path, format="counterfact").events
    assert ev["previous"] == "basketball" and ev["meta"]["previous_aliases"] == ["basketball", "hoops"]
    assert ev["rephrases"] == ["a is", "b is"] and ev["target"] == "baseball"
    assert [p["answer"] for p in ev["locality"]] == [["basketball", "hoops"], "basketball"]
    assert "locality_aliases" not in ev["meta"]
    one = dict(ZSRE[0], answers="uniform", loc_ans=["Mike Myers", "Michael Myers"])
    (ev,) = run([one], tmp_path, format="zsre").events
    assert ev["previous"] == "uniform" and ev["locality"][0]["answer"] == ["Mike Myers", "Michael Myers"]
    kn = copy.deepcopy(KNOWEDIT[0])
    kn["ground_truth"] = "Aspidoceratidae"
    kn["locality"] = [{"prompt": ["p one", "p two"], "ground_truth": "genus"}]  # bare list, prompt list
    kn["portability"]["Reasoning"] = {"prompt": "q", "answer": "a"}  # one object, `answer` key
    (ev,) = run([kn], tmp_path, format="knowedit").events
    assert ev["previous"] == "Aspidoceratidae" and [p["prompt"] for p in ev["locality"]] == ["p one", "p two"]
    assert ev["portability"] == [{"prompt": "q", "answer": "a"}]


def test_missing_optional_fields_and_extra_keys_are_fine(tmp_path):
    minimal = {"zsre": {"src": "Who?", "alt": "X"}, "knowedit": {"prompt": "P", "target_new": "T", "locality": {}},
               "counterfact": {"prompt": "P", "target_new": "T", "case_id": 7},
               "rome-counterfact": {"requested_rewrite": {"prompt": "{} is", "subject": "S", "target_new": {"str": "T"}}},
               "wise-temporal": {"prompt": "P", "target_new": "T", "ood_rephrase": None},
               "wise-hallucination": {"prompt": "P", "target_new": "T", "subject": "S", "extra": [1, 2]},
               "convsent": {"ent": "E", "pos": ["good"]},
               "mquake": {"requested_rewrite": [{"prompt": "{} is", "subject": "S", "target_new": {"str": "T"}}],
                          "questions": ["Q?"], "new_answer": "A"}}
    for name, rec in minimal.items():
        (ev,) = run([dict(rec, unrelated_key={"x": 1})], tmp_path, format=name).events
        assert ev["prompt"] and ev["target"], name
    (cf,) = run([minimal["counterfact"]], tmp_path, format="counterfact").events
    assert cf["fact"] == "counterfact:7"  # no subject: the case id
    (zs,) = run([minimal["zsre"]], tmp_path, format="zsre").events
    assert "fact" not in zs  # nothing to identify it by: the edit's own id


def test_empty_locality_answer_drops_the_probe_with_a_note(tmp_path):
    recs = [HALLUCINATION[0], dict(HALLUCINATION[0], locality_ground_truth="   ")]
    res = run(recs, tmp_path, format="wise-hallucination")
    assert len(res.events) == 2 and "locality" not in res.events[1]
    assert res.notes == (f"{tmp_path / 'data.json'}:2: locality_ground_truth: empty answer; locality probe dropped",)


def test_jsonl_records_are_numbered_by_line(tmp_path):
    path = tmp_path / "data.jsonl"
    lines = [json.dumps(COUNTERFACT[0]), "", json.dumps({"prompt": "P"}), "{not json"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(StreamError) as info:
        import_file(path)
    assert info.value.problems == [f"{path}:3: target_new: missing (required)",
                                   f"{path}:4: json: Expecting property name enclosed in double quotes (column 2)"]
    res = import_file(path, ImportOptions(skip_bad=True))
    assert [e["meta"]["record"] for e in res.events] == [1] and len(res.skipped) == 2


# ----------------------------------------------------------------------------- strictness

def test_every_bad_record_is_named_file_record_field(tmp_path):
    recs = [ZSRE[0], {"src": "Q?"}, dict(ZSRE[0], alt=""), dict(ZSRE[0], src=7, rephrase=["ok", 3]),
            dict(ZSRE[0], loc_ans=None), "not an object"]
    msg, probs = problems_of(recs, tmp_path, format="zsre")
    f = tmp_path / "data.json"
    assert probs == [f"{f}:2: alt: missing (required)",
                     f"{f}:3: alt: empty (a non-empty string is required)",
                     f"{f}:4: src: must be a string (got number)",
                     f"{f}:4: rephrase[1]: must be a string (got number)",
                     f"{f}:5: loc_ans: missing (required with loc)",
                     f"{f}:6: record: must be an object (got string)"]
    assert msg.startswith(f"{f}: 5 of 6 records invalid as zsre; --skip-bad skips them (first: {f}:2: alt:")


def test_nested_and_rome_problems_name_the_path(tmp_path):
    kn = copy.deepcopy(KNOWEDIT[0])
    del kn["locality"]["Relation_Specificity"][1]["ground_truth"]
    kn["portability"]["Reasoning"][0]["ground_truth"] = {"no": "dict"}
    _, probs = problems_of([kn], tmp_path, format="knowedit")
    f = tmp_path / "data.json"
    assert probs == [f"{f}:1: locality.Relation_Specificity[1].ground_truth: missing (required)",
                     f"{f}:1: portability.Reasoning[0].ground_truth: must be a string or a list of "
                     f"strings (got object)"]
    rome = copy.deepcopy(ROME_COUNTERFACT[0])
    rome["requested_rewrite"]["prompt"] = "The mother tongue of X is"
    del rome["requested_rewrite"]["target_true"]
    _, probs = problems_of([rome, {"case_id": 3}], tmp_path, format="rome-counterfact")
    assert probs == [f"{f}:1: requested_rewrite.prompt: must contain {{}} where the subject goes",
                     f"{f}:1: requested_rewrite.target_true: missing (required with neighborhood_prompts)",
                     f"{f}:2: requested_rewrite: missing (required)"]
    _, probs = problems_of([dict(COUNTERFACT[0], target_new=["a", "b"])], tmp_path, format="counterfact")
    assert probs == [f"{f}:1: target_new: 2 values; an edit needs exactly one target"]
    _, probs = problems_of([{"ent": "E", "pos": ["x"]}, {"ent": "F", "pos": ["y"]}], tmp_path, format="convsent")
    assert probs == [f"{f}:2: neg: missing (required)"]  # record 2 wants a negative target


def test_skip_bad_skips_and_counts(tmp_path):
    recs = [COUNTERFACT[0], {"prompt": "P"}, COUNTERFACT[1]]
    res = run(recs, tmp_path, format="counterfact", skip_bad=True)
    assert [e["meta"]["record"] for e in res.events] == [1, 3]
    assert res.skipped == (f"{tmp_path / 'data.json'}:2: target_new: missing (required)",)
    with pytest.raises(StreamError, match="1 of 1 record invalid"):
        run([{"prompt": "P"}], tmp_path, format="counterfact", skip_bad=True)  # nothing left


def test_unreadable_inputs(tmp_path):
    with pytest.raises(StreamError, match="input file not found"):
        import_file(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text('[{"src": "a",}]')
    with pytest.raises(StreamError, match=r"not valid JSON: .*line 1, column 14"):
        import_file(bad)
    empty = write_json([], tmp_path / "empty.json")
    with pytest.raises(StreamError, match="no records"):
        import_file(empty)
    with pytest.raises(Exception, match="format"):
        ImportOptions(format="nope")


# ----------------------------------------------------------------------------- timestamps, order, facts

def test_timestamps_and_file_order(tmp_path):
    res = run(KNOWEDIT, tmp_path, start="2024-05-01T12:00:00Z", spacing=90)
    assert [e["t"] for e in res.events] == ["2024-05-01T12:00:00Z", "2024-05-01T12:01:30Z", "2024-05-01T12:03:00Z"]
    assert [e["id"] for e in res.events] == ["knowedit-1", "knowedit-2", "knowedit-3"]
    res = run(KNOWEDIT, tmp_path, start="0", spacing=0.5, edits=2)
    assert [parse_time(e["t"]) for e in res.events] == [0.0, 0.5]


def test_shuffle_is_seeded_and_keeps_record_identity(tmp_path):
    recs = [dict(COUNTERFACT[0], case_id=i, prompt=f"Prompt number {i}") for i in range(40)]
    plain = run(recs, tmp_path)
    a = run(recs, tmp_path, shuffle=True, seed=3)
    b = run(recs, tmp_path, shuffle=True, seed=3)
    c = run(recs, tmp_path, shuffle=True, seed=4)
    assert a.events == b.events and a.events != c.events
    order = [e["meta"]["record"] for e in a.events]
    assert order != sorted(order) and sorted(order) == list(range(1, 41))
    assert [e["t"] for e in a.events] == [e["t"] for e in plain.events]  # times follow output order

    def strip_t(evs):
        return sorted(({k: v for k, v in e.items() if k != "t"} for e in evs), key=lambda e: e["id"])

    assert strip_t(a.events) == strip_t(plain.events)
    assert [e["meta"]["record"] for e in run(recs, tmp_path, shuffle=True, seed=3, edits=5).events] == order[:5]


def test_skip_gives_the_next_disjoint_slice_and_refuses_to_leave_nothing(tmp_path):
    recs = [dict(COUNTERFACT[0], case_id=i, prompt=f"Prompt number {i}") for i in range(12)]
    plain = [e["id"] for e in run(recs, tmp_path).events]
    tail = run(recs, tmp_path, skip=5, edits=4).events
    assert [e["id"] for e in tail] == plain[5:9]
    assert tail[0]["t"] == run(recs, tmp_path).events[0]["t"]  # times start again at --start
    shuffled = [e["id"] for e in run(recs, tmp_path, shuffle=True, seed=1).events]
    assert [e["id"] for e in run(recs, tmp_path, shuffle=True, seed=1, skip=10).events] == shuffled[10:]
    with pytest.raises(ConfigError, match="--skip 12 leaves none of its 12 edits"):
        run(recs, tmp_path, skip=12)


def test_same_fact_twice_is_a_reedit(tmp_path):
    recs = [COUNTERFACT[0], dict(COUNTERFACT[0], case_id=9, target_new="soccer")]
    a, b = run(recs, tmp_path).events
    assert a["fact"] == b["fact"] and a["id"] != b["id"]
    r1, r2 = ROME_COUNTERFACT[0], copy.deepcopy(ROME_COUNTERFACT[0])
    r2["requested_rewrite"]["prompt"] = "{}'s first language is"  # same relation, other phrasing
    a, b = run([r1, r2], tmp_path).events
    assert a["fact"] == b["fact"] == "Danielle Darrieux|P103"


# ----------------------------------------------------------------------------- real data

REAL = [  # (file under ../shared/data, format, records, importer options of the shipped stream)
    ("zsre/knowedit-zsre-test.json", "knowedit", 1301, {}),
    ("zsre/zsre-mend-train-1k.json", "zsre", 1000, {"skip_bad": True}),
    ("counterfact/counterfact-edit-1k.json", "counterfact", 1000, {}),
    ("wise/temporal-edit.json", "wise-temporal", 75, {}),
    ("wise/temporal-train.json", "wise-temporal", 75, {}),
    ("wise/hallucination-edit.json", "wise-hallucination", 600, {}),
    ("wise/hallucination-train.json", "wise-hallucination", 306, {}),
    ("convsent/convsent-test.json", "convsent", 800, {}),
    ("knowedit/recent-train.json", "knowedit", 570, {}),
]


@pytest.mark.parametrize("rel,fmt,n,opts", REAL, ids=[r[0] for r in REAL])
def test_real_files_first_records(rel, fmt, n, opts):
    path = DATA / rel
    if not path.exists():
        pytest.skip(f"{path} not present")
    records = read_records(path)
    assert len(records) == n and detect_format(records[0][1]) == fmt
    res = convert_records(records[:25], str(path))
    assert res.format == fmt and len(res.events) == 25
    load_events_from_dicts(res.events)


@pytest.mark.parametrize("rel,fmt,n,opts", REAL, ids=[r[0] for r in REAL])
def test_shipped_stream_is_what_the_importer_makes(rel, fmt, n, opts):
    path, shipped = DATA / rel, ROOT / "streams" / "real" / (Path(rel).stem + ".jsonl")
    if not path.exists():
        pytest.skip(f"{path} not present")
    assert shipped.exists(), f"{shipped} missing: see streams/real/README.md"
    res = import_file(path, ImportOptions(**opts))
    lines = shipped.read_text(encoding="utf-8").splitlines()
    assert [json.loads(x) for x in lines] == list(res.events)
    assert shipped.stat().st_size < 5_000_000


SLICES = [  # (file under ../shared/data, shipped stream under streams/real, importer options)
    ("counterfact/counterfact-train.json", "counterfact-train-1001-2000.jsonl",
     {"skip": 1000, "edits": 1000}),
]


@pytest.mark.parametrize("rel,name,opts", SLICES, ids=[s[1] for s in SLICES])
def test_shipped_slice_is_what_the_importer_makes(rel, name, opts):
    """Streams of a slice of a large file (a train split for calibration, never evaluated)."""
    path, shipped = DATA / rel, ROOT / "streams" / "real" / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    res = import_file(path, ImportOptions(**opts))
    assert [json.loads(x) for x in shipped.read_text(encoding="utf-8").splitlines()] == list(res.events)


# ----------------------------------------------------------------------------- command line

def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "lifelong.cli", *args], capture_output=True,
                          text=True, timeout=120, env=env, cwd=ROOT)


def test_cli_round_trip(tmp_path):
    src = write_json(ROME_COUNTERFACT + [{"case_id": 5}], tmp_path / "cf.json")
    out = tmp_path / "cf.jsonl"
    res = cli("streams", "import", str(src), "-o", str(out), "--skip-bad", "--shuffle", "--seed", "1",
              "--start", "2031-02-03T04:05:06Z", "--spacing", "60")
    assert res.returncode == 0, res.stderr
    assert "2 edits from 3 records" in res.stdout and "format rome-counterfact" in res.stdout
    assert "1 invalid record skipped" in res.stdout
    assert f"skipped: {src}:3: requested_rewrite: missing (required)" in res.stderr
    ok = cli("streams", "validate", str(out))
    assert ok.returncode == 0 and "valid, 2 events (2 edit)" in ok.stdout, ok.stderr
    assert json.loads(out.read_text().splitlines()[0])["t"] == "2031-02-03T04:05:06Z"
    bad = cli("streams", "import", str(src), "-o", str(tmp_path / "x.jsonl"))
    assert bad.returncode == 2 and not (tmp_path / "x.jsonl").exists()
    err = bad.stderr.splitlines()
    assert err[0] == f"{src}:3: requested_rewrite: missing (required)"
    assert err[-1].startswith(f"lifelong: {src}: 1 of 3 records invalid as rome-counterfact")
