"""GRACE: the placement rules (split / expand / move, displacement), lookups, exact
retraction, re-edits, and the key taken at the last prompt token in left-padded batches."""

from __future__ import annotations

import contextlib
from unittest import mock

import pytest
import torch
from conftest import make_tiny_model, tiny_tokenizer
from hypothesis import example, given, settings
from hypothesis import strategies as st

from lifelong.methods import AttachContext, EditRequest, build_method
from lifelong.model import LM
from lifelong.scoring import encode_pairs, forward_logits, score_pairs

pytestmark = pytest.mark.usefixtures("single_thread")

FAST = {"steps": 15, "lr": 1.0, "eps": 0.02}  # a small radius: the tests place keys by hand
PROMPTS = ["Aldric works for", "The employer of Aldric is", "Brenna was born in",
           "Caspar speaks", "Who employs Delphine ? Answer :", "Evander plays the"]


@contextlib.contextmanager
def lookups(through: str):
    """Codebooks made inside look up by a full scan ('scan', below the sketch's size
    threshold), through the distance sketch from their first entry on ('sketch', rank 2:
    the synthetic keys below span two dimensions), or as queries from a GPU are ('device':
    `Codebook.lookup_on`, its mirror and slack, run here on the CPU)."""
    from lifelong.methods.grace import Codebook
    rows = 1 if through == "sketch" else 10**9
    on_device = Codebook.lookup_on if through == "device" else Codebook.lookup
    with mock.patch.object(Codebook, "sketch_min_rows", rows), \
            mock.patch.object(Codebook, "sketch_rank", 2), \
            mock.patch.object(Codebook, "lookup", on_device):
        yield


def fresh_lm(seed: int = 0) -> LM:
    return LM(make_tiny_model("gpt2", seed=seed, n_layer=2, width=32), tiny_tokenizer(), "tiny", "")


def grace(lm: LM, **settings_):
    g = build_method("grace", {**FAST, **settings_}, 0)
    g.attach(lm, AttachContext(seed=0))
    return g


@torch.no_grad()
def logits(lm: LM, prompts=PROMPTS, target="Zentro") -> torch.Tensor:
    ids, mask, end, _, _ = encode_pairs(lm, prompts, [target] * len(prompts))
    return forward_logits(lm, ids, mask, end)


# ---- placement rules on synthetic keys (no training) --------------------------------------

def item(g, i: int, xy: tuple[float, float], target: int, fact: int) -> dict:
    key = torch.zeros(1, g.key_dim)
    key[0, 0], key[0, 1] = xy
    return {"edit_id": f"e{i}", "fact": f"f{fact}", "target": str(target), "target_ids": [target],
            "prompts": [f"p{i}"], "keys": key, "values": torch.full((1, g.value_dim), float(i))}


def check_invariants(g) -> None:
    rows = [r for r in range(g.book.n) if g.book.alive[r]]
    assert len(g.book.index) == len(rows)
    k = g.book.keys[rows].double()
    d = torch.cdist(k, k)
    for a in range(len(rows)):
        assert g.book.radii[rows[a]] >= 0
        for b in range(a + 1, len(rows)):
            if g.book.targets[rows[a]] != g.book.targets[rows[b]]:  # never overlap
                assert d[a, b] + 1e-9 >= g.book.radii[rows[a]] + g.book.radii[rows[b]]
    if rows:  # a query equal to a stored key retrieves it
        entry, hit = g.book.lookup(g.book.keys[rows])
        assert hit.all() and entry.tolist() == rows
    # every key of each fact's newest edit retrieves its target (unless a newer edit of
    # another fact has the identical key: then the newest input wins)
    newest = {it["fact"]: (pos, it) for pos, it in enumerate(g.book.log)}
    for pos, it in newest.values():
        later = [o["keys"] for o in g.book.log[pos + 1:]]
        for key in it["keys"]:
            if any(bool((lk == key).all(-1).any()) for lk in later):
                continue
            entry, hit = g.book.lookup(key[None])
            assert hit.item() and g.book.targets[entry.item()] == tuple(it["target_ids"])


point = st.tuples(st.integers(0, 6), st.integers(0, 6)).map(lambda p: (p[0] * 0.3, p[1] * 0.3))
ops = st.lists(st.tuples(point, st.integers(0, 2), st.integers(0, 5)), min_size=1, max_size=14)


@pytest.mark.parametrize("through", ["scan", "sketch", "device"])
@pytest.mark.parametrize("conflict", ["coverage", "moving_average"])
@settings(max_examples=60, deadline=None)
@given(seq=ops)
# a split leaves an absorbed key exactly at the radius (float32 keys): lookups must measure as
# placement does (float64), or the key's own edit is lost
@example(seq=[((1.2, 1.2), 0, 2), ((1.5, 1.5), 0, 0), ((1.8, 1.8), 1, 1)])
# a moving average moves a key: its sketch must be redone, or the sketch rules out its entry
@example(seq=[((0.0, 0.0), 0, 0), ((0.0, 0.0), 0, 0), ((0.0, 0.0), 0, 0), ((0.0, 0.3), 1, 0),
              ((0.0, 0.6), 1, 2), ((0.0, 0.0), 0, 1)])
# a split leaves a member on both balls' edge; a move of its entry, the mean rounded to float32,
# must not leave it outside (measured from the stored key) nor nearer the other target
@example(seq=[((1.8, 0.9), 0, 0), ((1.8, 1.5), 0, 1), ((1.8, 1.8), 1, 2)])
def test_split_expand_rules_keep_the_invariants(conflict, through, seq):
    with lookups(through):
        g = grace(fresh_lm(), eps=0.5, eps_relative=False, conflict=conflict)
        for i, (xy, target, fact) in enumerate(seq):
            g.insert_item(item(g, i, xy, target, fact))
            check_invariants(g)


@pytest.mark.parametrize("through", ["scan", "sketch", "device"])
@settings(max_examples=40, deadline=None)
@given(seq=ops, data=st.data())
def test_retraction_replays_to_the_never_edited_codebook(through, seq, data):
    with lookups(through):
        retraction_replays(seq, data)


def retraction_replays(seq, data):
    lm = fresh_lm()
    g = grace(lm, eps=0.5, eps_relative=False)
    items = [item(g, i, xy, t, f) for i, (xy, t, f) in enumerate(seq)]
    for it in items:
        g.insert_item(it)
    gone = data.draw(st.sampled_from(items))["edit_id"]
    g.retract(gone)
    check_invariants(g)
    ref = grace(lm, eps=0.5, eps_relative=False)
    for it in items:
        if it["edit_id"] != gone:
            ref.insert_item(it)

    def alive(m):
        return sorted((m.book.keys[r].tolist(), float(m.book.radii[r]), m.book.values[r].tolist(), m.book.targets[r])
                      for r in range(m.book.n) if m.book.alive[r])
    assert alive(g) == alive(ref)
    g.detach()


pools = st.lists(point.map(lambda p: (p[0] + 0.15, p[1] + 0.15)), min_size=1, max_size=8)


@settings(max_examples=50, deadline=None)
@given(seq=ops, pool=pools, rate=st.sampled_from([0.0, 0.25, 0.5]),
       conflict=st.sampled_from(["coverage", "moving_average"]),
       through=st.sampled_from(["scan", "sketch", "device"]))
# a split shrinks an entry that had absorbed a key: its reach must be recomputed
@example(seq=[((0.0, 0.6), 1, 1), ((0.3, 0.3), 1, 0), ((0.0, 0.0), 0, 2)], pool=[(0.15, 0.15)],
         rate=0.0, conflict="coverage", through="scan")
# an identical key displaces (kills) an entry: its kept figures must be recomputed
@example(seq=[((0.3, 0.3), 1, 0), ((0.3, 0.6), 1, 1), ((0.3, 0.3), 2, 2)], pool=[(1.65, 1.65)],
         rate=0.0, conflict="coverage", through="scan")
def test_lookups_claim_at_most_claim_rate_of_the_pool(seq, pool, rate, conflict, through):
    """Whatever the codebook holds, lookups of the unrelated pool's keys hit at most
    floor(claim_rate x pool) of them (expansions never reach a pool key, so the floors that
    keep absorbed keys covered claim none); the factor is 1 when the bare radii claim no more;
    every edit's keys still retrieve its target (check_invariants); the conflict rules hold;
    the factor kept across edits (`grace.calibration`) is the one computed from scratch."""
    with lookups(through):
        claims_at_most(seq, pool, rate, conflict)


def claims_at_most(seq, pool, rate, conflict):
    import math

    from lifelong.methods._common.guard import Guard
    from lifelong.methods.grace import Codebook
    g = grace(fresh_lm(), eps=0.5, eps_relative=False, claim_rate=rate, conflict=conflict)
    keys = torch.zeros(len(pool), g.key_dim)
    keys[:, 0], keys[:, 1] = torch.tensor([xy[0] for xy in pool]), torch.tensor([xy[1] for xy in pool])
    g.book = Codebook(g.book.config, g.key_dim, g.value_dim, Guard(keys))
    for i, (xy, target, fact) in enumerate(seq):
        g.insert_item(item(g, i, xy, target, fact))
        check_invariants(g)
        claimed = int(g.book.lookup(keys)[1].sum())
        assert claimed <= math.floor(rate * len(pool))
        rows = [r for r in range(g.book.n) if g.book.alive[r]]
        bare = torch.cdist(keys.double(), g.book.keys[rows].double()) <= g.book.radii[rows]
        if int(bare.any(1).sum()) <= math.floor(rate * len(pool)):
            assert g.book.factor() == 1.0
        reach = torch.tensor([g.book.farthest_member(r) for r in range(g.book.n)],
                             dtype=torch.float64)
        c = g.book.guard.factor(g.book.keys[rows], g.book.radii[rows], rate, reach[rows])
        assert g.book.factor() == c
        radii = g.book.radii[:g.book.n]
        assert torch.equal(g.book.served_radii(), radii if c >= 1 else torch.maximum(radii * c, reach))
        assert torch.equal(g.book._calib.reach[:g.book.n], reach)  # the kept reach is current


def test_split_halves_both_radii_and_same_target_expands():
    g = grace(fresh_lm(), eps=1.0, eps_relative=False)
    g.insert_item(item(g, 0, (0.0, 0.0), 1, 0))
    g.insert_item(item(g, 1, (1.2, 0.0), 2, 1))  # different target within 2 * eps: split
    assert g.book.radii[:2].tolist() == pytest.approx([0.6, 0.6])
    placed = g.insert_item(item(g, 2, (0.0, 0.5), 1, 2))  # same target, within reach: expand
    assert placed == ["expanded:0"] and len(g.book.index) == 2
    assert 0.5 <= float(g.book.radii[0]) <= 0.6 + 1e-6
    # no room to cover this one without overlapping target 2: a new entry instead
    assert g.insert_item(item(g, 3, (-1.0, 0.0), 1, 3)) == ["new:2"]
    check_invariants(g)


def test_moving_average_moves_the_key():
    g = grace(fresh_lm(), eps=1.0, eps_relative=False, conflict="moving_average")
    g.insert_item(item(g, 0, (0.0, 0.0), 1, 0))
    assert g.insert_item(item(g, 1, (0.5, 0.0), 1, 1)) == ["moved:0"]
    assert g.book.keys[0, 0].item() == pytest.approx(0.25)
    check_invariants(g)


def test_identical_key_newest_wins_and_retraction_restores_it():
    g = grace(fresh_lm(), eps=1.0, eps_relative=False)
    g.insert_item(item(g, 0, (0.3, 0.3), 1, 0))
    g.insert_item(item(g, 1, (0.3, 0.3), 2, 1))
    entry, hit = g.book.lookup(g.book.log[0]["keys"])
    assert hit.item() and g.book.targets[entry.item()] == (2,)
    g.retract("e1")
    entry, hit = g.book.lookup(g.book.log[0]["keys"])
    assert hit.item() and g.book.targets[entry.item()] == (1,)


# ---- on a model -----------------------------------------------------------------------------

def test_edit_is_reliable_and_leaves_other_rows_bit_identical():
    lm = fresh_lm()
    before = logits(lm)
    g = grace(lm)
    g.edit([EditRequest("e1", "Aldric works for", "Zentro", "Aldric|employer")])
    s = score_pairs(lm, ["Aldric works for"], ["Zentro"])[0]
    assert s.tf_exact and s.gen_exact
    after = logits(lm)  # a left-padded batch: only the edited row may change
    assert not torch.equal(after[0], before[0])
    assert torch.equal(after[2:], before[2:])
    g.detach()
    assert torch.equal(logits(lm), before)


def test_multi_token_target_keyed_at_the_last_prompt_token():
    """Teacher-forced scoring feeds the target in, generation appends tokens: both must key
    the row at its last prompt token (a random tiny model cannot be taught three tokens with
    one vector, so the first target token is what is checked)."""
    lm = fresh_lm()
    g = grace(lm, steps=40)
    g.edit([EditRequest("e1", "Brenna was born in", "Kyoto Lisbon Oslo", "Brenna|city")])
    s = score_pairs(lm, ["Brenna was born in", "Caspar speaks"], ["Kyoto Lisbon Oslo"] * 2)
    assert s[0].tf_pred[0] == s[0].target_ids[0] == s[0].gen_ids[0]
    assert s[1].tf_pred[0] != s[0].target_ids[0]
    keys, _, _, _ = g.keys_of(["Brenna was born in"], ["Dublin"])  # another target: same key
    assert torch.allclose(keys, g.book.log[0]["keys"], atol=1e-6)


@settings(max_examples=6, deadline=None)
@given(st.lists(st.sampled_from(range(5)), min_size=1, max_size=3), st.data())
def test_retract_restores_outputs_exactly(order, data):
    """Retracting the newest edit gives bit-identical outputs to before it; retracting any
    edit gives the outputs of a memory that never saw it."""
    targets = ["Zentro", "Vantex", "Kyoto", "Orbica", "Lisbon"]
    reqs = [EditRequest(f"e{i}", PROMPTS[j], targets[j], f"fact{j}") for i, j in enumerate(order)]
    lm = fresh_lm()
    g = grace(lm)
    for r in reqs[:-1]:
        g.edit([r])
    before = logits(lm)
    g.edit([reqs[-1]])
    g.retract(reqs[-1].edit_id)
    assert torch.equal(logits(lm), before)
    g.edit([reqs[-1]])
    gone = data.draw(st.sampled_from(reqs)).edit_id
    g.retract(gone)
    got = logits(lm)
    g.detach()
    ref = grace(lm)
    for r in reqs:
        if r.edit_id != gone:
            ref.edit([r])
    assert torch.equal(got, logits(lm))


def test_re_edit_newest_value_wins_on_old_and_new_prompts():
    """With the fact oracle on, a re-edit displaces the fact's older entry and re-trains its
    prompt: the newest value answers both prompts, and retracting it brings the old back."""
    lm = fresh_lm()
    g = grace(lm, use_fact_identity=True)
    base = score_pairs(lm, ["The employer of Aldric is"], ["Vantex"])[0]
    g.edit([EditRequest("e1", "Aldric works for", "Zentro", "Aldric|employer")])
    g.edit([EditRequest("e2", "The employer of Aldric is", "Vantex", "Aldric|employer")])
    for p in ("Aldric works for", "The employer of Aldric is"):
        assert score_pairs(lm, [p], ["Vantex"])[0].gen_exact
    g.retract("e2")
    assert score_pairs(lm, ["Aldric works for"], ["Zentro"])[0].gen_exact
    assert score_pairs(lm, ["The employer of Aldric is"], ["Vantex"])[0].gen_ids == base.gen_ids


def test_relative_eps_and_state_round_trip_are_exact():
    lm = fresh_lm()
    g = grace(lm)
    g.edit([EditRequest("e1", "Aldric works for", "Zentro", "a")])
    g.edit([EditRequest("e2", "Brenna was born in", "Kyoto", "b")])
    assert g.book.radii[0] <= 0.02 * g.book.log[0]["keys"][0].norm().item() * (1 + 1e-3)
    state = g.state_dict()
    expected = logits(lm)
    lm2 = fresh_lm()
    g2 = grace(lm2)
    g2.load_state_dict(state)
    assert torch.equal(logits(lm2), expected)
    g2.retract("e1")  # the loaded log replays like the original
    g.retract("e1")
    assert torch.equal(logits(lm2), logits(lm))
    assert g.footprint() > 0


def test_placement_and_lookup_through_the_approximate_index():
    g = grace(fresh_lm(), eps=0.5, eps_relative=False, approximate_above=5)
    for i in range(24):
        g.insert_item(item(g, i, ((i % 6) * 0.3, (i // 6) * 0.3), i % 3, i))
    assert g.book.index.approximate
    check_invariants(g)
    g.retract("e7")
    check_invariants(g)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_key_at_the_mlp_input_edits_and_retracts(family):
    """`key = "mlp"` (the MLP block's input, the model width) was unreachable before the
    platform refactor (a NameError at attach): it keys, serves, retracts and detaches."""
    lm = LM(make_tiny_model(family, n_layer=2, width=32), tiny_tokenizer(), "tiny", "")
    before = logits(lm)
    g = grace(lm, key="mlp")
    assert g.key_dim == 32 and g.value_dim == 32
    g.edit([EditRequest("e1", "Aldric works for", "Zentro", "Aldric|employer")])
    keys, _, _, _ = g.keys_of(["Aldric works for"], ["Zentro"])
    assert keys.shape == (1, 32) and torch.allclose(keys, g.book.log[0]["keys"])
    after = logits(lm)
    assert not torch.equal(after[0], before[0]) and torch.equal(after[2:], before[2:])
    g.retract("e1")
    assert torch.equal(logits(lm), before)
    g.detach()
    assert torch.equal(logits(lm), before)


@pytest.mark.parametrize("name", ["grace", "defer", "wise-faiss"])
def test_without_the_fact_oracle_fact_labels_change_nothing(name):
    """`use_fact_identity=False`: the method never reads the stream's `fact` field, so the
    same edits under other fact labels serve bit-identical logits; with it on, a re-edit of
    one fact (same label) differs from two unrelated edits (labels differ)."""
    a = EditRequest("e1", "Aldric works for", "Zentro", "Aldric|employer")
    b = EditRequest("e2", "The employer of Aldric is", "Vantex", "Aldric|employer")
    b_other = EditRequest("e2", "The employer of Aldric is", "Vantex", "something|else")
    fast = {"steps": 15, "lr": 1.0} if name != "grace" else FAST

    def served(use: bool, second: EditRequest) -> torch.Tensor:
        lm = fresh_lm()
        m = build_method(name, {**fast, "use_fact_identity": use}, 0)
        m.attach(lm, AttachContext(seed=0, unrelated_prompts=("Caspar speaks", "Evander plays the")))
        m.edit([a])
        m.edit([second])
        return logits(lm)

    assert torch.equal(served(False, b), served(False, b_other))
    assert not torch.equal(served(True, b), served(True, b_other))
