"""InstructEdit and multi-task train splits: which instruction each training record and each
stream edit gets (the held-out one never in training), that the instruction reaches the
editor (it changes the update), the cache (its own folder; the test-time settings do not
retrain), and `lifelong streams merge` (tags, balance, order, one-line refusals)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys

import pytest
import torch
from editor_world import EDITS, TRAIN, tiny
from hypothesis import given
from hypothesis import strategies as st

from lifelong.config import from_mapping
from lifelong.errors import LifelongError
from lifelong.events import Edit
from lifelong.methods import AttachContext, available_methods
from lifelong.methods.context import read_train_split
from lifelong.methods.instructedit import InstructEdit, InstructEditConfig
from lifelong.methods.instructedit.instructions import (
    HELD_OUT,
    TASKS,
    instructed,
    training_description,
)
from lifelong.methods.mend import Mend, MendConfig
from lifelong.methods.mend import method as mend_method
from lifelong.methods.mend.train import split_digest
from lifelong.stream import dump_stream, parse_stream
from lifelong.streamtasks import merge_tasks

pytestmark = pytest.mark.usefixtures("single_thread")

CHEAP = {"steps": 3, "accumulate": 1}
#: the train split with half its records tagged as CounterFact's, half untagged
MIXED = tuple(dataclasses.replace(r, task="counterfact") if i % 2 else r for i, r in enumerate(TRAIN))


def make(cls, split=MIXED, cache=None, seed: int = 0, **settings):
    cfg = InstructEditConfig if cls is InstructEdit else MendConfig
    method = cls(from_mapping(cfg, {**CHEAP, **settings}), seed=seed)
    method.attach(tiny(), AttachContext(seed=seed, train_split=split,
                                        cache_dir=str(cache) if cache else "",
                                        model_fingerprint="tiny" if cache else ""))
    return method


def test_it_is_registered_beside_mend():
    assert available_methods()["instructedit"] is InstructEdit
    assert issubclass(InstructEdit, Mend)


@given(st.sampled_from(sorted(TASKS)), st.integers(0, 2**63 - 1), st.text(min_size=1, max_size=12))
def test_training_never_draws_the_held_out_instruction(task, seed, record_id):
    k = training_description(task, seed, record_id)
    assert 0 <= k < len(TASKS[task].descriptions) - 1
    assert k == training_description(task, seed, record_id)  # from (seed, id) alone


def test_an_instructed_prompt_names_the_task_and_keeps_the_prompt_last():
    text = instructed("What do you think of Estero?", "convsent", 0, "Estero")
    assert text.startswith("Task: sentiment editing. ")
    assert text.endswith(" Input: What do you think of Estero?")
    assert "Estero" in text[:-len("What do you think of Estero?")]  # {topic} filled
    assert instructed("p", "zsre", HELD_OUT) != instructed("p", "zsre", 0)


def test_training_records_are_instructed_by_their_own_task_or_the_streams():
    method = make(InstructEdit, task="zsre")
    out = method.training_records(MIXED)
    for before, after in zip(MIXED, out):
        title = TASKS[before.task or "zsre"].title
        assert after.request.prompt.startswith(f"Task: {title}. ")
        assert after.request.prompt.endswith(f" Input: {before.request.prompt}")
        assert not any(d in after.request.prompt for d in
                       (t.descriptions[HELD_OUT] for t in TASKS.values()))
        assert after.rephrases == before.rephrases and after.locality == before.locality


def test_a_record_of_a_task_without_instructions_is_refused_in_one_line():
    bad = (dataclasses.replace(TRAIN[0], task="mquake"),) + TRAIN[1:]
    with pytest.raises(LifelongError, match="task 'mquake'.*known tasks: zsre") as err:
        make(InstructEdit, split=bad)
    assert "\n" not in str(err.value)


def _update(method) -> list[torch.Tensor]:
    before = [w.detach().clone() for w in method.weights()]
    method.edit([EDITS[0]])
    return [w.detach() - b for w, b in zip(method.weights(), before)]


def test_the_instruction_reaches_the_editor(tmp_path):
    """The same trained editor gives another update under another instruction, and MEND's
    (same seed, same split, no instructions) another again."""
    seen = _update(make(InstructEdit, cache=tmp_path))
    held = _update(make(InstructEdit, cache=tmp_path, instruction="held-out"))
    plain = _update(make(Mend, cache=tmp_path))
    assert all(s.abs().sum() > 0 for s in seen)
    assert not all(torch.allclose(a, b) for a, b in zip(seen, held))
    assert not all(torch.allclose(a, b) for a, b in zip(seen, plain))


def test_test_time_settings_read_the_cached_editor(tmp_path, monkeypatch):
    calls = []
    real = mend_method.train_editor
    monkeypatch.setattr(mend_method, "train_editor", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = make(InstructEdit, cache=tmp_path)
    make(InstructEdit, cache=tmp_path, instruction="held-out")
    make(InstructEdit, cache=tmp_path, task="counterfact")  # the tagged half decides nothing
    assert len(calls) == 2  # task instructs the untagged records: another split, trained
    assert first.info["editor"] == "trained"
    make(Mend, cache=tmp_path)  # MEND's own folder and entry
    assert len(calls) == 3
    assert (tmp_path / "tiny" / "instructedit").is_dir() and (tmp_path / "tiny" / "mend").is_dir()


def test_a_split_without_tasks_hashes_as_before_tasks_existed():
    rows = [[vars(r.request), list(r.rephrases), [list(p) for p in r.locality]] for r in TRAIN]
    old = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16]
    assert split_digest(TRAIN) == old
    assert split_digest(MIXED) != old


# ---- multi-task splits ---------------------------------------------------------------------
def _edits(prefix: str, n: int) -> list[Edit]:
    return [Edit(id=f"{prefix}{i}", t=float(i), prompt=f"{prefix} prompt {i}", target="x",
                 fact=f"{prefix}{i}|r", meta={"keep": i}) for i in range(n)]


def test_merge_tags_interleaves_and_balances():
    out = merge_tasks([("zsre", _edits("a", 3)), ("recent", _edits("b", 5))])
    assert [e.id for e in out] == ["zsre/a0", "recent/b0", "zsre/a1", "recent/b1", "zsre/a2", "recent/b2"]
    assert [e.meta["task"] for e in out] == ["zsre", "recent"] * 3
    assert all(e.meta["keep"] == int(e.id[-1]) for e in out)  # the rest of meta is kept
    assert [e.t for e in out] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    everything = merge_tasks([("zsre", _edits("a", 3)), ("recent", _edits("b", 5))], balance=False)
    assert len(everything) == 8 and everything[-1].id == "recent/b4"


def test_a_merged_file_reads_back_with_its_tasks(tmp_path):
    path = tmp_path / "multi.jsonl"
    dump_stream(merge_tasks([("zsre", _edits("a", 2)), ("convsent", _edits("b", 2))]), path)
    assert [r.task for r in read_train_split(str(path))] == ["zsre", "convsent", "zsre", "convsent"]
    assert parse_stream(path).events[0].id == "zsre/a0"


@pytest.mark.parametrize(("args", "message"), [
    (["--task", "zsre"], "--task 'zsre': expected NAME=FILE"),
    (["--task", "zsre=A", "--task", "zsre=A"], "a task is named twice"),
    (["--task", "empty=E"], "--task empty: its file holds no edit"),
])
def test_streams_merge_refuses_in_one_line(args, message, tmp_path):
    a, e = tmp_path / "a.jsonl", tmp_path / "e.jsonl"
    dump_stream(_edits("a", 2), a)
    e.write_text('{"kind": "query", "id": "q0", "t": 0, "prompt": "p", "answer": "a"}\n',
                 encoding="utf-8")  # a valid stream without an edit
    args = [x.replace("=A", f"={a}").replace("=E", f"={e}") for x in args]
    proc = subprocess.run([sys.executable, "-m", "lifelong.cli", "streams", "merge", *args,
                           "-o", str(tmp_path / "out.jsonl")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr
    assert not (tmp_path / "out.jsonl").exists()


def test_an_instruction_is_cut_from_its_start_to_fit_a_short_context():
    from conftest import make_tiny_model, tiny_tokenizer

    from lifelong.model import LM
    from lifelong.scoring import tokenize_pair
    method = make(InstructEdit)
    method.lm = LM(make_tiny_model("gpt2", n_layer=3, width=32, max_positions=14),
                   tiny_tokenizer(), "short", "")
    req = EDITS[0]
    text = method.edit_prompt(req)
    p, t = tokenize_pair(method.lm, text, req.target)
    assert len(p) + len(t) <= 14
    assert text.endswith(f"Input: {req.prompt}") or text.endswith(req.prompt)
    full = instructed(req.prompt, "zsre", 0, req.subject)
    assert full.endswith(text)  # what is kept is the instruction's end, then the prompt
    assert len(text) < len(full)


def test_the_shipped_multitask_split_is_what_merge_makes(tmp_path):
    from pathlib import Path
    real = Path(__file__).resolve().parent.parent / "streams" / "real"
    out = merge_tasks([(name, parse_stream(real / f).events) for name, f in (
        ("recent", "recent-train.jsonl"), ("counterfact", "counterfact-train-1001-2000.jsonl"),
        ("convsent", "convsent-test.jsonl"))])
    dump_stream(out, tmp_path / "m.jsonl")
    assert (tmp_path / "m.jsonl").read_bytes() == (real / "multitask-train.jsonl").read_bytes()


def test_an_instructed_stream_carries_one_instruction_and_keeps_locality_plain():
    from lifelong.events import Probe
    from lifelong.streamtasks import instruct_stream
    edit = Edit(id="e", t=0.0, prompt="Who made X?", target="Y", subject="X", rephrases=("X maker?",),
                locality=(Probe("Who made Z?", "W"),), portability=(Probe("Where is X's maker?", "V"),))
    (out,) = instruct_stream([edit], "zsre", 0)
    head = instructed("", "zsre", 0, "X").rstrip()
    assert out.prompt == f"{head} Who made X?" and out.rephrases == (f"{head} X maker?",)
    assert out.portability[0].prompt == f"{head} Where is X's maker?"
    assert out.locality == edit.locality
    assert out.meta["instruction"] == {"task": "zsre", "which": 0}
    with pytest.raises(LifelongError, match="no instructions"):
        instruct_stream([edit], "mquake", 0)


def test_in_stream_edits_on_the_streams_own_prompt():
    method = make(InstructEdit, instruction="in-stream")
    assert method.edit_prompt(EDITS[0]) == EDITS[0].prompt


@pytest.mark.parametrize(("name", "which"), [("instructed", 0), ("instructed-heldout", HELD_OUT)])
def test_the_shipped_counterfact_check_streams_are_records_1571_to_1670_instructed(name, which):
    from pathlib import Path
    real = Path(__file__).resolve().parent.parent / "streams" / "real"
    source = [e for e in parse_stream(real / "counterfact-train-1001-2000.jsonl").events][570:670]
    shipped = parse_stream(real / f"counterfact-train-1571-1670-{name}.jsonl").events
    assert [e.id for e in shipped] == [e.id for e in source]
    assert [e.prompt for e in shipped] == [instructed(e.prompt, "counterfact", which, e.subject)
                                           for e in source]
    assert [e.locality for e in shipped] == [e.locality for e in source]
