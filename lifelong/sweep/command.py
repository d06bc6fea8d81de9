"""`lifelong sweep SWEEP.toml`: expand a sweep file, run its runs on an executor, gather
their stores into one, and say how it went.

Output folder (`--out`, default `runs/NAME`):

    sweep.db          every run gathered: `lifelong report` / `compare` / `export` read it
    sweep.json        the expanded sweep (ids, configuration hashes, store files) + a token
    runs/ID.db        each run's own store (written by its worker; what a re-run resumes)
    runs/ID.db.lock   held by the process running that run
    tasks/, logs/     the local pool's task files and each worker's output

Resume: without `--resume` a folder that already holds a sweep is refused (nothing is
silently overwritten); with it, complete runs are skipped (and gathered if they are not
yet) and every other run is started or resumed from its resume point.

Invariants: the command never raises a traceback for a user error (`LifelongError`, one
line); a run's failure does not stop the sweep; the exit status is 0 exactly when every run
of the sweep is complete.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import click

from ..errors import ConfigError, LifelongError
from ..interrupts import counting_interrupts
from .gather import Gatherer, Outcome, describe_error, read_outcome
from .progress import Counts, SweepProgress
from .spec import PlannedRun, Sweep, load_sweep

#: sweep-level states a re-run continues
STOPPED = ("interrupted", "died", "busy", "new")


class Interrupted(LifelongError):
    """The user pressed Ctrl-C; finished runs are gathered, the others resume."""


@click.command("sweep")
@click.argument("sweep_file", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="list the runs (id, scenario, method, settings, "
              "seed, model, stream) and exit")
@click.option("--workers", type=click.IntRange(min=1), help="local pool: runs at once "
              "[default: the cores / the threads a run uses]; with --ray local: its CPUs")
@click.option("--ray", "ray_address", metavar="auto|local|ADDRESS",
              help="run on a Ray cluster: auto (the running one), local (start one here) or "
                   "its address (needs `pip install \"lifelong[ray]\"`)")
@click.option("--out", type=click.Path(file_okay=False), help="output folder [default: runs/NAME]")
@click.option("--resume", is_flag=True, help="continue the sweep in --out: skip complete runs, "
              "resume the others")
@click.option("--quiet", is_flag=True, help="no progress display")
def sweep(sweep_file, dry_run, workers, ray_address, out, resume, quiet):
    """Run every run of SWEEP_FILE (scenarios x methods x settings x seeds x models x stream
    options) on a local process pool or a Ray cluster, into one store. See docs/sweep.md."""
    sw = load_sweep(sweep_file)
    check_methods(sw)
    out_dir = Path(out) if out else Path("runs") / sw.name
    if dry_run:
        click.echo("\n".join(plan_lines(sw.runs, _states(out_dir, sw.runs))))
        click.echo(f"{len(sw.runs)} run(s); results would land in {out_dir / 'sweep.db'}")
        return
    outcomes, earlier = run_sweep(sw, out_dir, workers=workers, ray=ray_address,
                                  resume=resume, quiet=quiet)
    _print_results(sw, out_dir, outcomes, earlier, ray_address)


# ------------------------------------------------------------------------------------ dry run
def plan_lines(runs: Sequence[PlannedRun], states: dict[str, str] | None = None) -> list[str]:
    """The runs as aligned text columns: id, scenario, method, settings, seed, model, stream
    (and state, where the output folder holds some)."""
    heads = ["id", "scenario", "method", "settings", "seed", "model", "stream"]
    rows = [[r.run_id, r.scenario["name"], r.method["name"],
             json.dumps(r.method["settings"], sort_keys=True) if r.method["settings"] else "-",
             str(r.seed), Path(r.scenario["model"]).name or r.scenario["model"], r.stream_text()]
            for r in runs]
    if states:
        heads.append("state")
        rows = [row + [states.get(r.run_id, "new")] for row, r in zip(rows, runs)]
    widths = [max(len(x) for x in col) for col in zip(heads, *rows)]
    return ["  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip() for row in [heads, *rows]]


def _states(out: Path, runs: Sequence[PlannedRun]) -> dict[str, str]:
    """Each run's state in an existing output folder (empty when there is none)."""
    if not (out / "runs").is_dir():
        return {}
    return {r.run_id: read_outcome(out / "runs" / r.store, r.run_id).status for r in runs}


def check_methods(sw: Sweep) -> None:
    """Every method configuration against the registry, before any run starts."""
    from ..scenario import check_methods as check
    seen: set[str] = set()
    for run in sw.runs:
        key = json.dumps(run.method, sort_keys=True)
        if key not in seen:
            seen.add(key)
            try:
                check(run.build(), None)
            except ConfigError as exc:
                raise ConfigError(f"{sw.path}: {exc}") from None


# ----------------------------------------------------------------------------------- the sweep
def run_sweep(sw: Sweep, out: Path, *, workers: int | None = None, ray: str | None = None,
              resume: bool = False, quiet: bool = False) -> tuple[dict[str, Outcome], set[str]]:
    """Run the sweep into `out`; returns every run's outcome and the ids of runs that were
    already complete. Raises `Interrupted` after Ctrl-C (finished runs gathered first)."""
    _check_out(out, resume)
    if ray is None:
        _check_local_files(sw)
    outcomes = {r.run_id: read_outcome(out / "runs" / r.store, r.run_id) for r in sw.runs}
    earlier = {r.run_id for r in sw.runs if _finished(outcomes[r.run_id], r)}
    todo = [r for r in sw.runs if r.run_id not in earlier]
    executor = _executor(todo, out, workers, ray)
    try:
        _prepare_out(out)
        token = uuid.uuid4().hex
        _write_manifest(out, sw, token)
        gatherer = Gatherer(sw, out, executor.name)
        try:
            for r in sw.runs:
                if not gatherer.up_to_date(r):
                    gatherer.gather(r, outcomes[r.run_id])
            jobs = [(r, _task(r, out, sw, token, executor)) for r in todo]
            progress = SweepProgress(len(sw.runs), executor.slots, quiet)
            progress.counts.complete = len(earlier)
            _execute(executor, jobs, gatherer, progress, outcomes)
            gatherer.order_runs()
        finally:
            gatherer.close()
    finally:
        executor.close()
    left = [k for k, o in outcomes.items() if o.status != "complete"]
    if executor.interrupted and left:
        raise Interrupted(f"interrupted: {len(sw.runs) - len(left)} of {len(sw.runs)} runs "
                          f"complete, gathered in {out / 'sweep.db'}; to continue: "
                          f"{resume_command(sw, out, ray)}")
    return outcomes, earlier


def _finished(o: Outcome, run: PlannedRun) -> bool:
    """Complete, with the configuration the sweep file now gives it."""
    return o.status == "complete" and (o.attempt or {}).get("run_key") == run.key


def _executor(todo: Sequence[PlannedRun], out: Path, workers: int | None, ray: str | None):
    """The Ray cluster, or the local pool with `workers` slots (default: as many runs as
    the cores hold at the threads each uses; one when a run uses cuda)."""
    from .executors import LocalPool, RayCluster, cores
    if ray and todo:  # (nothing to run: no cluster to connect to)
        return RayCluster(ray, workers)
    if workers is None and any(r.device == "cuda" for r in todo):
        workers = 1
    per_run = max([1, *(r.threads for r in todo)])
    return LocalPool(out, workers or max(1, min(len(todo) or 1, cores() // per_run)))


def _execute(executor, jobs, gatherer: Gatherer, progress: SweepProgress,
             outcomes: dict[str, Outcome]) -> None:
    """Run the jobs, gathering each run as it ends and showing progress."""
    c = progress.counts

    def tick(running: int) -> None:
        c.running = running
        progress.show()

    with counting_interrupts() as presses:
        progress.start()
        try:
            for run, outcome in executor.results(jobs, tick, presses):
                outcomes[run.run_id] = outcome
                gatherer.gather(run, outcome)
                _count(c, outcome)
                c.running = max(0, c.running - 1)
                if outcome.status != "complete":
                    progress.note(f"{run.run_id}: {outcome.status}"
                                  + (f": {describe_error(outcome.error)}" if outcome.error else ""))
                progress.show(force=True)
            c.running = 0
            progress.show(force=True)
            if presses[0]:
                progress.note("interrupted: runs stopped at their last resume point")
        finally:
            progress.stop()


def _count(c: Counts, o: Outcome) -> None:
    if o.status == "complete":
        c.complete += 1
        wall = o.wall_s or (o.attempt or {}).get("wall_s")
        if wall:
            c.walls.append(float(wall))
    elif o.status == "failed":
        c.failed += 1
    else:
        c.stopped += 1


def _task(run: PlannedRun, out: Path, sw: Sweep, token: str, executor) -> dict:
    from .executors import pool_threads
    threads = (pool_threads(run, executor.slots) if executor.name == "pool" else
               max(1, run.threads))
    return {"run_id": run.run_id, "scenario": run.scenario, "threads": threads,
            "store": str((out / "runs" / run.store).resolve()), "executor": executor.name,
            "worker": "", "sweep_hash": sw.digest, "run_key": run.key,
            "out": str(out.resolve()), "token": token}


# ------------------------------------------------------------------------------ output folder
def _check_out(out: Path, resume: bool) -> None:
    """Refuse a file, or a folder holding a sweep unless resuming (before any work)."""
    if out.exists() and not out.is_dir():
        raise LifelongError(f"--out {out}: is a file, not a folder")
    holds = (out / "sweep.db").exists() or any((out / "runs").glob("*.db"))
    if holds and not resume:
        raise LifelongError(f"--out {out}: holds a sweep already; --resume continues it "
                            "(complete runs are skipped), or give another --out")


def _prepare_out(out: Path) -> None:
    """Create the output folder (ignored by git: it holds results, not sources)."""
    try:
        (out / "runs").mkdir(parents=True, exist_ok=True)
        (out / ".gitignore").write_text("*\n", encoding="utf-8")
    except OSError as exc:
        raise LifelongError(f"--out {out}: cannot write there ({exc.strerror or exc})") from None


def _check_local_files(sw: Sweep) -> None:
    """For the local pool (files seen as the workers see them): streams and model
    directories exist, so a typo fails here and not once per run."""
    for r in sw.runs:
        stream, model = r.scenario["stream"]["file"], r.scenario["model"]
        if not Path(stream).is_file():
            raise ConfigError(f"{sw.path}: run {r.run_id}: no such stream file {stream}")
        if model not in ("builtin", "") and not Path(model).exists():
            raise ConfigError(f"{sw.path}: run {r.run_id}: no such model directory {model}")


def _write_manifest(out: Path, sw: Sweep, token: str) -> None:
    doc = {"schema": "lifelong.sweep/1", "sweep": sw.name, "file": str(sw.path.resolve()),
           "hash": sw.digest, "token": token, "written_at": time.time(),
           "runs": [{"run_id": r.run_id, "key": r.key, "store": f"runs/{r.store}"}
                    for r in sw.runs]}
    (out / "sweep.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")


def resume_command(sw: Sweep, out: Path, ray: str | None) -> str:
    return (f"lifelong sweep {sw.path} --out {out} --resume"
            + (f" --ray {ray}" if ray else ""))


# ------------------------------------------------------------------------------------ results
def _print_results(sw: Sweep, out: Path, outcomes: dict[str, Outcome], earlier: set[str],
                   ray: str | None) -> None:
    """The comparison tables of the gathered store, each unfinished run with why, and a
    one-line error (non-zero exit) when not every run is complete."""
    from rich.console import Console

    from ..report import load_runs, print_comparison
    db = out / "sweep.db"
    print_comparison(load_runs([db]), Console(width=None if sys.stdout.isatty() else 200))
    bad = {k: o for k, o in outcomes.items() if o.status != "complete"}
    for k, o in bad.items():
        click.echo(f"{k}: {o.status}" + (f": {describe_error(o.error)}" if o.error else ""))
    done = len(outcomes) - len(bad)
    click.echo(f"sweep {sw.name}: {done} of {len(outcomes)} runs complete"
               + (f" ({len(earlier)} of them before this invocation)" if earlier else ""))
    click.echo(f"store: {db}  (lifelong report {db} -o report.html)")
    if bad:
        kinds = {s: sum(o.status == s for o in bad.values()) for s in ("failed", *STOPPED)}
        what = ", ".join(f"{n} {s}" for s, n in kinds.items() if n)
        raise LifelongError(f"{len(bad)} of {len(outcomes)} runs not complete ({what}); "
                            f"`{resume_command(sw, out, ray)}` retries and resumes them "
                            "(errors above; each run's log: "
                            f"{out / 'logs'})")
