"""Setup failures leave a usable store: an unusable model directory or a method that cannot
attach is refused with one line, records no run, creates no store file, and the same command
with the problem fixed then simply works (with or without --resume)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tinyrun import save_tiny_model, stream_events, write_jsonl, write_scenario
from transformers import BertConfig, BertModel

from lifelong.errors import LifelongError, ModelError
from lifelong.model import load_model
from lifelong.runtime import Runtime
from lifelong.scenario import load_scenario
from lifelong.store import Store
from lifelong.stream import parse_stream

pytestmark = pytest.mark.usefixtures("single_thread")
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("good") / "tiny")


def _copy(good: Path, dest: Path) -> Path:
    shutil.copytree(good, dest)
    return dest


def _no_weights(good, d):
    (_copy(good, d) / "model.safetensors").unlink()
    return d


def _no_tokenizer(good, d):
    _copy(good, d)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (d / f).unlink()
    return d


def _empty_tokenizer(good, d):
    tok = json.loads((_copy(good, d) / "tokenizer.json").read_text())
    tok["model"]["vocab"], tok["added_tokens"] = {}, []
    (d / "tokenizer.json").write_text(json.dumps(tok))
    return d


def _bad_config(good, d):
    (_copy(good, d) / "config.json").write_text('{"model_type": "gpt2",')
    return d


def _bert(good, d):
    BertModel(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=32)).save_pretrained(d)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(good / f, d / f)
    return d


def _missing(good, d):
    return d


def _a_file(good, d):
    d.write_text("not a directory")
    return d


#: broken model directory -> (how to make it, what the one line must say)
BROKEN = {
    "missing": (_missing, "not a model directory"),
    "a-file": (_a_file, "not a model directory"),
    "invalid-config": (_bad_config, "invalid config.json"),
    "no-weights": (_no_weights, "no weights"),
    "no-tokenizer": (_no_tokenizer, "no tokenizer"),
    "empty-tokenizer": (_empty_tokenizer, "tokenizer"),
    "bert": (_bert, "model_type 'bert' is not a supported causal-LM family"),
}


@pytest.mark.parametrize("kind", list(BROKEN))
def test_unusable_model_directory_is_one_line_naming_the_path(good, tmp_path, kind):
    make, says = BROKEN[kind]
    path = make(good, tmp_path / kind)
    with pytest.raises(ModelError) as exc:
        load_model(str(path))
    msg = str(exc.value)
    assert says in msg and str(path) in msg and "\n" not in msg


def test_a_bert_config_is_refused_before_its_weights_are_read(good, tmp_path):
    path = _bert(good, tmp_path / "bert")
    (path / "model.safetensors").write_bytes(b"not weights at all")  # never opened
    with pytest.raises(ModelError, match="not a supported causal-LM family"):
        load_model(str(path))


@pytest.fixture(scope="module")
def stream_file(tmp_path_factory) -> Path:
    return write_jsonl(stream_events(n_edits=6), tmp_path_factory.mktemp("s") / "s.jsonl")


def _runtime(toml: Path, db: Path) -> Runtime:
    sc = load_scenario(toml)
    return Runtime(sc, parse_stream(sc.stream.file), Store(db))


@pytest.mark.parametrize("kind", ["no-weights", "no-tokenizer", "bert"])
def test_failed_model_load_records_no_run_and_a_rerun_works(good, stream_file, tmp_path, kind):
    broken = BROKEN[kind][0](good, tmp_path / kind)
    db = tmp_path / "x.db"
    with pytest.raises(ModelError):
        _runtime(write_scenario(tmp_path / "bad.toml", broken, stream_file), db).run_all()
    assert Store(db).runs() == []
    fixed = write_scenario(tmp_path / "fixed.toml", good, stream_file)
    _runtime(fixed, db).run_all()  # no "already exists (running)"
    assert {r["status"] for r in Store(db).runs()} == {"complete"}


def test_a_method_that_cannot_attach_records_no_run(good, stream_file, tmp_path):
    db = tmp_path / "x.db"
    bad = write_scenario(tmp_path / "bad.toml", good, stream_file,
                         methods='[[methods]]\nname = "ft"\nsettings = { layer = 7 }\n')
    with pytest.raises(LifelongError, match="layer"):
        _runtime(bad, db).run_all()
    assert Store(db).runs() == []
    for resume in (False, True):  # both work on a store the failure left behind
        ok = write_scenario(tmp_path / f"ok{resume}.toml", good, stream_file,
                            methods='[[methods]]\nname = "ft"\nsettings = { layer = 1 }\n')
        _runtime(ok, tmp_path / f"y{resume}.db").run_all(resume=resume)
    _runtime(ok, db).run_all()
    assert Store(db).get_run("ft@seed0")["status"] == "complete"


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lifelong.cli", *args], capture_output=True,
                          text=True, timeout=300, env=ONE_THREAD, check=False)


def test_cli_refusal_at_setup_leaves_no_store_file(good, stream_file, tmp_path):
    db = tmp_path / "runs" / "x.db"
    broken = _no_weights(good, tmp_path / "noweights")
    res = cli("simulate", "--stream", str(stream_file), "--method", "none", "--model", str(broken),
              "--db", str(db), "--quiet")
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("lifelong: ")
    assert str(broken) in res.stderr and "no weights" in res.stderr
    assert not db.exists()
    # a method that cannot attach fails after the store was opened: the file goes again
    bad = write_scenario(tmp_path / "bad.toml", good, stream_file,
                         methods='[[methods]]\nname = "ft"\nsettings = { layer = 7 }\n')
    res = cli("simulate", str(bad), "--db", str(db), "--quiet")
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert not db.exists() and not list(db.parent.glob("x.db*"))
    # a store holding a run is never removed, and a failed setup adds nothing to it
    res = cli("simulate", "--stream", str(stream_file), "--method", "none", "--model", str(good),
              "--db", str(db), "--quiet")
    assert res.returncode == 0, res.stderr
    res = cli("simulate", str(bad), "--db", str(db), "--quiet", "--resume")
    assert res.returncode == 2 and db.exists()
    assert [r["run_id"] for r in Store(db).runs()] == ["none@seed0"]
