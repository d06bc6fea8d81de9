"""Aliases and many-valued answers: a probe's answer may be a list of acceptable answers (the
first canonical), and a match against any of them counts, in both protocols.

Covers the stream format (parse, validate, round trip, one-line errors), scoring with a real
tiny model (a second alias matches where the first fails), the probe rows and their store
columns, and the importers (aliases kept on the probe; what is not carried over is counted).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import make_tiny_model, tiny_tokenizer

from lifelong.errors import StreamError
from lifelong.importers import convert_records, import_file, streams_import
from lifelong.model import LM
from lifelong.probes import Ledger, plan, run_probes
from lifelong.scoring import score_answers, score_pairs, tokenize_pair
from lifelong.store import Store
from lifelong.stream import MAX_ITEMS, Edit, Probe, dump_stream, event_to_dict, parse_stream, validate_stream

pytestmark = pytest.mark.usefixtures("single_thread")

RECENT = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "knowedit" / "recent-train.json"


def edit(**kw) -> dict:
    return {"kind": "edit", "id": "e1", "t": 0, "prompt": "Tonga is in", "target": "Europe"} | kw


def write(path: Path, *objs: dict) -> str:
    path.write_text("".join(json.dumps(o) + "\n" for o in objs), encoding="utf-8")
    return str(path)


# ----------------------------------------------------------------------------- stream format

def test_alias_lists_parse_validate_and_round_trip(tmp_path):
    port = [{"prompt": "Tonga's continent is", "answer": ["Europe", "European continent", "Old Continent"]},
            {"prompt": "Is Tonga in Oceania?", "answer": "no"}]
    loc = [{"prompt": "Fiji is in", "answer": ["Oceania", "Australasia"]}]
    path = write(tmp_path / "s.jsonl", edit(portability=port, locality=loc))
    assert validate_stream(path) == []
    (ev,) = parse_stream(path).events
    assert ev.portability[0] == Probe("Tonga's continent is", "Europe", ("European continent", "Old Continent"))
    assert ev.portability[0].answers == ("Europe", "European continent", "Old Continent")
    assert ev.portability[1].answers == ("no",) and ev.locality[0].aliases == ("Australasia",)
    assert event_to_dict(ev)["portability"] == port and event_to_dict(ev)["locality"] == loc
    again = tmp_path / "again.jsonl"
    dump_stream([ev], again)
    assert parse_stream(again).events == (ev,)
    assert json.loads(again.read_text())["portability"] == port
    # a one-element list is the plain answer (equal events; written back as a string)
    one = parse_stream(write(tmp_path / "one.jsonl", edit(portability=[{"prompt": "q", "answer": ["a"]}])))
    assert one.events[0].portability == (Probe("q", "a"),)
    assert event_to_dict(one.events[0])["portability"] == [{"prompt": "q", "answer": "a"}]


@pytest.mark.parametrize("answer,field,why", [
    ([], "portability[0].answer",
     "must be a non-empty string or a non-empty list of strings (got an empty list)"),
    (["Europe", 3], "portability[0].answer[1]", "must be a non-empty string (got number)"),
    (["Europe", " "], "portability[0].answer[1]", "must be a non-empty string"),
    (["Europe", "EU", "Europe"], "portability[0].answer[2]", "duplicate of answer[0]"),
    ({"a": 1}, "portability[0].answer",
     "must be a non-empty string or a non-empty list of strings (got object)"),
    ([f"a{i}" for i in range(MAX_ITEMS + 1)], "portability[0].answer",
     f"more than {MAX_ITEMS} items ({MAX_ITEMS + 1})"),
])
def test_a_bad_alias_list_is_one_line_naming_file_line_and_field(tmp_path, answer, field, why):
    good = edit(id="e0")
    path = write(tmp_path / "bad.jsonl", good, edit(t=1, portability=[{"prompt": "q", "answer": answer}]))
    with pytest.raises(StreamError) as err:
        parse_stream(path)
    assert err.value.problems == [f"{path}:2: {field}: {why}"]
    assert "\n" not in str(err.value) and f"{path}:2: {field}:" in str(err.value)


# ----------------------------------------------------------------------------- scoring

@pytest.fixture(scope="module")
def lm() -> LM:
    return LM(make_tiny_model("gpt2"), tiny_tokenizer(), "tiny", "")


@pytest.fixture(scope="module")
def case(lm):
    """(prompt, wrong, right): `right` is exactly what the model greedily generates after the
    prompt (two tokens), `wrong` an answer it gets wrong in both protocols."""
    prompt = "Aldric works for"
    right = score_pairs(lm, [prompt], ["Lisbon Oslo"])[0].gen_text
    assert len(tokenize_pair(lm, prompt, right)[1]) == 2
    wrong = next(w for w in ("Lisbon Oslo", "Vantex Orbica", "tennis rugby") if w != right)
    alone = score_pairs(lm, [prompt], [wrong])[0]
    assert alone.tf_acc < 1 and not alone.tf_exact and not alone.gen_exact
    return prompt, wrong, right


def test_a_second_alias_matches_where_the_first_fails_in_both_protocols(lm, case):
    prompt, wrong, right = case
    only_right = score_pairs(lm, [prompt], [right])[0]
    assert only_right.tf_exact and only_right.gen_exact
    both, first_only = score_answers(lm, [prompt, prompt], [(wrong, right), (wrong,)])
    assert both.tf_acc == 1.0 and both.tf_exact and both.gen_exact
    assert (both.tf_alias, both.gen_alias) == (1, 1) and both.gen_text == right
    assert both.nll == pytest.approx(only_right.nll) and both.target_ids == only_right.target_ids
    assert not first_only.tf_exact and not first_only.gen_exact and first_only.gen_alias is None
    # order does not matter for the match; the figures are those of the best answer
    rev = score_answers(lm, [prompt], [(right, wrong)])[0]
    assert rev.tf_exact and rev.gen_exact and (rev.tf_alias, rev.gen_alias) == (0, 0)


def test_one_answer_each_scores_as_score_pairs(lm, case):
    prompt, wrong, right = case
    prompts = [prompt, "Brenna was born in", "The employer of Caspar is", prompt]
    targets = [wrong, "Oslo", "Vantex Orbica", right]
    assert score_answers(lm, prompts, [(t,) for t in targets], 2) == score_pairs(lm, prompts, targets, 2)
    with pytest.raises(ValueError, match="at least one answer"):
        score_answers(lm, [prompt], [()])


def test_probe_rows_count_an_alias_name_it_and_store_into_an_old_table(lm, case, tmp_path):
    prompt, wrong, right = case
    ev = Edit("e1", 0, "Brenna works for", "Vantex",
              portability=(Probe(prompt, wrong, (right,)), Probe(prompt, wrong)),
              locality=(Probe("Caspar was born in", "Lisbon", ("Oslo",)),))
    items = plan(Ledger.replay([ev]), ev.locality)
    ports = [it for it in items if it.role == "port"]
    assert [it.answers for it in ports] == [(wrong, right), (wrong,)]
    (loc,) = [it for it in items if it.role == "loc"]
    assert loc.answers == ("Lisbon",)  # locality: judged against the base, aliases unused
    reference = {("Caspar was born in", "Lisbon"): {"tf_pred": [0], "gen_ids": [0]}}
    rows = {r["item"]: r for r in run_probes(lm, ports + [loc], reference, 8)}
    hit, miss = rows["port:e1:0"], rows["port:e1:1"]
    assert hit["target"] == wrong and hit["tf_acc"] == 1.0 and hit["tf_exact"] == hit["gen_exact"] == 1
    assert hit["tf_answer"] == right and hit["gen_answer"] == right
    assert miss["gen_exact"] == 0 and "tf_answer" not in miss and "gen_answer" not in miss
    assert "tf_answer" not in rows["loc:0"]
    # a store whose probes table predates the alias columns takes them (old rows: NULL)
    store = Store(tmp_path / "x.db")
    old = miss | {"run_id": "r", "checkpoint": 0, "item": "old"}
    store.buffer("probes", [old])
    store.commit()
    store.buffer("probes", [r | {"run_id": "r", "checkpoint": 1} for r in rows.values()])
    store.commit()
    got = {(r["checkpoint"], r["item"]): r for r in store.rows("probes", "r")}
    assert got[(1, "port:e1:0")]["gen_answer"] == right and got[(0, "old")]["tf_answer"] is None
    assert got[(1, "port:e1:1")]["gen_answer"] is None
    store.close()


# ----------------------------------------------------------------------------- importers

KNOWEDIT = {"subject": "Leo Arons", "prompt": "Leo Arons was born in", "target_new": "Berlin",
            "cond": "x >> Berlin || Leo Arons was born in",
            "portability": {"Reasoning": [{"prompt": "Leo Arons's continent of birth is",
                                           "ground_truth": [["Europe", "Old Continent"]],
                                           "evidence": "Berlin is in Europe"}]},
            "locality": {"Relation_Specificity": [{"prompt": "The father of Leo Arons is",
                                                   "ground_truth": [["Albert Arons", "A. Arons"]]},
                                                  {"prompt": "The mother of Leo Arons is",
                                                   "ground_truth": [[]]}]}}


def test_importer_keeps_aliases_on_the_probe_and_counts_what_it_leaves_out(tmp_path):
    res = convert_records([(1, KNOWEDIT)], "k.json")
    (ev,) = res.events
    assert ev["portability"] == [{"prompt": "Leo Arons's continent of birth is",
                                  "answer": ["Europe", "Old Continent"]}]
    assert ev["locality"] == [{"prompt": "The father of Leo Arons is", "answer": ["Albert Arons", "A. Arons"]}]
    assert not any(k.endswith("_aliases") for k in ev["meta"])
    assert res.left_out == {"cond": 1, "portability.Reasoning[].evidence": 1}
    assert res.dropped == 1  # the empty ground truth, with its note
    src = tmp_path / "k.json"
    src.write_text(json.dumps([KNOWEDIT]), encoding="utf-8")
    out = CliRunner().invoke(streams_import, [str(src), "-o", str(tmp_path / "k.jsonl")])
    assert out.exit_code == 0, out.output
    assert "1 probe dropped (1 with an empty answer, 0 under fields the format does not read)" in out.output
    assert ("2 input keys not carried over (cond in 1 record, portability.Reasoning[].evidence "
            "in 1 record)") in out.output


def test_real_knowedit_recent_keeps_several_aliases_on_portability_probes():
    if not RECENT.exists():
        pytest.skip(f"{RECENT} not present")
    res = import_file(RECENT)
    ports = [p for ev in res.events for p in ev.get("portability", ())]
    many = [p for p in ports if isinstance(p["answer"], list)]
    assert len(many) > 100 and all(len(p["answer"]) > 1 for p in many)
    assert any("Ottawa" in p["answer"] and "Bytown" in p["answer"] for p in many)
    assert res.left_out == {} and res.dropped == 0
