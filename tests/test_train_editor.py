"""`lifelong train-editor`: a method's parts trained on a train split ahead of the runs, into
the cache a run of the same model, settings, seed and split reads (through the runtime, not
a hand-made context), tensor for tensor what the run would have trained; a second call
trains nothing; a method that trains nothing, and
settings it does not know, are refused in one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import make_tiny_model
from safetensors.torch import load_file

from lifelong.cli import cli
from lifelong.config import from_mapping

pytestmark = pytest.mark.usefixtures("single_thread")
CHEAP = '{"steps": 4, "accumulate": 1}'


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(model dir, train split, test stream): a 3-layer GPT-2 with a small world's word-level
    vocabulary, and two streams of that world, dev people for training, test for the run."""
    from lifelong.streamgen import StreamSpec, make_stream, write_stream
    from lifelong.tokenizer import build_word_tokenizer
    from lifelong.world import World, WorldConfig
    out = tmp_path_factory.mktemp("train-editor")
    world = World.generate(WorldConfig(n_people=40))
    tok = build_word_tokenizer(world.corpus())
    model = out / "model"
    make_tiny_model("gpt2", vocab_size=len(tok), n_layer=3).save_pretrained(model)
    tok.save_pretrained(model)
    world.save(model / "world.json")
    streams = []
    for split, n in (("dev", 12), ("test", 3)):
        spec = from_mapping(StreamSpec, {"edits": n, "split": split, "seed": 1,
                                         "retract_share": 0.0, "query_share": 0.0,
                                         "n_locality_facts": 8})
        write_stream(make_stream(world, spec), out / f"{split}.jsonl")
        streams.append(out / f"{split}.jsonl")
    return model, *streams


def train(setup, cache: Path, *extra: str):
    model, train_file, _ = setup
    res = CliRunner().invoke(cli, ["train-editor", "mend", "--model", str(model), "--train-file",
                                   str(train_file), "--settings", CHEAP, "--cache-dir",
                                   str(cache), "--json", str(cache / "out.json"), *extra])
    assert res.exit_code == 0, res.output
    return res.output, json.loads((cache / "out.json").read_text())


def test_a_run_reads_what_train_editor_trained_and_a_second_call_trains_nothing(setup, tmp_path):
    model, train_file, test_stream = setup
    cache = tmp_path / "cache"
    cache.mkdir()
    said, first = train(setup, cache)
    assert first["editor"] == "trained" and first["steps"] == 4 and first["records"] == 12
    assert first["peak_rss_mib"] > 0 and first["threads"] == 1 and "peak memory" in said
    assert "mend on " in said and ": trained in " in said and first["entry"] in said
    said, again = train(setup, cache)
    assert again["editor"] == "read from the cache" and again["entry"] == first["entry"]
    assert "already in the cache, trained in" in said
    entry = cache / first["fingerprint"] / "mend"
    stamps = {p.name: p.stat().st_mtime_ns for p in entry.iterdir()}
    assert stamps and all(name.startswith(first["entry"]) for name in stamps)

    def simulate(cache_dir: Path) -> None:
        scenario = tmp_path / f"{cache_dir.name}.toml"
        scenario.write_text(
            f'name = "run"\nmodel = "{model}"\nseeds = [0]\ncache_dir = "{cache_dir}"\n'
            f'[stream]\nfile = "{test_stream}"\ntrain_file = "{train_file}"\n'
            f'[schedule]\ncheckpoint_every = 0\nlocality_sample = 5\n'
            '[[methods]]\nname = "mend"\nsettings = { steps = 4, accumulate = 1 }\n')
        res = CliRunner().invoke(cli, ["simulate", str(scenario), "--quiet", "--allow-unknown",
                                       "--db", str(tmp_path / f"{cache_dir.name}.db")])
        assert res.exit_code == 0, res.output

    # with an empty cache the run trains the same entry into it ...
    simulate(empty := tmp_path / "empty")
    assert sorted(p.name for p in (empty / first["fingerprint"] / "mend").iterdir()) == sorted(stamps)
    ours, runs = (load_file(next((c / first["fingerprint"] / "mend").glob("*.safetensors")))
                  for c in (cache, empty))
    assert ours.keys() == runs.keys() and all(torch.equal(ours[k], runs[k])
                                              for k in ours if k != "seconds")
    # ... with train-editor's, it reads it: the entry is not rewritten, nothing is added
    simulate(cache)
    assert {p.name: p.stat().st_mtime_ns for p in entry.iterdir()} == stamps


def test_another_seed_trains_its_own_parts(setup, tmp_path):
    _, a = train(setup, tmp_path)
    _, b = train(setup, tmp_path, "--seed", "1")
    assert b["editor"] == "trained" and b["entry"] != a["entry"]


@pytest.mark.parametrize(("args", "fragment"), [
    (["rome"], "rome trains nothing before a stream; train-editor trains instructedit, ke, mend, serac"),
    (["mend", "--settings", '{"stepz": 1}'], "unknown key(s) stepz"),
    (["mend", "--settings", "[1]"], "--settings: expected a JSON object, got list"),
])
def test_mistakes_are_one_line(setup, args, fragment, monkeypatch, capsys):
    from lifelong.cli import main
    _, train_file, _ = setup
    monkeypatch.setattr(sys, "argv", ["lifelong", "train-editor", *args, "--train-file",
                                      str(train_file)])
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("lifelong: ") and err.count("\n") == 1, err
    assert fragment in err and "Traceback" not in err


def test_a_scenario_trains_what_its_runs_read_with_their_held_out_records(setup, tmp_path):
    """--scenario: each seed's parts, trained on the train split less the subjects that
    seed's run edits (`stream.train_exclude`); the runs then read them and add nothing."""
    model, train_file, _ = setup
    cache = tmp_path / "cache"
    scenario = tmp_path / "held-out.toml"
    scenario.write_text(  # the train split's own edits: what it edits must be held out
        f'name = "held-out"\nmodel = "{model}"\nseeds = [0, 1]\ncache_dir = "{cache}"\n'
        f'[stream]\nfile = "{train_file}"\ntrain_file = "{train_file}"\norder = "seeded"\n'
        'max_edits = 3\ntrain_exclude = "edited-subjects"\n'
        '[schedule]\ncheckpoint_every = 0\nlocality_sample = 5\n'
        '[[methods]]\nname = "none"\n'
        '[[methods]]\nname = "mend"\nsettings = { steps = 4, accumulate = 1 }\n')
    res = CliRunner().invoke(cli, ["train-editor", "--scenario", str(scenario),
                                   "--json", str(tmp_path / "out.json")])
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "out.json").read_text())
    assert [(o["label"], o["seed"], o["editor"]) for o in out] == \
        [("mend", 0, "trained"), ("mend", 1, "trained")]
    assert all(0 < o["held_out_subjects"] <= 3 and o["records"] < 12 for o in out)
    assert out[0]["entry"] != out[1]["entry"] and "edited subjects held out" in res.output
    stamps = {p: p.stat().st_mtime_ns for p in cache.rglob("*")}
    res = CliRunner().invoke(cli, ["simulate", str(scenario), "--quiet", "--allow-unknown",
                                   "--db", str(tmp_path / "run.db")])
    assert res.exit_code == 0, res.output
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*")} == stamps


@pytest.mark.parametrize(("args", "fragment"), [
    (["--scenario", "{s}", "--settings", "{{}}"], "--scenario sets the model, settings"),
    (["mend"], "give METHOD and --train-file, or --scenario"),
    (["--scenario", "{s}", "serac"], "no method named 'serac' that trains at attach"),
])
def test_scenario_mistakes_are_one_line(setup, args, fragment, tmp_path, monkeypatch, capsys):
    from lifelong.cli import main
    model, train_file, _ = setup
    scenario = tmp_path / "s.toml"
    scenario.write_text(f'name = "s"\nmodel = "{model}"\n[stream]\nfile = "{train_file}"\n'
                        f'train_file = "{train_file}"\n[[methods]]\nname = "mend"\n')
    monkeypatch.setattr(sys, "argv", ["lifelong", "train-editor",
                                      *(a.format(s=scenario) for a in args)])
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1, err
    assert fragment in err and "Traceback" not in err
