"""Model health: perplexity on held-out text (scored parts only, padding never counted) and
the relative weight change of every parameter a method touched."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_tiny_model, tiny_tokenizer
from tinyrun import run_store, save_tiny_model, stream_events, write_jsonl, write_scenario

from lifelong.events import Probe
from lifelong.health import (
    file_texts,
    perplexity,
    probe_texts,
    snapshot,
    texts_for,
    weight_changes,
    world_texts,
)
from lifelong.methods import WeightDeltas
from lifelong.model import LM, load_model
from lifelong.probes import locality_pool, locality_sample
from lifelong.scoring import target_loss
from lifelong.stream import parse_stream
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


def test_probe_texts_are_a_seeded_sample_of_distinct_probes_in_stream_order(tmp_path):
    probes = [Probe(f"p{i} was born in", f"City{i % 7}") for i in range(40)]
    texts = probe_texts(probes + probes[:5], 10, seed=3)  # repeats count once
    assert texts == probe_texts(probes, 10, seed=3) and len(texts.pairs) == 10
    order = [(p.prompt, p.answer) for p in probes]
    assert sorted(texts.pairs, key=order.index) == list(texts.pairs)
    assert set(texts.pairs) < set(order) and texts != probe_texts(probes, 10, seed=4)
    assert len(probe_texts(probes, 500).pairs) == 40 and probe_texts([], 10) is None
    # the order of precedence: a corpus file, the model's world, the stream's probes
    corpus = tmp_path / "c.txt"
    corpus.write_text("Oslo is cold\n", encoding="utf-8")
    assert texts_for(tmp_path, str(corpus), 10, probes).pairs == (("", "Oslo is cold"),)
    assert texts_for(tmp_path, "", 10, probes) == probe_texts(probes, 10)
    assert texts_for(tmp_path, "", 0, probes) is None and texts_for(tmp_path, "", 10) is None


def _health_rows(tmp_path, method: str) -> list[dict]:
    model = save_tiny_model(tmp_path / "tiny")  # no world.json: the stream's probes are used
    stream = write_jsonl(stream_events(n_edits=8, reedits=0, retracts=0, queries=0),
                         tmp_path / "s.jsonl")
    sc = write_scenario(tmp_path / "s.toml", model, stream, methods=method,
                        schedule="checkpoint_every = 4\nlocality_sample = 3")
    store = run_store(sc, tmp_path / "s.db")
    (run,) = store.runs()
    return store.rows("checkpoints", run["run_id"])


def test_a_model_without_a_world_is_measured_on_the_runs_locality_probes(tmp_path):
    """An organism (or any model without world.json) gets health rows: the probed locality
    sample with its answers, against the pristine model; editing moves them."""
    ft = _health_rows(tmp_path / "ft", '[[methods]]\nname = "ft"\nsettings = { steps = 8, lr = 0.05 }\n')
    none = _health_rows(tmp_path / "none", '[[methods]]\nname = "none"\n')
    assert len(ft) >= 2 and all(c["health_source"].startswith("stream: locality") for c in ft + none)
    assert all(c["health_ppl"] == c["health_ppl_base"] for c in none)
    assert ft[0]["health_ppl_base"] == none[0]["health_ppl_base"]
    # the texts are the run's probed sample (seed 0), which no whole-stream method trains on
    sample = locality_sample(locality_pool(parse_stream(tmp_path / "ft" / "s.jsonl").events), 3, 0)
    lm = load_model(str(tmp_path / "ft" / "tiny"))
    assert none[0]["health_ppl_base"] == pytest.approx(perplexity(lm, probe_texts(sample, 200).pairs))
    assert all(c["health_ppl"] != c["health_ppl_base"] for c in ft)


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

    class SideMemory(WeightDeltas):  # a method holding its edit outside the weights
        def weight_deltas(self):
            return {"transformer.h.0.mlp.c_proj.weight": -base["transformer.h.0.mlp.c_proj.weight"]}

    side = weight_changes(lm, base, SideMemory())
    assert side["transformer.h.0.mlp.c_proj.weight"] == {"delta": 1.0, "norm": 0.0}

    class Named:  # a method that merely has a method of that name declares nothing
        weight_deltas = SideMemory.weight_deltas

    assert set(weight_changes(lm, base, Named())) == {name}


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("method", ["wise", "wise-faiss"])
def test_a_side_memory_is_measured_as_the_weight_change_it_serves(method, family):
    """WISE's side memories keep edits outside the model's weights: health measures the
    largest of them as the change it makes to the edited projection (before: nothing), in
    the parameter's own layout (GPT-2's Conv1D stores its weight transposed)."""
    from lifelong import layers
    from lifelong.methods import AttachContext, EditRequest, build_method
    lm = LM(make_tiny_model(family), tiny_tokenizer(), "tiny", "")
    base = snapshot(lm)
    m = build_method(method, {"steps": 4, "layer": 1}, 0)
    m.attach(lm, AttachContext(seed=0, unrelated_prompts=("Oslo is cold", "The sky is")))
    assert weight_changes(lm, base, m) == {}
    m.edit([EditRequest("e1", "Aldric Brenna works for", "Vantex", "f1", "Aldric Brenna")])
    m.edit([EditRequest("e2", "Caspar Delphine lives in", "Lisbon", "f2", "Caspar Delphine")])
    changes = weight_changes(lm, base, m)
    name = layers.module_path(lm.model, "layers.1.mlp.out") + ".weight"
    assert set(changes) == {name}  # the model's own weights are untouched
    w0 = base[name]
    served = m._served_deltas() if method == "wise-faiss" else [d for _, d, _ in m._candidates()]
    largest = max(float(d.norm()) for d in served) / float(w0.norm())
    assert changes[name]["delta"] == pytest.approx(largest, rel=1e-5) and largest > 0
    m.detach()


@pytest.mark.parametrize(("values", "scale"), [([1.0, 1.2, 30.0], "linear"), ([0.0, 1.0, 800.0], "symlog"),
                                               ([0.0, 0.0], "linear"), ([0.2, 0.5], "linear"), ([0.002, 0.5], "symlog")])
def test_the_health_figure_goes_logarithmic_where_values_span_orders_of_magnitude(values, scale):
    """A ratio of 1 beside one of 800 must not read as a flat line at 0; zeros stay drawable."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from lifelong.plots_health import _scale
    fig, ax = plt.subplots()
    _scale(ax, values)
    assert ax.get_yscale() == scale and (scale == "linear" or ax.get_ylim()[0] == 0)
    plt.close(fig)
