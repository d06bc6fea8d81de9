"""An interrupted training of MEND's editor, KE's hyper-network or SERAC's parts resumes where it stopped:
interrupted after every update in turn (the space is small: 4 updates), the next attach with
the same cache ends with the tensors, losses and update count of an uninterrupted training,
and the resume point is gone once the trained network is cached. A resume point that cannot
be read is ignored (the training starts over, with the same result)."""

from __future__ import annotations

import pytest
import torch
from editor_world import TRAIN, tiny

from lifelong.config import from_mapping
from lifelong.methods import AttachContext
from lifelong.methods._common.checkpoint import Checkpoint
from lifelong.methods.ke import KeConfig, KnowledgeEditor
from lifelong.methods.mend import Mend, MendConfig

pytestmark = pytest.mark.usefixtures("single_thread")

STEPS = 4
METHODS = {"mend": (Mend, MendConfig, {"steps": STEPS, "accumulate": 2}),
           "ke": (KnowledgeEditor, KeConfig, {"steps": STEPS, "kl_inputs": 2})}


class Interrupted(Exception):
    """Stands for Ctrl-C or a kill between two updates."""


def attach(name: str, cache) -> Mend | KnowledgeEditor:
    cls, config, settings = METHODS[name]
    method = cls(from_mapping(config, settings), seed=0)
    method.attach(tiny("gpt2"), AttachContext(seed=0, train_split=TRAIN, cache_dir=str(cache),
                                              model_fingerprint="tiny-gpt2"))
    return method


def interrupted_after(updates: int, training, monkeypatch) -> None:
    """Run `training` with a save after every update and an interruption after `updates`."""
    saves = []

    def at_update(self, state):
        self.save(state())
        saves.append(1)
        if len(saves) == updates:
            raise Interrupted
    with monkeypatch.context() as patch:
        patch.setattr(Checkpoint, "at_update", at_update)
        with pytest.raises(Interrupted):
            training()


def resume_points(cache) -> list:
    return sorted(cache.rglob("*-resume*.pt"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Each method trained once without interruption: (its tensors, its training record)."""
    out = {}
    for name in METHODS:
        method = attach(name, tmp_path_factory.mktemp(f"{name}-whole"))
        out[name] = (method.editor.tensors(), method.training)
    return out


@pytest.mark.parametrize("after", range(1, STEPS))
@pytest.mark.parametrize("name", list(METHODS))
def test_a_training_interrupted_after_any_update_resumes_to_the_same_tensors(
        name, after, uninterrupted, tmp_path, monkeypatch):
    interrupted_after(after, lambda: attach(name, tmp_path), monkeypatch)
    assert len(resume_points(tmp_path)) == 1
    assert not list(tmp_path.rglob("editor-*.safetensors"))  # nothing half-trained is cached
    method = attach(name, tmp_path)
    tensors, record = uninterrupted[name]
    got = method.editor.tensors()
    assert got.keys() == tensors.keys() and all(torch.equal(got[k], tensors[k]) for k in got)
    assert method.training.steps == STEPS and method.training.losses == record.losses
    assert resume_points(tmp_path) == []
    assert attach(name, tmp_path).info["editor"] == "read from the cache"


def test_an_unreadable_resume_point_is_ignored(uninterrupted, tmp_path, monkeypatch):
    def at_update(self, state):
        self.save(state())
        raise Interrupted
    with monkeypatch.context() as patch:
        patch.setattr(Checkpoint, "at_update", at_update)
        with pytest.raises(Interrupted):
            attach("ke", tmp_path)
    [point] = resume_points(tmp_path)
    point.write_bytes(b"not a checkpoint")
    method = attach("ke", tmp_path)
    tensors, record = uninterrupted["ke"]
    assert all(torch.equal(method.editor.tensors()[k], v) for k, v in tensors.items())
    assert method.training.losses == record.losses and resume_points(tmp_path) == []


def test_a_resume_point_is_written_only_when_its_interval_has_passed(tmp_path):
    calls = []

    def state():
        calls.append(1)
        return {"losses": [float(len(calls))]}
    patient = Checkpoint(tmp_path / "patient.pt", every_seconds=3600.0)
    patient.at_update(state)
    assert not calls and patient.load() is None  # nothing built, nothing written
    eager = Checkpoint(tmp_path / "eager.pt", every_seconds=0.0)
    eager.at_update(state)
    eager.at_update(state)
    assert len(calls) == 2 and eager.load() == {"losses": [2.0]}
    eager.clear()
    assert eager.load() is None and not list(tmp_path.iterdir())
    Checkpoint(None, every_seconds=0.0).at_update(state)  # no cache: nowhere to write
    assert len(calls) == 2


SERAC_STEPS = {"cls_steps": 3, "cf_steps": 3, "batch_size": 4}


def attach_serac(cache):
    from test_serac import make, tiny
    return make(tiny(), cache, **SERAC_STEPS)


@pytest.fixture(scope="module")
def serac_whole(tmp_path_factory):
    m = attach_serac(tmp_path_factory.mktemp("serac-whole"))
    return m.digest, m.cls_losses, m.cf_losses


@pytest.mark.parametrize("after", range(1, 6))
def test_serac_interrupted_after_any_update_of_either_part_resumes_to_the_same_parts(
        after, serac_whole, tmp_path, monkeypatch):
    """Updates 1-3 train the scope classifier, 4-6 the counterfactual model; an
    interruption after any of the first five resumes to the parts of an uninterrupted
    training (the classifier is not retrained when the second part is interrupted)."""
    interrupted_after(after, lambda: attach_serac(tmp_path), monkeypatch)
    assert len(resume_points(tmp_path)) == (1 if after <= 3 else 2)
    assert not list(tmp_path.rglob("parts-*.safetensors"))  # nothing half-trained is cached
    calls = []
    monkeypatch.setattr(Checkpoint, "at_update", lambda self, state: calls.append(1))
    method = attach_serac(tmp_path)
    assert len(calls) == 6 - after  # only the updates left were taken
    assert (method.digest, method.cls_losses, method.cf_losses) == serac_whole
    assert resume_points(tmp_path) == []
