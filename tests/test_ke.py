"""KE on tiny random-init models (GPT-2 and LLaMA configs) with a synthetic train split: the
update's form, training (the edit loss falls; a trained hyper-network edits held-out facts
better than an untrained one), the Lagrange multiplier, where an edit lands, detach, state,
exact replay retraction, the cache, determinism, and the refusal without a train split.
Independent of the shared contract fixtures."""

from __future__ import annotations

import pytest
import torch
from editor_world import EDITS, HELD, TRAIN, mean, tiny

from lifelong import layers
from lifelong.config import from_mapping
from lifelong.errors import LifelongError
from lifelong.methods import AttachContext
from lifelong.methods.ke import KeConfig, KnowledgeEditor
from lifelong.methods.ke import method as ke_method
from lifelong.methods.ke.train import condition_ids
from lifelong.model import LM
from lifelong.scoring import batch_target_loss, encode_pairs, tokenize_pair

pytestmark = pytest.mark.usefixtures("single_thread")

#: 48 updates of one edit: four passes over the 12 training edits
CHEAP = {"steps": 48}



def make(lm: LM, cache=None, split=TRAIN, seed: int = 0, **settings) -> KnowledgeEditor:
    method = KnowledgeEditor(from_mapping(KeConfig, {**CHEAP, **settings}), seed=seed)
    method.attach(lm, AttachContext(seed=seed, train_split=split,
                                    cache_dir=str(cache) if cache else "",
                                    model_fingerprint=f"tiny-{lm.model.config.model_type}"
                                    if cache else ""))
    return method


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One cache for the module: each family's hyper-network is trained once, then read."""
    return tmp_path_factory.mktemp("ke-cache")




def test_the_update_is_the_papers_gated_low_rank_form_of_the_gradient():
    """ΔW = σ(η) (softmax(α) γᵀ ⊙ G + softmax(β) δᵀ): linear in G, rank 1 at G = 0, and a
    multiple of G elementwise by a rank-1 matrix; the condition reads x, y and a."""
    lm = tiny()
    method = make(lm, steps=1)
    net, (d_out, d_in) = method.editor, method.weights()[0].shape
    cond = net.condition(layers.resolve(lm.model, "embed").weight, [5, 6, 7, 2, 8])
    g = torch.randn(d_out, d_in, generator=torch.Generator().manual_seed(0))
    zero, one, two = (net.deltas(cond, [x])[0] for x in (0 * g, g, 2 * g))
    assert torch.linalg.matrix_rank(zero) == 1
    assert torch.allclose(two - zero, 2 * (one - zero), atol=1e-6)
    assert torch.linalg.matrix_rank((one - zero) / g) == 1
    req = EDITS[0]
    x, a = tokenize_pair(lm, req.prompt, req.target)
    eos = lm.tok.eos_token_id
    assert condition_ids(lm, req, [9, 10]) == [*x, eos, 9, 10, eos, *a]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_an_edit_hands_the_hypernetwork_its_fine_tuning_gradient(family, monkeypatch):
    """The G of every edited weight is the gradient of the target's NLL at the current
    weights, (out, in) for GPT-2's Conv1D as for nn.Linear."""
    lm = tiny(family)
    method = make(lm, steps=1)
    method.edit([EDITS[1]])  # the gradient is taken at the weights as they are now
    req = EDITS[0]
    weights = [m.weight for m in method.modules]
    grads = torch.autograd.grad(batch_target_loss(lm, encode_pairs(lm, [req.prompt], [req.target])),
                                weights)
    seen = []
    deltas = method.editor.deltas
    monkeypatch.setattr(method.editor, "deltas", lambda c, g: seen.append(g) or deltas(c, g))
    method.edit([req])
    for m, g, got in zip(method.modules, grads, seen[0], strict=True):
        expected = g.T if layers.weight_out_in(m) is not m.weight else g
        assert torch.allclose(got, expected, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_training_lowers_the_loss_and_a_trained_hypernetwork_edits_better(family, cache):
    lm = tiny(family)
    method = make(lm, cache)
    assert method.info["editor"] == "trained" and method.training.steps == CHEAP["steps"]
    losses = method.training.losses
    assert mean(losses[-12:]) < mean(losses[:12])  # the last pass over the split vs the first
    assert method.training.multiplier > 1  # the KL exceeded the margin: λ rose from 1

    def gain(m: KnowledgeEditor) -> float:
        """Mean fall of the target NLL (log of the target's probability rising) per edit."""
        out = []
        for r in HELD:
            receipt = m.edit([r.request])
            out.append(receipt.loss_before - receipt.loss_after)
            m.detach()
        return mean(out)

    trained = gain(method)
    assert trained > 0.05
    method.editor = method.fresh_editor()  # the same initialisation, untrained
    method.editor.requires_grad_(False)
    assert trained > gain(method) + 0.05


def test_the_hypernetwork_is_cached_by_model_settings_and_split(tmp_path, monkeypatch, capsys):
    calls = []
    train = ke_method.train_hypernet
    monkeypatch.setattr(ke_method, "train_hypernet",
                        lambda *a, **k: calls.append(1) or train(*a, **k))
    cheap = {"steps": 3}
    first = make(tiny(), tmp_path, **cheap)
    assert len(calls) == 1 and first.info["editor"] == "trained"
    assert "hyper-network trained, 3 steps" in capsys.readouterr().err
    second = make(tiny(), tmp_path, **cheap)
    assert len(calls) == 1 and second.info["editor"] == "read from the cache"
    assert second.info["steps"] == 3 and "read from the cache" not in capsys.readouterr().err
    assert all(torch.equal(a, b) for a, b in zip(first.editor.tensors().values(),
                                                  second.editor.tensors().values()))
    second.edit([EDITS[0]])  # a read hyper-network edits (it is not left requiring gradients)
    make(tiny(), tmp_path, **cheap, retract="unsupported")  # retraction does not shape it
    assert len(calls) == 1
    make(tiny(), tmp_path, split=TRAIN[:6], **cheap)  # another split: another entry
    make(tiny(), tmp_path, **{**cheap, "margin": 1e-2})  # another setting: another entry
    make(tiny(), tmp_path, seed=1, **cheap)  # another training seed: another entry
    assert len(calls) == 4


def test_training_is_deterministic_from_the_seed_in_both_constraint_forms():
    for constraint in ("lagrangian", "weighted"):
        cheap = {"steps": 3, "accumulate": 2, "constraint": constraint}
        a, b = make(tiny(), **cheap), make(tiny(), **cheap)
        assert a.training.losses == b.training.losses and a.training.kls == b.training.kls
        assert all(torch.equal(x, y) for x, y in zip(a.editor.tensors().values(),
                                                      b.editor.tensors().values()))
        c = make(tiny(), editor_seed=5, **cheap)
        assert a.training.losses != c.training.losses


def test_no_train_split_is_refused_in_one_line_naming_the_setting():
    with pytest.raises(LifelongError, match=r"stream\.train_file") as err:
        make(tiny(), split=())
    assert "\n" not in str(err.value)
