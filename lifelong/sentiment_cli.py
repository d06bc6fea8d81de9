"""`lifelong sentiment`: train ConvSent's sentiment classifier (`lifelong.sentiment`) and score
the sentiment of what edited models say in recorded runs (`metrics_sentiment`).

    lifelong sentiment train ../shared/data/convsent/convsent-test.json -o MODEL.json
    lifelong sentiment score STORE... --stream streams/real/convsent-test.jsonl [--json OUT]

The shipped classifier (`lifelong/data/sentiment-convsent.json`, seed 0, half of ConvSent's
entities) is the default for `score`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import click

from .errors import LifelongError
from .metrics import final_roles
from .metrics_seeds import mean_tree
from .metrics_sentiment import ROLES, sentiment_success
from .report import _connect, _rows
from .sentiment import SentimentModel, train_convsent, trains_on
from .stream import parse_stream

DEFAULT_MODEL = Path(__file__).parent / "data" / "sentiment-convsent.json"


@click.group("sentiment")
def sentiment_command() -> None:
    """ConvSent's sentiment measure: train the classifier, score recorded runs."""


@sentiment_command.command("train")
@click.argument("data", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="model JSON to write")
@click.option("--seed", default=0, show_default=True, help="which entities train it (a seeded half)")
@click.option("--train-share", default=0.5, show_default=True, type=click.FloatRange(0.05, 0.95),
              help="share of the entities whose texts train it; the rest measure it")
@click.option("--min-count", default=2, show_default=True, type=click.IntRange(1),
              help="features seen fewer times in training are dropped")
def train_cmd(data, out, seed, train_share, min_count) -> None:
    """Train the naive Bayes classifier on a ConvSent file (KnowEdit layout: ent, pos, neg)."""
    model, acc = train_convsent(data, seed, train_share, min_count)
    Path(out).write_text(model.to_json(), encoding="utf-8")
    click.echo(f"{model.provenance['features']} features from {model.provenance['train_entities']} "
               f"entities; held-out accuracy {acc['accuracy']:.3f} on {acc['n']} texts of "
               f"{model.provenance['held_out_entities']} other entities (positive "
               f"{acc['positive']:.3f}, negative {acc['negative']:.3f}) -> {out}")


def stream_sentiments(path: str) -> dict[str, tuple[str, str]]:
    """edit id -> (entity, sentiment) for the stream's edits that carry `meta.sentiment`."""
    out = {}
    for e in parse_stream(path).events:
        s = getattr(e, "meta", {}).get("sentiment")
        if e.kind == "edit" and s in ("positive", "negative"):
            out[e.id] = (e.subject or e.fact.split("|")[0], s)
    if not out:
        raise LifelongError(f"{path}: no edit carries meta.sentiment (a ConvSent stream does)")
    return out


def score_store(path: str, edits: dict, model: SentimentModel) -> list[dict]:
    """One row per run of the store: its label, seed, scenario and `sentiment_success`."""
    seed, share = model.provenance.get("seed", 0), model.provenance.get("train_share", 0.5)
    con, tables = _connect(Path(path))  # read-only; StoreError for anything not a store
    try:
        rows = []
        for run in con.execute("select run_id, label, method, seed, scenario, status from runs order by rowid"):
            rid = run["run_id"]
            roles = final_roles(_rows(con, tables, "checkpoints", rid), _rows(con, tables, "probes", rid))
            rows.append({**dict(run), "store": path, **sentiment_success(
                roles, edits, model, lambda e: not trains_on(e, seed, share))})
        return rows
    finally:
        con.close()


def seed_means(rows: list[dict]) -> list[dict]:
    """Per (scenario, label): the mean over its runs of each role's figures and their spread
    (`metrics_seeds.mean_tree`: sample std and count per figure), and the rows scored per run."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["scenario"], r["label"] or r["method"])].append(r)
    out = []
    for (scenario, label), runs in groups.items():
        mean, spread = mean_tree([{role: r[role] for role in ROLES} for r in runs])
        out.append({"scenario": scenario, "label": label, "seeds": sorted(r["seed"] for r in runs),
                    "mean": mean, "spread": spread,
                    "n": {role: [r[role]["n"] for r in runs if r[role]] for role in ROLES}})
    return out


@sentiment_command.command("score")
@click.argument("stores", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--stream", required=True, type=click.Path(exists=True, dir_okay=False),
              help="the ConvSent stream the runs replayed (its edits' meta.sentiment)")
@click.option("--model", "model_path", default=str(DEFAULT_MODEL), show_default=True,
              type=click.Path(exists=True, dir_okay=False), help="classifier JSON (`sentiment train`)")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="also write the figures as JSON")
def score_cmd(stores, stream, model_path, json_path) -> None:
    """Sentiment success of every run's final answers (generated) to its held-out edits' questions
    (rel) and rephrasings (gen), mean ± std over seeds."""
    model, edits = SentimentModel.load(model_path), stream_sentiments(stream)
    rows = [r for p in stores for r in score_store(p, edits, model)]
    means = seed_means(rows)
    for m in means:
        parts = [f"{role} {_pm(m, role, 'success')} (target {_pm(m, role, 'target_agrees')}, "
                 f"n {'/'.join(map(str, m['n'][role]))})" for role in ROLES if m["mean"][role]]
        click.echo(f"{m['scenario']}  {m['label']}  seeds {m['seeds']}: " + "; ".join(parts or ["no held-out edit"]))
    if json_path:
        doc = {"schema": "lifelong.sentiment-score/1", "model": model.provenance, "stream": stream,
               "runs": rows, "seed_means": means}
        Path(json_path).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


def _pm(m: dict, role: str, key: str) -> str:
    spread = (m["spread"][role] or {}).get(key)
    std = spread["std"] if spread else None
    return f"{m['mean'][role][key]:.3f}" + (f" ± {std:.3f}" if std is not None else "")
