"""ConvSent's sentiment measure: the naive Bayes classifier (features, training, its entity
split, saving), the success metric over recorded probe rows, and `lifelong sentiment` end to
end on a real run's store."""

from __future__ import annotations

import json
import sqlite3

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from tinyrun import run_store, save_tiny_model, write_jsonl, write_scenario

from lifelong.cli import cli
from lifelong.errors import LifelongError
from lifelong.metrics_sentiment import sentiment_success
from lifelong.sentiment import (
    NEGATIVE,
    POSITIVE,
    SentimentModel,
    entity_split,
    features,
    read_convsent,
    train,
    train_convsent,
    trains_on,
)

pytestmark = pytest.mark.usefixtures("single_thread")

POS = ["I really like it.", "He is a great player.", "I love his style, great work!"]
NEG = ["I don't like it at all.", "It is a terrible scheme.", "I do not like him, awful."]


def test_features_are_lowercased_words_and_adjacent_pairs():
    assert features("I don't LIKE it.") == ["i", "don't", "like", "it", "i don't", "don't like",
                                            "like it"]
    assert features("") == [] and features("...") == []
    assert features("It\u2019s fine") == features("It's fine")


def test_a_trained_model_separates_its_texts_and_has_no_view_without_known_words(tmp_path):
    model = train(POS, NEG, min_count=1)
    assert [model.classify(t) for t in POS] == [POSITIVE] * 3
    assert [model.classify(t) for t in NEG] == [NEGATIVE] * 3
    assert model.classify("") is None and model.classify("Zyx qwv") is None
    # the same texts give the same model; saving and loading keeps every figure
    assert train(POS, NEG, min_count=1) == model
    path = tmp_path / "m.json"
    path.write_text(model.to_json(), encoding="utf-8")
    loaded = SentimentModel.load(path)
    assert loaded == model and loaded.to_json() == model.to_json()
    # min_count drops features seen once: fewer features, and "awful" (seen once) is gone
    assert "awful" in model.log_odds and "awful" not in train(POS, NEG, min_count=2).log_odds


def test_training_needs_both_classes_and_loading_names_the_file(tmp_path):
    with pytest.raises(LifelongError, match="positive and negative"):
        train(POS, [])
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "other"}', encoding="utf-8")
    with pytest.raises(LifelongError, match=r"bad\.json: not a sentiment model"):
        SentimentModel.load(bad)
    bad.write_text("{", encoding="utf-8")
    with pytest.raises(LifelongError, match=r"bad\.json: line 1: not JSON"):
        SentimentModel.load(bad)


@settings(max_examples=50, deadline=None)
@given(entities=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=30, unique=True),
       seed=st.integers(0, 100), share=st.floats(0.05, 0.95))
def test_an_entity_side_of_the_split_depends_on_itself_alone(entities, seed, share):
    chosen = entity_split(entities, seed, share)
    assert chosen == {e for e in entities if trains_on(e, seed, share)}
    assert entity_split(entities[::2], seed, share) == chosen & set(entities[::2])
    assert chosen <= entity_split(entities, seed, min(0.95, share + 0.04))  # monotone in share


def test_convsent_records_split_by_entity_and_bad_records_are_named(tmp_path):
    recs = [{"ent": f"E{i}", "pos": [f"good {i} great"], "neg": [f"bad {i} awful"]} for i in range(40)]
    path = tmp_path / "convsent.json"
    path.write_text(json.dumps(recs), encoding="utf-8")
    model, acc = train_convsent(path, seed=3, train_share=0.5, min_count=1)
    n_train = model.provenance["train_entities"]
    assert n_train == len(entity_split([r["ent"] for r in recs], 3, 0.5))
    assert n_train + model.provenance["held_out_entities"] == 40
    assert acc["n"] == 2 * (40 - n_train) and acc["accuracy"] == 1.0  # good/great vs bad/awful
    path.write_text(json.dumps(recs[:3] + [{"ent": 5}]), encoding="utf-8")
    with pytest.raises(LifelongError, match=r"convsent\.json: record 4: needs 'ent'"):
        read_convsent(path)


def _row(edit_id, gen_text, target, role="rel"):
    return {"edit_id": edit_id, "gen_text": gen_text, "target": target, "role": role}


def test_success_counts_held_out_edits_whose_answer_has_their_sentiment():
    model = train(POS, NEG, min_count=1)
    edits = {"a": ("Ann", POSITIVE), "b": ("Bob", NEGATIVE), "c": ("Cid", POSITIVE),
             "t": ("Tia", POSITIVE)}
    roles = {"rel": [_row("a", "I love it", POS[0]), _row("b", "I love it", NEG[0]),
                     _row("c", "", POS[1]), _row("t", "great", POS[0]),
                     _row("x", "great", POS[0])],  # x: not a sentiment edit
             "gen": []}
    out = sentiment_success(roles, edits, model, held_out=lambda e: e != "Tia")
    assert out["rel"] == {"success": 1 / 3, "target_agrees": 1.0, "no_sentiment": 1 / 3, "n": 3}
    assert out["gen"] is None


def test_sentiment_train_and_score_on_a_real_store(tmp_path):
    """A ConvSent-like stream (meta.sentiment) replayed by `none` and `ft` into a real store;
    `lifelong sentiment score` counts exactly the held-out edits' final rows, and an answer
    that reproduces its target scores as the target does."""
    people = ["Aldric", "Brenna", "Caspar", "Delphine", "Evander", "Fenella", "Gideon", "Hestia"]
    words = {POSITIVE: "Vantex", NEGATIVE: "Lisbon"}
    events = []
    for i, p in enumerate(people):
        s = POSITIVE if i % 2 else NEGATIVE
        events.append({"kind": "edit", "id": f"cs-{i}", "t": f"2030-01-01T00:0{i}:00Z",
                       "prompt": f"{p} works for", "target": words[s], "subject": p,
                       "fact": f"{p}|sentiment", "rephrases": [f"The employer of {p} is"],
                       "meta": {"sentiment": s}})
    stream = write_jsonl(events, tmp_path / "s.jsonl")
    data = tmp_path / "convsent.json"
    data.write_text(json.dumps([{"ent": f"X{i}", "pos": ["Vantex Orbica", "Vantex"],
                                 "neg": ["Lisbon Oslo", "Lisbon"]} for i in range(6)]), encoding="utf-8")
    runner = CliRunner()
    model_path = tmp_path / "m.json"
    res = runner.invoke(cli, ["sentiment", "train", str(data), "-o", str(model_path), "--min-count", "1"])
    assert res.exit_code == 0, res.output
    scenario = write_scenario(tmp_path / "sc.toml", save_tiny_model(tmp_path / "tiny"), stream,
                              methods='[[methods]]\nname = "none"\n\n[[methods]]\nname = "ft"\n'
                                      'settings = { steps = 12, lr = 0.05 }\n',
                              schedule="checkpoint_every = 0\nrestart_every = 1\neval_after_edit = false")
    db = tmp_path / "runs.db"
    run_store(scenario, db)
    out = tmp_path / "score.json"
    res = runner.invoke(cli, ["sentiment", "score", str(db), "--stream", str(stream),
                              "--model", str(model_path), "--json", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    held = [e for e in events if not trains_on(e["subject"], 0, 0.5)]
    assert held  # the split leaves some of the eight people out
    con = sqlite3.connect(db)
    for run in doc["runs"]:
        assert run["rel"]["n"] == len(held) and run["gen"]["n"] == len(held)
        assert run["rel"]["target_agrees"] == 1.0
        ids = {e["id"] for e in held}
        exact = sum(e in ids for (e,) in con.execute(
            "select edit_id from probes where run_id = ? and role = 'rel' and gen_exact = 1",
            (run["run_id"],)))
        assert run["rel"]["success"] >= exact / len(held)
    assert {m["label"] for m in doc["seed_means"]} == {"none", "ft"}
    # a stream without sentiments is refused in one line
    plain = write_jsonl([{k: v for k, v in e.items() if k != "meta"} for e in events], tmp_path / "p.jsonl")
    res = runner.invoke(cli, ["sentiment", "score", str(db), "--stream", str(plain), "--model", str(model_path)])
    assert res.exit_code != 0 and "no edit carries meta.sentiment" in str(res.exception or res.output)
