"""The Python API (lifelong.open / load / Editor) and the saved-memory format, on the
built-in model: save -> load is bit-identical for every registered method, a memory refuses
any other base model, the flattener round-trips exactly or refuses, and the README's
"## Python API" example runs as written."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lifelong
from lifelong import memoryfile
from lifelong.errors import ConfigError, LifelongError, NotSupported
from lifelong.methods import EditRequest, TrainRecord, available_methods
from lifelong.model import builtin_dir, load_model
from lifelong.scoring import encode_pairs, forward_logits

pytestmark = [pytest.mark.usefixtures("single_thread"),
              pytest.mark.skipif(not (builtin_dir() / "config.json").exists(),
                                 reason="the built-in model is missing")]

ROOT = Path(__file__).resolve().parent.parent
# facts of the built-in world; the last edit re-edits the first fact through another prompt
EDITS = [("Brepik Shakes is a native of the city of", "Hanoi", "E0325|birth_city"),
         ("Dudre Kekrain is a native of the city of", "Montreal", "E0770|birth_city"),
         ("Brepik Shakes was born in", "Dublin", "E0325|birth_city")]
REPHRASE = "The city of birth of Dudre Kekrain is"
UNRELATED = ["Fapougu Drasi was born in", "Q: What sport is Zebol Roukroum known for? A:",
             "Shigok Drousheiso was born in", "The employer of Zebol Roukroum is"]
PROBES = [p for p, _, _ in EDITS] + [REPHRASE] + UNRELATED
#: a train split for methods that learn before the stream (MEND)
TRAIN = (TrainRecord(EditRequest("t0", UNRELATED[0], "Lima", "t0"), (UNRELATED[2],),
                     ((UNRELATED[3], "Oslo"),)),
         TrainRecord(EditRequest("t1", UNRELATED[1], "tennis", "t1"), (), ((UNRELATED[0], "Hanoi"),)))
#: small settings keep every method fast; a method added later runs with its defaults
FAST = {"none": {}, "ft": {"steps": 5}, "grace": {"steps": 10},
        "defer": {"steps": 5, "negatives": 8}, "wise-faiss": {"steps": 10},
        "wise": {"steps": 5, "prefixes": 1, "negatives": 2},
        "kn": {"ig_steps": 4}, "mend": {"steps": 2, "accumulate": 2}, "instructedit": {"steps": 2, "accumulate": 2}, "ke": {"steps": 2}, "serac": {"cls_steps": 20, "cf_steps": 5, "batch_size": 4},
        "rome": {"stats_texts": 2000, "prefixes": 2, "steps": 5},
        "memit": {"stats_texts": 2000, "prefixes": 2, "steps": 5},
        "alphaedit": {"stats_texts": 2000, "prefixes": 2, "steps": 5}}
#: further configurations whose state differs in shape (several memories, activation router
#: with margin terms trained on the unrelated prompts, moved keys, no retraction)
VARIANTS = [("wise-faiss", {"steps": 5, "mode": "retrieve", "memory_size": 1}),
            ("wise-faiss", {"steps": 5, "router": "activation", "negatives": 2}),
            ("wise", {"steps": 4, "mode": "retrieve", "memory_size": 1, "prefixes": 0}),
            ("grace", {"steps": 5, "conflict": "moving_average", "eps": 0.5}),
            ("defer", {"steps": 3, "negatives": 4, "retract": "unsupported"})]
CASES = [(m, FAST.get(m, {})) for m in sorted(available_methods())] + VARIANTS


def logits(ed: lifelong.Editor, prompts=PROBES) -> torch.Tensor:
    ids, mask, end, _, _ = encode_pairs(ed.lm, prompts, ["x"] * len(prompts))
    with torch.no_grad():
        return forward_logits(ed.lm, ids, mask, end)


def work(ed: lifelong.Editor) -> None:
    """Edits (a batch, a re-edit), a retraction where the method has one, a consolidation."""
    ed.edit([{"prompt": p, "target": t, "fact": f} for p, t, f in EDITS[:2]])
    ed.edit(EDITS[2][0], EDITS[2][1], fact=EDITS[2][2], edit_id="re-edit")
    ed.consolidate()
    ed.edit(REPHRASE, "Oslo", fact=EDITS[1][2])
    try:
        ed.retract("edit-2")
    except NotSupported:
        pass


@pytest.mark.parametrize(("method", "settings_"), CASES,
                         ids=[f"{m}-{i}" for i, (m, _) in enumerate(CASES)])
def test_save_then_load_is_bit_identical(method, settings_, tmp_path):
    ed = lifelong.open("builtin", method=method, settings=settings_, seed=3,
                       unrelated_prompts=UNRELATED, train_split=TRAIN)
    before = logits(ed)
    work(ed)
    ed.save(tmp_path / "mem")
    ed2 = lifelong.load(tmp_path / "mem")
    assert ed2.method == method and ed2.seed == 3 and ed2.log == ed.log
    assert ed2.memory.config == ed.memory.config
    assert ed2.context == ed.context
    after = logits(ed)
    # bit for bit on edited, rephrased and unrelated prompts
    assert torch.equal(logits(ed2), after)
    if method != "none":  # not vacuous: the edits changed the model
        assert not torch.equal(after[:3], before[:3])
    # the whole state came back, not only what serves: further edits agree too
    for e in (ed, ed2):
        e.edit("Shigok Drousheiso was born in", "Lima", edit_id="later")
    assert torch.equal(logits(ed2), logits(ed))
    assert ed.score(PROBES, ["Lima"] * len(PROBES)) == ed2.score(PROBES, ["Lima"] * len(PROBES))


def test_load_refuses_another_base_model(tmp_path):
    ed = lifelong.open("builtin", method="grace", settings=FAST["grace"])
    ed.edit(*EDITS[0][:2])
    ed.save(tmp_path / "mem")
    other = load_model()  # the built-in model with one weight nudged: same shapes, other model
    with torch.no_grad():
        other.model.transformer.h[0].mlp.c_proj.weight[0, 0] += 1e-3
    other.model.save_pretrained(tmp_path / "other")
    other.tok.save_pretrained(tmp_path / "other")
    with pytest.raises(LifelongError, match="fingerprint") as err:
        lifelong.load(tmp_path / "mem", model=str(tmp_path / "other"))
    assert "\n" not in str(err.value)
    meta = json.loads((tmp_path / "mem" / "memory.json").read_text())
    meta["model"]["fingerprint"] = "0" * 16  # a memory made on some other model
    (tmp_path / "mem" / "memory.json").write_text(json.dumps(meta))
    with pytest.raises(LifelongError, match="fingerprint 0000000000000000"):
        lifelong.load(tmp_path / "mem")


def test_edit_ids_requests_and_errors(tmp_path):
    ed = lifelong.open("builtin", method="ft", settings={"steps": 2})
    r = ed.edit(*EDITS[0][:2])
    assert r.applied and list(ed.edits) == ["edit-1"]
    ed.edit([(EDITS[1][0], EDITS[1][1]), {"prompt": REPHRASE, "target": "Oslo", "edit_id": "mine"}])
    ed.edit(EditRequest("req", "Shigok Drousheiso was born in", "Lima", "f"))
    assert list(ed.edits) == ["edit-1", "edit-2", "mine", "req"]
    assert ed.edits["edit-1"]["fact"] == EDITS[0][0]  # the fact defaults to the prompt
    with pytest.raises(NotSupported, match="ft cannot retract"):
        ed.retract("edit-1")
    assert [op["op"] for op in ed.log] == ["edit"] * 4  # a refused retraction is not logged
    bad = [((EDITS[0][0], "Oslo"), {"edit_id": "mine"}, "already used"),
           (([{"prompt": "x", "target": "y", "colour": 1}],), {}, "unknown key"),
           ((EDITS[0][0], ""), {}, "target must be a non-empty string"),
           (([42],), {}, "request 0 is a int"),
           (([],), {}, "no requests")]
    for args, kwargs, message in bad:
        with pytest.raises(LifelongError, match=message):
            ed.edit(*args, **kwargs)
    with pytest.raises(LifelongError, match="no active edit 'nope'"):
        ed.retract("nope")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    with pytest.raises(LifelongError, match="not empty"):
        ed.save(tmp_path / "full")
    with pytest.raises(LifelongError, match="not a saved memory"):
        lifelong.load(tmp_path / "full")
    with pytest.raises(ConfigError, match="unknown method"):
        lifelong.open("builtin", method="no-such-method")
    with pytest.raises(ConfigError, match="unknown key"):
        lifelong.open("builtin", method="ft", settings={"stepz": 1})
    ed.close()
    with pytest.raises(LifelongError, match="closed"):
        ed.edit(*EDITS[0][:2])


def test_retract_and_close_restore_the_base_model():
    ed = lifelong.open("builtin", method="grace", settings=FAST["grace"])
    base = logits(ed)
    ed.edit(*EDITS[0][:2])
    assert not torch.equal(logits(ed), base)
    ed.retract("edit-1")
    assert torch.equal(logits(ed), base) and ed.edits == {}
    ed.edit(*EDITS[1][:2])
    lm = ed.lm
    ed.close()
    ids, mask, end, _, _ = encode_pairs(lm, PROBES, ["x"] * len(PROBES))
    with torch.no_grad():
        assert torch.equal(forward_logits(lm, ids, mask, end), base)


def test_generate_is_the_generated_protocol():
    ed = lifelong.open("builtin", method="grace", settings=FAST["grace"])
    ed.edit(*EDITS[0][:2])
    s = ed.score([EDITS[0][0], UNRELATED[0]], ["Hanoi", "Valencia"])
    n = len(s[1].target_ids)
    assert ed.generate(EDITS[0][0], max_new_tokens=1) == "Hanoi" == s[0].gen_text
    assert ed.generate([UNRELATED[0]], max_new_tokens=n, stop_at_eos=False) == [s[1].gen_text]
    assert ed.generate(EDITS[0][0], max_new_tokens=0) == ""


def test_import_lifelong_stays_cheap():
    code = ("import sys, lifelong; assert 'torch' not in sys.modules; "
            "print(sorted({'open', 'load', 'Editor'} & set(dir(lifelong))))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "['Editor', 'load', 'open']"
    assert lifelong.open.__module__ == "lifelong.api"  # imported on first use


def readme_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert len(blocks) == 1, "the Python API section has one python block"
    return blocks[0]


def test_readme_python_api_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = compile(readme_example(), "README.md (## Python API)", "exec")
    exec(code, {"__name__": "readme"})  # noqa: S102 (the README's own example, run as written)
    printed = capsys.readouterr().out.splitlines()
    said = [line.split("# ", 1)[1].split(" (")[0] for line in readme_example().splitlines()
            if line.startswith("print(") and "# " in line]
    assert printed[:2] == said[:2]  # what the README's comments say the prints show
    assert sorted(p.name for p in (tmp_path / "mem").iterdir()) == [
        "memory.json", "tensors.safetensors"]


# ---- the flattener ------------------------------------------------------------------------------
def bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().flatten().contiguous().view(torch.uint8)


def same(a, b) -> bool:
    """Equal in type and value, bit for bit (nan equals nan), recursively."""
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(bits(a), bits(b))
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, np.generic):
        return a.dtype == b.dtype and a.tobytes() == b.tobytes()
    if isinstance(a, float):
        both_nan = math.isnan(a) and math.isnan(b)
        return both_nan or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(type(k) is type(j) for k, j in zip(a, b)) \
            and all(same(a[k], b[k]) for k in a)
    return a == b


def roundtrip(state, tmp_path: Path):
    memoryfile.write(tmp_path / "m", {"method": "test"}, state, overwrite=True)
    return memoryfile.read(tmp_path / "m")[1]


def test_flattener_round_trips_every_supported_type(tmp_path):
    state = {
        "weights": torch.randn(3, 4), "half": torch.randn(2).to(torch.bfloat16),
        "mask": torch.tensor([True, False]), "empty": torch.zeros((0, 7)),
        "scalar": torch.tensor(2.5),
        "rng": torch.get_rng_state(), "f64": torch.randn(5, dtype=torch.float64)[::2],
        "np": np.arange(6, dtype=np.int16).reshape(2, 3), "npf": np.float32(0.1),
        "npb": np.bool_(True), "npi": np.int64(-7), "faiss": b"\x00\x01FAISS",
        "ints": {1: 0, 2: 1}, "mixed": {(1, "a"): "t", None: [1.5, None], 2.0: True},
        "$weird": {"$tensor": "not a marker"}, "floats": [float("nan"), float("inf"), -0.0, 1e-300],
        "tuple": (1, ("x", [torch.ones(1)])), "text": "ü — ∑", "big": 2 ** 80, "none": None,
        "nested": [[{"k": [torch.arange(3)]}]], "shared": [torch.ones(2)] * 2,
    }
    back = roundtrip(state, tmp_path)
    assert same(state, back)
    assert back["ints"] == {1: 0, 2: 1}


@settings(max_examples=40, deadline=None)
@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=5)
    | st.binary(max_size=5) | st.builds(lambda xs: torch.tensor(xs, dtype=torch.float32),
                                        st.lists(st.floats(width=32), max_size=4)),
    lambda kids: st.lists(kids, max_size=3) | st.tuples(kids, kids)
    | st.dictionaries(st.text(max_size=3) | st.integers(), kids, max_size=3),
    max_leaves=12))
def test_flattener_round_trips_any_nesting(state):
    tree, tensors = memoryfile.flatten(state)
    json.dumps(tree, allow_nan=False)  # plain JSON
    assert same(memoryfile.unflatten(json.loads(json.dumps(tree)), tensors), state)


@pytest.mark.parametrize(("state", "where"), [
    ({"a": [1, {2, 3}]}, "a/1 is a builtins.set"),
    ({"log": [object()]}, "log/0 is a builtins.object"),
    ({"c": torch.zeros(2, dtype=torch.complex64)}, "c is a tensor of dtype torch.complex64"),
    ({"o": np.array([None])}, "o is a numpy array of dtype object"),
    ({"k": {frozenset(): 1}}, "is a dict key of type frozenset"),
])
def test_flattener_refuses_what_it_cannot_round_trip(state, where, tmp_path):
    with pytest.raises(LifelongError, match=re.escape(where)) as err:
        memoryfile.write(tmp_path / "m", {"method": "test"}, state)
    assert "\n" not in str(err.value) and "savable:" in str(err.value)
