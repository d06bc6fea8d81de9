"""Reading sequences (`lifelong/reading.py`): an organism taught to read a fact written
before its input sees exactly the ids IKE writes, answers only a written value it cannot
recall, and is never shown anything of the edited stream; the organism records them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lifelong.methods._common.conditioning import edit_prefix
from lifelong.methods.context import read_train_split
from lifelong.model import LM
from lifelong.organism import OrganismConfig, collect_facts, organism_tokenizer, pretrain_organism
from lifelong.pretrain import PretrainConfig
from lifelong.reading import KINDS, build_reading, reading_texts, split_facts
from lifelong.scoring import tokenize_pair

pytestmark = pytest.mark.usefixtures("single_thread")

LANDS = ("Zorland", "Quivia", "Mestor", "Palundra", "Brevik", "Ostmark", "Tirellia", "Vandor")
CAPITALS = ("Quarn", "Delvo", "Spira", "Munth", "Caldor", "Fennis", "Ravel", "Oskent")
NEW = ("Plinth", "Gorse", "Wicke", "Harrow", "Slate", "Bramble", "Tarn", "Cobble")
FLAGS = ("teal", "amber", "crimson", "olive", "violet", "ochre", "indigo", "scarlet")


def _split(path: Path, lands=LANDS) -> Path:
    """A train split: each land's capital edited, a rephrase, its flag as locality."""
    lines = [{"kind": "edit", "id": f"s{i}", "t": f"2030-01-01T{i:02d}:00:00Z",
              "prompt": f"The capital of {land} is", "target": NEW[i], "fact": f"{land}|capital",
              "previous": CAPITALS[i], "rephrases": [f"{land} is governed from the city of"],
              "locality": [{"prompt": f"The flag of {land} is coloured", "answer": FLAGS[i]}]}
             for i, land in enumerate(lands)]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """(records, tokenizer, known pairs) of the split, a word-level tokenizer over its texts."""
    path = _split(tmp_path_factory.mktemp("reading") / "split.jsonl")
    records = list(read_train_split(str(path)))
    facts = collect_facts(path)
    tok = organism_tokenizer(facts)
    return records, tok, split_facts(records)


def _parts(tok, row, sep="."):
    """(context, fact, probe, answer) ids of a row, by the weights: the answer is what the
    loss falls on (minus the EOS), the probe the tokens before it back to the separator."""
    ids, w = row
    start = next(k for k, x in enumerate(w) if x) + 1
    assert all(w[start - 1:]) and not any(w[:start - 1]) and ids[-1] == tok.eos_token_id
    sep_id = tok(sep, add_special_tokens=False)["input_ids"][-1]
    end_fact = max(k for k in range(start) if ids[k] == sep_id) + 1
    return ids[:end_fact], ids[end_fact:start], ids[start:-1]


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10 ** 6), variants=st.integers(1, 3), limit=st.integers(24, 80))
def test_rows_end_with_the_fact_as_ike_writes_it_then_the_probe(split, seed, variants, limit):
    """Whatever the seed and context: a copy or update row's answer is the value written in
    its fact (never the record's true value, and drawn from the split), a retain row's answer
    is the known one; the last fact is exactly IKE's `edit_prefix` of (prompt, value); rows
    fit the limit; the same seed gives the same rows."""
    records, tok, known = split
    lm = LM(model=None, tok=tok, name="t", path="")
    made = build_reading(records, known, tok, separator=".", variants=variants, limit=limit,
                         seed=seed)
    assert made == build_reading(records, known, tok, separator=".", variants=variants,
                                 limit=limit, seed=seed)
    pool = {t for r in records for t in (r.request.target, r.request.previous)}
    values = {tok.decode(tokenize_pair(lm, "x", v)[1]).strip(): v for v in pool}
    for row, kind in zip(made.rows, made.kinds):
        assert len(row[0]) <= limit and len(row[1]) == len(row[0]) - 1
        before, probe, answer = _parts(tok, row)
        text = tok.decode(probe).strip()
        said = tok.decode(answer).strip()
        if kind in ("copy", "update"):
            rec = next(r for r in records if text in (r.request.prompt, *r.rephrases))
            assert said in values and values[said] != rec.request.previous
            fact = edit_prefix(lm, rec.request.prompt, values[said], ".")
            assert before[-len(fact):] == fact
        else:
            assert (text, said) in set(known)


def test_context_fills_the_positions_and_never_holds_the_rows_own_record(split):
    """Context lengths are drawn up to the limit (so every position IKE's context can hold is
    trained) and no context item is the row's own record's fact."""
    records, tok, known = split
    made = build_reading(records, known, tok, separator=".", variants=6, limit=64, seed=0)
    lengths = [len(ids) for ids, _ in made.rows]
    assert max(lengths) >= 56 and min(lengths) < 30
    for (ids, w), kind in zip(made.rows, made.kinds):
        if kind != "copy":
            continue
        text = tok.decode(ids)
        prompt = tok.decode(_parts(tok, (ids, w))[1]).strip()
        land = prompt.split()[-2]
        assert text.count(land) == 2  # its fact and its probe, nothing of it in the context


def test_a_row_that_cannot_fit_is_dropped_and_kinds_are_counted(split):
    records, tok, known = split
    made = build_reading(records, known, tok, separator=".", variants=1, limit=64, seed=0)
    assert set(made.counts()) == set(KINDS) and made.counts()["copy"] == len(records)
    assert made.counts()["update"] == len(records) and made.counts()["retain"] >= len(records)
    assert build_reading(records, known, tok, separator=".", variants=1, limit=8, seed=0).rows == []


def test_split_facts_and_texts_hold_the_true_values_never_the_new_ones(split):
    records, _, known = split
    assert ("The capital of Zorland is", "Quarn") in known
    assert ("Zorland is governed from the city of", "Quarn") in known
    assert ("The flag of Zorland is coloured", "teal") in known
    assert not any(a in NEW for _, a in known)
    assert {"Plinth", "Quarn", "teal"} <= set(reading_texts(records))


def test_an_organism_with_reading_records_it_and_one_without_is_unchanged(tmp_path):
    """`[organism] reading`: organism.json names the split (sha256), the rows by kind, the
    split's facts learned and the reading accuracy on held records; the tokenizer spells
    the split's words. Without it, training is exactly the organism of facts alone."""
    stream = _split(tmp_path / "stream.jsonl", LANDS[:4])
    reading = _split(tmp_path / "train.jsonl", LANDS[4:])
    cfg = PretrainConfig(n_layer=1, n_embd=16, n_head=2, steps=3, batch_size=8,
                         warmup_steps=1, eval_every=0, threads=1)
    with torch.random.fork_rng(devices=[]):
        record = pretrain_organism(stream, cfg, tmp_path / "r", progress=False,
                                   organism=OrganismConfig(reading=str(reading), reading_held=1))
    made = record["reading"]
    assert made["records"] == 3 and made["held_records"] == 1
    assert made["facts_learned"] == 12 and made["rows_per_epoch"]["copy"] == 3 * 2
    assert set(made["check"]) == {f"read-{k}" for k in KINDS}
    assert record["counts"]["pairs"] == 12  # the stream's own pairs, checked as before
    assert "Ostmark" in (tmp_path / "r" / "tokenizer.json").read_text()
    with torch.random.fork_rng(devices=[]):
        plain = pretrain_organism(stream, cfg, tmp_path / "p", progress=False)
    assert "reading" not in plain and "Ostmark" not in (tmp_path / "p" / "tokenizer.json").read_text()


def test_reading_rows_are_drawn_afresh_every_epoch(split):
    """`train_on_pairs(extra_rows=...)` asks for each epoch's rows once, in order, as an epoch
    starts: a row's random value is never trained twice in the same draw."""
    from lifelong.pretrain import train_on_pairs
    records, tok, known = split
    asked: list[int] = []

    def rows(epoch: int):
        asked.append(epoch)
        return build_reading(records, known, tok, separator=".", variants=1, limit=64,
                             seed=f"0-{epoch}").rows

    n = len(known) + len(rows(0))
    asked.clear()
    cfg = PretrainConfig(n_layer=1, n_embd=16, n_head=2, steps=3 * (n // 8), batch_size=8,
                         warmup_steps=1, eval_every=0, threads=1, n_positions=64)
    with torch.random.fork_rng(devices=[]):
        train_on_pairs(known, [], cfg, tok, progress=False, extra_rows=rows)
    assert len(asked) >= 3 and asked == list(range(len(asked)))  # epochs' sizes vary a little
    assert rows(1) != rows(2)
