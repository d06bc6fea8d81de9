"""`lifelong` command line. Exit status 0 on success; otherwise a one-line reason on stderr
(after the list of problems, for an invalid stream) and a non-zero status."""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from pathlib import Path

import click

from .config import choices_of, describe, from_mapping, to_dict
from .errors import LifelongError, StreamError

MAX_SEED = 2**63 - 1  # torch.manual_seed takes 0 <= seed < 2**63 (also scenario.MAX_SEED)


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"lifelong: {message}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lifelong")
def cli() -> None:
    """Continual-editing simulator and lifelong memory runtime for language models."""


# ---------------------------------------------------------------------------------- simulate
@cli.command()
@click.argument("scenario", required=False, type=click.Path(dir_okay=False))
@click.option("--stream", "stream", type=click.Path(dir_okay=False), help="edit stream (JSONL); overrides the scenario's")
@click.option("--method", "methods", multiple=True, help="method to run (repeatable); overrides the scenario's list")
@click.option("--model", help="'builtin' or a local Hugging Face model directory")
@click.option("--edits", type=click.IntRange(min=1), help="replay only up to the Nth edit")
@click.option("--seed", type=click.IntRange(0, MAX_SEED), help="run this one seed")
@click.option("--db", type=click.Path(dir_okay=False), help="SQLite store (default: runs/<scenario>.db)")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="write the JSON summary here")
@click.option("--resume", is_flag=True, help="continue runs already in the store")
@click.option("--skip-bad", is_flag=True, help="drop invalid stream lines (counted and reported)")
@click.option("--allow-unknown", is_flag=True, help="run even when the stream's answers are "
              "mostly words the model does not know (sets stream.max_unknown_share = 1)")
@click.option("--threads", type=click.IntRange(min=1), help="torch CPU threads")
@click.option("--device", type=click.Choice(["cpu", "cuda"]),
              help="torch device for the model and the method; overrides the scenario's `device`")
@click.option("--quiet", is_flag=True, help="no progress display")
def simulate(scenario, stream, methods, model, edits, seed, db, json_path, resume, skip_bad,
             allow_unknown, threads, device, quiet):
    """Replay an edit stream against each method of SCENARIO and report the results."""
    import dataclasses

    from .progress import Reporter
    from .runsetup import preflight
    from .runtime import Runtime, truncate
    from .scenario import load_scenario
    from .stream import parse_stream

    sc = load_scenario(scenario, {"stream": stream, "methods": list(methods), "model": model,
                                  "edits": edits, "seed": seed, "allow_unknown": allow_unknown,
                                  "device": device},
                       methods=True)
    if skip_bad:
        sc = dataclasses.replace(sc, stream=dataclasses.replace(sc.stream, skip_bad=True))
    if threads:
        sc = dataclasses.replace(sc, threads=threads)
    db_path = Path(db) if db else Path("runs") / f"{sc.name}.db"
    if json_path:  # before the run, not after it: a run of hours must not end on this
        _check_writable(Path(json_path), "--json")
    parsed = parse_stream(sc.stream.file, skip_bad=sc.stream.skip_bad, sort=sc.stream.sort)
    if parsed.skipped:
        click.echo(f"lifelong: skipped {len(parsed.skipped)} invalid line(s) of {sc.stream.file}:", err=True)
        for line in parsed.skipped[:20]:
            click.echo(f"  {line}", err=True)
    # the model and the stream's words are checked before the store file is created
    setup = preflight(sc, truncate(parsed.events, sc.stream.max_edits))
    with _opened_store(db_path) as store:
        runtime = Runtime(sc, parsed, store, Reporter(quiet=quiet), setup=setup)
        run_ids = runtime.run_all(resume=resume)
        _print_results(store, run_ids, len(parsed.skipped), json_path)


@contextlib.contextmanager
def _opened_store(path: Path):
    """The store, closed at the end (left out of WAL mode, so it reads anywhere). A store file
    this command created is removed again if the command failed before recording any run."""
    from .store import Store
    created = not path.exists()
    store = Store(path)
    try:
        yield store
    except BaseException:
        empty = created and _quietly(store.is_empty)
        store.close()
        if empty:
            for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
                p.unlink(missing_ok=True)
        raise
    store.close()


def _quietly(fn) -> bool:
    try:
        return bool(fn())
    except LifelongError:
        return False


def _print_results(store, run_ids: list[str], skipped: int, json_path: str | None) -> None:
    """The comparison tables of this command's runs, and the JSON summary if asked."""
    from rich.console import Console

    from .report import load_runs, print_comparison
    from .summary import summarize
    summary = summarize(store, run_ids)
    summary["skipped_lines"] = skipped
    # the same tables as `lifelong compare`, for the runs of this command
    print_comparison([r for r in load_runs([store.path]) if r.run["run_id"] in run_ids],
                     Console(width=None if sys.stdout.isatty() else 200))
    click.echo(f"store: {store.path}")
    if json_path:
        try:
            Path(json_path).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            raise LifelongError(f"{json_path}: cannot write the summary ({exc.strerror or exc}); "
                                f"the runs are recorded in {store.path} (`lifelong compare "
                                f"{store.path} --json PATH` writes it)") from None
        click.echo(f"summary: {json_path}")


def _check_writable(path: Path, option: str) -> None:
    """Refuse an output file that cannot be written, before doing any work for it."""
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise LifelongError(f"{option} {path}: is a directory")
    if not parent.is_dir():
        raise LifelongError(f"{option} {path}: no such directory {parent}")
    target = path if path.exists() else parent
    if not os.access(target, os.W_OK):
        raise LifelongError(f"{option} {path}: {target} is not writable")


# ----------------------------------------------------------------------------------- streams
@cli.group()
def streams() -> None:
    """Validate and generate edit streams."""


@streams.command("validate")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--sort", is_flag=True, help="allow lines out of timestamp order")
def streams_validate(file, sort):
    """Check FILE; print every problem as FILE:LINE: field: what is wrong. Warnings (an edit's
    `previous` that contradicts the fact's value before it) go to stderr as FILE:LINE: lines
    too; they do not make FILE invalid."""
    from .stream import parse_stream, previous_warnings
    parsed = parse_stream(file, sort=sort)
    kinds: dict[str, int] = {}
    for ev in parsed.events:
        kinds[ev.kind] = kinds.get(ev.kind, 0) + 1
    warnings = previous_warnings(parsed)
    for line in warnings:
        click.echo(line, err=True)
    w = len(warnings)
    warned = f"; {w} warning{'s' * (w != 1)} (previous values the stream contradicts)" if w else ""
    click.echo(f"{file}: valid, {len(parsed.events)} events ("
               + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) + ")" + warned)


@streams.command("make")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="JSONL file to write")
@click.option("--edits", type=click.IntRange(min=1), default=300, show_default=True, help="number of edit events")
@click.option("--reedit-share", type=float, help="share of edits that re-edit an already edited fact")
@click.option("--retract-share", type=float, help="retractions, as a share of edits")
@click.option("--query-share", type=float, help="query events, as a share of edits")
@click.option("--spacing", type=float, help="mean seconds between events")
@click.option("--split", type=click.Choice(["dev", "test"]), default="test", show_default=True,
              help="whose facts to edit: dev (for choosing defaults) or test (for reported figures)")
@click.option("--seed", type=click.IntRange(min=0, max=2**63 - 1), default=0, show_default=True)
@click.option("--world", type=click.Path(dir_okay=False), help="world.json (default: the built-in model's)")
def streams_make(output, edits, reedit_share, retract_share, query_share, spacing, split, seed, world):
    """Generate a timestamped edit stream from the world's timeline of fact changes."""
    from .streamgen import StreamSpec, make_stream, write_stream
    from .world import World, load_builtin_world
    if spacing is not None and not (math.isfinite(spacing) and spacing >= 0):
        raise LifelongError(f"--spacing: must be a finite number of seconds >= 0, got {spacing}")
    w = _world(World.from_json, world) if world else _world(lambda _: load_builtin_world(), 'the built-in world')
    given = {"edits": edits, "reedit_share": reedit_share, "retract_share": retract_share,
             "query_share": query_share, "spacing_seconds": spacing, "seed": seed, "split": split}
    spec = from_mapping(StreamSpec, {k: v for k, v in given.items() if v is not None}, "streams make")
    events = make_stream(w, spec)
    write_stream(events, output)
    click.echo(f"{output}: {len(events)} events ({edits} edits) from {to_dict(spec)}")


@streams.command("reedits")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="JSONL file to write")
@click.option("--pairs", type=click.IntRange(min=0), default=0, show_default=True,
              help="at most this many pairs (0: every re-edited fact)")
def streams_reedits(file, output, pairs):
    """Each fact FILE edits more than once: its first edit directly followed by its first
    re-edit, to replay in chunks of two (`restart_every = 2`: a re-edit meets the value the
    edit before it just wrote, on a fresh model each time)."""
    from .stream import dump_stream, parse_stream
    from .streamorder import reedit_pairs
    out = reedit_pairs(parse_stream(file).events, pairs)
    if not out:
        raise LifelongError(f"{file}: no fact is edited more than once")
    dump_stream(out, output)
    click.echo(f"{output}: {len(out) // 2} re-edit pairs ({len(out)} edits) from {file}")


@streams.command("merge")
@click.option("--task", "tasks", multiple=True, required=True, metavar="NAME=FILE",
              help="a task's stream file (repeat for each task; instructedit knows the tasks "
                   "zsre, counterfact, recent and convsent)")
@click.option("--all", "keep_all", is_flag=True,
              help="keep every edit of every file (default: as many of each task as the "
                   "smallest file holds, the first ones)")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="JSONL file to write")
def streams_merge(tasks, keep_all, output):
    """One multi-task train split from several stream files: each edit tagged with its task
    (meta.task), ids prefixed NAME/, the tasks interleaved and, by default, balanced."""
    from .stream import dump_stream, parse_stream
    from .streamtasks import merge_tasks, parse_task_spec
    specs = [parse_task_spec(t) for t in tasks]
    out = merge_tasks([(name, parse_stream(path).events) for name, path in specs],
                      balance=not keep_all)
    dump_stream(out, output)
    counts = {name: sum(1 for e in out if e.meta["task"] == name) for name, _ in specs}
    click.echo(f"{output}: {len(out)} edits (" + ", ".join(f"{k} {v}" for k, v in counts.items())
               + ")")


@streams.command("instruct")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--task", required=True, help="the task whose instruction goes before the prompts "
              "(zsre, counterfact, recent, convsent)")
@click.option("--held-out", is_flag=True, help="the task's held-out instruction (default: its first)")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="JSONL file to write")
def streams_instruct(file, task, held_out, output):
    """FILE with every edit's prompt, rephrases and portability prompts behind a task
    instruction, locality prompts plain: the stream InstructEdit's reference code scores
    (run instructedit on it with instruction = "in-stream")."""
    from .methods.instructedit.instructions import HELD_OUT
    from .stream import dump_stream, parse_stream
    from .streamtasks import instruct_stream
    out = instruct_stream(parse_stream(file).events, task, HELD_OUT if held_out else 0)
    dump_stream(out, output)
    click.echo(f"{output}: {len(out)} events of {file}, edits behind the {task} instruction")


def _world(load, path):
    """A world file loaded, or one line saying why it cannot be."""
    try:
        return load(path)
    except (ValueError, KeyError, TypeError) as exc:  # wrong format, missing fields, bad JSON
        raise LifelongError(f"{path}: not a usable world file ({exc})") from None


from .importers import streams_import  # noqa: E402  (`lifelong streams import`)

streams.add_command(streams_import)


# ------------------------------------------------------------------------------------- model
@cli.group()
def model() -> None:
    """Inspect models."""


@model.command("check")
@click.option("--model", "model_path", help="'builtin' (default) or a model directory with a world.json")
@click.option("--world", type=click.Path(dir_okay=False), help="world.json (default: the model's own)")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="write the result as JSON")
@click.option("--sample", type=click.IntRange(min=1),
              help="score a seeded sample of this many pairs per split (>= 1)")
@click.option("--quiet", is_flag=True, help="no progress display")
def model_check(model_path, world, json_path, sample, quiet):
    """How well a model knows its world: trained and held-out phrasings, the phrasing family
    it never saw, two-hop questions; both protocols."""
    from .model import load_model
    from .modelcheck import check_model, format_check
    from .progress import Reporter
    from .world import World
    lm = load_model(model_path)
    wpath = Path(world) if world else Path(lm.path) / "world.json"
    if not wpath.exists():
        raise LifelongError(f"{wpath}: no world.json; give --world")
    reporter = Reporter(quiet=quiet)
    current = [""]

    def progress(split: str, done: int, total: int) -> None:
        if split != current[0]:
            reporter.stop()
            reporter.start(f"check {split}", total, 0, unit="pairs")
            current[0] = split
        reporter.update(done)

    try:
        result = check_model(lm, _world(World.from_json, wpath), sample=sample, progress=progress)
    finally:
        reporter.stop()
    result["model"] = lm.name
    click.echo(format_check(result))
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------- pretrain
@cli.command()
@click.option("-o", "--out", type=click.Path(file_okay=False),
              help="directory to write the model into [default: out/builtin-model, or "
                   "out/organism-STEM with --facts]")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="TOML with [world] and [pretrain] tables, or with --facts [pretrain] and "
                   "[organism] (see `lifelong pretrain --show-config`)")
@click.option("--facts", "facts_path", type=click.Path(dir_okay=False),
              help="train a model organism that knows this edit stream's original facts "
                   "(instead of a synthetic world; the config may hold only [pretrain])")
@click.option("--hold-out", "hold_out", multiple=True,
              type=click.Choice(["prompts", "rephrases", "locality"]),
              help="with --facts: leave these pairs out of training, only check them (repeatable)")
@click.option("--seed", type=click.IntRange(0, MAX_SEED),
              help="seed of both the world and the training (with --facts: of the training)")
@click.option("--steps", type=click.IntRange(min=1), help="optimiser steps")
@click.option("--show-config", is_flag=True, help="print the resolved configuration and exit")
@click.option("--quiet", is_flag=True)
def pretrain(out, config_path, facts_path, hold_out, seed, steps, show_config, quiet):
    """Pretrain the built-in model on a synthetic fact world (deterministic from its seed),
    or with --facts a model organism of a real edit stream."""
    import tomllib

    from .pretrain import PretrainConfig
    from .pretrain import pretrain as run_pretrain
    from .world import WorldConfig
    data = tomllib.loads(Path(config_path).read_text(encoding="utf-8")) if config_path else {}
    unknown = set(data) - {"world", "pretrain", "organism"}
    if unknown:
        raise LifelongError(f"{config_path}: unknown table(s) {', '.join(sorted(unknown))}; "
                            "known: world, pretrain, organism")
    if facts_path and "world" in data:
        raise LifelongError(f"{config_path}: a [world] table cannot be used with --facts")
    if not facts_path and "organism" in data:
        raise LifelongError(f"{config_path}: an [organism] table needs --facts")
    if hold_out and not facts_path:
        raise LifelongError("--hold-out needs --facts")
    wd, pd = dict(data.get("world", {})), dict(data.get("pretrain", {}))
    if seed is not None:
        wd["seed"], pd["seed"] = seed, seed
    if steps is not None:
        pd["steps"] = steps
    wcfg = None if facts_path else from_mapping(WorldConfig, wd, "world")
    pcfg = from_mapping(PretrainConfig, pd, "pretrain")
    if facts_path:
        from .organism import OrganismConfig
        ocfg = from_mapping(OrganismConfig, data.get("organism"), "organism")
        _pretrain_organism(facts_path, pcfg, ocfg, out, hold_out, show_config, quiet)
        return
    if show_config:
        click.echo(json.dumps({"world": to_dict(wcfg), "pretrain": to_dict(pcfg)}, indent=2))
        return
    out = out or "out/builtin-model"
    record = run_pretrain(wcfg, pcfg, out, progress=not quiet)
    check = record["check"]
    click.echo(f"{out}: trained {check['trained']['tf_acc']:.3f} / held-out "
               f"{check['heldout']['tf_acc']:.3f} (teacher-forced), {record['wall_seconds']} s")


def _pretrain_organism(facts_path, pcfg, ocfg, out, hold_out, show_config, quiet) -> None:
    """`lifelong pretrain --facts`: train (or with show_config describe) a model organism."""
    from . import organism
    if show_config:
        facts = organism.collect_facts(facts_path)
        tok = organism.organism_tokenizer(facts, ocfg, pcfg.vocab_size)
        click.echo(json.dumps({"facts": facts_path, "counts": facts.counts(),
                               "organism": to_dict(ocfg),
                               "target_tokens": organism.target_tokens(tok, facts),
                               "pretrain": to_dict(organism.resolve_config(pcfg, tok, facts))},
                              indent=2))
        return
    out = out or f"out/organism-{Path(facts_path).stem}"
    record = organism.pretrain_organism(facts_path, pcfg, out, progress=not quiet,
                                        hold_out=hold_out, organism=ocfg)
    check = record["check"]
    if not quiet:
        click.echo(organism.format_organism_check(check, hold_out))
    roles = " / ".join(f"{r} {check[r]['tf_acc']:.3f}" for r in organism.ROLES if check[r]["n"])
    click.echo(f"{out}: {roles} (teacher-forced), {record['wall_seconds']} s")


# ----------------------------------------------------------------------------------- methods
@cli.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def methods(as_json):
    """Registered methods, their optional capabilities and their settings."""
    from .methods import BatchEditing, Consolidating, Retractable, Routing, WeightDeltas, available_methods
    caps = {"retractable": Retractable, "consolidating": Consolidating, "routing": Routing,
            "batch editing": BatchEditing, "weight deltas": WeightDeltas}

    def capabilities(cls) -> list[str]:
        return [n for n, c in caps.items() if issubclass(cls, c)]

    found = available_methods()
    if as_json:
        click.echo(json.dumps({n: {"summary": c.summary, "capabilities": capabilities(c), "settings": [
            {"name": a, "type": b, "default": d, "help": h,
             **({"choices": list(choices_of(c.Config)[a])} if a in choices_of(c.Config) else {})}
            for a, b, d, h in describe(c.Config)]} for n, c in found.items()}, indent=2, default=str))
        return
    for name, cls in found.items():
        click.echo(f"{name}: {cls.summary} [{', '.join(capabilities(cls)) or 'no optional capabilities'}]")
        allowed = choices_of(cls.Config)
        for fname, ftype, default, help_text in describe(cls.Config):
            one_of = f"; one of {', '.join(map(repr, allowed[fname]))}" if fname in allowed else ""
            click.echo(f"    {fname} ({ftype}, default {default!r}{one_of}): {help_text}")


from .report import compare, report  # noqa: E402

cli.add_command(report)
cli.add_command(compare)


from .bench import bench  # noqa: E402

cli.add_command(bench)

from .export import export  # noqa: E402

cli.add_command(export)

from .train_editor import train_editor_command  # noqa: E402

cli.add_command(train_editor_command)

from .trace import trace_command  # noqa: E402

cli.add_command(trace_command)

from .sweep import sweep_command  # noqa: E402

cli.add_command(sweep_command)

from .sentiment_cli import sentiment_command  # noqa: E402

cli.add_command(sentiment_command)


def main() -> None:
    try:
        rv = cli.main(standalone_mode=False)
        if isinstance(rv, int) and rv:
            sys.exit(rv)
    except click.exceptions.Abort:
        _fail("aborted", 130)
    except click.UsageError as exc:  # one line like every other error, with where to look
        ctx = exc.ctx.command_path if exc.ctx else "lifelong"
        _fail(f"{exc.format_message()} (see `{ctx} --help`)", exc.exit_code)
    except click.ClickException as exc:
        _fail(exc.format_message(), exc.exit_code)
    except StreamError as exc:
        for line in exc.problems[:200]:
            click.echo(line, err=True)
        if len(exc.problems) > 200:
            click.echo(f"... and {len(exc.problems) - 200} more", err=True)
        _fail(str(exc))
    except LifelongError as exc:
        code = 130 if type(exc).__name__ == "Interrupted" else 2
        _fail(str(exc), code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except OSError as exc:  # a file the user named cannot be read or written
        where = f"{exc.filename}: " if exc.filename else ""
        _fail(f"{where}{exc.strerror or exc}")


if __name__ == "__main__":
    main()
