"""One process at a time computes a cache entry (`Cache.exclusive`): a run that needs an editor
another run is training waits for it and reads what it cached instead of training it again
(MEND and KE through `train_or_read`, SERAC through its own attach); a holder that is killed
releases the lock, so nobody waits on a dead process."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import pytest
import torch
from test_serac import make as make_serac
from test_serac import tiny

from lifelong.methods import AttachContext
from lifelong.methods._common import trained as trained_mod
from lifelong.methods._common.trained import train_or_read
from lifelong.methods.context import Cache
from lifelong.methods.serac import method as serac_method

pytestmark = [pytest.mark.usefixtures("single_thread"),
              pytest.mark.skipif(sys.platform == "win32", reason="flock is POSIX")]


@dataclass
class Net:
    """The smallest `Network`: one tensor."""
    w: torch.Tensor = field(default_factory=lambda: torch.zeros(3))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"w": self.w}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.w = tensors["w"].clone()


@dataclass
class Training:
    steps: int = 2
    seconds: float = 0.0
    losses: list[float] = field(default_factory=lambda: [1.0, 0.5])


def run_in_thread(fn) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 (re-raised by the test)
            out["error"] = exc
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


def test_a_second_trainer_waits_and_reads_what_the_first_cached(tmp_path):
    ctx = AttachContext(seed=0, cache_dir=str(tmp_path), model_fingerprint="tiny")
    cache = ctx.cache()
    trainings, net = [], Net()

    def train(checkpoint):
        trainings.append(1)
        return Training()
    with cache.exclusive("net", "entry"):  # another process is training this entry
        thread, out = run_in_thread(lambda: train_or_read(ctx, "net", "entry", net, train, "net"))
        time.sleep(0.5)  # the second attach has found no entry and is waiting for the lock
        assert thread.is_alive() and not trainings
        cache.save("net", "entry", {"w": torch.tensor([1.0, 2.0, 3.0]),
                                    **{k: torch.tensor(1.0, dtype=torch.float64)
                                       for k in trained_mod.META}})
    thread.join(10)
    assert "error" not in out and not thread.is_alive()
    assert not trainings and out["value"][0]["editor"] == "read from the cache"
    assert torch.equal(net.w, torch.tensor([1.0, 2.0, 3.0]))


def test_without_a_holder_the_entry_is_trained_once_and_then_read(tmp_path):
    ctx = AttachContext(seed=0, cache_dir=str(tmp_path), model_fingerprint="tiny")
    trainings = []

    def train(checkpoint):
        trainings.append(1)
        return Training()
    assert train_or_read(ctx, "net", "entry", Net(), train, "net")[0]["editor"] == "trained"
    assert train_or_read(ctx, "net", "entry", Net(), train, "net")[0]["editor"] == \
        "read from the cache"
    assert len(trainings) == 1


def test_a_killed_holder_releases_the_lock(tmp_path):
    cache = Cache(tmp_path, "tiny")
    lock = cache.path("net", "entry").with_suffix(".lock")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time\n"
         f"f = open({str(lock)!r}, 'a+b'); fcntl.flock(f, fcntl.LOCK_EX)\n"
         "print('held', flush=True); time.sleep(120)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        waited = threading.Event()

        def take():
            with cache.exclusive("net", "entry", waited.set, poll_seconds=0.05):
                return True
        thread, out = run_in_thread(take)
        assert waited.wait(10) and thread.is_alive()  # held by a live process: it waits
        holder.kill()
        holder.wait(10)
        thread.join(10)
        assert out.get("value") is True
    finally:
        holder.kill()
        holder.wait(10)


def test_serac_waits_for_its_parts_and_reads_them(tmp_path, monkeypatch):
    first = make_serac(tiny(), tmp_path / "a")  # the parts, trained by "another process"
    trained_file = next((tmp_path / "a").rglob(f"{first.info['entry']}.safetensors"))
    calls = []
    train = serac_method.train_counterfactual
    monkeypatch.setattr(serac_method, "train_counterfactual",
                        lambda *a, **k: calls.append(1) or train(*a, **k))
    cache = Cache(tmp_path / "b", "tiny-gpt2")
    with cache.exclusive(serac_method.CACHE_FOLDER, first.info["entry"]):
        thread, out = run_in_thread(lambda: make_serac(tiny(), tmp_path / "b"))
        time.sleep(0.5)
        dest = cache.path(serac_method.CACHE_FOLDER, first.info["entry"])
        shutil.copy(trained_file, dest.with_suffix(".safetensors"))
    thread.join(60)
    assert "error" not in out and not thread.is_alive()
    second = out["value"]
    assert not calls and second.info["editor"] == "read from the cache"
    assert second.digest == first.digest
