"""SERAC: the classifier and the counterfactual model train at attach (and are cached), routing
in and out of scope, served logits (out-of-scope rows bit-identical to the bare model, in-scope
rows the counterfactual model's on the conditioned input) in mixed, left-padded batches and in
generation, exact retraction, re-edits, detach, state round trip, the context limit, and the
refusal without a train split. Tiny random-init GPT-2 and LLaMA models, a few updates."""

from __future__ import annotations

import io
import random

import pytest
import torch
from conftest import make_tiny_model, tiny_tokenizer

from lifelong.bench_edit import attach_costs
from lifelong.config import from_mapping
from lifelong.errors import LifelongError
from lifelong.methods import AttachContext, EditRequest, UnknownEdit
from lifelong.methods._common.conditioning import conditioned, max_positions
from lifelong.methods.context import TrainRecord
from lifelong.methods.serac import Serac, SeracConfig
from lifelong.methods.serac import method as serac_method
from lifelong.model import LM
from lifelong.scoring import encode_pairs, forward_logits, score_pairs, tokenize_pair

pytestmark = pytest.mark.usefixtures("single_thread")

PEOPLE = ("Aldric Brenna Caspar Delphine Evander Fenella Gideon Hestia Ignatius Juniper "
          "Kaspar Lucasta Mordecai Nerissa Octavian Persephone").split()
COMPANIES = "Vantex Orbica Quillon Marabel Zentro Halvik Corvane Lumora".split()
CITIES = "Lisbon Oslo Nairobi Kyoto Lima Dublin Cairo Quito".split()
CHEAP = {"cls_steps": 30, "cf_steps": 10, "batch_size": 4}
#: a narrow scope: only (near) copies of an edit's prompt are in it, whatever was learnt
NARROW = {"threshold": 0.99}


def records(people: list[str], seed: int) -> tuple[TrainRecord, ...]:
    rng = random.Random(seed)
    return tuple(TrainRecord(EditRequest(f"{seed}-{i}", f"{p} works for", rng.choice(COMPANIES),
                                         f"{p}|employer", p),
                             (f"The employer of {p} is", f"Who employs {p} ? Answer :"),
                             ((f"{p} was born in", rng.choice(CITIES)),
                              (f"{PEOPLE[-1 - i % 4]} speaks", "Greek")))
                 for i, p in enumerate(people))


TRAIN = records(PEOPLE[4:12], seed=0)  # the edits below are about other people
EDITS = [EditRequest("e1", "Aldric works for", "Zentro", "Aldric|employer", "Aldric"),
         EditRequest("e2", "The favourite colour of Brenna is", "teal", "Brenna|colour", "Brenna"),
         EditRequest("e3", "Caspar speaks", "Welsh", "Caspar|language", "Caspar")]
OUT = ["Lisbon is", "Yes no maybe also", "The mother tongue of Nolan is"]


def tiny(family: str = "gpt2", **kw) -> LM:
    return LM(make_tiny_model(family, n_layer=2, width=32, **kw), tiny_tokenizer(), "tiny", "")


def make(lm: LM, cache=None, split=TRAIN, seed: int = 0, factory=None, pool=(),
         **settings) -> Serac:
    method = Serac(from_mapping(SeracConfig, {**CHEAP, **settings}), seed=seed)
    method.attach(lm, AttachContext(
        seed=seed, train_split=split, unrelated_prompts=tuple(pool),
        cache_dir=str(cache) if cache else "",
        model_fingerprint=f"tiny-{lm.model.config.model_type}" if cache else "",
        model_factory=factory))
    return method


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One cache for the module: each configuration's parts are trained once, then read."""
    return tmp_path_factory.mktemp("serac-cache")


@torch.no_grad()
def logits(lm: LM, prompts: list[str], target: str = "Zentro") -> torch.Tensor:
    ids, mask, end, _, _ = encode_pairs(lm, prompts, [target] * len(prompts))
    return forward_logits(lm, ids, mask, end)


@torch.no_grad()
def conditioned_logits(m: Serac, prompt: str, target: str, route: int) -> torch.Tensor:
    """The counterfactual model's logits at the tokens of `prompt` + `target`, run alone on
    the input conditioned on served edit `route`."""
    p, t = tokenize_pair(m.lm, prompt, target)
    row = conditioned(m.memory.prefix(route), p + t, m.limit)
    ids = torch.tensor([row])
    out = forward_logits(m.cf, ids, torch.ones_like(ids), torch.tensor([len(row) - len(t)]))
    return out[0, len(row) - len(p) - len(t):]


# ---- training ------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_training_lowers_both_losses(family):
    m = make(tiny(family), cls_steps=80, cf_steps=40, cf_lr=1e-3)
    cls, cf = m.cls_losses, m.cf_losses
    assert len(cls) == 80 and len(cf) == 40 and m.info["editor"] == "trained"
    assert sum(cls[-10:]) / 10 < 0.9 * sum(cls[:10]) / 10
    assert sum(cf[-10:]) / 10 < 0.9 * sum(cf[:10]) / 10
    assert all(not p.requires_grad for p in m.cf.model.parameters())
    assert all(p.grad is None for p in m.lm.model.parameters())


def test_the_parts_are_cached_by_model_settings_seed_and_split(tmp_path, monkeypatch, capsys):
    calls = []
    train = serac_method.train_counterfactual
    monkeypatch.setattr(serac_method, "train_counterfactual",
                        lambda *a, **k: calls.append(1) or train(*a, **k))
    first = make(tiny(), tmp_path)
    assert len(calls) == 1 and first.info["editor"] == "trained"
    assert "classifier and counterfactual model trained" in capsys.readouterr().err
    second = make(tiny(), tmp_path)
    assert len(calls) == 1 and second.info["editor"] == "read from the cache"
    assert "read from the cache" not in capsys.readouterr().err  # silent: chunks re-attach
    assert second.digest == first.digest
    assert [c["how"] for c in attach_costs(first.info) + attach_costs(second.info)] == \
        ["trained", "read"]  # what `lifelong bench edit` reports
    assert all(torch.equal(a, b) for a, b in zip(first.cf.model.parameters(),
                                                  second.cf.model.parameters()))
    make(tiny(), tmp_path, threshold=0.9, use_fact_identity=True)  # serving only: same entry
    assert len(calls) == 1
    make(tiny(), tmp_path, split=TRAIN[:5])  # another split
    make(tiny(), tmp_path, cf_lr=1e-2)  # another setting
    make(tiny(), tmp_path, seed=1)  # another training seed
    assert len(calls) == 4


def test_no_train_split_is_refused_in_one_line_naming_the_setting():
    with pytest.raises(LifelongError, match=r"stream\.train_file") as err:
        make(tiny(), split=())
    assert "\n" not in str(err.value)


def test_the_second_model_comes_from_the_context_when_it_has_one():
    made = []

    def factory() -> LM:
        made.append(tiny())
        return made[-1]

    lm = tiny()
    m = make(lm, factory=factory)
    assert len(made) == 1 and m.cf is made[0] and m.cf.model is not lm.model


# ---- routing and serving ---------------------------------------------------------------------
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_in_scope_prompts_go_to_their_edit_and_others_to_the_base_model(family, cache):
    m = make(tiny(family), cache, **NARROW)
    assert m.route(OUT) == [None] * len(OUT)  # an empty memory
    for r in EDITS:
        m.edit([r])
    assert [m.memory_of(r.edit_id) for r in EDITS] == [0, 1, 2] and m.memory_of("nope") is None
    assert m.route([r.prompt for r in EDITS] + OUT) == [0, 1, 2] + [None] * len(OUT)
    wide = make(tiny(family), cache, threshold=0.0)  # everything in scope of its nearest edit
    wide.edit(EDITS[:2])
    assert None not in wide.route(OUT)
    shut = make(tiny(family), cache, threshold=1.0)  # nothing in scope, not even the prompt
    shut.edit(EDITS[:2])
    assert shut.route([EDITS[0].prompt]) == [None]


@pytest.mark.parametrize(("family", "pool"), [("gpt2", "last"), ("llama", "last"), ("gpt2", "mean")])
def test_mixed_batch_out_of_scope_rows_are_bit_identical_in_scope_rows_counterfactual(
        family, pool, cache):
    lm = tiny(family)
    prompts = [OUT[0], EDITS[0].prompt, OUT[2], EDITS[1].prompt, OUT[1], EDITS[2].prompt]
    bare = logits(lm, prompts)
    m = make(lm, cache, pool=pool, **NARROW)
    for r in EDITS:
        m.edit([r])
    served = logits(lm, prompts)
    ids, mask, _, _, _ = encode_pairs(lm, prompts, ["Zentro"] * len(prompts))
    routes = m.route(prompts)
    assert routes == [None, 0, None, 1, None, 2]
    for i, route in enumerate(routes):
        if route is None:
            assert torch.equal(served[i], bare[i])  # bit for bit, padding included
            continue
        real = mask[i].bool()
        assert torch.equal(served[i, ~real], bare[i, ~real])  # padding left as it was
        expected = conditioned_logits(m, prompts[i], "Zentro", route)
        assert torch.allclose(served[i, real], expected, atol=1e-5)
        assert not torch.allclose(served[i, real], bare[i, real], atol=1e-3)
    alone = logits(lm, [EDITS[1].prompt])  # a batch of one: no padding anywhere, exact
    assert torch.equal(alone[0], conditioned_logits(m, EDITS[1].prompt, "Zentro", 1))
    with m.bypassed():
        assert torch.equal(logits(lm, prompts), bare)


def test_a_bare_forward_is_served_by_its_whole_row(cache):
    """Without the scoring's ForwardInfo every token counts as prompt (the last one is the key
    token): a row that is exactly an edit's prompt is in scope, served by the counterfactual
    model."""
    lm = tiny()
    m = make(lm, cache, **NARROW)
    m.edit([EDITS[0]])
    p, _ = tokenize_pair(lm, EDITS[0].prompt, "x")
    with torch.no_grad():
        out = lm.model(input_ids=torch.tensor([p])).logits[0]
    row = conditioned(m.memory.prefix(0), p, m.limit)
    with torch.no_grad():
        want = m.cf.model(input_ids=torch.tensor([row])).logits[0, len(row) - len(p):]
    assert torch.allclose(out, want, atol=1e-5)


@pytest.mark.parametrize(("family", "pool"), [("gpt2", "last"), ("llama", "mean")])
def test_generation_through_the_hooks_is_the_counterfactual_models_greedy_decoding(
        family, pool, cache):
    """Each step's forward routes by the prompt's tokens only (`prompt_end` stays the prompt's
    padded width), so a row keeps its edit while its generated tokens grow."""
    lm = tiny(family)
    target = "Lisbon Oslo Kyoto Lima"  # 4 tokens: 4 generation steps
    prompts = [EDITS[2].prompt, OUT[2], EDITS[0].prompt]
    with torch.no_grad():
        bare = score_pairs(lm, prompts, [target] * 3)
    m = make(lm, cache, pool=pool, **NARROW)
    for r in EDITS:
        m.edit([r])
    got = score_pairs(lm, prompts, [target] * 3)
    assert got[1].gen_ids == bare[1].gen_ids and got[1].nll == bare[1].nll
    for i, route in ((0, 2), (2, 0)):
        row = conditioned(m.memory.prefix(route), tokenize_pair(lm, prompts[i], "x")[0], m.limit)
        for _ in range(4):  # greedy decoding of the counterfactual model, alone
            ids = torch.tensor([row])
            with torch.no_grad():
                nxt = forward_logits(m.cf, ids, torch.ones_like(ids), torch.tensor([len(row)]))
            row.append(int(nxt[0, -1].argmax()))
        assert got[i].gen_ids == tuple(row[-4:])
        assert got[i].tf_pred != bare[i].tf_pred or got[i].nll != bare[i].nll


def test_the_edit_part_is_cut_from_the_left_to_fit_the_context():
    assert conditioned([1, 2, 3, 4], [7, 8], limit=5) == [2, 3, 4, 7, 8]
    assert conditioned([1, 2], [7, 8, 9], limit=3) == [7, 8, 9]
    assert conditioned([1, 2], [7], limit=None) == [1, 2, 7]
    lm = tiny(max_positions=12)
    m = make(lm, **NARROW)
    assert m.limit == max_positions(lm.model) == 12
    m.edit([EDITS[1]])  # prefix 8 tokens + prompt 6 + target 1 > 12
    out = logits(lm, [EDITS[1].prompt])
    assert torch.allclose(out[0], conditioned_logits(m, EDITS[1].prompt, "Zentro", 0), atol=1e-6)


#: unrelated prompts (the attach context's pool): none is an edit, a rephrase or a probe above
POOL = [f"{c} is the home of" for c in CITIES] + [f"{p} was born in" for p in PEOPLE[12:]] + \
    [f"The weather in {c} is" for c in CITIES[:4]]


@pytest.mark.parametrize("rate", [0.0, 0.25, 1.0])
def test_the_scope_claims_at_most_claim_rate_of_the_unrelated_pool(cache, rate):
    """Threshold 0 puts every input in the scope of its nearest edit; the guard shrinks the
    scope radius until at most floor(claim_rate x pool) pool prompts are in scope, edits'
    own prompts staying in it; claim_rate 1 leaves the radius as it was. The factor is a
    function of the served edits: after a retraction, that of a memory that never had it."""
    import math
    m = make(tiny(), cache, pool=POOL, threshold=0.0, claim_rate=rate)
    assert m.scope_factor() == 1.0 and m.route(POOL) == [None] * len(POOL)  # nothing stored
    for k, r in enumerate(EDITS):
        m.edit([r])
        claimed = sum(x is not None for x in m.route(POOL))
        assert claimed == len(POOL) if rate == 1 else claimed <= math.floor(rate * len(POOL))
        assert m.route([e.prompt for e in EDITS[:k + 1]]) == list(range(k + 1))
        assert (m.scope_factor() < 1) == (rate < 1)
    m.retract("e2")
    never = make(tiny(), cache, pool=POOL, threshold=0.0, claim_rate=rate)
    never.edit([EDITS[0]])
    never.edit([EDITS[2]])
    assert m.scope_factor() == never.scope_factor() and m.route(POOL) == never.route(POOL)


def test_an_edit_keeps_its_own_prompt_when_the_pool_holds_it_too(cache):
    """A pool prompt that is also an edit's prompt (its key equal up to the rounding of a
    padded batch) is claimed whatever the factor: the guard does not shrink the other
    edits' scope to nothing for it, and the edit keeps its prompt."""
    m = make(tiny(), cache, pool=POOL + [EDITS[1].prompt], threshold=0.0, claim_rate=0.0)
    m.edit(EDITS)
    assert m.route([r.prompt for r in EDITS]) == [0, 1, 2]
    assert m.scope_factor() * m._radius() > 1e-3  # set by the other pool prompts, not the edit's


def test_the_guard_leaves_a_scope_that_claims_no_more_than_claim_rate_as_it_was(cache):
    narrow = make(tiny(), cache, pool=POOL, **NARROW)
    narrow.edit(EDITS)
    assert narrow.route(POOL) == [None] * len(POOL) and narrow.scope_factor() == 1.0


# ---- memory: re-edits, retraction ---------------------------------------------------------------
def test_retraction_is_exact(cache):
    lm, lm2 = tiny(), tiny()
    prompts = [r.prompt for r in EDITS] + OUT
    m = make(lm, cache, **NARROW)
    for r in EDITS:
        m.edit([r])
    m.retract("e2")
    assert m.memory_of("e2") is None and m.memory_of("e3") == 1
    never = make(lm2, cache, **NARROW)
    never.edit([EDITS[0]])
    never.edit([EDITS[2]])
    assert torch.equal(logits(lm, prompts), logits(lm2, prompts))
    assert m.route(prompts) == never.route(prompts)
    with pytest.raises(UnknownEdit, match="e2"):
        m.retract("e2")
    m.retract("e1")
    m.retract("e3")
    assert torch.equal(logits(lm, prompts), logits(tiny(), prompts))


def test_a_reedit_of_the_same_prompt_wins_and_its_retraction_restores_the_older(cache):
    lm = tiny()
    m = make(lm, cache, **NARROW)
    m.edit([EDITS[0]])
    one = logits(lm, [EDITS[0].prompt])
    m.edit([EditRequest("e1b", EDITS[0].prompt, "Halvik", EDITS[0].fact)])
    assert len(m.memory) == 1 and m.memory_of("e1") == m.memory_of("e1b") == 0
    assert m.memory.prefix(0)[-2] == lm.tok("Halvik", add_special_tokens=False)["input_ids"][-1]
    m.retract("e1b")
    assert torch.equal(logits(lm, [EDITS[0].prompt]), one)


def test_fact_identity_displaces_a_facts_older_edits_only_when_set(cache):
    rephrased = EditRequest("e1c", "The employer of Aldric is", "Halvik", EDITS[0].fact)
    plain = make(tiny(), cache, **NARROW)
    plain.edit([EDITS[0], rephrased])
    assert len(plain.memory) == 2 and plain.memory_of("e1") == 0
    oracle = make(tiny(), cache, use_fact_identity=True, **NARROW)
    oracle.edit([EDITS[0], rephrased])
    assert len(oracle.memory) == 1 and oracle.memory_of("e1") == oracle.memory_of("e1c") == 0
    oracle.retract("e1c")
    assert len(oracle.memory) == 1 and oracle.route([EDITS[0].prompt]) == [0]


# ---- detach, state, footprint -----------------------------------------------------------------------
def test_detach_and_state_round_trip_are_exact(cache):
    lm = tiny()
    prompts = [r.prompt for r in EDITS] + OUT
    base = logits(lm, prompts)
    m = make(lm, cache, **NARROW)
    for r in EDITS:
        m.edit([r])
    expected = logits(lm, prompts)
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    state = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    lm2 = tiny()
    m2 = make(lm2, cache, **NARROW)
    m2.load_state_dict(state)
    assert torch.equal(logits(lm2, prompts), expected)
    assert [m2.memory_of(r.edit_id) for r in EDITS] == [0, 1, 2]
    with pytest.raises(ValueError, match="other trained parts"):
        make(tiny(), cache, seed=3, **NARROW).load_state_dict(state)
    m.detach()
    assert torch.equal(logits(lm, prompts), base)


def test_footprint_counts_the_edits_the_classifier_and_the_counterfactual_model(cache):
    m = make(tiny(), cache, **NARROW)
    parts = m.footprint()
    cf = sum(p.numel() * 4 for p in m.cf.model.parameters())
    assert parts == cf + m.classifier.nbytes()
    m.edit([EDITS[0]])
    assert m.footprint() - parts == m.memory.nbytes() > 4 * m.dim
