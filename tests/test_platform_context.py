"""What methods are attached with (`AttachContext`: train split, corpus, cache, a second
model, the device, all read only when asked), as the runtime and the Python API fill it; the
shared pieces (`frozen`, `Hooks`, the edit loop); the registry; resuming a run stored before
a setting existed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_model
from tinyrun import save_tiny_model, stream_events, write_jsonl, write_scenario

import lifelong
from lifelong.errors import LifelongError
from lifelong.methods import AttachContext, EditRequest, TrainRecord, available_methods
from lifelong.methods._common.hooks import Hooks
from lifelong.methods._common.loop import Step, frozen, optimise
from lifelong.methods.context import Cache, context_fields, read_corpus
from lifelong.methods.none import NoEdit
from lifelong.model import load_model
from lifelong.nethook import replace_output
from lifelong.runtime import Runtime
from lifelong.scenario import load_scenario, same_config
from lifelong.store import Store
from lifelong.stream import parse_stream

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("context")
    return save_tiny_model(d / "tiny"), write_jsonl(stream_events(n_edits=4), d / "s.jsonl")


def test_nothing_is_read_until_asked_and_then_once(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("one text\n\nanother text\n", encoding="utf-8")
    train = write_jsonl(stream_events(n_edits=3, retracts=0, queries=0), tmp_path / "train.jsonl")
    ctx = AttachContext(seed=1, corpus=str(corpus), train_split=str(train))
    assert ctx.memo == {}
    assert ctx.corpus_texts() == ("one text", "another text")
    records = ctx.train_records()
    assert len(records) == 3 and isinstance(records[0], TrainRecord)
    assert records[0].request == EditRequest("e000", "Aldric works for", records[0].request.target,
                                             "Aldric|employer", "Aldric")
    assert records[0].rephrases and records[0].locality
    assert ctx.train_records() is records  # read once
    corpus.unlink()
    assert ctx.corpus_texts() == ("one text", "another text")
    assert AttachContext(seed=0).train_records() == ()


def test_a_missing_corpus_says_what_to_set(tmp_path):
    with pytest.raises(LifelongError, match="corpus"):
        AttachContext(seed=0).corpus_texts()
    with pytest.raises(LifelongError, match="no such corpus"):
        AttachContext(seed=0, corpus=str(tmp_path / "nope.txt")).corpus_texts()
    assert AttachContext(seed=0, corpus=("a", "b")).corpus_texts() == ("a", "b")


def test_an_organism_corpus_is_its_training_text():
    path = Path(lifelong.__file__).parent / "organisms" / "zsre" / "organism.json"
    if not path.exists():
        pytest.skip("no zsre organism here")
    texts = read_corpus(str(path))
    assert len(texts) == json.loads(path.read_text())["counts"]["pairs"]


def test_the_cache_is_keyed_by_model_layer_and_what(tmp_path):
    cache = AttachContext(seed=0, cache_dir=str(tmp_path), model_fingerprint="abc123").cache()
    assert cache == Cache(tmp_path, "abc123")
    where = cache.path("layers.3.mlp.out", "key covariance/wikitext")
    assert where.parent == tmp_path / "abc123" / "layers.3.mlp.out" and where.parent.is_dir()
    assert cache.load("layers.3.mlp.out", "cov") is None
    cache.save("layers.3.mlp.out", "cov", {"c": torch.eye(3)})
    assert torch.equal(cache.load("layers.3.mlp.out", "cov")["c"], torch.eye(3))
    assert not list(where.parent.glob("*.tmp"))
    with pytest.raises(LifelongError, match="fingerprint"):
        AttachContext(seed=0).cache()


def test_the_runtime_fills_the_context_from_the_scenario(tiny, tmp_path, monkeypatch):
    seen: list[AttachContext] = []
    attach = NoEdit.attach
    monkeypatch.setattr(NoEdit, "attach", lambda self, lm, ctx: (seen.append(ctx), attach(self, lm, ctx)))
    (tmp_path / "corpus.txt").write_text("a text\n", encoding="utf-8")
    toml = write_scenario(tmp_path / "s.toml", tiny[0], tiny[1], methods='[[methods]]\nname = "none"\n',
                          extra='corpus = "corpus.txt"\ncache_dir = "cache"',
                          schedule="checkpoint_every = 2\nlocality_sample = 1")
    text = toml.read_text().replace("[stream]\n", f'[stream]\ntrain_file = "{tiny[1]}"\n')
    toml.write_text(text)
    sc = load_scenario(toml)
    Runtime(sc, parse_stream(sc.stream.file), Store(tmp_path / "r.db")).run_all()
    ctx = seen[0]
    assert ctx.seed == 0 and ctx.device == "cpu" and ctx.unrelated_prompts
    assert ctx.corpus == str(tmp_path / "corpus.txt") and ctx.corpus_texts() == ("a text",)
    assert ctx.cache_dir == str(tmp_path / "cache") and ctx.train_split == str(tiny[1])
    assert len(ctx.train_records()) == 4
    second = ctx.new_model()
    assert second.fingerprint() == ctx.model_fingerprint == load_model(str(tiny[0])).fingerprint()


def test_train_exclude_holds_the_streams_people_out_of_the_train_split(tiny, tmp_path, monkeypatch):
    """With `stream.train_exclude = "edited-subjects"` the train split loses exactly the
    records about a subject or fact the run edits (after `max_edits`); the context saves and
    restores the held-out sets; the setting without a train split is refused."""
    seen: list[AttachContext] = []
    attach = NoEdit.attach
    monkeypatch.setattr(NoEdit, "attach", lambda self, lm, ctx: (seen.append(ctx), attach(self, lm, ctx)))
    train = write_jsonl(stream_events(n_edits=12, seed=3, retracts=0, queries=0), tmp_path / "t.jsonl")
    toml = write_scenario(tmp_path / "s.toml", tiny[0], train, methods='[[methods]]\nname = "none"\n',
                          schedule="checkpoint_every = 0\nlocality_sample = 1")
    text = toml.read_text()
    toml.write_text(text.replace("[stream]\n", f'[stream]\ntrain_file = "{train}"\n'
                                 'train_exclude = "edited-subjects"\nmax_edits = 3\n'))
    sc = load_scenario(toml)
    Runtime(sc, parse_stream(sc.stream.file), Store(tmp_path / "r.db")).run_all()
    ctx = seen[0]
    everything = AttachContext(seed=0, train_split=str(train)).train_records()
    edited = [r.request for r in everything[:3]]  # file order: the replayed edits
    kept = [r for r in everything if r.request.subject not in {e.subject for e in edited}
            and r.request.fact not in {e.fact for e in edited}]
    assert 0 < len(kept) < len(everything) - 2 and ctx.train_records() == tuple(kept)
    assert ctx.held_out_subjects == {e.subject for e in edited}
    restored = AttachContext(seed=0, **context_fields(json.loads(json.dumps(ctx.to_meta()))))
    assert restored.train_records() == tuple(kept)
    toml.write_text(text.replace("[stream]\n", '[stream]\ntrain_exclude = "edited-subjects"\n'))
    with pytest.raises(LifelongError, match=r"train_exclude.*train_file"):
        load_scenario(toml)


def test_the_api_fills_the_context_and_saves_what_it_was_given(tiny, tmp_path):
    ed = lifelong.open(str(tiny[0]), method="none", corpus=("x y",), unrelated_prompts=["a"])
    ctx = ed.context
    assert ctx.model_fingerprint == ed.base.fingerprint and ctx.corpus_texts() == ("x y",)
    assert ctx.new_model().fingerprint() == ed.base.fingerprint
    ed.save(tmp_path / "mem")
    assert lifelong.load(tmp_path / "mem").context == ctx
    builtin = lifelong.open(str(tiny[0]), method="none")
    assert builtin.context.corpus == ""  # a model with no world.json / organism.json


def test_frozen_freezes_everything_but_what_trains_and_restores_the_flags():
    model = make_tiny_model("gpt2")
    weight = next(model.parameters())
    weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.raises(RuntimeError), frozen(model, trainable=[weight]):
        assert [p.requires_grad for p in model.parameters()].count(True) == 1
        raise RuntimeError
    assert [p.requires_grad for p in model.parameters()] == flags


def test_hooks_are_suspended_and_reopened():
    layer = torch.nn.Linear(2, 2)
    hooks = Hooks(lambda stack: stack.enter_context(replace_output(layer, lambda y: y * 0)))
    x = torch.ones(1, 2)
    hooks.open()
    assert torch.equal(layer(x), torch.zeros(1, 2))
    with hooks.suspended():
        assert not torch.equal(layer(x), torch.zeros(1, 2))
    assert torch.equal(layer(x), torch.zeros(1, 2))
    hooks.close()
    assert not layer._forward_hooks


@pytest.mark.parametrize("fresh_last", [False, True])
def test_the_edit_loop_counts_updates_and_reports_first_and_last(fresh_last):
    p = torch.nn.Parameter(torch.tensor(4.0))
    opt = torch.optim.SGD([p], lr=0.25)
    seen = []

    def step() -> Step:
        loss = p ** 2
        seen.append(float(loss.detach()))
        return Step(loss, seen[-1], seen[-1] < 1e-9)

    result = optimise(opt, step, 3, fresh_last=fresh_last)
    assert result.steps == 3 and result.first == 16.0
    assert len(seen) == (4 if fresh_last else 3) and result.last == seen[-1]
    stop = optimise(torch.optim.SGD([p], lr=0.25), lambda: Step(p ** 2, 0.0, True), 3,
                    fresh_last=fresh_last)
    assert stop.steps == 0


def test_the_registry_finds_methods_in_folders():
    methods = available_methods()
    assert methods["grace"].__module__ == "lifelong.methods.grace.method"
    assert methods["wise-faiss"].__module__ == "lifelong.methods.wise_faiss.method"


def test_a_run_stored_before_a_setting_existed_resumes(tiny, tmp_path):
    toml = write_scenario(tmp_path / "s.toml", tiny[0], tiny[1], methods='[[methods]]\nname = "none"\n')
    sc = load_scenario(toml)
    store = Store(tmp_path / "r.db")
    Runtime(sc, parse_stream(sc.stream.file), store).run_all()
    config = json.loads(store.get_run("none@seed0")["config"])
    old = json.loads(json.dumps(config))
    del old["scenario"]["schedule"]["edit_batch"], old["scenario"]["corpus"]
    assert same_config(old, config)
    changed = json.loads(json.dumps(config))
    changed["scenario"]["schedule"]["edit_batch"] = 4
    assert not same_config(old, changed)


@pytest.mark.parametrize(("name", "key", "before", "default"), [
    ("grace", "claim_rate", 1.0, 0.01), ("serac", "claim_rate", 1.0, 0.01),
    ("wise-faiss", "protect_positions", "last", "all"), ("defer", "use_fact_identity", True, False)])
def test_a_run_stored_before_a_behaviour_changing_setting_resumes_only_as_it_ran(
        name, key, before, default):
    """A setting whose default changed what the method does (`setting(before=...)`): a run
    stored without it continues only where the setting holds the old behaviour's value."""
    from lifelong.config import to_dict
    from lifelong.methods import get_method
    from lifelong.scenario import Scenario
    settings = to_dict(get_method(name).Config())
    assert settings[key] == default
    now = {"scenario": to_dict(Scenario()), "method": {"name": name, "label": name,
                                                        "settings": settings}, "seed": 0}
    old = json.loads(json.dumps(now))
    del old["method"]["settings"][key]
    assert not same_config(old, now)
    as_it_ran = json.loads(json.dumps(now))
    as_it_ran["method"]["settings"][key] = before
    assert same_config(old, as_it_ran)


@pytest.mark.parametrize("name", ["grace", "defer", "wise-faiss", "wise"])
def test_benchmarks_time_the_memory_against_the_bare_model(name, tiny):
    """`lifelong bench`: the bare model is the method's hooks suspended (`bypassed()`), and
    the memory serves again afterwards."""
    from lifelong.bench import time_bare_vs_memory
    from lifelong.methods import build_method
    from lifelong.scoring import score_pairs
    lm = load_model(str(tiny[0]))
    method = build_method(name, {"steps": 3}, 0)
    method.attach(lm, AttachContext(seed=0, unrelated_prompts=("Caspar speaks",)))
    method.edit([EditRequest("e1", "Aldric works for", "Zentro", "a")])
    served = score_pairs(lm, ["Aldric works for"], ["Zentro"])
    out = time_bare_vs_memory(lm, ["Aldric works for"] * 32, ["Zentro"] * 32, method.bypassed,
                              rounds=1)
    assert set(out) == {"bare", "memory"} and out["bare"]["batch32_ms"]["p50"] > 0
    assert score_pairs(lm, ["Aldric works for"], ["Zentro"]) == served
    method.detach()


def test_calibration_prompts_top_up_from_the_train_split_and_never_hold_a_probed_one():
    """Unrelated prompts first, then the train split's locality prompts in file order, each
    once, none of them probed, none from a held-out subject's record, at most `limit`; only
    the unrelated ones with pool "stream", and with "stream-or-train" unless there are none;
    an unknown pool is refused; the probed set survives a save and load."""
    def record(i: int, subject: str, *loc: str) -> TrainRecord:
        return TrainRecord(EditRequest(f"r{i}", f"p{i}", "t", f"f{i}", subject), (),
                           tuple((p, "a") for p in loc))
    split = (record(0, "Ann", "u1", "t1"), record(1, "Bob", "held"), record(2, "Cy", "probed", "t2", "t3"))
    ctx = AttachContext(seed=0, unrelated_prompts=("u1", "u2", "u1"), train_split=split,
                        probed_prompts=frozenset({"probed"}), held_out_subjects=frozenset({"Bob"}))
    assert ctx.calibration_prompts(10, "stream+train") == ["u1", "u2", "t1", "t2", "t3"]
    assert ctx.calibration_prompts(3, "stream+train") == ["u1", "u2", "t1"]
    assert ctx.calibration_prompts(10, "stream") == ["u1", "u2"]
    assert ctx.calibration_prompts(10, "stream-or-train") == ["u1", "u2"]
    bare = AttachContext(seed=0, unrelated_prompts=("probed",), train_split=split,
                         probed_prompts=frozenset({"probed"}), held_out_subjects=frozenset({"Bob"}))
    assert bare.calibration_prompts(10, "stream-or-train") == ["u1", "t1", "t2", "t3"]
    assert bare.calibration_prompts(10, "stream") == []
    with pytest.raises(LifelongError, match="not one of"):
        ctx.calibration_prompts(10, "train")
    restored = AttachContext(seed=0, **context_fields(json.loads(json.dumps(ctx.to_meta()))))
    assert restored.probed_prompts == {"probed"} and restored.calibration_prompts(10, "stream+train") == ["u1", "u2", "t1", "t2", "t3"]


def test_a_chunked_run_reads_its_train_split_once(tiny, tmp_path, monkeypatch):
    """Every chunk of a `restart_every` run attaches a fresh method with a context of its
    own; they share the run's memo, so the train split is parsed once per run, not once per
    chunk (each chunk's method reads it: GRACE tops its calibration pool up from it)."""
    import lifelong.methods.context as context
    from lifelong.methods.grace import Grace
    reads: list[str] = []
    read = context.read_train_split
    monkeypatch.setattr(context, "read_train_split", lambda src: (reads.append(src), read(src))[1])
    seen: list = []
    attach = Grace.attach
    monkeypatch.setattr(Grace, "attach", lambda self, lm, ctx: (seen.append(ctx), attach(self, lm, ctx))[1])
    train = write_jsonl(stream_events(n_edits=6, seed=3, retracts=0, queries=0), tmp_path / "t.jsonl")
    grace = '[[methods]]\nname = "grace"\nsettings = { steps = 2, claim_pool = "stream+train" }\n'
    toml = write_scenario(tmp_path / "s.toml", tiny[0], tiny[1], methods=grace,
                          schedule="checkpoint_every = 0\nrestart_every = 1",
                          stream_extra=f'train_file = "{train}"')
    sc = load_scenario(toml)
    Runtime(sc, parse_stream(sc.stream.file), Store(tmp_path / "r.db")).run_all()
    assert len(seen) >= 4 and len({id(c) for c in seen}) == len(seen)  # a context per chunk
    assert all(len(c.train_records()) == 6 for c in seen)
    assert reads == [str(train)]


@pytest.mark.parametrize("pool", ["stream", "stream+train", "stream-or-train"])
def test_a_fully_probed_stream_is_calibrated_on_the_train_split(tiny, tmp_path, monkeypatch, pool):
    """A stream whose every locality prompt is probed leaves no unrelated prompt: GRACE's
    guard then holds the keys of the train split's locality prompts that are not probed
    (the calibration in tests/test_grace.py acts on them); with the stream's pool alone it
    is empty and the radius goes uncalibrated (factor 1). The runtime hands the probed
    prompts over."""
    from lifelong.methods.grace import Grace
    seen: list = []
    attach = Grace.attach
    monkeypatch.setattr(Grace, "attach", lambda self, lm, ctx: (seen.append((self, ctx)), attach(self, lm, ctx))[1])
    events = stream_events(n_edits=12, seed=5, retracts=0, queries=0)
    names = ["Ulrich", "Xanthe", "Yusuf", "Zora"]  # the stream's own locality prompts, and four others
    extra = [{"prompt": f"{n} was born in", "answer": "Paris"} for n in names]
    for i, e in enumerate(x for x in events if x["kind"] == "edit"):
        e["locality"] = list(e.get("locality", ())) + [extra[i % 4]]
    train = write_jsonl(events, tmp_path / "t.jsonl")
    grace = f'[[methods]]\nname = "grace"\nsettings = {{ eps = 50.0, claim_rate = 0.0, claim_pool = "{pool}" }}\n'
    toml = write_scenario(tmp_path / "s.toml", tiny[0], tiny[1], methods=grace,
                          schedule="checkpoint_every = 0\nlocality_sample = 300",
                          stream_extra=f'train_file = "{train}"')
    sc = load_scenario(toml)
    Runtime(sc, parse_stream(sc.stream.file), Store(tmp_path / "r.db")).run_all()
    method, ctx = seen[-1]
    book = method.book
    probed = {p["prompt"] for e in stream_events(n_edits=4) for p in e.get("locality", ())}
    assert probed and ctx.probed_prompts == probed and not ctx.unrelated_prompts
    assert set(ctx.calibration_prompts(1024, "stream+train")) == {x["prompt"] for x in extra}
    if pool == "stream":
        assert len(book.guard) == 0 and book.factor() == 1.0
    else:
        want = method._prompt_keys([x["prompt"] for x in extra]).double()
        assert torch.allclose(book.guard.keys, want, atol=1e-6)


@pytest.mark.parametrize("train", [False, True])
def test_a_run_whose_pool_is_empty_says_so_unless_a_train_split_fills_it(tiny, tmp_path, train):
    """Every locality prompt probed and no train split: the run notes that calibrating
    methods go uncalibrated, and what to set; with a train split it does not."""
    from lifelong.progress import Reporter
    notes: list[str] = []

    class Recording(Reporter):
        def note(self, text: str) -> None:
            notes.append(text)
    toml = write_scenario(tmp_path / "s.toml", tiny[0], tiny[1], methods='[[methods]]\nname = "none"\n',
                          schedule="checkpoint_every = 0\nlocality_sample = 300",
                          stream_extra=f'train_file = "{tiny[1]}"' if train else "")
    sc = load_scenario(toml)
    Runtime(sc, parse_stream(sc.stream.file), Store(tmp_path / "r.db"), Recording(quiet=True)).run_all()
    said = [n for n in notes if "uncalibrated" in n]
    if train:
        assert not said
    else:
        assert len(said) == 1 and "stream.train_file" in said[0] and "locality_sample" in said[0]
