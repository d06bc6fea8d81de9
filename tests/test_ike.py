"""IKE: a served row's logits are the base model's own on the demonstrations + the row, built
here by hand (retrieval re-done by hand from the block's output); rows out of scope are
bit-identical to the bare model; the nearest demonstration is written last and those that
do not fit the context are dropped farthest first; exact retraction; state round trip and
detach; re-edits of the same prompt; teacher-forced scoring and generation condition a row
alike. Tiny random-init GPT-2 and LLaMA models; nothing is trained."""

from __future__ import annotations

import io

import pytest
import torch
from conftest import make_tiny_model, tiny_tokenizer

from lifelong import layers
from lifelong.config import from_mapping
from lifelong.methods import AttachContext, EditRequest, UnknownEdit
from lifelong.methods.context import TrainRecord
from lifelong.methods.ike import Ike, IkeConfig
from lifelong.methods.ike.prompt import fitting, written
from lifelong.model import LM
from lifelong.nethook import Trace
from lifelong.scoring import encode_pairs, forward_logits, score_pairs, tokenize_pair

pytestmark = pytest.mark.usefixtures("single_thread")

EDITS = [EditRequest("e1", "Aldric works for", "Zentro", "Aldric|employer", "Aldric"),
         EditRequest("e2", "The favourite colour of Brenna is", "teal", "Brenna|colour", "Brenna"),
         EditRequest("e3", "Caspar speaks", "Welsh", "Caspar|language", "Caspar")]
#: prompts far from every edit's key on these random-init models (a prompt ending like an
#: edit's, "The mother tongue of Nolan is", is not: its key is near e2's)
OUT = ["Lisbon is", "Yes no maybe also", "Nolan plays the"]
#: the standardisation's texts (the context's unrelated prompts)
UNRELATED = ("Delphine was born in", "Evander plays the", "The instrument of Fenella is the",
             "Gideon lives near the", "Which colour does Hestia prefer ?", "Ignatius owns a")
#: a narrow scope: only (near) copies of an edit's prompt are conditioned
NARROW = {"scope": "radius", "radius": 0.1}


def tiny(family: str = "gpt2", **kw) -> LM:
    return LM(make_tiny_model(family, n_layer=2, width=32, **kw), tiny_tokenizer(), "tiny", "")


def make(lm: LM, unrelated=UNRELATED, **settings) -> Ike:
    method = Ike(from_mapping(IkeConfig, settings), seed=0)
    method.attach(lm, AttachContext(seed=0, unrelated_prompts=tuple(unrelated)))
    return method


def edited(lm: LM, edits=EDITS, **settings) -> Ike:
    m = make(lm, **settings)
    for r in edits:
        m.edit([r])
    return m


@torch.no_grad()
def logits(lm: LM, prompts: list[str], target: str = "Zentro") -> torch.Tensor:
    ids, mask, end, _, _ = encode_pairs(lm, prompts, [target] * len(prompts))
    return forward_logits(lm, ids, mask, end)


# ---- by hand: retrieval and the conditioned input, on the bare model -------------------------
@torch.no_grad()
def hand_key(m: Ike, prompt: str) -> torch.Tensor:
    """The last block's output at the prompt's last token, standardised, from a bare forward."""
    with m.bypassed(), Trace(layers.resolve(m.lm.model, f"layers.{m.layer}")) as tr:
        m.lm.model(input_ids=torch.tensor([m.lm.tok(prompt, add_special_tokens=False)["input_ids"]]))
    return (tr.output[0, -1].float() - m.norm.mu) / m.norm.sd


def by_distance(m: Ike, prompt: str, edits=EDITS) -> list[EditRequest]:
    """`edits` (all served) ordered nearest first to `prompt`."""
    q = hand_key(m, prompt)
    return sorted(edits, key=lambda r: float((hand_key(m, r.prompt) - q).norm()))


def demo_tokens(lm: LM, demos: list[EditRequest]) -> list[int]:
    """`demos` written in the order given: prompt, target, "." each."""
    dot = lm.tok(".", add_special_tokens=False)["input_ids"]
    out: list[int] = []
    for d in demos:
        p, t = tokenize_pair(lm, d.prompt, d.target)
        out += p + t + dot
    return out


@torch.no_grad()
def by_hand(m: Ike, demos: list[EditRequest], prompt: str, target: str = "Zentro") -> torch.Tensor:
    """The bare model's logits at the tokens of `prompt` + `target`, run alone after `demos`
    (written in the order given)."""
    pre = demo_tokens(m.lm, demos)
    p, t = tokenize_pair(m.lm, prompt, target)
    ids = torch.tensor([pre + p + t])
    with m.bypassed():
        out = forward_logits(m.lm, ids, torch.ones_like(ids), torch.tensor([len(pre) + len(p)]))
    return out[0, len(pre):]


def written_for(m: Ike, prompt: str, k: int, edits=EDITS) -> list[EditRequest]:
    """The k nearest edits, farthest first (the nearest last, next to the query)."""
    return by_distance(m, prompt, edits)[:k][::-1]


# ---- (1) a served row is the base model on the conditioned input -----------------------------
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_served_row_is_the_base_model_on_demonstrations_and_the_row(family):
    lm = tiny(family)
    bare = logits(lm, [EDITS[0].prompt] + OUT)
    unrelated = logits(lm, [OUT[0]])
    m = edited(lm, demonstrations=2)
    assert [m.memory_of(r.edit_id) for r in EDITS] == [0, 1, 2]
    for prompt in (EDITS[0].prompt, EDITS[1].prompt, OUT[2]):
        demos = written_for(m, prompt, 2)
        assert demos[-1] is by_distance(m, prompt)[0]
        alone = logits(lm, [prompt])[0]  # a batch of one: no padding anywhere, exact
        assert torch.equal(alone, by_hand(m, demos, prompt))
        assert not torch.allclose(alone, by_hand(m, demos[::-1], prompt), atol=1e-4)  # order
    assert m.route([EDITS[0].prompt]) == [0]  # its own edit is the nearest
    # a mixed, left-padded batch; scope "all" (the paper's): unrelated prompts are conditioned
    prompts = [OUT[0], EDITS[2].prompt, OUT[1], EDITS[0].prompt]
    served = logits(lm, prompts)
    ids, mask, _, _, _ = encode_pairs(lm, prompts, ["Zentro"] * len(prompts))
    assert None not in m.route(prompts)
    for i, prompt in enumerate(prompts):
        real = mask[i].bool()
        assert torch.allclose(served[i, real], by_hand(m, written_for(m, prompt, 2), prompt),
                              atol=1e-5)
    assert not torch.allclose(logits(lm, [OUT[0]]), unrelated, atol=1e-3)  # locality pays
    with m.bypassed():
        assert torch.equal(logits(lm, [EDITS[0].prompt] + OUT), bare)


# ---- (2) rows out of scope are the base model's, bit for bit -------------------------------
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_with_scope_radius_rows_out_of_scope_are_bit_identical(family):
    lm = tiny(family)
    prompts = [OUT[0], EDITS[0].prompt, OUT[2], EDITS[1].prompt, OUT[1]]
    bare = logits(lm, prompts)
    m = edited(lm, **NARROW)
    assert m.route(prompts) == [None, 0, None, 1, None]
    served = logits(lm, prompts)
    ids, mask, _, _, _ = encode_pairs(lm, prompts, ["Zentro"] * len(prompts))
    for i in (0, 2, 4):
        assert torch.equal(served[i], bare[i])  # padding included
    for i in (1, 3):
        real = mask[i].bool()
        assert torch.equal(served[i, ~real], bare[i, ~real])  # padding left as it was
        demos = written_for(m, prompts[i], 32)  # k = 32 > 3 edits: all of them
        assert torch.allclose(served[i, real], by_hand(m, demos, prompts[i]), atol=1e-5)
        assert not torch.allclose(served[i, real], bare[i, real], atol=1e-3)
    wide = edited(tiny(family), scope="radius", radius=100.0)
    assert None not in wide.route(OUT)


# ---- (3) which demonstrations, in which order --------------------------------------------------
def test_demonstrations_are_the_nearest_ones_that_fit_dropped_farthest_first():
    assert fitting([[1, 2], [3, 4, 5], [6]], row_len=3, limit=8) == 2
    assert fitting([[1, 2, 3], [4, 5, 6, 7], [8]], row_len=3, limit=8) == 1  # never skips one
    assert fitting([[1, 2]], row_len=3, limit=4) == 0
    assert fitting([[1, 2], [3]], row_len=99, limit=None) == 2
    assert written([[1, 2], [3], [4, 5]]) == [4, 5, 3, 1, 2]  # the nearest last


@pytest.mark.parametrize("k", [3, 1])
def test_a_short_context_keeps_the_nearest_demonstrations_and_never_cuts_the_row(k):
    """LLaMA's weights do not depend on its context length (rotary positions), so models of
    every length below are the same model."""
    query, target = EDITS[0].prompt, "Zentro"
    order = by_distance(make(tiny("llama")), query)
    assert order[0] is EDITS[0]
    row = sum(map(len, tokenize_pair(tiny("llama"), query, target)))
    size = [len(demo_tokens(tiny("llama"), [d])) for d in order]
    two = row + size[0] + size[1]  # room for the two nearest
    for limit, kept in ((two + size[2], 3), (two + size[2] - 1, 2), (two, 2), (two - 1, 1),
                        (row + size[0], 1)):
        lm = tiny("llama", max_positions=limit)
        m = edited(lm, demonstrations=k)
        assert m.limit == limit
        got = logits(lm, [query], target)[0]
        demos = order[:min(k, kept)][::-1]
        assert len(demo_tokens(lm, demos)) + row <= limit
        assert torch.equal(got, by_hand(m, demos, query, target))
    prompt = len(tokenize_pair(tiny("llama"), query, target)[0])
    for limit, route in ((prompt + size[0] - 1, None), (row + size[0] - 1, 0)):
        lm = tiny("llama", max_positions=limit)  # not even the nearest fits with the row
        bare = logits(lm, [query], target)
        m = edited(lm, demonstrations=k)
        assert torch.equal(logits(lm, [query], target), bare)
        assert m.route([query]) == [route]  # `route` fits them to the prompt alone


# ---- (4) retraction -----------------------------------------------------------------------------
def test_retraction_is_as_if_never_edited():
    lm, lm2 = tiny(), tiny()
    prompts = [r.prompt for r in EDITS] + OUT
    m = edited(lm, demonstrations=2)
    with_e2 = logits(lm, prompts)
    m.retract("e2")
    assert m.memory_of("e2") is None and m.memory_of("e3") == 1 and len(m.memory) == 2
    never = edited(lm2, [EDITS[0], EDITS[2]], demonstrations=2)
    assert torch.equal(logits(lm, prompts), logits(lm2, prompts))
    assert not torch.equal(with_e2, logits(lm2, prompts))
    assert m.route(prompts) == never.route(prompts)
    assert m.footprint() == never.footprint()
    with pytest.raises(UnknownEdit, match="e2"):
        m.retract("e2")
    with pytest.raises(UnknownEdit, match="nope"):
        m.retract("nope")
    m.retract("e1")
    m.retract("e3")
    assert torch.equal(logits(lm, prompts), logits(tiny(), prompts))
    assert m.route(prompts) == [None] * len(prompts)


# ---- (5) state and detach --------------------------------------------------------------------
def test_state_round_trip_and_detach_are_exact():
    lm = tiny()
    prompts = [r.prompt for r in EDITS] + OUT
    base = logits(lm, prompts)
    m = edited(lm, demonstrations=2)
    expected = logits(lm, prompts)
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    state = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    lm2 = tiny()
    m2 = make(lm2, unrelated=OUT, demonstrations=2)  # other statistics until the state loads
    assert not torch.equal(m2.norm.mu, m.norm.mu)
    m2.load_state_dict(state)
    assert torch.equal(logits(lm2, prompts), expected)
    assert [m2.memory_of(r.edit_id) for r in EDITS] == [0, 1, 2]
    assert m2.footprint() == m.footprint() > m.memory.nbytes() > 0
    with pytest.raises(ValueError, match="block"):
        make(tiny(), layer=0).load_state_dict(state)
    m.detach()
    assert torch.equal(logits(lm, prompts), base)


# ---- (6) re-edits -------------------------------------------------------------------------------
def test_a_reedit_of_the_same_prompt_wins_and_its_retraction_restores_the_older():
    lm = tiny()
    m = edited(lm, [EDITS[0]])
    one = logits(lm, [EDITS[0].prompt])
    newer = EditRequest("e1b", EDITS[0].prompt, "Halvik", EDITS[0].fact)
    m.edit([newer])
    assert len(m.memory) == 1 and m.memory_of("e1") == m.memory_of("e1b") == 0
    assert torch.equal(logits(lm, [EDITS[0].prompt])[0], by_hand(m, [newer], EDITS[0].prompt))
    m.retract("e1b")
    assert torch.equal(logits(lm, [EDITS[0].prompt]), one)


def test_fact_identity_displaces_a_facts_older_edits_only_when_set():
    rephrased = EditRequest("e1c", "The employer of Aldric is", "Halvik", EDITS[0].fact)
    plain = edited(tiny(), [EDITS[0], rephrased])
    assert len(plain.memory) == 2 and plain.memory_of("e1") == 0
    oracle = edited(tiny(), [EDITS[0], rephrased], use_fact_identity=True)
    assert len(oracle.memory) == 1 and oracle.memory_of("e1") == oracle.memory_of("e1c") == 0
    oracle.retract("e1c")
    assert len(oracle.memory) == 1 and oracle.route([EDITS[0].prompt]) == [0]


# ---- (7) teacher forcing and generation --------------------------------------------------------
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_generation_through_the_hooks_is_greedy_decoding_of_the_conditioned_input(family):
    """Each step's forward reads the key at the prompt's last token (`prompt_end` stays the
    prompt's padded width), so a row keeps its demonstrations while its generated tokens grow,
    and teacher forcing writes the same ones."""
    lm = tiny(family)
    target = "Lisbon Oslo Kyoto Lima"  # 4 tokens: 4 generation steps
    prompts = [EDITS[2].prompt, OUT[2], EDITS[0].prompt]
    bare = score_pairs(lm, prompts, [target] * 3)
    m = edited(lm, demonstrations=2, **NARROW)
    assert m.route(prompts) == [2, None, 0]
    got = score_pairs(lm, prompts, [target] * 3)
    assert got[1] == bare[1]
    for i in (0, 2):
        demos = written_for(m, prompts[i], 2)
        row = demo_tokens(lm, demos) + tokenize_pair(lm, prompts[i], "x")[0]
        for _ in range(4):  # greedy decoding of the bare model on the conditioned input
            ids = torch.tensor([row])
            with torch.no_grad(), m.bypassed():
                nxt = forward_logits(lm, ids, torch.ones_like(ids), torch.tensor([len(row)]))
            row.append(int(nxt[0, -1].argmax()))
        assert got[i].gen_ids == tuple(row[-4:])
        tf = by_hand(m, demos, prompts[i], target)  # teacher forced on the same demonstrations
        n = len(got[i].target_ids)
        assert got[i].tf_pred == tuple(tf[-n - 1:-1].argmax(-1).tolist())
        assert got[i].tf_pred != bare[i].tf_pred or got[i].nll != bare[i].nll


# ---- (7) the paper's copy / update / retain demonstrations from the train split ---------------
RECORDS = (
    TrainRecord(EditRequest("t1", "Delphine was born in", "Oslo", "Delphine|city", "Delphine"),
                ("The birthplace of Delphine is",), (("Evander plays the", "piano"),)),
    TrainRecord(EditRequest("t2", "Gideon speaks", "Welsh", "Gideon|language", "Gideon"),
                (), (("Ignatius owns a", "boat"),)),
)


def with_bank(lm: LM, **settings) -> Ike:
    method = Ike(from_mapping(IkeConfig, settings), seed=0)
    method.attach(lm, AttachContext(seed=0, unrelated_prompts=UNRELATED, train_split=RECORDS))
    for r in EDITS:
        method.edit([r])
    return method


def paper_demos(lm: LM, rec: TrainRecord) -> list[list[int]]:
    """A record's demonstrations by hand: its fact, then a probe and its answer, for the
    copy, update (with a rephrase) and retain (with a locality pair) probes, each '.'-ended."""
    def part(p: str, t: str) -> list[int]:
        return demo_tokens(lm, [EditRequest("x", p, t, "x")])
    probes = [(rec.request.prompt, rec.request.target)]
    probes += [(rec.rephrases[0], rec.request.target)] if rec.rephrases else []
    probes += [rec.locality[0]] if rec.locality else []
    return [part(rec.request.prompt, rec.request.target) + part(p, a) for p, a in probes]


@torch.no_grad()
def by_hand_tokens(m: Ike, pre: list[int], prompt: str, target: str = "Zentro") -> torch.Tensor:
    p, t = tokenize_pair(m.lm, prompt, target)
    ids = torch.tensor([pre + p + t])
    with m.bypassed():
        out = forward_logits(m.lm, ids, torch.ones_like(ids), torch.tensor([len(pre) + len(p)]))
    return out[0, len(pre):]


def test_paper_demonstrations_from_the_train_split_precede_the_new_fact():
    """With a train split, a row is the base model on: the demonstrations of the train records
    nearest to its nearest stored edit (nearest record first in priority, written in reverse),
    then that edit (the new fact), then the row; k caps the demonstrations."""
    lm = tiny()
    m = with_bank(lm, demonstrations=1, corpus_demonstrations=4)
    assert len(m.bank) == 5  # t1: copy, update, retain; t2: copy, retain
    for prompt in (EDITS[0].prompt, OUT[2]):
        fact = by_distance(m, prompt)[0]
        key = hand_key(m, fact.prompt)
        recs = sorted(RECORDS, key=lambda r: float((hand_key(m, r.request.prompt) - key).norm()))
        demos = [d for r in recs for d in paper_demos(lm, r)][:4]
        pre = [t for d in reversed(demos) for t in d] + demo_tokens(lm, [fact])
        alone = logits(lm, [prompt])[0]
        assert torch.allclose(alone, by_hand_tokens(m, pre, prompt), atol=1e-5)
        assert not torch.allclose(alone, by_hand(m, [fact], prompt), atol=1e-4)  # demos count
    off = with_bank(tiny(), demonstrations=1, corpus_demonstrations=0)
    assert len(off.bank) == 0
    assert torch.equal(logits(off.lm, [OUT[2]])[0],
                       by_hand(off, [by_distance(off, OUT[2])[0]], OUT[2]))


def test_the_train_splits_keys_are_read_from_the_cache_bit_for_bit(tmp_path, monkeypatch):
    """The bank's keys (the train prompts' features, standardised), the standardisation's
    own features and the demonstrations' token ids are computed once per base model and read
    back from the cache by the next attach (every chunk of a chunked run, one chunk per edit
    at T = 1): the same as computed without a cache, with no forward pass and no
    tokenising."""
    from lifelong.methods._common import features

    def attach(cache: bool) -> Ike:
        m = Ike(from_mapping(IkeConfig, {}), seed=0)
        m.attach(tiny(), AttachContext(seed=0, unrelated_prompts=UNRELATED, train_split=RECORDS,
                                       cache_dir=str(tmp_path) if cache else "",
                                       model_fingerprint="tiny-gpt2" if cache else ""))
        return m
    bare = attach(cache=False)
    first = attach(cache=True)
    assert len(list(tmp_path.rglob("features-last-*.safetensors"))) == 2
    calls = []
    compute = features.block_features
    monkeypatch.setattr(features, "block_features",
                        lambda lm, block, prompts, pool: calls.append(list(prompts))
                        or compute(lm, block, prompts, pool))
    from lifelong.methods.ike import method as ike_method
    written = []
    write = ike_method.edit_prefix
    monkeypatch.setattr(ike_method, "edit_prefix",
                        lambda *a: written.append(a) or write(*a))
    again = attach(cache=True)
    assert calls == [] and written == []
    assert len(list(tmp_path.rglob("demos-*.safetensors"))) == 1
    assert bare.bank.demos == first.bank.demos == again.bank.demos and len(bare.bank) > 2
    assert torch.equal(bare.bank.keys, first.bank.keys) and \
        torch.equal(first.bank.keys, again.bank.keys) and bare.bank.keys.shape[0] == 2
    for m in (first, again):
        assert torch.equal(m.norm.mu, bare.norm.mu) and torch.equal(m.norm.sd, bare.norm.sd)


def test_without_a_train_split_it_says_the_stored_edits_are_written_alone(capsys):
    m = make(tiny())
    assert len(m.bank) == 0
    assert "no train split" in capsys.readouterr().err
