"""The synthetic world: determinism, persistence, held-out and timeline invariants, and a
tiny pretraining run that writes a loadable, reproducible model directory."""

from __future__ import annotations

from collections import defaultdict

import pytest
import torch
from hypothesis import given, settings, strategies as st
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from lifelong.config import from_mapping
from lifelong.errors import ConfigError
from lifelong.pretrain import PretrainConfig, lr_at, pretrain, train
from lifelong.tokenizer import UNK, split_words
from lifelong.world import RELATIONS, World, WorldConfig

pytestmark = pytest.mark.usefixtures("single_thread")

@st.composite
def world_configs(draw) -> WorldConfig:
    n_templates = draw(st.integers(2, 5))
    return WorldConfig(
        seed=draw(st.integers(0, 10_000)), n_entities=draw(st.integers(5, 60)),
        n_templates=n_templates, name_tokens=draw(st.sampled_from((1, 2))),
        heldout_per_fact=draw(st.integers(0, n_templates - 1)),
        relations=tuple(draw(st.lists(st.sampled_from(tuple(RELATIONS)), min_size=1,
                                      max_size=6, unique=True))))


def test_same_seed_same_json_different_seed_differs():
    cfg = WorldConfig(n_entities=80)
    assert World.generate(cfg).to_json() == World.generate(cfg).to_json()
    other = WorldConfig(n_entities=80, seed=1)
    assert World.generate(other).to_json() != World.generate(cfg).to_json()


def test_default_world_is_big_enough_for_the_shipped_streams():
    world = World.generate(WorldConfig())
    assert len(world.entities) >= 1000 and len(world.relations) >= 6
    changing = sum(1 for f in world if f.changes)
    assert changing >= 3000 and len(world.stable_facts()) >= 1000


def test_json_round_trip(tmp_path):
    world = World.generate(WorldConfig(n_entities=40, seed=3))
    world.save(tmp_path / "world.json")
    back = World.from_json(tmp_path / "world.json")
    assert back.to_json() == world.to_json()
    assert back.facts == world.facts and back.config == world.config


@settings(max_examples=25, deadline=None)
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
    for rel in cfg.relations:
        for t in range(cfg.n_templates):
            assert trained_with[(rel, t)], f"template {t} of {rel} is never trained"
    n_pairs = len(world.trained_pairs()) + len(world.heldout_pairs())
    assert n_pairs == len(world) * cfg.n_templates


@settings(max_examples=25, deadline=None)
@given(world_configs())
def test_timeline_and_names(cfg):
    world = World.generate(cfg)
    names = [e["name"] for e in world.entities]
    assert len(set(names)) == len(names)
    assert all(len(n.split()) == cfg.name_tokens for n in names)
    for fact in world:
        value, last_t = fact.value, ""
        assert fact.value in world.objects(fact.relation)
        for change in fact.changes:
            assert change.old == value and change.new != change.old
            assert change.t > last_t  # ISO-8601 strings of one format sort by time
            value, last_t = change.new, change.t


def test_every_world_word_is_in_the_vocabulary():
    world = World.generate(WorldConfig(n_entities=30))
    tok = world.tokenizer()
    for fact in world:
        for t in range(len(world.templates(fact.relation))):
            ids = tok(world.prompt(fact, t) + " " + fact.value)["input_ids"]
            assert tok.convert_tokens_to_ids(UNK) not in ids
    for rel in world.relations:
        for obj in world.objects(rel):
            assert len(split_words(obj)) == 1 and tok.convert_tokens_to_ids(obj) != tok.unk_token_id


def test_bad_configs_are_rejected():
    with pytest.raises(ConfigError):
        from_mapping(WorldConfig, {"relations": ["employer", "weather"]})
    with pytest.raises(ConfigError):
        from_mapping(WorldConfig, {"heldout_per_fact": 5, "n_templates": 5})
    with pytest.raises(ConfigError):
        from_mapping(WorldConfig, {"n_entitis": 5})


def test_lr_schedule_warms_up_then_decays():
    cfg = PretrainConfig(steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    lrs = [lr_at(s, cfg) for s in range(100)]
    assert lrs[0] < lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] >= 0.1


def _tiny_pretrain(out) -> dict:
    world_cfg = WorldConfig(n_entities=12, relations=("employer", "colour"), n_templates=3)
    cfg = PretrainConfig(n_layer=1, n_embd=32, n_head=2, steps=20, batch_size=16,
                         warmup_steps=2, eval_every=10, eval_sample=20, threads=1)
    return pretrain(world_cfg, cfg, out, progress=False)


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
    assert set(first["check"]) >= {"trained", "heldout", "per_relation"}


def test_ctrl_c_stops_training_cleanly():
    """A KeyboardInterrupt mid-training (here raised by the progress logger at the first
    monitoring evaluation) returns the partial model, marked interrupted."""
    world = World.generate(WorldConfig(n_entities=8, relations=("sport",), n_templates=2))
    cfg = PretrainConfig(n_layer=1, n_embd=16, n_head=2, steps=50, batch_size=4, eval_every=5,
                         eval_sample=4, threads=1)

    lines: list[str] = []

    def interrupt_once(line: str) -> None:
        lines.append(line)
        if len(lines) == 1:
            raise KeyboardInterrupt

    model, info = train(world, cfg, world.tokenizer(), progress=True, log=interrupt_once)
    assert info["interrupted"] and info["steps_done"] < cfg.steps
    assert "interrupted" in lines[-1] and not model.training
