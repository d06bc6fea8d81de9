"""Executors: where a sweep's runs execute. Both run the same worker code
(`worker.run_task`) on the same tasks, so they give the same rows.

- `LocalPool`: a pool of `workers` threads, each starting one worker process per run
  (`python -m lifelong.sweep TASK.json`, its output in `OUT/logs/`), with
  `OMP_NUM_THREADS` and torch threads set to the run's share of the cores. A process per
  run: a worker that dies (`kill -9`, out of memory, fault injection) ends only its own
  run, which is reported "died" and resumed by the next `--resume`; the pool goes on.
- `RayCluster`: one Ray task per run, asking for the CPUs the run's scenario uses
  (`threads`, at least 1) and one GPU when its device is cuda; Ray places the tasks, and
  retries a task whose worker died (`RETRIES` times), which then resumes the run from its
  resume point. Where the driver's `OUT` folder is also on the worker (one machine, or a
  shared file system: recognised by `OUT/sweep.json`'s token), the task writes the run's
  store there directly; otherwise in a scratch folder on the worker, seeded with the
  driver's copy of the store and shipped back as bytes when the task ends.

Ctrl-C (`presses`, counted by the command): the first stops queued runs from starting and
asks running ones to stop at their next event boundary (they save and end "interrupted");
the second kills running workers (each run resumes from its last resume point).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

from ..errors import LifelongError
from .gather import Outcome, describe_error, read_outcome
from .spec import PlannedRun
from .worker import EXIT

Job = tuple[PlannedRun, dict]
Tick = Callable[[int], None]  # called about every second with the number of runs running
RETRIES = 2
POLL_SECONDS = 1.0


def cores() -> int:
    """CPU cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def pool_threads(run: PlannedRun, workers: int) -> int:
    """Torch threads of a run in the local pool: the scenario's `threads`, else its share
    of the cores, so that workers do not fight over them."""
    return run.threads or max(1, cores() // max(1, workers))


def _died(run_id: str, how: str, found: Outcome) -> Outcome:
    """A run whose worker ended abnormally: what its store says, or died with `how`."""
    if found.status in ("complete", "failed", "interrupted"):
        return found
    return Outcome(run_id, "died", how, found.attempt, found.attempts)


# ---------------------------------------------------------------------------------- the pool
class LocalPool:
    """Runs at most `workers` runs at once, each in its own worker process."""

    name = "pool"

    def __init__(self, out: Path, workers: int):
        self.out, self.slots = out, workers
        self.interrupted = False
        self._procs: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        """Nothing to release: every worker process has ended when `results` returns."""

    def results(self, jobs: Sequence[Job], tick: Tick,
                presses: list[int]) -> Iterator[tuple[PlannedRun, Outcome]]:
        """Each job's run and outcome, as they end (jobs never started are left out)."""
        seen = 0
        with ThreadPoolExecutor(max_workers=self.slots, thread_name_prefix="sweep") as ex:
            futures: dict[Future, PlannedRun] = {ex.submit(self._one, run, task): run
                                                 for run, task in jobs}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=POLL_SECONDS, return_when=FIRST_COMPLETED)
                if presses[0] > seen:
                    seen = presses[0]
                    self._stop(ex, hard=seen > 1)
                    pending = {f for f in pending if not f.cancelled()}  # never started
                for f in done:
                    outcome = None if f.cancelled() else f.result()
                    if outcome is not None:
                        yield futures[f], outcome
                with self._lock:
                    tick(len(self._procs))

    def _stop(self, ex: ThreadPoolExecutor, hard: bool) -> None:
        self.interrupted = True
        ex.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            for proc in self._procs.values():
                proc.send_signal(signal.SIGKILL if hard else signal.SIGINT)

    def _one(self, run: PlannedRun, task: dict) -> Outcome | None:
        stem = run.store[:-len(".db")]
        task_file = self.out / "tasks" / f"{stem}.json"
        task_file.parent.mkdir(parents=True, exist_ok=True)
        task_file.write_text(json.dumps(task, indent=1), encoding="utf-8")
        log_file = self.out / "logs" / f"{stem}.log"
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "ab") as log, self._lock:
            if self.interrupted:
                return None
            proc = subprocess.Popen([sys.executable, "-m", "lifelong.sweep", str(task_file)],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    env=_worker_env(task["threads"]), start_new_session=True)
            self._procs[run.run_id] = proc
        t0 = time.monotonic()
        try:
            rc = proc.wait()
        finally:
            with self._lock:
                self._procs.pop(run.run_id, None)
        store = self.out / "runs" / run.store
        found = read_outcome(store, run.run_id, busy=rc == EXIT["busy"])
        if rc == -signal.SIGINT and found.status in ("new", "died"):  # Ctrl-C while starting
            found = Outcome(run.run_id, "interrupted", "interrupted while starting",
                            found.attempt, found.attempts)
        elif rc not in EXIT.values():
            how = (f"the worker process was killed by signal {-rc}" if rc < 0 else
                   f"the worker process exited with status {rc}") + f" (log: logs/{stem}.log)"
            found = _died(run.run_id, how, found)
        return dataclasses.replace(found, wall_s=time.monotonic() - t0)


def _worker_env(threads: int) -> dict[str, str]:
    """The worker's environment: this checkout's package first on the path, and its share
    of the cores for every thread pool (OpenMP, MKL, OpenBLAS)."""
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    return env


# ----------------------------------------------------------------------------------------- Ray
def ray_task(task: dict, seed_store: list) -> dict:
    """A Ray task: run one planned run (see the module docstring for where its store is
    written). Returns its status, and the store's bytes when it was written in scratch."""
    import ray

    from .worker import run_task
    ctx = ray.get_runtime_context()
    task = dict(task, worker=f"ray node {ctx.get_node_id()[:12]} worker {ctx.get_worker_id()[:12]}")
    if _shares_out(task):
        return {"status": run_task(task), "blob": None}
    scratch = Path(tempfile.gettempdir()) / f"lifelong-sweep-{task['token']}"
    path = scratch / Path(task["store"]).name
    if seed_store and not path.exists():
        scratch.mkdir(parents=True, exist_ok=True)
        path.write_bytes(ray.get(seed_store[0]))
    status = run_task(dict(task, store=str(path)))
    blob = path.read_bytes() if path.exists() and status != "busy" else None
    if blob is not None:  # shipped: the driver's copy is the store from now on
        for p in (path, path.with_name(path.name + ".lock")):
            p.unlink(missing_ok=True)
    return {"status": status, "blob": blob}


def _shares_out(task: dict) -> bool:
    """True when this worker sees the driver's OUT folder (same token in sweep.json)."""
    try:
        marker = json.loads((Path(task["out"]) / "sweep.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return marker.get("token") == task["token"]


class RayCluster:
    """Runs every run as a Ray task on the cluster at `address` ("auto": the running one;
    "local": a new local instance with `workers` CPUs; else host:port or ray://...). A
    Ray instance already initialised in this process is used as it is."""

    name = "ray"

    def __init__(self, address: str, workers: int | None):
        try:
            import ray
        except ImportError:
            raise LifelongError("--ray needs the ray package: pip install \"lifelong[ray]\" "
                                "(or pip install ray)") from None
        self.ray, self.interrupted, self._started = ray, False, False
        if not ray.is_initialized():
            self._init(address, workers)
        self.slots = max(1, int(ray.cluster_resources().get("CPU", 1)))

    def _init(self, address: str, workers: int | None) -> None:
        try:
            if address == "local":
                self.ray.init(num_cpus=workers, log_to_driver=False, include_dashboard=False)
            else:
                self.ray.init(address=address, log_to_driver=False)
        except Exception as exc:  # noqa: BLE001  (ConnectionError, ValueError, RuntimeError...)
            raise LifelongError(f"--ray {address}: cannot connect to a Ray cluster "
                                f"({describe_error(str(exc))}); start one with `ray start "
                                "--head`, or use --ray local") from None
        self._started = True

    def close(self) -> None:
        if self._started:
            self.ray.shutdown()

    def results(self, jobs: Sequence[Job], tick: Tick,
                presses: list[int]) -> Iterator[tuple[PlannedRun, Outcome]]:
        ray, remote, seen = self.ray, self.ray.remote(ray_task), 0
        refs = {}
        for run, task in jobs:
            store = Path(task["store"])
            seed = [ray.put(store.read_bytes())] if store.is_file() else []
            options = remote.options(num_cpus=max(1, run.threads), max_retries=RETRIES,
                                     num_gpus=1 if run.device == "cuda" else 0, name=run.run_id)
            refs[options.remote(task, seed)] = (run, task)
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1, timeout=POLL_SECONDS)
            if presses[0] > seen:
                seen, self.interrupted = presses[0], True
                for ref in refs:
                    ray.cancel(ref, force=seen > 1)
            for ref in ready:
                run, task = refs.pop(ref)
                yield run, self._outcome(ref, run, task)
            tick(len(refs))

    def _outcome(self, ref, run: PlannedRun, task: dict) -> Outcome:
        store = Path(task["store"])
        try:
            result = self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:
            found = read_outcome(store, run.run_id)
            if isinstance(exc, self.ray.exceptions.TaskCancelledError) and \
                    found.status in ("new", "died"):
                return Outcome(run.run_id, "interrupted", "cancelled (Ctrl-C)", found.attempt,
                               found.attempts)
            how = f"the Ray task ended abnormally: {describe_error(str(exc))}"
            return _died(run.run_id, how, found)
        if result["blob"] is not None:
            tmp = store.with_name(store.name + ".part")
            tmp.write_bytes(result["blob"])
            tmp.replace(store)
        return read_outcome(store, run.run_id, busy=result["status"] == "busy")
