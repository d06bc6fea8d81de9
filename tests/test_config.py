"""Tests for lifelong.config (frozen-dataclass configs) and lifelong.scenario (scenario TOML
loading and CLI overrides)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lifelong.config import describe, from_mapping, setting, to_dict
from lifelong.errors import ConfigError, LifelongError
from lifelong.scenario import MethodSpec, Scenario, Schedule, load_scenario

FAST = settings(max_examples=100, deadline=None)


@dataclass(frozen=True)
class Inner:
    k: int = setting(1, "an int in range", min=0, max=10)
    ratio: float = setting(0.5, "a share", min=0.0, max=1.0)


@dataclass(frozen=True)
class Sample:
    name: str = setting("x", "a string")
    count: int = setting(3, "at least one", min=1, max=100)
    rate: float = setting(1.0, "non-negative", min=0.0)
    flag: bool = setting(False, "a switch")
    mode: Literal["fast", "slow"] = setting("fast", "a literal")
    color: str = setting("red", "a choice", choices=("red", "green"))
    limit: int | None = setting(None, "optional int")
    alt: float | None = setting(None, "optional float (PEP 604)")
    tags: tuple[str, ...] = setting((), "a list of strings")
    inner: Inner = setting(Inner(), "a nested table")
    inners: tuple[Inner, ...] = setting((), "a list of tables")
    opts: dict | None = setting(None, "free-form table")


@dataclass(frozen=True)
class Needs:
    must: int = setting(help="required")
    other: int = setting(0)

    def __post_init__(self):
        if self.other > self.must:
            raise ValueError("other must not exceed must")


@dataclass(frozen=True)
class Levels:
    level: Literal[1, 2, 3] = setting(1, "an int literal")


def err(cls, data, where="config") -> str:
    with pytest.raises(ConfigError) as exc:
        from_mapping(cls, data, where)
    return str(exc.value)


# ----------------------------------------------------------------------------- from_mapping

def test_defaults_and_none():
    assert from_mapping(Sample, None) == Sample() == from_mapping(Sample, {})


def test_optional_setting_takes_none_as_a_string():
    """TOML has no null, so an optional setting is unset with "none" (only optionals)."""
    assert from_mapping(Sample, {"limit": "none", "alt": "none"}) == Sample(limit=None, alt=None)
    assert from_mapping(Sample, {"alt": 0.5}).alt == 0.5
    assert "count" in err(Sample, {"count": "none"})
    from lifelong.methods import build_method
    assert build_method("ft", {"norm_constraint": "none"}, 0).config.norm_constraint is None
    # a stored config (JSON) holds a real null: an optional string setting takes it back
    assert build_method("f-learning", {"forget_tuner": None}, 0).config.forget_tuner is None
    assert err(type(build_method("f-learning", {}, 0).config), {"forget_tuner": "none"})


def test_unknown_key_named_and_known_listed():
    msg = err(Sample, {"nme": "y", "count": 2})
    assert "nme" in msg and "unknown" in msg
    known = msg.split("known:")[1]
    for f in ("name", "count", "rate", "inner", "tags"):
        assert f in known
    msg = err(Sample, {"inner": {"kk": 1}})
    assert "config.inner" in msg and "kk" in msg and "ratio" in msg


@pytest.mark.parametrize("field,value", [
    ("count", "3"), ("count", True), ("count", 3.0), ("count", None),
    ("rate", True), ("rate", "1.5"), ("flag", 1), ("flag", "true"), ("name", 5),
    ("tags", "ab"), ("tags", [1]), ("inner", 3), ("inner", [1]), ("opts", [1]),
    ("limit", "5"), ("limit", 2.0), ("limit", False), ("alt", "x"),
])
def test_wrong_types_rejected_with_where(field, value):
    msg = err(Sample, {field: value}, where="top")
    assert f"top.{field}" in msg


def test_int_accepted_for_float_and_converted():
    s = from_mapping(Sample, {"rate": 2, "alt": 3, "inner": {"ratio": 1}})
    assert s.rate == 2.0 and type(s.rate) is float
    assert s.alt == 3.0 and type(s.alt) is float
    assert type(s.inner.ratio) is float


@pytest.mark.parametrize("data,fragment", [
    ({"count": 0}, ">= 1"), ({"count": 101}, "<= 100"), ({"rate": -0.5}, ">= 0.0"),
    ({"inner": {"k": -1}}, "config.inner.k"), ({"inner": {"ratio": 1.5}}, "<= 1.0"),
    ({"color": "blue"}, "'red'"), ({"mode": "medium"}, "'fast'"),
    ({"inners": [{"k": 1}, {"k": 11}]}, "config.inners[1].k"),
])
def test_ranges_and_choices_enforced(data, fragment):
    assert fragment in err(Sample, data)


def test_bounds_are_inclusive():
    s = from_mapping(Sample, {"count": 1, "rate": 0.0, "inner": {"k": 10, "ratio": 1.0}})
    assert (s.count, s.rate, s.inner.k, s.inner.ratio) == (1, 0.0, 10, 1.0)
    assert from_mapping(Sample, {"count": 100}).count == 100


def test_literal_and_optional():
    assert from_mapping(Sample, {"mode": "slow"}).mode == "slow"
    assert from_mapping(Sample, {"limit": None}).limit is None
    assert from_mapping(Sample, {"limit": 7}).limit == 7
    assert "an integer" in err(Sample, {"limit": "7"})
    assert from_mapping(Levels, {"level": 2}).level == 2
    assert "config.level" in err(Levels, {"level": 4})


def test_bool_rejected_for_int_literal():
    err(Levels, {"level": True})


def test_nan_rejected_by_range_checks():
    err(Schedule, {"save_every_seconds": float("nan")}, "scenario.schedule")


def test_nested_dataclasses_and_tuples_from_lists():
    s = from_mapping(Sample, {"tags": ["a", "b"], "inner": {"k": 4},
                              "inners": [{"k": 2}, {"ratio": 0.25}], "opts": {"a": [1]}})
    assert s.tags == ("a", "b") and isinstance(s.tags, tuple)
    assert s.inner == Inner(k=4, ratio=0.5)
    assert s.inners == (Inner(k=2), Inner(ratio=0.25)) and isinstance(s.inners, tuple)
    assert s.opts == {"a": [1]}
    assert from_mapping(Sample, {"inner": Inner(k=9)}).inner == Inner(k=9)


def test_nested_path_in_messages():
    msg = err(Scenario, {"schedule": {"checkpoint_every": "5"}}, "scenario")
    assert "scenario.schedule.checkpoint_every" in msg
    msg = err(Scenario, {"schedule": {"checkpoint_every": -1}}, "scenario")
    assert "scenario.schedule.checkpoint_every" in msg and ">= 0" in msg
    msg = err(Scenario, {"methods": [{"name": "ft"}, {"label": "x"}]}, "scenario")
    assert "scenario.methods[1].name" in msg and "required" in msg
    assert "scenario.seeds[1]" in err(Scenario, {"seeds": [0, "1"]}, "scenario")


def test_required_and_post_init_become_config_errors():
    assert "config.must" in err(Needs, {})
    msg = err(Needs, {"must": 1, "other": 2})
    assert "other must not exceed must" in msg
    assert from_mapping(Needs, {"must": 2, "other": 2}) == Needs(2, 2)
    assert "seeds" in err(Scenario, {"seeds": []}, "scenario")


def test_frozen():
    s = from_mapping(Sample, {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.count = 5
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.inner.k = 5


def test_setting_rejects_mutable_defaults():
    with pytest.raises(TypeError):
        setting([], "a list")
    with pytest.raises(TypeError):
        setting({}, "a dict")


def test_describe():
    rows = {r[0]: r for r in describe(Sample)}
    assert list(rows) == [f.name for f in dataclasses.fields(Sample)]
    assert rows["count"] == ("count", "int", 3, "at least one")
    assert rows["inner"][1] == "Inner"
    assert describe(MethodSpec)[0][:3] == ("name", "str", "(required)")


names = st.text(max_size=8)
inner_maps = st.fixed_dictionaries({}, optional={
    "k": st.integers(0, 10), "ratio": st.floats(0, 1) | st.integers(0, 1)})
sample_maps = st.fixed_dictionaries({}, optional={
    "name": names, "count": st.integers(1, 100),
    "rate": st.floats(0, 1e9) | st.integers(0, 10 ** 9), "flag": st.booleans(),
    "mode": st.sampled_from(["fast", "slow"]), "color": st.sampled_from(["red", "green"]),
    "limit": st.none() | st.integers(-5, 5), "alt": st.none() | st.floats(-1e6, 1e6),
    "tags": st.lists(names, max_size=3), "inner": inner_maps,
    "inners": st.lists(inner_maps, max_size=3),
    "opts": st.none() | st.dictionaries(names, st.integers() | names, max_size=3),
})


@FAST
@given(sample_maps)
def test_to_dict_round_trip(data):
    x = from_mapping(Sample, data)
    d = to_dict(x)
    assert json.loads(json.dumps(d)) == d  # plain JSON-able data
    assert set(d) == {f.name for f in dataclasses.fields(Sample)}
    assert from_mapping(Sample, d) == x
    assert from_mapping(Sample, json.loads(json.dumps(d))) == x
    for k, v in data.items():  # given values are kept (tuples for lists, floats for ints)
        if k not in ("inner", "inners"):
            assert to_dict(getattr(x, k)) == v


# ----------------------------------------------------------------------------- scenarios

MINIMAL = """
name = "demo"
[stream]
file = "../streams/s.jsonl"
[[methods]]
name = "ft"
settings = { steps = 5 }
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """Run from a folder unrelated to the scenario's, so cwd-relative resolution shows."""
    cwd = tmp_path / "run" / "from" / "here"
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    return cwd


def test_load_minimal_and_relative_stream_path(tmp_path, elsewhere):
    p = write(tmp_path / "sc" / "demo.toml", MINIMAL)
    s = load_scenario(p)
    assert s.stream.file == str((tmp_path / "streams" / "s.jsonl").resolve())
    assert s.name == "demo" and s.seeds == (0,) and s.model == "builtin"
    assert s.methods == (MethodSpec(name="ft", settings={"steps": 5}),)
    assert s.schedule == Schedule()
    # the stored resolved config rebuilds the same scenario
    assert from_mapping(Scenario, json.loads(json.dumps(to_dict(s)))) == s


def test_absolute_stream_path_kept_and_name_defaults_to_stem(tmp_path, elsewhere):
    target = tmp_path / "abs" / "x.jsonl"
    p = write(tmp_path / "sc" / "my_exp.toml",
              f'[stream]\nfile = {json.dumps(str(target))}\n[[methods]]\nname = "ft"\n')
    s = load_scenario(p)
    assert s.stream.file == str(target) and s.name == "my_exp"


def test_relative_model_dir_resolved_when_it_exists(tmp_path, elsewhere):
    (tmp_path / "sc" / "models" / "m").mkdir(parents=True)
    p = write(tmp_path / "sc" / "a.toml", 'model = "models/m"\n' + MINIMAL)
    s = load_scenario(p)
    assert s.model == str((tmp_path / "sc" / "models" / "m").resolve())
    q = write(tmp_path / "sc" / "b.toml", 'model = "nope/m"\n' + MINIMAL)
    assert load_scenario(q).model == "nope/m"


@pytest.mark.parametrize("text,names", [
    ("nme = 'x'\n" + MINIMAL, ["nme"]),
    ("[schedule]\nchekpoint_every = 5\n" + MINIMAL, ["schedule", "chekpoint_every"]),
    (MINIMAL + "colour = 1\n", ["methods[0]", "colour"]),
])
def test_unknown_key_in_file_named(tmp_path, text, names):
    p = write(tmp_path / "bad.toml", text)
    with pytest.raises(ConfigError) as exc:
        load_scenario(p)
    msg = str(exc.value)
    assert str(p) in msg and "unknown" in msg
    for n in names:
        assert n in msg


def test_cli_overrides(tmp_path, elsewhere):
    p = write(tmp_path / "sc" / "demo.toml",
              MINIMAL + '[[methods]]\nname = "rome"\nlabel = "r1"\nsettings = { k = 1 }\n')
    s = load_scenario(p, {"stream": "local.jsonl", "methods": ["grace", "ft"], "model": "gpt2-dir",
                          "edits": 7, "seed": 4})
    assert s.stream.file == str((elsewhere / "local.jsonl").resolve())
    assert [m.display for m in s.methods] == ["grace", "ft"]
    assert s.methods[0] == MethodSpec(name="grace", settings=None)
    assert s.methods[1].settings == {"steps": 5}       # a named method keeps its settings
    assert s.model == "gpt2-dir" and s.stream.max_edits == 7 and s.seeds == (4,)
    # None / empty overrides (what the CLI passes for absent options) change nothing
    base = load_scenario(p)
    assert load_scenario(p, {"stream": None, "methods": [], "model": None, "edits": None,
                             "seed": None}) == base
    assert load_scenario(p, {"seed": 0}).seeds == (0,)


def test_overrides_alone_without_a_file(elsewhere):
    s = load_scenario(None, {"stream": "s.jsonl", "methods": ["ft"]})
    assert s.stream.file == str((elsewhere / "s.jsonl").resolve()) and s.methods == (MethodSpec("ft"),)
    assert s.name == "scenario"


def test_duplicate_method_labels_rejected(tmp_path):
    p = write(tmp_path / "d.toml", MINIMAL + '[[methods]]\nname = "ft"\n')
    with pytest.raises(ConfigError) as exc:
        load_scenario(p)
    assert "duplicate" in str(exc.value) and "ft" in str(exc.value)
    ok = write(tmp_path / "ok.toml", MINIMAL + '[[methods]]\nname = "ft"\nlabel = "ft2"\n')
    assert [m.display for m in load_scenario(ok).methods] == ["ft", "ft2"]
    # a label may not clash with another method's default label either
    clash = write(tmp_path / "c.toml", MINIMAL + '[[methods]]\nname = "rome"\nlabel = "ft"\n')
    with pytest.raises(ConfigError):
        load_scenario(clash)


def test_duplicate_methods_from_cli_are_a_config_error(tmp_path):
    p = write(tmp_path / "demo.toml", MINIMAL)
    with pytest.raises(ConfigError):
        load_scenario(p, {"methods": ["ft", "ft"]})


def test_missing_stream_or_methods(tmp_path):
    no_stream = write(tmp_path / "a.toml", '[[methods]]\nname = "ft"\n')
    with pytest.raises(ConfigError, match="no stream"):
        load_scenario(no_stream)
    assert load_scenario(no_stream, {"stream": "x.jsonl"}).stream.file.endswith("x.jsonl")
    no_methods = write(tmp_path / "b.toml", '[stream]\nfile = "s.jsonl"\n')
    with pytest.raises(ConfigError, match="no methods"):
        load_scenario(no_methods)
    assert load_scenario(no_methods, {"methods": ["ft"]}).methods[0].name == "ft"
    with pytest.raises(ConfigError, match="no stream"):
        load_scenario(None)


def test_invalid_toml_and_missing_file(tmp_path):
    bad = write(tmp_path / "broken.toml", "name = \n[stream\n")
    with pytest.raises(ConfigError) as exc:
        load_scenario(bad)
    assert str(bad) in str(exc.value) and "TOML" in str(exc.value)
    latin = tmp_path / "latin.toml"
    latin.write_bytes('name = "caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(ConfigError) as exc:
        load_scenario(latin)
    assert str(latin) in str(exc.value)
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as exc:
        load_scenario(missing)
    assert str(missing) in str(exc.value)
    assert issubclass(ConfigError, LifelongError)


@pytest.mark.parametrize("text,where", [
    ('device = "tpu"\n', "device"),
    ('seeds = 0\n', "seeds"),
    ('stream = "s.jsonl"\n', "stream"),
    ('[schedule]\nsave_every_seconds = 0.1\n', "schedule.save_every_seconds"),
    ('[stream]\nmax_edits = -3\n', "stream.max_edits"),
])
def test_bad_values_in_file_named(tmp_path, text, where):
    p = write(tmp_path / "v.toml", text)
    with pytest.raises(ConfigError) as exc:
        load_scenario(p, {"stream": "s.jsonl", "methods": ["ft"]})
    assert f"{p}.{where}" in str(exc.value)
