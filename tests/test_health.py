"""Model health: perplexity on held-out text (scored parts only, padding never counted) and
the relative weight change of every parameter a method touched."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_tiny_model, tiny_tokenizer

from lifelong.health import file_texts, perplexity, snapshot, weight_changes, world_texts
from lifelong.model import LM
from lifelong.scoring import target_loss
from lifelong.world import World, WorldConfig

pytestmark = pytest.mark.usefixtures("single_thread")


def _lm() -> LM:
    return LM(make_tiny_model("gpt2"), tiny_tokenizer(), "tiny", "")


def test_perplexity_is_the_mean_target_nll_and_ignores_batching():
    lm = _lm()
    pairs = [("Aldric Brenna works for", "Vantex"), ("The employer of Caspar Delphine is", "Orbica"),
             ("Where was Evander Fenella born ? Answer :", "Lisbon Oslo")]
    ppl = perplexity(lm, pairs, batch_size=2)
    assert ppl == pytest.approx(perplexity(lm, pairs, batch_size=64), rel=1e-5)
    # one-token answers: the perplexity of each alone is exp(its target NLL)
    single = perplexity(lm, pairs[:1])
    with torch.no_grad():
        assert math.log(single) == pytest.approx(float(target_loss(lm, [pairs[0][0]], [pairs[0][1]])),
                                                 rel=1e-5)


def test_full_text_mode_and_a_corpus_file(tmp_path):
    lm = _lm()
    path = tmp_path / "corpus.txt"
    path.write_text("Aldric Brenna works for Vantex\n\n  \nOslo is cold\n", encoding="utf-8")
    texts = file_texts(path, 10)
    assert texts.pairs == (("", "Aldric Brenna works for Vantex"), ("", "Oslo is cold"))
    assert perplexity(lm, texts.pairs) == pytest.approx(
        perplexity(lm, [("Aldric", "Brenna works for Vantex"), ("Oslo", "is cold")]), rel=1e-5)


def test_world_texts_are_never_trained_never_edited():
    world = World.generate(WorldConfig(n_people=60))
    texts = world_texts(world, 50, seed=1)
    trained = {world.prompt(f, t) for f, t in world.trained_pairs()}
    stable = {f.value for f in world.stable_facts()}
    assert len(texts.pairs) == 50 and texts == world_texts(world, 50, seed=1)
    assert all(p not in trained and v in stable for p, v in texts.pairs)


def test_weight_changes_name_exactly_the_changed_parameters():
    lm = _lm()
    base = snapshot(lm)
    assert weight_changes(lm, base) == {}
    name = "transformer.h.1.mlp.c_proj.weight"
    with torch.no_grad():
        dict(lm.model.named_parameters())[name].mul_(2.0)
    changes = weight_changes(lm, base)
    assert set(changes) == {name}
    assert changes[name]["delta"] == pytest.approx(1.0, rel=1e-5)
    assert changes[name]["norm"] == pytest.approx(2.0, rel=1e-5)

    class SideMemory:  # a method holding its edit outside the weights
        def weight_deltas(self):
            return {"transformer.h.0.mlp.c_proj.weight": -base["transformer.h.0.mlp.c_proj.weight"]}

    side = weight_changes(lm, base, SideMemory())
    assert side["transformer.h.0.mlp.c_proj.weight"] == {"delta": 1.0, "norm": 0.0}
