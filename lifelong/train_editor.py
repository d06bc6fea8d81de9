"""`lifelong train-editor`: train a method's parts on a train split ahead of the runs.

MEND, KE and SERAC (`trains_at_attach`) train at attach on `AttachContext.train_records()`
and cache what they trained under the model's fingerprint, keyed by every setting that
shapes it, the training seed and the split's digest (never its path). This command makes
exactly that attach, with the context a `lifelong simulate` run of the same model, settings,
seed and train split gives, so such a run reads the parts instead of training them. With
`--scenario`, the contexts are the scenario's runs' own (`Runtime.attach_context`), held-out
records (`stream.train_exclude`) included, for each of its methods that trains and each seed.
Two processes that need the same entry train it once: the second waits for the first's lock
(`Cache.exclusive`) and reads what it cached.

Invariants: training is seeded by the method itself (its `train_seed` / `editor_seed`, by
default the run's seed), never by torch's global generator, so the cached tensors are those a
run would have trained; nothing is cached until training ends; every training (MEND's, KE's,
each of SERAC's two parts) saves a resume point beside the entry every 30 s, so after Ctrl-C
or a kill the same command (or a run) takes the remaining updates and ends with the same
tensors (`_common/checkpoint.py`); a second call with the same inputs trains nothing and
says so. Its cost (seconds, updates, threads, the process's peak memory) is printed and kept
in `--json` (one object for one seed, else a list).
"""

from __future__ import annotations

import functools
import json
import resource
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import torch

from .errors import ConfigError
from .scenario import MAX_SEED


def trainable() -> list[str]:
    """The registered methods whose attach trains on the train split."""
    from .methods import available_methods
    return [n for n, c in available_methods().items() if c.trains_at_attach]


def train_editor(method: str, model: str | None, train_file: str, settings: dict[str, Any],
                 seed: int = 0, cache_dir: str = "",
                 echo: Callable[[str], None] = click.echo) -> dict[str, Any]:
    """Train (or find in the cache) `method`'s parts for `model` on `train_file`; returns
    what was done (JSON-able). ConfigError (one line) for a method that trains nothing or
    settings it does not know, before any model is loaded."""
    from .methods import AttachContext
    from .methods.context import default_corpus
    from .model import load_model
    built = _trainable(method, settings, seed, "--settings")
    lm = load_model(model)
    ctx = AttachContext(seed=seed, unrelated_prompts=(), train_split=train_file,
                        corpus=default_corpus(lm.path), cache_dir=cache_dir,
                        model_fingerprint=lm.fingerprint(), device=str(lm.device),
                        model_factory=functools.partial(load_model, model))
    return _attach(built, lm, ctx, method, str(Path(train_file).resolve()), echo)


def train_for_scenario(path: str, only: str | None, seeds: tuple[int, ...],
                       echo: Callable[[str], None] = click.echo) -> list[dict[str, Any]]:
    """Train (or find in the cache) the parts of every method of scenario `path` that trains
    at attach (only the one named or labelled `only`, when given), for each of the
    scenario's seeds (or `seeds`), with the attach context each run would get: the
    scenario's model, settings, train split and `stream.train_exclude` (the held-out
    records of that seed's edits). ConfigError (one line) when nothing in it trains."""
    from .model import load_model
    from .runtime import Runtime
    from .scenario import load_scenario
    from .stream import parse_stream
    sc = load_scenario(path, methods=True)
    specs = [m for m in sc.methods if (only is None or only in (m.name, m.display))
             and m.name in trainable()]
    if not specs:
        raise ConfigError(f"{path}: no method {'named ' + repr(only) + ' ' if only else ''}"
                          f"that trains at attach ({', '.join(trainable())})")
    if not sc.stream.train_file:
        raise ConfigError(f"{path}: stream.train_file is not set: nothing to train on")
    runtime = Runtime(sc, parse_stream(sc.stream.file, skip_bad=sc.stream.skip_bad,
                                       sort=sc.stream.sort), store=None)
    out = []
    for spec in specs:
        for seed in seeds or sc.seeds:
            built = _trainable(spec.name, spec.settings, seed, f"{path}.methods[{spec.display}]")
            torch.manual_seed(seed)  # as a run does before it attaches
            lm = load_model(sc.model, sc.device)  # pristine, as each run's
            ctx = runtime.attach_context(seed, lm.fingerprint())
            out.append({"label": spec.display,
                        **_attach(built, lm, ctx, spec.display, sc.stream.train_file, echo)})
    return out


def _trainable(method: str, settings: dict[str, Any] | None, seed: int, where: str):
    """The method built with `settings`; ConfigError when it trains nothing at attach."""
    from .methods import build_method
    built = build_method(method, settings, seed, where=where)
    if not type(built).trains_at_attach:
        raise ConfigError(f"{method} trains nothing before a stream; train-editor trains "
                          f"{', '.join(trainable())}")
    return built


def _attach(built, lm, ctx, name: str, train_file: str,
            echo: Callable[[str], None]) -> dict[str, Any]:
    """Attach `built` (training or reading its parts), detach it, say what happened in one
    line and return it (JSON-able)."""
    from .config import to_dict
    built.attach(lm, ctx)
    info = dict(built.info)
    built.detach()
    trained = info["editor"] == "trained"
    out = {"method": built.name, "model": lm.name, "fingerprint": ctx.model_fingerprint,
           "train_file": train_file, "records": len(ctx.train_records()),
           "held_out_subjects": len(ctx.held_out_subjects), "seed": built.seed,
           "settings": to_dict(built.config), "cache": str(ctx.cache().root),
           "threads": torch.get_num_threads(), "peak_rss_mib": peak_rss_mib(),
           **json.loads(json.dumps(info, default=str))}
    how = "trained" if trained else "already in the cache, trained"
    peak = f", peak memory {out['peak_rss_mib']:.0f} MiB" if trained else ""
    held = (f" ({out['held_out_subjects']} edited subjects held out)"
            if out["held_out_subjects"] else "")
    echo(f"{name} on {lm.name} ({out['fingerprint']}), {out['records']} train records{held}, "
         f"seed {built.seed}: {how} in {info['seconds']:.1f} s ({int(info['steps'])} updates, "
         f"{out['threads']} thread(s){peak}); entry {info['entry']} under {out['cache']}")
    return out


def peak_rss_mib() -> float:
    """This process's peak resident memory (the model, the train split and the training
    together: a training's cost as a fresh `train-editor` process pays it)."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return round(kib / (1 if sys.platform != "darwin" else 1024) / 1024, 1)


@click.command("train-editor")
@click.argument("method", required=False)
@click.option("--model", default=None, help="'builtin' (default) or a local model directory")
@click.option("--train-file", type=click.Path(exists=True, dir_okay=False),
              help="the train split: a stream file of edits (never the stream you test on)")
@click.option("--scenario", "scenario", type=click.Path(exists=True, dir_okay=False),
              help="instead of METHOD and --train-file: train what this scenario's runs will "
                   "read (its methods that train at attach, or only METHOD; its model, "
                   "settings, train split, seeds and stream.train_exclude)")
@click.option("--settings", default=None, help="JSON settings of the method (as a scenario's)")
@click.option("--seed", "seeds", multiple=True, type=click.IntRange(0, MAX_SEED),
              help="the run seed whose parts to train (the method's default training seed; "
                   "default 0, with --scenario the scenario's seeds); repeatable")
@click.option("--cache-dir", default="", type=click.Path(file_okay=False),
              help="the cache (default: $LIFELONG_CACHE or ~/.cache/lifelong; with --scenario "
                   "its cache_dir)")
@click.option("--threads", type=click.IntRange(min=1), help="torch CPU threads")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="also write the result as JSON")
def train_editor_command(method, model, train_file, scenario, settings, seeds, cache_dir,
                         threads, json_path):
    """Train METHOD's parts (MEND's editor, KE's hyper-network, SERAC's classifier and
    counterfactual model) on a train split into the cache, where runs of the same model,
    settings, seed and split read them; or, with --scenario, what that scenario's runs
    read."""
    from .bench_edit import parse_settings
    if scenario and (train_file or settings or model or cache_dir):
        raise click.UsageError("--scenario sets the model, settings, train split and cache; "
                               "it takes none of --model, --settings, --train-file, --cache-dir")
    if not scenario and not (method and train_file):
        raise click.UsageError("give METHOD and --train-file, or --scenario")
    if threads:
        torch.set_num_threads(threads)
    if scenario:
        out: Any = train_for_scenario(scenario, method, tuple(seeds))
    else:
        given = parse_settings(settings, [method])[method]
        out = [train_editor(method, model, train_file, given, s, cache_dir) for s in seeds or (0,)]
        out = out[0] if len(out) == 1 else out
    if json_path:
        Path(json_path).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
        click.echo(f"json: {json_path}")
