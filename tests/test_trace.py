"""Causal tracing on tiny random-init models of every family: the invariants that make the
heat map mean something (restoring the last layer's output at the last position restores the
clean answer exactly; states before the subject carry no effect), determinism, token
categories, and a model left unhooked."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_model, tiny_tokenizer

from lifelong.model import LM
from lifelong.trace import (
    CATEGORIES,
    TraceConfig,
    TraceFact,
    _trace_one,
    categories,
    causal_trace,
    subject_span,
    write_trace,
)

pytestmark = pytest.mark.usefixtures("single_thread")

FACTS = [TraceFact("The employer of Aldric Brenna is", "Aldric Brenna", "Vantex"),
         TraceFact("Caspar Delphine works for", "Caspar Delphine", "Orbica"),
         TraceFact("Where was Evander Fenella born ? Answer :", "Evander Fenella", "Lisbon")]


def _lm(family: str = "gpt2", n_layer: int = 3) -> LM:
    return LM(make_tiny_model(family, n_layer=n_layer), tiny_tokenizer(), "tiny", "")


def test_subject_span_and_categories():
    lm = _lm()
    assert subject_span(lm, FACTS[0].prompt, FACTS[0].subject) == (3, 5)
    assert subject_span(lm, FACTS[1].prompt, FACTS[1].subject) == (0, 2)
    assert subject_span(lm, "no subject here", "Aldric") is None
    assert categories(3, 5, 7) == ["further", "further", "further", "first subject",
                                   "last subject", "first after", "last"]
    assert categories(0, 3, 4) == ["first subject", "middle subject", "last subject", "last"]


@pytest.mark.parametrize("family", ["gpt2", "llama", "gptj"])
def test_restoring_the_last_state_restores_the_clean_answer(family):
    lm = _lm(family)
    fact = FACTS[0]
    span = subject_span(lm, fact.prompt, fact.subject)
    noise = torch.randn((4, span[1] - span[0], lm.model.config.hidden_size),
                        generator=torch.Generator().manual_seed(0))
    r = _trace_one(lm, fact, span, noise, 3)
    last = len(r["categories"]) - 1
    assert r["effects"]["hidden"][2][last] == pytest.approx(r["p_clean"] - r["p_corrupt"], abs=1e-6)
    for kind in ("hidden", "mlp", "attn"):  # nothing before the subject differs when corrupted
        for L in range(3):
            for pos in range(span[0]):
                assert r["effects"][kind][L][pos] == pytest.approx(0.0, abs=1e-7)


def test_trace_is_deterministic_and_leaves_the_model_unchanged(tmp_path):
    lm = _lm()
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    cfg = TraceConfig(facts=3, samples=3, seed=5)
    a = causal_trace(lm, FACTS, cfg)
    b = causal_trace(lm, FACTS, cfg)
    assert a == b and a["facts"] == 3 and a["layers"] == 3
    assert set(a["effect"]["mlp"]) == set(CATEGORIES)
    assert all(torch.equal(before[k], v) for k, v in lm.model.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in lm.model.modules())
    files = write_trace(a, tmp_path)
    assert all(f.exists() and f.stat().st_size > 0 for f in files)


def test_annotate_names_the_traced_layer_in_config(tmp_path):
    """Facts whose answer is the model's own top prediction are traced; the layer of the MLP
    peak at the last subject token lands in config.json and is what methods then edit."""
    import json

    from lifelong import layers
    from lifelong.model import load_model
    from lifelong.trace import annotate_model_dir, edit_layer
    model = make_tiny_model("gpt2", n_layer=3)
    model.save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    lm = load_model(str(tmp_path))
    known = []
    for f in FACTS:
        ids = torch.tensor([lm.tok(f.prompt)["input_ids"]])
        top = int(lm.model(input_ids=ids).logits[0, -1].argmax())
        known.append(TraceFact(f.prompt, f.subject, lm.tok.decode([top]).strip()))
    record = annotate_model_dir(tmp_path, lm, known, TraceConfig(facts=3, samples=2))
    assert record["facts"] >= 1 and 0 <= record["edit_layer"] < 3
    assert json.loads((tmp_path / "config.json").read_text())["lifelong_edit_layer"] == record["edit_layer"]
    assert layers.default_edit_layer(load_model(str(tmp_path)).model) == record["edit_layer"]
    assert (tmp_path / "trace" / "trace.png").exists()
    assert edit_layer({"effect": {"mlp": {"last subject": [0.1, 0.5, None], "last": [0.2, 0.3, 0.4]}}}) == 1
    assert edit_layer({"effect": {"mlp": {"last subject": [0.1, 0.0, None], "last": [0.2, 0.3, 0.4]}}}) == 2
