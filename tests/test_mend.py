"""MEND on tiny random-init models (GPT-2 and LLaMA configs) with a synthetic train split:
the gradient factors, meta-training (the loss falls; a trained editor edits better than an
untrained one), where an edit lands, detach, state, exact replay retraction, the editor's
cache, and the refusal without a train split. Independent of the shared contract fixtures
(which attach without a train split)."""

from __future__ import annotations

import pytest
import torch
from editor_world import EDITS, HELD, TRAIN, mean, tiny

from lifelong import layers
from lifelong.config import from_mapping
from lifelong.errors import LifelongError
from lifelong.methods import AttachContext
from lifelong.methods.mend import Mend, MendConfig
from lifelong.methods.mend import method as mend_method
from lifelong.methods.mend.train import factors
from lifelong.model import LM
from lifelong.scoring import batch_target_loss, encode_pairs

pytestmark = pytest.mark.usefixtures("single_thread")

#: 24 updates of 2 edits: four passes over the 12 training edits
CHEAP = {"steps": 24, "accumulate": 2}



def make(lm: LM, cache=None, split=TRAIN, seed: int = 0, **settings) -> Mend:
    method = Mend(from_mapping(MendConfig, {**CHEAP, **settings}), seed=seed)
    method.attach(lm, AttachContext(seed=seed, train_split=split,
                                    cache_dir=str(cache) if cache else "",
                                    model_fingerprint=f"tiny-{lm.model.config.model_type}"
                                    if cache else ""))
    return method


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One cache for the module: each family's editor is trained once, then read back."""
    return tmp_path_factory.mktemp("mend-cache")




@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_the_factors_rows_sum_to_the_fine_tuning_gradient(family):
    """Σ_rows δ uᵀ is the gradient of the target loss w.r.t. each edited weight, (out, in)
    for GPT-2's Conv1D as for nn.Linear."""
    lm = tiny(family)
    modules = [layers.resolve(lm.model, f"layers.{i}.mlp.{p}") for i in (1, 2) for p in ("in", "out")]
    batch = encode_pairs(lm, [r.prompt for r in EDITS[:2]], [r.target for r in EDITS[:2]])
    loss, facs = factors(lm, modules, batch)
    weights = [m.weight for m in modules]
    grads = torch.autograd.grad(batch_target_loss(lm, batch), weights)
    for m, g, (u, d) in zip(modules, grads, facs):
        g_out_in = g.T if layers.weight_out_in(m) is not m.weight else g
        assert torch.allclose(d.T @ u, g_out_in, atol=1e-6, rtol=1e-4)
    assert all(p.grad is None for p in lm.model.parameters())


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_training_lowers_the_loss_and_a_trained_editor_edits_better(family, cache):
    lm = tiny(family)
    method = make(lm, cache)
    assert method.info["editor"] == "trained" and method.training.steps == CHEAP["steps"]
    losses = method.training.losses
    assert mean(losses[-6:]) < mean(losses[:6])  # the last pass over the split vs the first

    def gain(m: Mend) -> float:
        """Mean fall of the target NLL (log of the target's probability rising) per edit."""
        out = []
        for r in HELD:
            receipt = m.edit([r.request])
            out.append(receipt.loss_before - receipt.loss_after)
            m.detach()
        return mean(out)

    trained = gain(method)
    assert trained > 0
    untrained = method.fresh_editor()  # the paper's init: identity network, initial η ...
    own = untrained.state_dict()
    for key, value in method.editor.state_dict().items():
        if key.rsplit(".", 1)[-1] in ("count", "mean", "m2"):  # ... on the same statistics
            own[key].copy_(value)
    method.editor = untrained
    assert trained > gain(method)


def test_the_editor_is_cached_by_model_settings_and_split(tmp_path, monkeypatch, capsys):
    calls = []
    train = mend_method.train_editor
    monkeypatch.setattr(mend_method, "train_editor", lambda *a, **k: calls.append(1) or train(*a, **k))
    cheap = {"steps": 3, "accumulate": 1}
    first = make(tiny(), tmp_path, **cheap)
    assert len(calls) == 1 and first.info["editor"] == "trained"
    assert "editor trained, 3 steps" in capsys.readouterr().err
    second = make(tiny(), tmp_path, **cheap)
    assert len(calls) == 1 and second.info["editor"] == "read from the cache"
    assert "read from the cache" not in capsys.readouterr().err  # silent: chunks re-attach
    assert all(torch.equal(a, b) for a, b in zip(first.editor.tensors().values(),
                                                  second.editor.tensors().values()))
    second.edit([EDITS[0]])  # a read editor edits (it is not left requiring gradients)
    make(tiny(), tmp_path, **cheap, retract="unsupported")  # retraction does not shape it
    assert len(calls) == 1
    make(tiny(), tmp_path, split=TRAIN[:6], **cheap)  # another split: another entry
    make(tiny(), tmp_path, **{**cheap, "lr": 1e-3})  # another setting: another entry
    make(tiny(), tmp_path, seed=1, **cheap)  # another training seed: another entry
    assert len(calls) == 4


def test_training_is_deterministic_from_the_seed():
    cheap = {"steps": 2, "accumulate": 2}
    a, b = make(tiny(), **cheap), make(tiny(), **cheap)
    assert a.training.losses == b.training.losses
    assert all(torch.equal(x, y) for x, y in zip(a.editor.tensors().values(),
                                                  b.editor.tensors().values()))
    c = make(tiny(), editor_seed=5, **cheap)
    assert not torch.equal(a.editor.tensors()["edit_lrs"], c.editor.tensors()["edit_lrs"])


def test_no_train_split_is_refused_in_one_line_naming_the_setting():
    with pytest.raises(LifelongError, match=r"stream\.train_file") as err:
        make(tiny(), split=())
    assert "\n" not in str(err.value)
