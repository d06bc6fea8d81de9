"""`lifelong train-editor`: train a method's parts on a train split ahead of the runs.

MEND, KE and SERAC (`trains_at_attach`) train at attach on `AttachContext.train_records()`
and cache what they trained under the model's fingerprint, keyed by every setting that
shapes it, the training seed and the split's digest (never its path). This command makes
exactly that attach, with the context a `lifelong simulate` run of the same model, settings,
seed and train split gives, so such a run reads the parts instead of training them.

Invariants: training is seeded by the method itself (its `train_seed` / `editor_seed`, by
default the run's seed), never by torch's global generator, so the cached tensors are those a
run would have trained; nothing is cached until training ends; MEND's and KE's trainings
save a resume point beside the entry every 30 s, so after Ctrl-C or a kill the same command
(or a run) takes the remaining updates and ends with the same tensors (SERAC's retrains from
the start: `_common/checkpoint.py`); a second call with the same inputs trains nothing and says so. Its cost (seconds,
updates, threads, the process's peak memory) is printed and kept in `--json`.
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
    from .config import to_dict
    from .methods import AttachContext, build_method
    from .methods.context import default_corpus
    from .model import load_model
    built = build_method(method, settings, seed, where="--settings")
    if not type(built).trains_at_attach:
        raise ConfigError(f"{method} trains nothing before a stream; train-editor trains "
                          f"{', '.join(trainable())}")
    lm = load_model(model)
    fingerprint = lm.fingerprint()
    ctx = AttachContext(seed=seed, unrelated_prompts=(), train_split=train_file,
                        corpus=default_corpus(lm.path), cache_dir=cache_dir,
                        model_fingerprint=fingerprint, device=str(lm.device),
                        model_factory=functools.partial(load_model, model))
    built.attach(lm, ctx)
    info = dict(built.info)
    built.detach()
    trained = info["editor"] == "trained"
    out = {"method": method, "model": lm.name, "fingerprint": fingerprint,
           "train_file": str(Path(train_file).resolve()), "records": len(ctx.train_records()),
           "seed": seed, "settings": to_dict(built.config), "cache": str(ctx.cache().root),
           "threads": torch.get_num_threads(), "peak_rss_mib": peak_rss_mib(),
           **json.loads(json.dumps(info, default=str))}
    how = "trained" if trained else "already in the cache, trained"
    peak = f", peak memory {out['peak_rss_mib']:.0f} MiB" if trained else ""
    echo(f"{method} on {lm.name} ({out['fingerprint']}), {out['records']} train records, "
         f"seed {seed}: {how} in {info['seconds']:.1f} s ({int(info['steps'])} updates, "
         f"{out['threads']} thread(s){peak}); entry {info['entry']} under {out['cache']}")
    return out


def peak_rss_mib() -> float:
    """This process's peak resident memory (the model, the train split and the training
    together: a training's cost as a fresh `train-editor` process pays it)."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return round(kib / (1 if sys.platform != "darwin" else 1024) / 1024, 1)


@click.command("train-editor")
@click.argument("method")
@click.option("--model", default=None, help="'builtin' (default) or a local model directory")
@click.option("--train-file", required=True, type=click.Path(exists=True, dir_okay=False),
              help="the train split: a stream file of edits (never the stream you test on)")
@click.option("--settings", default=None, help="JSON settings of the method (as a scenario's)")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, MAX_SEED),
              help="the run seed whose parts to train (the method's default training seed)")
@click.option("--cache-dir", default="", type=click.Path(file_okay=False),
              help="the cache (default: $LIFELONG_CACHE or ~/.cache/lifelong)")
@click.option("--threads", type=click.IntRange(min=1), help="torch CPU threads")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="also write the result as JSON")
def train_editor_command(method, model, train_file, settings, seed, cache_dir, threads, json_path):
    """Train METHOD's parts (MEND's editor, KE's hyper-network, SERAC's classifier and
    counterfactual model) on a train split into the cache, where runs of the same model,
    settings, seed and split read them."""
    from .bench_edit import parse_settings
    given = parse_settings(settings, [method])[method]
    if threads:
        torch.set_num_threads(threads)
    out = train_editor(method, model, train_file, given, seed, cache_dir)
    if json_path:
        Path(json_path).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
        click.echo(f"json: {json_path}")
