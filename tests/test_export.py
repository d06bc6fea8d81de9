"""`lifelong export`: the memory a run ended with, from a real run store (tiny GPT-2 runs made
by the runtime itself), loads with `lifelong.load` and serves the run's final probes bit for
bit; ft's merged model loads with transformers and gives the edited model's logits."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from tinyrun import save_tiny_model, stream_events, write_jsonl, write_scenario
from transformers import AutoModelForCausalLM

import lifelong
from lifelong.errors import LifelongError, StoreError
from lifelong.export import MERGED, export, export_run
from lifelong.methods import available_methods
from lifelong.model import load_model
from lifelong.report import load_runs
from lifelong.runtime import Runtime
from lifelong.scenario import load_scenario
from lifelong.scoring import encode_pairs, forward_logits
from lifelong.store import Store
from lifelong.stream import parse_stream

pytestmark = pytest.mark.usefixtures("single_thread")

ROOT = Path(__file__).resolve().parent.parent
FAST = {"none": "{}", "ft": "{ steps = 4 }", "grace": "{ steps = 5 }",
        "defer": "{ steps = 4, negatives = 8 }", "wise-faiss": "{ steps = 5 }",
        "wise": "{ steps = 4, prefixes = 1, negatives = 2 }",
        "kn": "{ ig_steps = 4 }", "mend": "{ steps = 2, accumulate = 2 }", "instructedit": "{ steps = 2, accumulate = 2 }", "ke": "{ steps = 2 }", "serac": "{ cls_steps = 20, cf_steps = 5, batch_size = 4 }",
        "rome": "{ stats_fallback = true, prefixes = 2, steps = 4 }",
        "memit": "{ stats_fallback = true, prefixes = 2, steps = 4 }",
        "alphaedit": "{ stats_fallback = true, prefixes = 2, steps = 4 }"}
METHODS = sorted(available_methods())


def simulate(d: Path, methods: list[str], schedule: str, extra: str = "") -> Path:
    """Run the runtime over a tiny stream into d/runs.db (every method with FAST settings)."""
    model = d / "model" if (d / "model").exists() else save_tiny_model(d / "model")
    stream = write_jsonl(stream_events(n_edits=8, retracts=2), d / "stream.jsonl")
    train = write_jsonl(stream_events(n_edits=4, seed=1, reedits=0, retracts=0, queries=0),
                        d / "train.jsonl")
    toml = "".join(f'[[methods]]\nname = "{m}"\nsettings = {FAST.get(m, "{}")}\n\n'
                   for m in methods)
    sc = load_scenario(write_scenario(d / "sc.toml", model, stream, methods=toml,
                                      schedule=schedule, extra=extra,
                                      stream_extra=f'train_file = "{train}"'))
    Runtime(sc, parse_stream(sc.stream.file), Store(d / "runs.db")).run_all()
    return d / "runs.db"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """One store with a complete run of every registered method (merges every 3 edits; 2 of
    the 4 locality prompts probed, so the other 2 are the methods' unrelated prompts)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return simulate(tmp_path_factory.mktemp("runs"), METHODS,
                        "checkpoint_every = 4\nmerge_every = 3\nlocality_sample = 2")
    finally:
        torch.set_num_threads(threads)


def final_probes(store: Path, run_id: str) -> list[dict]:
    s = Store(store)
    final = max(c["checkpoint"] for c in s.rows("checkpoints", run_id) if c["when"] == "final")
    rows = [r for r in s.rows("probes", run_id) if r["checkpoint"] == final]
    assert rows
    return rows


def assert_serves_final_probes(ed: lifelong.Editor, rows: list[dict]) -> None:
    """The loaded memory reproduces the run's final probe outputs bit for bit (same batches)."""
    scores = ed.score([r["prompt"] for r in rows], [r["target"] for r in rows])
    assert [s.gen_text for s in scores] == [r["gen_text"] for r in rows]
    assert [s.nll for s in scores] == [r["nll"] for r in rows]


@pytest.mark.parametrize("method", METHODS)
def test_export_reproduces_the_final_outputs(runs, method, tmp_path):
    run_id = f"{method}@seed0"
    res = export_run(runs, run_id, tmp_path / "out")
    ed = lifelong.load(res.out)
    assert ed.method == method
    assert_serves_final_probes(ed, final_probes(runs, run_id))
    # the edit log comes from the stream and the store's outcomes
    rows = {r["event_id"]: r for r in Store(runs).rows("events", run_id)}
    edits = [op for op in ed.log if op["op"] == "edit"]
    assert [op["edit_id"] for op in edits] == [f"e{i:03d}" for i in range(8)]
    assert all(op["prompt"] and op["target"] for op in edits)
    retracted = [op["edit_id"] for op in ed.log if op["op"] == "retract"]
    assert retracted == [e for e in ("e000", "e001") if rows[f"r{e[1:]}"]["outcome"] == "applied"]
    # the runtime's attach context: the stream's locality prompts that are not probed
    assert len(ed.context.unrelated_prompts) == 2
    assert ed.source["run_id"] == run_id and ed.source["status"] == "complete"
    merged = (res.out / MERGED).is_dir()
    assert merged == (available_methods()[method].memory_kind == "weights")
    assert (res.merged is not None) == merged
    assert res.notes[-1].startswith("merged model:") == merged
    if method in ("grace", "defer", "wise-faiss", "wise"):
        assert "not a weight change" in res.notes[-1]


def test_store_recorded_before_the_rename_still_means_wise_faiss(runs, tmp_path):
    """Stores made before the paper's WISE was added call the FAISS-routed variant `wise`;
    export and reports read them as `wise-faiss` (its settings say which), never as the
    paper's method."""
    old = tmp_path / "old.db"
    src, con = sqlite3.connect(runs), sqlite3.connect(old)
    src.backup(con)  # the store is in WAL mode: a file copy could miss rows
    src.close()
    with con:
        con.execute("update runs set method = 'wise', config = replace(config, "
                    "'\"name\": \"wise-faiss\"', '\"name\": \"wise\"') "
                    "where run_id = 'wise-faiss@seed0'")
    con.close()
    res = export_run(old, "wise-faiss@seed0", tmp_path / "out")
    ed = lifelong.load(res.out)
    assert ed.method == "wise-faiss"
    assert_serves_final_probes(ed, final_probes(runs, "wise-faiss@seed0"))
    methods = {r.run["run_id"]: r.run["method"] for r in load_runs([old])}
    assert methods["wise-faiss@seed0"] == "wise-faiss" and methods["wise@seed0"] == "wise"


def test_ft_merged_model_loads_with_transformers(runs, tmp_path):
    res = export_run(runs, "ft@seed0", tmp_path / "out")
    ed = lifelong.load(res.out)
    prompts = [r["prompt"] for r in final_probes(runs, "ft@seed0")]
    ids, mask, end, _, _ = encode_pairs(ed.lm, prompts, ["x"] * len(prompts))
    with torch.no_grad():
        edited = forward_logits(ed.lm, ids, mask, end)
        plain = AutoModelForCausalLM.from_pretrained(res.merged, local_files_only=True).eval()
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        hf = plain(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        merged_lm = load_model(str(res.merged))  # what `lifelong simulate --model` loads
        again = forward_logits(merged_lm, ids, mask, end)
    assert torch.equal(hf, edited) and torch.equal(again, edited)
    # and it is the edit, not the base model
    ed.close()
    with torch.no_grad():
        assert not torch.equal(forward_logits(ed.lm, ids, mask, end), edited)


def test_refusals_are_one_line(runs, tmp_path):
    with pytest.raises(StoreError, match=r"no run 'nope'; its runs: ") as err:
        export_run(runs, "nope", tmp_path / "a")
    assert all(f"{m}@seed0" in str(err.value) for m in METHODS)
    with pytest.raises(StoreError, match="no such store"):
        export_run(tmp_path / "missing.db", "ft@seed0", tmp_path / "a")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("mine")
    with pytest.raises(LifelongError, match="not empty; choose another -o or --overwrite"):
        export_run(runs, "grace@seed0", tmp_path / "full")
    export_run(runs, "ft@seed0", tmp_path / "full", overwrite=True)
    assert (tmp_path / "full" / MERGED).is_dir()
    export_run(runs, "grace@seed0", tmp_path / "full", overwrite=True)
    assert not (tmp_path / "full" / MERGED).exists()  # no stale merged model beside grace's memory
    assert (tmp_path / "full" / "x").read_text() == "mine"  # only the memory's files replaced
    other = save_tiny_model(tmp_path / "other", seed=1)  # same shapes, other weights
    with pytest.raises(LifelongError, match="is not that of the model run grace@seed0") as err:
        export_run(runs, "grace@seed0", tmp_path / "b", model=str(other))
    assert "\n" not in str(err.value)


def test_cli_command(runs, tmp_path):
    res = CliRunner().invoke(export, [str(runs), "--run", "wise-faiss@seed0", "-o", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[0].startswith(f"memory: {tmp_path / 'o'} (wise-faiss, ")
    assert "no merged model" in res.output
    bad = CliRunner().invoke(export, [str(runs), "--run", "nope", "-o", str(tmp_path / "p")])
    assert isinstance(bad.exception, StoreError)


def test_cli_prints_one_line_when_registered(runs, tmp_path):
    from lifelong.cli import cli

    if "export" not in cli.commands:
        pytest.skip("export is not registered in lifelong/cli.py yet")
    res = subprocess.run([sys.executable, "-m", "lifelong.cli", "export", str(runs), "--run",
                          "nope", "-o", str(tmp_path / "x")], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT, check=False)
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "its runs: " in res.stderr


def test_chunked_run_exports_its_last_chunk(tmp_path):
    store = simulate(tmp_path, ["grace"], "checkpoint_every = 0\nrestart_every = 3")
    res = export_run(store, "grace@seed0", tmp_path / "out")
    assert any("chunked run (restart_every = 3): the memory is its last chunk's only" in n
               for n in res.notes)
    ed = lifelong.load(res.out)
    # 8 edits in chunks of 3: the last chunk holds e006 and e007
    assert [op["edit_id"] for op in ed.log if op["op"] == "edit"] == ["e006", "e007"]
    assert_serves_final_probes(ed, final_probes(store, "grace@seed0"))


def test_without_the_stream_the_log_has_ids_and_facts(tmp_path):
    store = simulate(tmp_path, ["wise-faiss"], "checkpoint_every = 4")
    (tmp_path / "stream.jsonl").unlink()
    res = export_run(store, "wise-faiss@seed0", tmp_path / "out")
    assert any(n.startswith("stream not used") for n in res.notes)
    ed = lifelong.load(res.out)
    edits = [op for op in ed.log if op["op"] == "edit"]
    assert len(edits) == 8 and all(op["fact"] and "prompt" not in op for op in edits)
    assert ed.context.unrelated_prompts == ()
    assert_serves_final_probes(ed, final_probes(store, "wise-faiss@seed0"))


def test_unfinished_run_needs_allow_incomplete(tmp_path):
    model = save_tiny_model(tmp_path / "model")
    stream = write_jsonl(stream_events(n_edits=8), tmp_path / "stream.jsonl")
    toml = write_scenario(tmp_path / "sc.toml", model, stream,
                          methods=f'[[methods]]\nname = "ft"\nsettings = {FAST["ft"]}\n',
                          extra="[faults]\ncrash_after_events = 6")
    db = tmp_path / "runs.db"
    res = subprocess.run([sys.executable, "-m", "lifelong.cli", "simulate", str(toml), "--db",
                          str(db), "--quiet"], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False)
    assert res.returncode == 137, res.stderr  # died like kill -9 after 6 events
    with pytest.raises(LifelongError, match="run ft@seed0 is running, not complete; "
                                            "--allow-incomplete"):
        export_run(db, "ft@seed0", tmp_path / "out")
    out = export_run(db, "ft@seed0", tmp_path / "out", allow_incomplete=True)
    ed = lifelong.load(out.out)
    position = ed.source["position"]
    assert 0 < position <= 6 and ed.source["status"] == "running"
    assert [op["edit_id"] for op in ed.log] == [f"e{i:03d}" for i in range(position)]
    assert json.loads((out.out / "memory.json").read_text())["method"] == "ft"
    shutil.rmtree(out.out)


def test_the_base_is_checked_against_the_runs_own_fingerprint(runs, tmp_path):
    """Where a store holds reference outputs of two models, only the one the run was made on
    passes (before fingerprints were recorded per run, either did)."""
    db = tmp_path / "two.db"
    shutil.copyfile(runs, db)
    other = save_tiny_model(tmp_path / "other", seed=1)
    store = Store(db)
    fp = load_model(str(other)).fingerprint()
    rows = [dict(r) for r in store.db["reference"].rows]
    name = rows[0]["model"].rsplit(":", 1)[0]
    store.db["reference"].insert_all([r | {"model": f"{name}:{fp}"} for r in rows], pk=("model", "prompt", "answer"))
    store.close()
    with pytest.raises(LifelongError, match="is not that of the model run grace@seed0"):
        export_run(db, "grace@seed0", tmp_path / "b", model=str(other))
