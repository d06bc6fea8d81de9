"""ROME, MEMIT and AlphaEdit on tiny random-init models: the algebra each paper states, the
key statistics cache, where the edit is made, and layer addressing in every family.
(The shared contract, runtime and matrix tests pick the three methods up on their own.)"""

from __future__ import annotations

import pytest
import torch
from conftest import FAMILIES, make_tiny_model, tiny_tokenizer

from lifelong import layers
from lifelong.config import from_mapping
from lifelong.errors import LifelongError
from lifelong.methods import AttachContext, EditRequest, available_methods
from lifelong.methods._locate import stats
from lifelong.methods._locate.lookup import keys_at, subject_last
from lifelong.methods._locate.values import optimise_value
from lifelong.methods.rome import rank_one
from lifelong.model import LM

pytestmark = pytest.mark.usefixtures("single_thread")

PEOPLE = "Delphine Evander Fenella Gideon Hestia Ignatius".split()  # none of them edited
#: 72 tokens, fewer than the 128-wide keys: C has a true null space (AlphaEdit's projection
#: is then exact)
SMALL = tuple(f"{p} works for {c}" for p in PEOPLE for c in ("Vantex", "Orbica", "Zentro"))
#: a corpus with more tokens than the key width (C full rank)
LARGE = tuple(f"{p} works for {c} and was born in {t} , and speaks {lang}"
              for p in PEOPLE for c in ("Vantex", "Orbica", "Zentro", "Halvik")
              for t in ("Oslo", "Lima", "Kyoto") for lang in ("French", "Greek"))
EDIT = EditRequest("e1", "Aldric works for", "Zentro", "Aldric|employer", "Aldric")
EDITS = [EDIT, EditRequest("e2", "Brenna was born in", "Kyoto", "Brenna|city", "Brenna"),
         EditRequest("e3", "Caspar speaks", "Greek", "Caspar|language", "Caspar")]
CHEAP = {"prefixes": 2, "steps": 5, "lr": 1.0, "clamp": 100.0}


def tiny(family: str = "gpt2", n_layer: int = 2) -> LM:
    return LM(make_tiny_model(family, n_layer=n_layer, width=32), tiny_tokenizer(), "tiny", "")


def make(name: str, lm: LM, corpus=LARGE, tmp=None, **settings):
    cls = available_methods()[name]
    method = cls(from_mapping(cls.Config, {**CHEAP, **settings}), seed=0)
    ctx = AttachContext(seed=0, corpus=corpus, cache_dir=str(tmp) if tmp else "",
                        model_fingerprint="tiny" if tmp else "")
    method.attach(lm, ctx)
    return method


def test_rank_one_maps_the_key_to_the_value_and_moves_other_keys_by_their_c_product():
    torch.manual_seed(0)
    d_in, d_out = 12, 5
    a = torch.randn(d_in, d_in, dtype=torch.float64)
    cov = a @ a.T / d_in + 0.1 * torch.eye(d_in, dtype=torch.float64)
    w, b = torch.randn(d_out, d_in, dtype=torch.float64), torch.randn(d_out, dtype=torch.float64)
    k, v = torch.randn(d_in, dtype=torch.float64), torch.randn(d_out, dtype=torch.float64)
    delta = rank_one(w, b, cov, k, v, ridge=0.0)
    assert torch.allclose((w + delta) @ k + b, v, atol=1e-9)  # W_new k* = v*
    assert torch.linalg.matrix_rank(delta) == 1
    u = torch.linalg.solve(cov, k)
    for _ in range(5):  # the change on any key is proportional to kᵀ C⁻¹ k*
        other = torch.randn(d_in, dtype=torch.float64)
        assert torch.allclose(delta @ other, (v - w @ k - b) * (other @ u) / (k @ u), atol=1e-9)
    orth = torch.randn(d_in, dtype=torch.float64)
    orth = orth - (orth @ u) / (k @ u) * k  # C-orthogonal to k*: kᵀ C⁻¹ k* = 0
    assert (delta @ orth).abs().max() < 1e-9


def test_rome_edit_makes_the_edited_key_map_to_the_optimised_value():
    lm = tiny(n_layer=2)
    method = make("rome", lm, key_position="prompt_last")
    name, module = method.names[0], method.modules[0]
    site = method.sites([EDIT])[0]
    key = keys_at(lm, [name], [site])[name][0]
    _, value, _ = optimise_value(lm, name, site, method.value_settings())  # deterministic
    before = layers.weight_out_in(module).detach().clone()
    receipt = method.edit([EDIT])
    assert receipt.loss_after < receipt.loss_before
    with torch.no_grad():
        assert torch.allclose(layers.apply_linear(module, key), value, atol=1e-4, rtol=1e-4)
        change = layers.weight_out_in(module).double() - before.double()
        assert torch.linalg.matrix_rank(change, rtol=1e-4) == 1


def test_key_statistics_are_computed_once_then_read_from_the_cache(tmp_path, monkeypatch):
    calls = []
    measure = stats._measure
    monkeypatch.setattr(stats, "_measure", lambda *a: calls.append(a[1]) or measure(*a))
    first = make("memit", tiny(), tmp=tmp_path)
    assert calls == [first.names] and first.info["cached"]
    assert not any(c["read"] for c in first.info["layers"].values())
    assert all(c["tokens"] > 0 and c["seconds"] >= 0 for c in first.info["layers"].values())
    second = make("memit", tiny(), tmp=tmp_path)
    assert calls == [first.names]  # nothing measured again
    assert all(c["read"] for c in second.info["layers"].values())
    for n in first.names:
        assert torch.equal(first.cov[n], second.cov[n])
    rome = make("rome", tiny(), tmp=tmp_path)  # its layer is one of MEMIT's: read back
    assert calls == [first.names] and all(c["read"] for c in rome.info["layers"].values())
    make("rome", tiny(), corpus=SMALL, tmp=tmp_path)  # another corpus: another entry
    assert len(calls) == 2


def test_a_corpus_file_is_not_read_again_once_its_statistics_and_prefixes_are_cached(
        tmp_path, monkeypatch):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(LARGE), encoding="utf-8")
    first = make("alphaedit", tiny(), corpus=str(corpus), tmp=tmp_path)
    assert first.info["entry"].startswith("mom2-file-") and first.prefixes

    def unread(self):
        raise AssertionError("the corpus was read")
    monkeypatch.setattr(AttachContext, "corpus_texts", unread)
    second = make("alphaedit", tiny(), corpus=str(corpus), tmp=tmp_path)
    assert second.prefixes == first.prefixes and second.info["texts"] == len(LARGE)
    assert all(torch.equal(first.cov[n], second.cov[n]) for n in first.names)
    assert all(torch.equal(a, b) for a, b in zip(first.projections, second.projections))


def test_no_corpus_is_refused_unless_the_fallback_is_asked_for():
    with pytest.raises(LifelongError, match="corpus"):
        make("rome", tiny(), corpus=())
    method = make("rome", tiny(), corpus=(), stats_fallback=True)
    assert method.info["source"].startswith("identity")
    assert make("rome", tiny(), corpus=(), covariance="identity").info["source"].startswith(
        "identity")


def test_lookup_is_the_subject_last_token_or_a_declared_fallback():
    lm = tiny()
    assert subject_last(lm, "Aldric works for", "Aldric") == 0
    assert subject_last(lm, "The employer of Aldric is", "Aldric") == 3
    assert subject_last(lm, "Aldric works for", "Brenna") is None
    method = make("rome", lm, layer=0)
    assert method.edit([EDIT]).detail["lookup"] == "subject_last"
    no_subject = EditRequest("e9", "Brenna was born in", "Kyoto", "Brenna|city")
    assert method.edit([no_subject]).detail["lookup"] == "prompt_last (fallback: no subject)"


def preserved_ratio(name: str) -> float:
    """‖ΔW U‖ / ‖ΔW‖ at every edited layer (the largest), U the preserved keys' subspace: the
    eigenvectors of C (over the corpus keys) whose eigenvalue is at least the null-space
    threshold, i.e. the directions the corpus's keys occupy. ΔW is each layer's update as
    solved (float64), before it is rounded into the float32 weight."""
    lm = tiny(n_layer=3)
    method = make(name, lm, key_position="prompt_last", layers=(0, 1))
    solved = []
    solve = method._solve
    method._solve = lambda i, k, r: solved.append(solve(i, k, r)) or solved[-1]
    method.edit_batch(EDITS)
    worst = 0.0
    for n, delta in zip(method.names, solved):
        vals, vecs = torch.linalg.eigh(method.cov[n].double())
        preserved = vecs[:, vals >= 2e-2 * vals.mean()]
        assert 0 < preserved.shape[1] < vecs.shape[1] and delta.norm() > 0
        worst = max(worst, float((delta @ preserved).norm() / delta.norm()))
    return worst


@pytest.mark.parametrize("name", ["alphaedit", pytest.param("memit", marks=pytest.mark.xfail(
    strict=True, reason="MEMIT's update is not projected: it moves the preserved keys"))])
def test_the_update_leaves_preserved_keys_untouched(name):
    """AlphaEdit: ΔW k = 0 for every key in the preserved subspace (the null-space
    projection); the same test fails for MEMIT, whose update only weighs those keys (its
    ratio on this model: ~3e-5)."""
    assert preserved_ratio(name) < 1e-9


def test_alphaedit_accumulates_earlier_edits_keys():
    lm = tiny(n_layer=3)
    method = make("alphaedit", lm, corpus=SMALL, key_position="prompt_last", layers=(0, 1))
    assert all(float(k.abs().sum()) == 0 for k in method.kp)
    method.edit_batch(EDITS[:2])
    grams = [k.clone() for k in method.kp]
    assert all(torch.linalg.matrix_rank(g) == 2 for g in grams)
    method.edit_batch(EDITS[2:])
    assert all(torch.linalg.matrix_rank(g) == 3 for g in method.kp)
    method.retract("e3")  # replay: back to the first batch's keys
    assert all(torch.allclose(g, k) for g, k in zip(grams, method.kp))


def earlier_edits_drift(accumulate: bool) -> list[float]:
    """Per layer, ‖ΔW₂ K₁‖ / (‖ΔW₂‖ ‖K₁‖): how much a second batch's update moves the first
    batch's keys K₁ (read at each layer just before its update), with AlphaEdit's
    accumulation of earlier keys or with it forgotten."""
    lm = tiny(n_layer=3)
    method = make("alphaedit", lm, key_position="prompt_last", layers=(0, 1), l2=1e-3)
    method.edit_batch(EDITS[:2])
    if not accumulate:
        method._reset()
    solve, out = method._solve, []

    def measured(i, keys, resid):
        name = method.names[i]
        earlier = keys_at(lm, [name], method.sites(EDITS[:2]))[name].double()
        delta = solve(i, keys, resid)
        out.append(float((delta @ earlier.T).norm() / (delta.norm() * earlier.norm())))
        return delta
    method._solve = measured
    method.edit_batch(EDITS[2:])
    return out


def test_alphaedit_later_updates_leave_earlier_edits_keys_nearly_alone():
    """The paper's K_p term: with it a second update moves the first batch's keys' outputs
    at least 4x less than without it (α small against this tiny model's keys: with the
    paper's α = 10 the term is negligible here, as it is on the built-in model)."""
    kept, forgotten = earlier_edits_drift(True), earlier_edits_drift(False)
    assert all(k < 0.25 * f for k, f in zip(kept, forgotten)), (kept, forgotten)


def test_memit_spreads_the_update_over_every_layer_of_its_range():
    lm = tiny(n_layer=4)
    method = make("memit", lm, key_position="prompt_last", layers=(0, 1, 2))
    assert method.names == ["layers.0.mlp.out", "layers.1.mlp.out", "layers.2.mlp.out"]
    untouched = layers.weight_out_in(layers.resolve(lm.model, "layers.3.mlp.out")).detach().clone()
    before = [w.detach().clone() for w in method.weights()]
    receipts = method.edit_batch(EDITS[:2])
    assert len(receipts) == 2 and all(len(r.detail["update_norms"]) == 3 for r in receipts)
    for w, b in zip(method.weights(), before):
        assert (w.detach() - b).norm() > 1e-6 * b.norm()
    assert torch.equal(layers.weight_out_in(layers.resolve(lm.model, "layers.3.mlp.out")),
                       untouched)


def test_memit_default_range_ends_at_the_edit_layer():
    lm = tiny(n_layer=4)  # default edit layer of 4 layers: 2
    assert make("memit", lm, prefixes=0).layer_ids == [0, 1, 2]
    assert make("memit", lm, prefixes=0, span=2).layer_ids == [1, 2]
    assert make("rome", lm, prefixes=0).layer_ids == [2]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", ["rome", "memit", "alphaedit"])
def test_every_family_edits_its_own_mlp_projection_and_detaches_exactly(family, name):
    lm = tiny(family, n_layer=2)
    state = {k: v.clone() for k, v in lm.model.state_dict().items()}
    where = {"layer": 0} if name == "rome" else {"layers": (0, 1)}
    method = make(name, lm, key_position="prompt_last", steps=2, **where)
    method.edit_batch(EDITS[:2])
    changed = {k for k, v in lm.model.state_dict().items() if not torch.equal(v, state[k])}
    real = {layers.module_path(lm.model, n) + ".weight" for n in method.names}
    assert changed and changed <= real
    method.detach()
    assert all(torch.equal(v, state[k]) for k, v in lm.model.state_dict().items())


@pytest.mark.parametrize("name", ["rome", "memit", "alphaedit"])
def test_an_edit_at_the_subject_of_a_last_block_is_said_once_per_run(name, capsys):
    """On a one-layer model the subject's last token feeds no later block: the edit cannot
    move the answer (its loss stays), and the method says so once over a run's chunks."""
    lm = tiny(n_layer=1)
    cls = available_methods()[name]
    ctx = AttachContext(seed=0, corpus=LARGE)  # one memo, as the chunks of one run share
    for _ in range(2):
        method = cls(from_mapping(cls.Config, CHEAP), seed=0)
        method.attach(lm, ctx)
        receipt = method.edit([EDIT])
        assert receipt.loss_after == pytest.approx(receipt.loss_before, abs=1e-6)
        method.detach()
    assert capsys.readouterr().err.count("no later block reads that position") == 1
    below_last = {"layer": 0} if name == "rome" else {"layers": (0,)}
    for model, settings in ((lm, {"key_position": "prompt_last"}),  # where the answer is read
                            (tiny(n_layer=2), below_last)):
        method = cls(from_mapping(cls.Config, {**CHEAP, **settings}), seed=0)
        method.attach(model, AttachContext(seed=0, corpus=LARGE))
        receipt = method.edit([EDIT])
        assert abs(receipt.loss_after - receipt.loss_before) > 1e-3  # the edit reaches it
        method.detach()
    assert "no later block" not in capsys.readouterr().err


def test_alphaedit_chunks_of_one_run_share_its_null_space_projection(monkeypatch):
    """One eigendecomposition per (C, threshold) over the contexts sharing a memo (a run's
    chunks), and the same projection as a fresh attach computes."""
    import lifelong.methods.alphaedit as alphaedit

    calls = []
    eigh = torch.linalg.eigh
    monkeypatch.setattr(alphaedit.torch.linalg, "eigh", lambda c: calls.append(1) or eigh(c))
    lm = tiny(n_layer=2)
    cls = available_methods()["alphaedit"]
    ctx = AttachContext(seed=0, corpus=LARGE)
    fresh = make("alphaedit", lm, key_position="prompt_last")
    n = len(fresh.names)  # one per edited layer
    assert len(calls) == n
    for threshold, expected in ((0.02, 2 * n), (0.02, 2 * n), (0.5, 3 * n)):
        method = cls(from_mapping(cls.Config, {**CHEAP, "null_threshold": threshold}), seed=0)
        method.attach(lm, ctx)
        assert len(calls) == expected
        if threshold == 0.02:
            assert all(torch.equal(a, b) for a, b in zip(method.projections, fresh.projections))
        method.detach()
    fresh.detach()
    # another corpus, another C: the shared memo does not hand it the first C's projection
    other = cls(from_mapping(cls.Config, CHEAP), seed=0)
    other.attach(lm, AttachContext(seed=0, corpus=SMALL, memo=ctx.memo))
    assert len(calls) == 4 * n
    other.detach()


def test_alphaedit_says_when_its_null_space_is_empty_and_then_edits_nothing(capsys):
    """A threshold below every eigenvalue of C leaves no null space: every update projects to
    zero. The run says so once (not silently recording edits that change nothing)."""
    lm = tiny(n_layer=2)
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    method = make("alphaedit", lm, key_position="prompt_last", null_threshold=1e-9)
    assert set(method.info["null_space_dims"].values()) == {0}
    assert "the null space is empty" in capsys.readouterr().err
    method.edit([EDIT])
    assert all(torch.equal(v, before[k]) for k, v in lm.model.state_dict().items())
    method.detach()
    roomy = make("alphaedit", lm, key_position="prompt_last", null_threshold=0.5)
    assert min(roomy.info["null_space_dims"].values()) > 0
    assert "null space is empty" not in capsys.readouterr().err
    roomy.detach()
