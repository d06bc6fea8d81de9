"""DEFER: learns an edit, keeps its gate closed on unrelated inputs, retracts exactly by
re-training on the remaining log (or refuses, when so configured)."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_model, tiny_tokenizer

from lifelong.errors import NotSupported
from lifelong.methods import AttachContext, EditRequest, build_method
from lifelong.model import LM
from lifelong.scoring import encode_pairs, forward_logits, score_pairs

pytestmark = pytest.mark.usefixtures("single_thread")

FAST = {"steps": 60, "lr": 0.05}
UNRELATED = ("Caspar speaks", "Delphine plays the", "Evander was born in", "Fenella works for",
             "The employer of Gideon is", "Hestia likes the colour", "Ignatius owns a")
EDITS = [EditRequest("e1", "Aldric works for", "Zentro", "Aldric|employer"),
         EditRequest("e2", "Brenna was born in", "Kyoto", "Brenna|city")]


def fresh_lm() -> LM:
    return LM(make_tiny_model("gpt2", n_layer=2, width=32), tiny_tokenizer(), "tiny", "")


def defer(lm: LM, **settings):
    d = build_method("defer", {**FAST, **settings}, 0)
    d.attach(lm, AttachContext(seed=0, unrelated_prompts=UNRELATED))
    return d


@torch.no_grad()
def logits(lm: LM, prompts) -> torch.Tensor:
    ids, mask, end, _, _ = encode_pairs(lm, list(prompts), ["Zentro"] * len(prompts))
    return forward_logits(lm, ids, mask, end)


def test_learns_the_edit_and_keeps_the_gate_closed_on_unrelated_inputs():
    lm = fresh_lm()
    before = logits(lm, UNRELATED)
    d = defer(lm)
    receipt = d.edit([EDITS[0]])
    assert receipt.loss_after < receipt.loss_before
    assert score_pairs(lm, [EDITS[0].prompt], [EDITS[0].target])[0].gen_exact
    assert (d.gate(d.negatives) < 0).all()
    assert torch.equal(logits(lm, UNRELATED), before)  # closed gate: bit-identical rows
    d.detach()
    assert torch.equal(logits(lm, UNRELATED), before)


def test_retract_retrains_to_the_never_edited_adaptor():
    lm = fresh_lm()
    d = defer(lm)
    for r in EDITS:
        d.edit([r])
    d.retract("e1")
    got = {k: v.clone() for k, v in d.params.items()}
    d.detach()
    ref = defer(lm)
    ref.edit([EDITS[1]])
    assert all(torch.equal(got[k], ref.params[k]) for k in got)


def test_retract_can_be_refused():
    d = defer(fresh_lm(), retract="unsupported")
    d.edit([EDITS[0]])
    with pytest.raises(NotSupported, match="entangled"):
        d.retract("e1")


def test_re_edit_trains_the_old_prompt_too():
    lm = fresh_lm()
    d = defer(lm, steps=60, use_fact_identity=True)
    d.edit([EditRequest("e1", "Aldric works for", "Zentro", "Aldric|employer")])
    d.edit([EditRequest("e2", "The employer of Aldric is", "Vantex", "Aldric|employer")])
    assert d.log[-1]["prompts"] == ["The employer of Aldric is", "Aldric works for"]
    assert len(d._positives()) == 2  # only the newest edit of the fact is a positive


@pytest.mark.parametrize("rate", [0.0, 0.5])
def test_gate_threshold_is_calibrated_on_held_out_unrelated_prompts(rate):
    """Half the pool trains the gate, the other half sets its threshold: after any edit at
    most floor(claim_rate x held-out) of those prompts open the gate, the threshold is never
    below 0, and it survives a state round trip; claim_rate 1 trains on the whole pool."""
    import math
    d = defer(fresh_lm(), claim_rate=rate, steps=5)  # few steps: the gate is still loose
    assert d.negatives.shape[0] == 4 and d.calibration.shape[0] == 3
    for r in EDITS:
        d.edit([r])
        assert d.threshold >= 0.0
        assert int((d.gate(d.calibration) > d.threshold).sum()) <= math.floor(rate * 3)
        # not vacuous: at the papers' threshold (0) more of them would open
        assert int((d.gate(d.calibration) > 0).sum()) > math.floor(rate * 3) and d.threshold > 0
    again = defer(fresh_lm(), claim_rate=rate, steps=5)
    again.load_state_dict(d.state_dict())
    assert again.threshold == d.threshold
    whole = defer(fresh_lm(), claim_rate=1.0)
    assert whole.negatives.shape[0] == len(UNRELATED) and whole.calibration.shape[0] == 0
    whole.edit([EDITS[0]])
    assert whole.threshold == 0.0


@pytest.mark.parametrize("pool", ["stream", "stream+train", "stream-or-train"])
def test_an_empty_stream_pool_is_filled_from_the_train_split(pool):
    """With no unrelated prompt from the stream, the train split's locality prompts (none of
    them probed) become the gate's negatives and calibration prompts (claim_pool default);
    with the stream's pool alone the gate has neither."""
    from lifelong.methods import TrainRecord
    split = tuple(TrainRecord(EditRequest(f"t{i}", f"p{i}", "x", f"f{i}"), (), ((p, "a"),))
                  for i, p in enumerate(UNRELATED))
    d = build_method("defer", {**FAST, "claim_pool": pool}, 0)
    d.attach(fresh_lm(), AttachContext(seed=0, train_split=split,
                                       probed_prompts=frozenset({UNRELATED[0]})))
    sizes = (d.negatives.shape[0], d.calibration.shape[0])
    assert sizes == ((0, 0) if pool == "stream" else (3, 3))
