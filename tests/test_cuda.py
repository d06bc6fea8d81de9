"""The CUDA paths: every registered method, the runtime, saved memories and the CLI with the
model on a GPU.

Skipped where torch sees no CUDA device (CI has none; `python -m pytest tests/test_cuda.py`
on a GPU machine runs them), except the tests that check what a CPU-only machine answers.

CPU and CUDA kernels round differently, so a CUDA run is not compared with the CPU run bit
for bit: the same events must get the same outcomes and the probes' teacher-forced accuracy
must agree to within a tolerance. Within one device, exactness holds as on the CPU: a
method's state round trip and its detach are exact.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_model, tiny_tokenizer
from test_platform_matrix import FAST, PROBES, check_core_contract
from test_platform_runtime import scenario, tiny_stream
from tinyrun import save_tiny_model, stream_events, write_jsonl

import lifelong
from lifelong.methods import available_methods
from lifelong.model import LM
from lifelong.runtime import Runtime
from lifelong.scenario import load_scenario
from lifelong.scoring import encode_pairs, forward_logits
from lifelong.store import Store
from lifelong.stream import parse_stream

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
METHODS = sorted(available_methods())
#: largest mean |difference| of the probes' teacher-forced accuracy, CPU against CUDA
TF_TOLERANCE = 0.1


def cuda_lm() -> LM:
    return LM(make_tiny_model("gpt2", n_layer=2, width=32).to("cuda"), tiny_tokenizer(), "tiny", "")


@torch.no_grad()
def logits(lm: LM) -> torch.Tensor:
    ids, mask, end, _, _ = encode_pairs(lm, PROBES, ["Zentro"] * len(PROBES))
    return forward_logits(lm, ids, mask, end)


@needs_cuda
@pytest.mark.parametrize("name", METHODS)
def test_every_method_keeps_the_core_contract_on_cuda(name):
    """Attach, edit, consolidate, retract on a GPU model: no tensor left on the CPU (a mix
    raises), the state round trip is exact on a second GPU model and detach restores the
    base bit for bit."""
    model, expected = check_core_contract(name, FAST.get(name, {}), cuda_lm)
    assert expected.device.type == "cuda"
    assert all(p.device.type == "cuda" for p in model.model.parameters())


def _run(path: Path, db: Path) -> dict:
    """The run's rows, or the error that stopped it (one method's failure fails its test only)."""
    sc = load_scenario(path)
    store = Store(db)
    try:
        Runtime(sc, parse_stream(sc.stream.file), store).run_all()
    except Exception as exc:  # noqa: BLE001  (reported by the test that reads it)
        return {"error": f"{type(exc).__name__}: {exc}"}
    (run,) = store.runs()
    return {"run": run, "events": store.rows("events", run["run_id"]),
            "probes": store.rows("probes", run["run_id"])}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cuda")


def _scenario(d: Path, name: str, device: str) -> Path:
    """`test_platform_runtime`'s scenario of one method (retractions, a merge, a query, a
    train split), one edit per call, on `device`."""
    if not (d / "tiny").exists():
        save_tiny_model(d / "tiny")
        write_jsonl(stream_events(n_edits=4, seed=1, reedits=0, retracts=0, queries=0), d / "train.jsonl")
        write_jsonl(tiny_stream(), d / "s.jsonl")
    return scenario(d, d / "tiny", d / "s.jsonl", name, 1, device)


@needs_cuda
@pytest.mark.parametrize("name", METHODS)
def test_a_cuda_run_records_what_the_cpu_run_does(name, run_dir):
    cpu, gpu = (_run(_scenario(run_dir, name, dev), run_dir / f"{name}-{dev}.db")
                for dev in ("cpu", "cuda"))
    assert "error" not in cpu, cpu.get("error")
    assert "error" not in gpu, gpu.get("error")
    assert gpu["run"]["status"] == "complete"
    assert json.loads(gpu["run"]["config"])["scenario"]["device"] == "cuda"
    assert ([(e["event_id"], e["outcome"]) for e in gpu["events"]]
            == [(e["event_id"], e["outcome"]) for e in cpu["events"]])
    key = [(p["checkpoint"], p["item"]) for p in cpu["probes"]]
    assert [(p["checkpoint"], p["item"]) for p in gpu["probes"]] == key
    diff = [abs(a["tf_acc"] - b["tf_acc"]) for a, b in zip(cpu["probes"], gpu["probes"])
            if a["tf_acc"] is not None]
    assert sum(diff) / max(len(diff), 1) <= TF_TOLERANCE


@needs_cuda
@pytest.mark.parametrize(("made_on", "loaded_on"), [("cuda", "cpu"), ("cpu", "cuda"), ("cuda", "cuda")])
def test_a_saved_memory_loads_on_either_device(made_on, loaded_on, tmp_path):
    model = save_tiny_model(tmp_path / "tiny")
    editor = lifelong.open(str(model), "grace", {"steps": 5}, device=made_on)
    editor.edit(PROBES[0], "Zentro")
    editor.save(tmp_path / "mem")
    again = lifelong.load(tmp_path / "mem", device=loaded_on)
    assert again.lm.device.type == loaded_on
    want = logits(editor.lm).cpu()
    got = logits(again.lm).cpu()
    if made_on == loaded_on:
        assert torch.equal(got, want)
    else:
        assert torch.allclose(got, want, atol=1e-4)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lifelong.cli", *args], capture_output=True,
                          text=True, timeout=600)


@needs_cuda
def test_simulate_device_option_runs_on_the_gpu(tmp_path):
    model = save_tiny_model(tmp_path / "tiny")
    stream = write_jsonl(stream_events(n_edits=4), tmp_path / "s.jsonl")
    proc = _cli("simulate", "--model", str(model), "--stream", str(stream), "--method", "grace",
                "--device", "cuda", "--quiet", "--db", str(tmp_path / "r.db"))
    assert proc.returncode == 0, proc.stderr
    (run,) = Store(tmp_path / "r.db").runs()
    assert json.loads(run["config"])["scenario"]["device"] == "cuda"


@pytest.mark.skipif(CUDA, reason="checks what a machine without CUDA answers")
@pytest.mark.parametrize("command", [["simulate"], ["bench", "edit", "--method", "grace"]])
def test_device_cuda_without_a_gpu_is_one_line(command, tmp_path):
    model = save_tiny_model(tmp_path / "tiny")
    stream = write_jsonl(stream_events(n_edits=4), tmp_path / "s.jsonl")
    extra = (["--model", str(model), "--stream", str(stream), "--method", "grace",
              "--db", str(tmp_path / "r.db")] if command == ["simulate"] else [])
    proc = _cli(*command, *extra, "--device", "cuda")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "lifelong: device 'cuda': torch sees no CUDA device here; use device = \"cpu\""]
    assert not (tmp_path / "r.db").exists()  # refused before the store is made


def test_a_stopwatch_times_its_block_on_any_device():
    import time

    from lifelong.model import Stopwatch
    with Stopwatch("cpu") as clock:
        time.sleep(0.02)
    assert clock.ms >= 20
    if CUDA:
        x = torch.randn(2048, 2048, device="cuda")
        with Stopwatch("cuda") as clock:
            for _ in range(20):
                x = x @ x / 2048  # queued kernels: the clock must wait for them
        assert clock.ms > 0 and torch.isfinite(x).all()


def test_a_started_stopwatch_reads_the_time_so_far_and_runs_on():
    import time

    from lifelong.model import Stopwatch
    clock = Stopwatch("cpu").start()
    time.sleep(0.01)
    first = clock.elapsed_ms()
    time.sleep(0.01)
    assert 10 <= first < clock.elapsed_ms() and clock.elapsed_ms() >= 20


class _QueuesGpuWork:
    """A memory whose edit queues GPU work and returns without waiting for it (as a method
    that never reads a loss back would)."""

    def __init__(self, x: torch.Tensor, rounds: int):
        self.x, self.rounds = x, rounds

    def edit(self, requests):
        from lifelong.methods import EditReceipt
        for _ in range(self.rounds):
            self.x = self.x @ self.x / self.x.shape[0]
        return EditReceipt()


@needs_cuda
def test_an_edit_row_counts_the_gpu_work_its_edit_queued():
    from lifelong.dispatch import apply_edits, apply_event
    from lifelong.events import Edit
    from lifelong.model import Stopwatch
    lm = cuda_lm()
    method = _QueuesGpuWork(torch.randn(4096, 4096, device="cuda"), rounds=40)
    method.edit([])  # warm up
    with Stopwatch("cuda") as clock:  # what the edit's kernels take, waited for
        method.edit([])
    assert clock.ms > 20  # far above the time to queue them
    ev = Edit(id="e1", t=0.0, prompt="p", target="t", fact="f")
    single, batched = {}, {}
    apply_event(lm, method, ev, single, eval_after=False)
    apply_edits(lm, method, [ev], [batched], eval_after=False)
    assert single["ms"] >= 0.5 * clock.ms and batched["ms"] >= 0.5 * clock.ms


@needs_cuda
def test_grace_looks_up_on_the_gpu_what_the_cpu_lookup_finds():
    """Queries from a GPU model are looked up on the GPU (`Codebook.lookup_on`, a mirror of
    the keys there): the same entries as the CPU lookup of the same keys, for the edits' own
    keys and for other prompts, and a mirror made again after the codebook changes."""
    from lifelong.methods import AttachContext, EditRequest, build_method
    lm = cuda_lm()
    g = build_method("grace", {"steps": 5, "lr": 1.0}, 0)
    g.attach(lm, AttachContext(seed=0))
    prompts = ["Aldric works for", "Brenna was born in", "Caspar speaks", "Delphine plays the",
               "Evander lives in", "Who employs Aldric ?"]
    for i, p in enumerate(prompts[:4]):
        g.edit([EditRequest(f"e{i}", p, ["Zentro", "Kyoto", "Oslo"][i % 3], f"f{i}")])
        keys = g._prompt_keys(prompts)
        assert keys.is_cuda
        on_gpu, on_cpu = g.book.lookup(keys), g.book.lookup(keys.cpu())
        assert on_gpu[0].is_cuda
        assert on_gpu[0].cpu().tolist() == on_cpu[0].tolist()
        assert on_gpu[1].cpu().tolist() == on_cpu[1].tolist()
        assert on_cpu[1][:i + 1].all()  # every edit so far retrieves its own entry
