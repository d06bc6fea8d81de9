"""Scoring computes the output projection only where a figure reads it (`forward_logits`'s
`keep`): the last position when generating, the positions that predict target tokens when
teacher-forcing or measuring perplexity. The kept logits are the whole forward's up to float
rounding (a matmul over fewer rows may round its last bit otherwise), so every token figure
is what scoring every position gives, on every family, and likelihoods agree to rounding."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from conftest import FAMILIES, make_tiny_model, tiny_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

from lifelong import layers
from lifelong.bench_scoring import bench_scoring, every_position
from lifelong.health import perplexity
from lifelong.model import LM
from lifelong.scoring import forward_logits, left_pad, score_answers

pytestmark = pytest.mark.usefixtures("single_thread")

STREAM = Path(__file__).resolve().parent.parent / "streams" / "quickstart.jsonl"

WORDS = ("Aldric", "works", "for", "Zentro", "Brenna", "was", "born", "in", "Kyoto", "plays",
         "rugby", "speaks", "Welsh", "the", "violin")


@pytest.mark.parametrize("family", FAMILIES)
def test_kept_logits_are_the_whole_forwards_last_positions(family):
    lm = LM(make_tiny_model(family), tiny_tokenizer(), family, "")
    ids, mask = left_pad([[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]], 0)
    end = torch.full((3,), ids.shape[1])
    full = forward_logits(lm, ids, mask, end)
    for keep in (1, 2, ids.shape[1]):
        kept = forward_logits(lm, ids, mask, end, keep=keep)
        assert kept.shape == (3, keep, full.shape[-1])
        torch.testing.assert_close(kept, full[:, -keep:], rtol=0, atol=1e-6)


prompts = st.lists(st.sampled_from(WORDS), min_size=1, max_size=7).map(" ".join)
answers = st.lists(st.sampled_from(WORDS), min_size=1, max_size=3).map(" ".join)


@settings(max_examples=25, deadline=None)
@given(st.sampled_from(FAMILIES), st.lists(st.tuples(prompts, st.lists(answers, min_size=1,
                                                                         max_size=2)),
                                           min_size=1, max_size=6))
def test_every_figure_equals_scoring_every_position(family, items):
    lm = LM(make_tiny_model(family), tiny_tokenizer(), family, "")
    twin = every_position(lm)
    ps, ans = [p for p, _ in items], [a for _, a in items]
    for kept, every in zip(score_answers(lm, ps, ans), score_answers(twin, ps, ans)):
        assert dataclasses.replace(kept, nll=0.0) == dataclasses.replace(every, nll=0.0)
        assert math.isclose(kept.nll, every.nll, rel_tol=1e-5)
    pairs = [(p, a[0]) for p, a in items]
    assert math.isclose(perplexity(lm, pairs), perplexity(twin, pairs), rel_tol=1e-5)


def test_the_output_projection_sees_only_the_positions_a_figure_reads():
    """A 7-word prompt with a one-word answer: generation and teacher forcing read two
    positions at most; before, the projection ran over all eight."""
    lm = LM(make_tiny_model("llama"), tiny_tokenizer(), "llama", "")
    seen: list[int] = []
    head = layers.resolve(lm.model, "lm_head")
    handle = head.register_forward_hook(lambda _m, args, _out: seen.append(args[0].shape[1]))
    try:
        score_answers(lm, ["Aldric was born in the violin for"], [("Kyoto",)])
        perplexity(lm, [("Aldric was born in the violin for", "Kyoto")])
    finally:
        handle.remove()
    assert seen and max(seen) <= 2


def test_bench_scoring_times_both_ways_and_says_the_figures_agree():
    out = bench_scoring(None, str(STREAM), n=20, rounds=2, echo=lambda *_: None)
    assert out["prompts"] == 20 and out["locality_pairs"] > 0
    assert out["token_figures_equal"] and out["perplexity_equal_to_rounding"]
    assert set(out["ms"]) == {"kept", "every"}
    assert all(out["ms"][w][k]["p50"] > 0 for w in out["ms"] for k in ("score", "perplexity"))
