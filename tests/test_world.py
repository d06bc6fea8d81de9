"""The synthetic world: determinism, persistence, held-out, split, two-hop and timeline
invariants, the BPE tokenizer, and a tiny pretraining run that writes a loadable,
reproducible model directory."""

from __future__ import annotations

import functools
from collections import defaultdict

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from lifelong.config import from_mapping
from lifelong.errors import ConfigError
from lifelong.pretrain import PretrainConfig, lr_at, pretrain, train, world_tokenizer
from lifelong.world import World, WorldConfig
from lifelong.worldtext import CHANGING, RELATIONS, TWO_HOP

pytestmark = pytest.mark.usefixtures("single_thread")


@functools.lru_cache(maxsize=4)
def world_of(n_people: int = 60, seed: int = 0) -> World:
    return World.generate(WorldConfig(n_people=n_people, seed=seed))


@st.composite
def world_configs(draw) -> WorldConfig:
    return WorldConfig(seed=draw(st.integers(0, 10_000)), n_people=draw(st.integers(4, 80)),
                       heldout_per_fact=draw(st.integers(0, 3)),
                       dev_share=draw(st.sampled_from((0.1, 0.4, 0.9))))


def test_same_seed_same_json_different_seed_differs():
    assert world_of(80).to_json() == World.generate(WorldConfig(n_people=80)).to_json()
    assert World.generate(WorldConfig(n_people=80, seed=1)).to_json() != world_of(80).to_json()


def test_default_world_meets_the_testbed_sizes():
    """>= 1500 entities, >= 8 relations, >= a third multi-word values, and room in the test
    split for a 10,000-edit stream (see streams/README.md)."""
    world = World.generate(WorldConfig())
    s = world.summary()
    assert s["entities"] >= 1500 and s["relations"] >= 8
    assert s["multi_word_values"] >= s["facts"] / 3
    test = [f for f in world if world.split_of(f) == "test"]
    assert sum(len(f.changes) for f in test) >= 10_000
    assert len(world.stable_facts("dev")) >= 600 and len(world.stable_facts("test")) >= 600


def test_json_round_trip(tmp_path):
    world = world_of(40, 3)
    world.save(tmp_path / "world.json")
    back = World.from_json(tmp_path / "world.json")
    assert back.to_json() == world.to_json()
    assert back.facts == world.facts and back.config == world.config


@settings(max_examples=20, deadline=None)
@given(world_configs())
def test_heldout_invariants(cfg):
    world = World.generate(cfg)
    trained_with = defaultdict(set)
    for fact in world:
        trained = world.trained_templates(fact)
        assert trained, "every fact keeps a trained template"
        assert len(fact.heldout) == cfg.heldout_per_fact
        for t in trained:
            trained_with[(fact.relation, t)].add(fact.key)
    for rel, spec in RELATIONS.items():
        if spec.subject == "person" and cfg.n_people >= len(spec.templates):
            for t in range(len(spec.templates)):
                assert trained_with[(rel, t)], f"template {t} of {rel} is never trained"
    trained_prompts = {world.prompt(f, t) for f, t in world.trained_pairs()}
    assert not trained_prompts & {p for p, _, _ in world.ood_pairs()}


@settings(max_examples=20, deadline=None)
@given(world_configs())
def test_timeline_names_splits_and_mentors(cfg):
    world = World.generate(cfg)
    names = [e["name"] for e in world.entities]
    assert len(set(names)) == len(names)
    values = {v for spec in RELATIONS.values() for v in spec.values}
    assert not values & set(names)
    people = [e for e in world.entities if e["type"] == "person"]
    assert {e["split"] for e in people} <= {"dev", "test"}
    for fact in world:
        value, last_t = fact.value, ""
        assert fact.value in world.objects(fact.relation)
        assert not fact.changes or fact.relation in CHANGING
        for change in fact.changes:
            assert change.old == value and change.new != change.old
            assert change.t > last_t  # ISO-8601 strings of one format sort by time
            value, last_t = change.new, change.t
        if fact.relation == "mentor":
            for v in [fact.value] + [c.new for c in fact.changes]:
                mentor = world.entity_named(v)
                assert mentor["id"] != fact.entity
                assert not world.fact(f"{mentor['id']}|birth_city").changes


def test_two_hop_answers_follow_the_first_hop():
    world = world_of()
    fact = next(f for f in world if f.relation == "employer" and f.changes)
    for value in (fact.value, fact.changes[0].new):
        hops = world.two_hop(fact, value)
        company = world.entity_named(value)
        hq = world.fact(f"{company['id']}|headquarters").value
        assert len(hops) == len(TWO_HOP[0].templates) and {h["answer"] for h in hops} == {hq}


def test_bpe_tokenizer_round_trips_and_splits_multi_word_values():
    world = world_of()
    tok = world_tokenizer(world, 600)
    again = world_tokenizer(world, 600)
    assert tok.get_vocab() == again.get_vocab()
    for fact in world.facts[:200]:
        text = world.prompt(fact, 0) + " " + fact.value
        assert tok.decode(tok(text)["input_ids"]) == text
    assert all(len(tok(" " + v)["input_ids"]) >= 2 for v in ("New Orleans", "the Halvern Group"))


def test_bad_configs_are_rejected():
    with pytest.raises(ConfigError):
        from_mapping(WorldConfig, {"n_people": 2})
    with pytest.raises(ConfigError):
        from_mapping(WorldConfig, {"heldout_per_fact": 8})
    with pytest.raises(ConfigError):
        from_mapping(WorldConfig, {"n_entities": 5})


def test_lr_schedule_warms_up_then_decays():
    cfg = PretrainConfig(steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    lrs = [lr_at(s, cfg) for s in range(100)]
    assert lrs[0] < lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] >= 0.1


def _tiny_pretrain(out) -> dict:
    cfg = PretrainConfig(n_layer=2, n_embd=32, n_head=2, steps=20, batch_size=16, vocab_size=400,
                         warmup_steps=2, eval_every=10, eval_sample=20, threads=1,
                         bucket_by_length=True, trace_facts=2, trace_samples=2)
    return pretrain(WorldConfig(n_people=12), cfg, out, progress=False, check_sample=30)


def test_tiny_pretrain_writes_a_loadable_deterministic_model(tmp_path):
    first = _tiny_pretrain(tmp_path / "a")
    _tiny_pretrain(tmp_path / "b")
    for name in ("model.safetensors", "config.json", "tokenizer.json", "world.json",
                 "pretrain.json"):
        assert (tmp_path / "a" / name).exists(), name
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "a", local_files_only=True)
    tok = AutoTokenizer.from_pretrained(tmp_path / "a", local_files_only=True)
    world = World.from_json(tmp_path / "a" / "world.json")
    ids = tok(world.prompt(world.facts[0], 0), return_tensors="pt")["input_ids"]
    assert model(input_ids=ids).logits.shape[-1] == len(tok)
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert first["steps_done"] == 20 and not first["interrupted"]
    assert set(first["check"]) >= {"trained", "heldout", "ood", "two_hop", "per_relation"}


def test_ctrl_c_stops_training_cleanly():
    """A KeyboardInterrupt mid-training (here raised by the progress logger at the first
    monitoring evaluation) returns the partial model, marked interrupted."""
    world = world_of(8)
    cfg = PretrainConfig(n_layer=1, n_embd=16, n_head=2, steps=50, batch_size=4, eval_every=5,
                         eval_sample=4, threads=1, vocab_size=400)
    lines: list[str] = []

    def interrupt_once(line: str) -> None:
        lines.append(line)
        if len(lines) == 1:
            raise KeyboardInterrupt

    model, info = train(world, cfg, world_tokenizer(world, 400), progress=True, log=interrupt_once)
    assert info["interrupted"] and info["steps_done"] < cfg.steps
    assert "interrupted" in lines[-1] and not model.training
