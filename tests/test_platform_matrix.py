"""Every method over every value of every setting that has a fixed set of them (`choices`,
`Literal[...]`, booleans), generated from the configs, so that a new method or a new choice
is covered without touching this file: each variant runs a stream through the runtime to the
end, and keeps the core contract (state round trip exact, detach exact, a retraction is
performed, refused with NotSupported or recorded as nothing)."""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_model, tiny_tokenizer
from tinyrun import save_tiny_model, stream_events, write_jsonl

from lifelong.config import choices_of
from lifelong.errors import NotSupported
from lifelong.methods import (
    AttachContext,
    EditRequest,
    available_methods,
    build_method,
    consolidate_memory,
    retract_edit,
)
from lifelong.methods.context import TrainRecord
from lifelong.model import LM
from lifelong.runtime import Runtime
from lifelong.scenario import load_scenario
from lifelong.scoring import encode_pairs, forward_logits
from lifelong.store import Store
from lifelong.stream import parse_stream

pytestmark = pytest.mark.usefixtures("single_thread")

#: the cheapest settings that still train (every variant starts from these)
FAST = {"ft": {"steps": 2}, "grace": {"steps": 2}, "defer": {"steps": 2, "negatives": 4},
        "wise-faiss": {"steps": 2, "shard_size": 2, "negatives": 2},
        "wise": {"steps": 2, "shard_size": 2, "negatives": 2, "prefixes": 1},
        "kn": {"ig_steps": 2}, "mend": {"steps": 2, "accumulate": 2}, "instructedit": {"steps": 2, "accumulate": 2}, "ke": {"steps": 2}, "serac": {"cls_steps": 20, "cf_steps": 5, "batch_size": 4},
        "rome": {"stats_fallback": True, "prefixes": 2, "steps": 2},
        "memit": {"stats_fallback": True, "prefixes": 2, "steps": 2},
        "alphaedit": {"stats_fallback": True, "prefixes": 2, "steps": 2},
        "calinet": {"steps": 5}, "t-patcher": {"steps": 5}, "lora": {"steps": 3},
        "ft-m": {"steps": 3}, "ft-ewc": {"steps": 3}, "f-learning": {"steps": 3}}
PROBES = ["Aldric works for", "Brenna was born in", "Caspar speaks"]


def values_of(cls: type) -> dict[str, tuple]:
    """Each setting with a fixed set of values: its choices, or both booleans."""
    out = dict(choices_of(cls.Config))
    hints = typing.get_type_hints(cls.Config)
    for f in dataclasses.fields(cls.Config):
        if hints[f.name] is bool:
            out[f.name] = (True, False)
    return out


def variants() -> list[tuple[str, str, object]]:
    """(method, setting, value) for every value that is not the setting's default."""
    out = []
    for name, cls in available_methods().items():
        defaults = cls.Config()
        for field, values in values_of(cls).items():
            out += [(name, field, v) for v in values if v != getattr(defaults, field)]
    return out


VARIANTS = variants()
IDS = [f"{m}-{f}={v}" for m, f, v in VARIANTS]


def settings_of(name: str, field: str, value) -> dict:
    return {**FAST.get(name, {}), field: value}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict]:
    """One scenario per method with every variant of it; the runs' rows by label."""
    d = tmp_path_factory.mktemp("matrix")
    model = save_tiny_model(d / "tiny")
    stream = write_jsonl(stream_events(n_edits=5, reedits=1, retracts=1, queries=1), d / "s.jsonl")
    train = write_jsonl(stream_events(n_edits=4, seed=1, reedits=0, retracts=0, queries=0),
                        d / "train.jsonl")
    out: dict[str, dict] = {}
    for name in sorted({m for m, _, _ in VARIANTS}):
        tables = "".join(f'[[methods]]\nname = "{m}"\nlabel = "{m}-{f}={v}"\n'
                         f'settings = {{ {", ".join(f"{k} = {json.dumps(x)}" for k, x in settings_of(m, f, v).items())} }}\n'
                         for m, f, v in VARIANTS if m == name)
        toml = d / f"{name}.toml"
        toml.write_text(f'name = "matrix"\nmodel = "{model}"\nthreads = 1\n[stream]\nfile = "{stream}"\n'
                        f'train_file = "{train}"\n'
                        f'[schedule]\ncheckpoint_every = 3\nmerge_every = 2\nlocality_sample = 1\n'
                        f'latency_queries = 2\nlatency_rounds = 1\nhealth_texts = 0\n{tables}',
                        encoding="utf-8")
        sc = load_scenario(Path(toml))
        store = Store(d / f"{name}.db")
        Runtime(sc, parse_stream(sc.stream.file), store).run_all()
        for run in store.runs():
            out[run["label"]] = {"run": run, "events": store.rows("events", run["run_id"])}
    return out


@pytest.mark.parametrize(("name", "field", "value"), VARIANTS, ids=IDS)
def test_every_choice_runs_through_the_runtime(name, field, value, runs):
    got = runs[f"{name}-{field}={value}"]
    assert got["run"]["status"] == "complete"
    kinds = [e["kind"] for e in got["events"] if not e["event_id"].startswith("@")]
    assert kinds.count("edit") == 5 and kinds.count("retract") == 1 and kinds.count("query") == 1
    assert all(e["outcome"] in ("applied", "rejected", "nothing", "unsupported")
               for e in got["events"])


@torch.no_grad()
def logits(lm: LM) -> torch.Tensor:
    ids, mask, end, _, _ = encode_pairs(lm, PROBES, ["Zentro"] * len(PROBES))
    return forward_logits(lm, ids, mask, end)


def lm() -> LM:
    return LM(make_tiny_model("gpt2", n_layer=2, width=32), tiny_tokenizer(), "tiny", "")


def attached(name: str, settings: dict, model: LM):
    method = build_method(name, settings, 0)
    method.attach(model, AttachContext(seed=0, unrelated_prompts=tuple(PROBES[1:]), train_split=(
        TrainRecord(EditRequest("t0", "Delphine works for", "Vantex", "f"),
                    ("The employer of Delphine is",), (("Evander was born in", "Oslo"),)),)))
    return method


def check_core_contract(name: str, settings: dict, make_lm=lm) -> tuple[LM, torch.Tensor]:
    """Attach to `make_lm()`, two edits, a consolidation, a retraction (or its one-line
    refusal); the state loaded into a method on a second `make_lm()` serves exactly the same
    logits, and detach restores the base bit for bit. Returns the model and the edited
    logits."""
    model = make_lm()
    base = logits(model)
    method = attached(name, settings, model)
    method.edit([EditRequest("e1", PROBES[0], "Zentro", "a")])
    method.edit([EditRequest("e2", PROBES[1], "Kyoto", "b")])
    consolidate_memory(method)
    try:
        retract_edit(method, "e1")
    except NotSupported as exc:
        assert str(exc)
    expected = logits(model)
    model2 = make_lm()
    attached(name, settings, model2).load_state_dict(method.state_dict())
    assert torch.equal(logits(model2), expected)
    method.detach()
    assert torch.equal(logits(model), base)
    return model, expected


@pytest.mark.parametrize(("name", "field", "value"), VARIANTS, ids=IDS)
def test_every_choice_keeps_the_core_contract(name, field, value):
    check_core_contract(name, settings_of(name, field, value))


def test_the_matrix_covers_every_method_and_choice():
    assert {m for m, _, _ in VARIANTS} >= {"ft", "grace", "defer", "wise-faiss"}
    assert ("grace", "key", "mlp") in VARIANTS and ("wise-faiss", "router", "activation") in VARIANTS
