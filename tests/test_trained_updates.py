"""What MEND and KE share through `_common/trained.TrainedUpdates` (and `replayed`), on tiny
random-init GPT-2 models with the synthetic train split of `editor_world`: only the chosen
weights change and detach restores them, the state round trip carries the trained network,
retraction by replay is exact (or refused as configured). Each method's own algorithm is
tested in tests/test_mend.py and tests/test_ke.py."""

from __future__ import annotations

import pytest
import torch
from editor_world import EDITS, TRAIN, logits, tiny

from lifelong import layers
from lifelong.config import from_mapping
from lifelong.errors import NotSupported
from lifelong.methods import AttachContext, UnknownEdit
from lifelong.methods.ke import KeConfig, KnowledgeEditor
from lifelong.methods.mend import Mend, MendConfig
from lifelong.model import LM

pytestmark = pytest.mark.usefixtures("single_thread")

#: (class, config, cheap training settings) per method
METHODS = {"mend": (Mend, MendConfig, {"steps": 24, "accumulate": 2}),
           "ke": (KnowledgeEditor, KeConfig, {"steps": 48})}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One cache for the module: each method's network is trained once, then read."""
    return tmp_path_factory.mktemp("trained-cache")


def make(name: str, lm: LM, cache=None, **settings):
    cls, config, cheap = METHODS[name]
    method = cls(from_mapping(config, {**cheap, **settings}), seed=0)
    method.attach(lm, AttachContext(seed=0, train_split=TRAIN,
                                    cache_dir=str(cache) if cache else "",
                                    model_fingerprint="tiny-gpt2" if cache else ""))
    return method


@pytest.mark.parametrize("name", METHODS)
def test_only_the_chosen_weights_change_and_detach_restores_them_exactly(name, cache):
    lm = tiny()
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    flags = [p.requires_grad for p in lm.model.parameters()]
    base = logits(lm)
    method = make(name, lm, cache, layers=(-2, -1), parts="out")
    assert method.names == ["layers.1.mlp.out", "layers.2.mlp.out"]
    receipts = method.edit_batch(EDITS[:2])
    assert len(receipts) == 2 and all(r.detail["batch"] == 2 for r in receipts)
    assert all(r.loss_after < r.loss_before for r in receipts)
    method.edit([EDITS[2]])
    chosen = {f"{layers.module_path(lm.model, n)}.weight" for n in method.names}
    changed = {n for n, p in lm.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == chosen
    assert method.footprint() == sum(before[n].numel() * 4 for n in chosen) + \
        sum(t.numel() * t.element_size() for t in method.editor.state_dict().values())
    method.detach()
    assert all(torch.equal(p, before[n]) for n, p in lm.model.named_parameters())
    assert torch.equal(logits(lm), base)
    assert [p.requires_grad for p in lm.model.parameters()] == flags


@pytest.mark.parametrize("name", METHODS)
def test_state_round_trip_gives_identical_outputs_and_carries_the_network(name, cache):
    lm = tiny()
    method = make(name, lm, cache)
    for r in EDITS[:2]:
        method.edit([r])
    state = method.state_dict()
    expected = logits(lm)
    lm2 = tiny()
    other = make(name, lm2, editor_seed=7, steps=1)  # another network, replaced below
    other.load_state_dict(state)
    assert torch.equal(logits(lm2), expected) and other.log == method.log
    method.edit([EDITS[2]])
    other.edit([EDITS[2]])
    assert torch.equal(logits(lm2), logits(lm))


@pytest.mark.parametrize("name", METHODS)
def test_replay_retraction_is_exact(name, cache):
    lm = tiny()
    method = make(name, lm, cache)
    method.edit([EDITS[0]])
    method.edit([EDITS[1]])
    after_two = [w.detach().clone() for w in method.weights()]
    method.edit([EDITS[2]])
    method.retract(EDITS[2].edit_id)  # the newest: as before it
    assert all(torch.equal(w, a) for w, a in zip(method.weights(), after_two))
    method.edit([EDITS[2]])
    method.retract(EDITS[0].edit_id)  # an older one: as if it had never been made
    fresh = make(name, tiny(), cache)
    fresh.edit([EDITS[1]])
    fresh.edit([EDITS[2]])
    assert all(torch.equal(w, f) for w, f in zip(method.weights(), fresh.weights()))
    with pytest.raises(UnknownEdit, match="no-such-edit"):
        method.retract("no-such-edit")
    with pytest.raises(UnknownEdit):
        method.retract(EDITS[0].edit_id)
    refusing = make(name, tiny(), cache, retract="unsupported")
    refusing.edit([EDITS[0]])
    assert refusing.retraction is None
    with pytest.raises(NotSupported, match=name):
        refusing.retract(EDITS[0].edit_id)
