"""What a run records beyond outcomes: whether each edit's training converged, the stream's
own queries with their expected answers, query latency timed side by side with an unedited
copy of the base model, and the share of answers the model cannot even tokenize."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from tinyrun import save_tiny_model, stream_events, write_jsonl, write_scenario

from lifelong.errors import ConfigError
from lifelong.runsetup import preflight
from lifelong.runtime import Runtime, truncate
from lifelong.scenario import load_scenario
from lifelong.store import Store
from lifelong.stream import parse_stream

pytestmark = pytest.mark.usefixtures("single_thread")

# `none` first: its all-NULL `converged` must not make the column text for the others
METHODS = ('[[methods]]\nname = "none"\n\n'
           '[[methods]]\nname = "ft"\nlabel = "ft-short"\nsettings = { steps = 1, stop_loss = 0.0 }\n\n'
           '[[methods]]\nname = "ft"\nlabel = "ft-easy"\nsettings = { steps = 4, stop_loss = 100.0 }\n\n'
           '[[methods]]\nname = "grace"\nsettings = { steps = 30 }\n')


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    d = tmp_path_factory.mktemp("rec")
    model = save_tiny_model(d / "tiny")
    stream = write_jsonl(stream_events(n_edits=6, reedits=1, retracts=1, queries=2), d / "s.jsonl")
    toml = write_scenario(d / "s.toml", model, stream, methods=METHODS,
                          schedule="checkpoint_every = 3\nlatency_rounds = 3")
    sc = load_scenario(toml)
    st = Store(d / "rec.db")
    Runtime(sc, parse_stream(sc.stream.file), st).run_all()
    return st


def query(db: Path, sql: str) -> list[tuple]:
    con = sqlite3.connect(db)
    rows = con.execute(sql).fetchall()
    con.close()
    return rows


def test_converged_is_recorded_per_edit_as_integer_or_null(store):
    rows = query(store.path, "select run_id, converged, typeof(converged) from events "
                             "where kind = 'edit'")
    by_run: dict[str, set] = {}
    for run_id, value, kind in rows:
        by_run.setdefault(run_id, set()).add((value, kind))
    assert by_run["none@seed0"] == {(None, "null")}  # no notion of convergence
    assert by_run["ft-short@seed0"] == {(0, "integer")}  # one step, threshold 0: never met
    assert by_run["ft-easy@seed0"] == {(1, "integer")}  # a threshold any loss meets
    assert {k for _, k in by_run["grace@seed0"]} == {"integer"}
    # outcomes are unchanged: an edit that did not converge is still applied
    assert {o for (o,) in query(store.path, "select outcome from events where kind = 'edit'")} \
        == {"applied"}


def test_query_rows_keep_the_expected_answer_and_both_scores(store):
    events = stream_events(n_edits=6, reedits=1, retracts=1, queries=2)
    asked = [e for e in events if e["kind"] == "query"]
    rows = query(store.path, "select event_id, answer, tf_acc, gen_exact, gen_text from events "
                             "where kind = 'query' and run_id = 'grace@seed0' order by seq")
    assert [(r[0], r[1]) for r in rows] == [(q["id"], q["answer"]) for q in asked]
    for _, _, tf_acc, gen_exact, gen_text in rows:
        assert 0.0 <= tf_acc <= 1.0 and gen_exact in (0, 1) and gen_text is not None


def test_query_latency_is_timed_side_by_side_with_the_base_model(store):
    rows = query(store.path, "select run_id, op, key, batch from timings")
    for run in ("none@seed0", "grace@seed0"):
        mine = [r for r in rows if r[0] == run]
        keys = {op: sorted(k for _, o, k, _ in mine if o == op) for op in ("query", "query_base")}
        assert keys["query"] == keys["query_base"]  # every key timed on both models
        # latency_queries = 4 prompts alone + one batch of 4, for each of 3 rounds
        assert len(keys["query"]) == 3 * (4 + 1)
        assert {k.split(":")[1] for k in keys["query"]} == {"0", "1", "2"}
        assert {b for _, _, _, b in mine} == {1, 4}


UNKNOWN = "Zorblax"  # not a word of the tiny tokenizer: encodes to [UNK]


def _unknown_stream(d: Path, share_of_edits: float) -> Path:
    events = stream_events(n_edits=10, retracts=0, queries=0, reedits=0)
    edits = [e for e in events if e["kind"] == "edit"]
    for e in edits[:round(len(edits) * share_of_edits)]:
        e["target"] = UNKNOWN
    return write_jsonl(events, d / f"unk{share_of_edits}.jsonl")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("m") / "tiny")


def test_mostly_unknown_answers_are_refused_with_the_share(tiny, tmp_path):
    stream = _unknown_stream(tmp_path, 0.8)  # 8 of 20 answers (10 targets, 10 locality)
    toml = write_scenario(tmp_path / "u.toml", tiny, stream, methods='[[methods]]\nname = "none"\n')
    sc = load_scenario(toml)
    db = tmp_path / "u.db"
    with pytest.raises(ConfigError) as exc:
        Runtime(sc, parse_stream(sc.stream.file), Store(db)).run_all()
    msg = str(exc.value)
    assert "8 of 20 answers (40%" in msg and "[UNK]" in msg and "--allow-unknown" in msg
    assert "--model" in msg and "\n" not in msg
    assert Store(db).runs() == []
    allowed = load_scenario(toml, {"allow_unknown": True})
    Runtime(allowed, parse_stream(sc.stream.file), Store(db)).run_all()
    info = json.loads(Store(db).get_run("none@seed0")["stream"])
    assert info["unknown_share"] == 0.4 and info["unknown_answers"] == 8 and info["answers"] == 20


def test_a_few_unknown_answers_pass_and_are_recorded(tiny, tmp_path):
    stream = _unknown_stream(tmp_path, 0.1)  # 1 of 20: 5%, at the default limit
    toml = write_scenario(tmp_path / "u.toml", tiny, stream, methods='[[methods]]\nname = "none"\n')
    sc = load_scenario(toml)
    st = Store(tmp_path / "u.db")
    Runtime(sc, parse_stream(sc.stream.file), st).run_all()
    assert json.loads(st.get_run("none@seed0")["stream"])["unknown_share"] == 0.05


def test_a_word_level_model_refuses_a_real_stream_and_names_the_organism(tmp_path, monkeypatch):
    """The issue's case (a real data set replayed on a model whose word-level vocabulary
    does not hold its answers: the first built-in model; today the ZsRE organism on the
    CounterFact stream). The built-in model's byte-level BPE has no unknown token: any text
    is several known tokens, so this check has nothing to refuse there."""
    root = Path(__file__).resolve().parent.parent
    stream = root / "streams" / "real" / "counterfact-edit-1k.jsonl"
    organism = root / "lifelong" / "organisms" / "zsre"
    if not stream.exists() or not organism.exists():
        pytest.skip("shipped real streams or organisms not present")
    monkeypatch.chdir(root)
    sc = load_scenario(None, {"stream": str(stream), "methods": ["grace"], "edits": 30,
                              "model": str(organism)})
    with pytest.raises(ConfigError) as exc:
        preflight(sc, truncate(parse_stream(stream).events, 30))
    assert "lifelong/organisms/counterfact" in str(exc.value)


def test_the_hint_names_byte_level_organisms_only_for_their_own_stream(tmp_path, monkeypatch):
    """A byte-level BPE organism spells any text, so "knows its words" would name it for
    every stream: it is named only for the stream it was made from (organism.json's digest);
    a word-level organism is named when its vocabulary holds the answers."""
    import hashlib

    from lifelong import runsetup
    from lifelong.tokenizer import build_bpe_tokenizer, build_word_tokenizer
    ours, other = tmp_path / "ours.jsonl", tmp_path / "other.jsonl"
    ours.write_text("the stream this organism was made from\n")
    other.write_text("another stream\n")
    answers = ["Quarn", "Delvo Spira"]
    organisms = tmp_path / "organisms"
    for name, tok, made_from in [
            ("a-bpe", build_bpe_tokenizer(answers, 300), ours),
            ("b-bpe", build_bpe_tokenizer(answers, 300), other),
            ("c-words", build_word_tokenizer(answers), other),
            ("d-words", build_word_tokenizer(["Quarn"]), ours)]:
        tok.save_pretrained(organisms / name)
        (organisms / name / "organism.json").write_text(json.dumps(
            {"stream_sha256": hashlib.sha256(made_from.read_bytes()).hexdigest()}))
    monkeypatch.setattr(runsetup, "ORGANISMS", organisms)
    found = [Path(p).name for p in runsetup._organisms_that_know(answers, 0.0, str(ours))]
    assert found == ["a-bpe", "c-words", "d-words"]
    found = [Path(p).name for p in runsetup._organisms_that_know(answers, 0.0, str(other))]
    assert found == ["b-bpe", "c-words"]


@pytest.mark.parametrize("name", ["none", "ft", "grace", "defer", "wise-faiss", "wise"])
def test_every_method_reports_whether_its_edit_converged(name):
    """The receipt's flag is the method's own stop criterion: the loss it ended on is below
    its own threshold (None for a method that does not train)."""
    from conftest import make_tiny_model, tiny_tokenizer

    from lifelong.methods import AttachContext, EditRequest, build_method
    from lifelong.model import LM
    tok = tiny_tokenizer()
    lm = LM(make_tiny_model("gpt2"), tok, "tiny", "tiny")
    method = build_method(name, {"steps": 3} if name != "none" else {}, seed=0)
    method.attach(lm, AttachContext(seed=0, unrelated_prompts=("Oslo is a", "Kyoto is a")))
    receipt = method.edit([EditRequest("e1", "Aldric works for", "Vantex", "Aldric|employer")])
    if name == "none":
        assert receipt.converged is None
    else:
        assert receipt.converged == (receipt.loss_after < method.config.stop_loss)
        assert receipt.converged is False  # 3 steps on a random model: not learnt


def test_timing_alternates_the_two_models_prompt_by_prompt():
    """Rows come in execution order: each key is timed on both models back to back, and
    which model goes first flips from one key to the next."""
    from conftest import make_tiny_model, tiny_tokenizer

    from lifelong.model import LM
    from lifelong.querytiming import time_queries
    tok = tiny_tokenizer()
    edited = LM(make_tiny_model("gpt2", seed=1), tok, "a", "a")
    base = LM(make_tiny_model("gpt2", seed=2), tok, "b", "b")
    prompts, targets = ["Aldric works for", "Brenna works for"], ["Vantex", "Orbica"]
    rows = time_queries(edited, base, prompts, targets, rounds=2, run_id="r")
    assert len(rows) == 2 * 2 * (len(prompts) + 1)
    pairs = [rows[i:i + 2] for i in range(0, len(rows), 2)]
    assert all(a["key"] == b["key"] and {a["op"], b["op"]} == {"query", "query_base"}
               for a, b in pairs)
    firsts = [a["op"] for a, _ in pairs]
    assert firsts == ["query", "query_base"] * (len(pairs) // 2)
    assert [a["key"] for a, _ in pairs] == ["b1:0:0", "b1:0:1", "b2:0", "b1:1:0", "b1:1:1", "b2:1"]


def test_no_latency_is_timed_before_the_run(tmp_path):
    """Both latencies come from the end of the run: a run killed half way has timed nothing
    (a base latency taken at the start would be minutes away from its counterpart)."""
    d = tmp_path
    model = save_tiny_model(d / "tiny")
    stream = write_jsonl(stream_events(n_edits=6), d / "s.jsonl")
    toml = write_scenario(d / "s.toml", model, stream, methods='[[methods]]\nname = "none"\n')
    sc = load_scenario(toml)
    runtime = Runtime(sc, parse_stream(sc.stream.file), Store(d / "k.db"))
    seen = [0]

    class Killed(BaseException):
        pass

    def kill():
        seen[0] += 1
        if seen[0] == 4:
            raise Killed

    runtime._maybe_crash = kill
    with pytest.raises(Killed):
        runtime.run_all()
    assert Store(d / "k.db").rows("timings") == []
