"""Causal tracing (Meng et al. 2022, "Locating and Editing Factual Associations in GPT"):
where in the model does a fact's recall happen?

For a fact prompt the model answers correctly: corrupt the subject by adding Gaussian noise
to its token embeddings (`noise` times the standard deviation of the subjects' embeddings),
then restore one state at a time to its clean value, at one layer and one token position,
and measure how much of the correct answer's probability comes back. Three kinds of state:
the block's output (`hidden`, the residual stream), its MLP output (`mlp`) and its attention
output (`attn`). The indirect effect of a state is p(answer | corrupted, state restored) -
p(answer | corrupted), averaged over noise samples and facts, by token category (ROME's:
first / middle / last subject token, first token after the subject, further tokens, last
token).

Invariants: deterministic from the seed (the noise is drawn from a seeded generator per
fact); the model is left unhooked and unchanged; only facts whose answer's first token is
the clean model's top prediction are traced (as in the paper), and the count is reported.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import click
import torch

from . import layers, nethook
from .config import setting, to_dict
from .model import LM
from .scoring import tokenize_pair

KINDS = ("hidden", "mlp", "attn")
CATEGORIES = ("first subject", "middle subject", "last subject", "first after",
              "further", "last")
_SITE = {"hidden": "layers.{L}", "mlp": "layers.{L}.mlp", "attn": "layers.{L}.attn"}


@dataclass(frozen=True)
class TraceConfig:
    """What `lifelong trace` measures."""

    facts: int = setting(100, "facts to trace (a seeded sample of those the model answers)",
                         min=1)
    samples: int = setting(10, "noise samples per fact", min=1)
    noise: float = setting(3.0, "noise std as a multiple of the subject embeddings' std",
                           min=0.0)
    seed: int = setting(0, "seed of the fact sample and the noise", min=0, max=2**63 - 1)


@dataclass(frozen=True)
class TraceFact:
    """A fact to trace: the prompt, the subject as it appears in it, the expected answer."""

    prompt: str
    subject: str
    answer: str


def subject_span(lm: LM, prompt: str, subject: str) -> tuple[int, int] | None:
    """Token positions [start, end) of `subject` in `prompt`, or None if it is not a whole
    run of tokens (the prefix must tokenize to a prefix of the prompt's tokens)."""
    at = prompt.find(subject)
    if at < 0:
        return None
    ids = lm.tok(prompt, add_special_tokens=False)["input_ids"]
    head = lm.tok(prompt[:at].rstrip(), add_special_tokens=False)["input_ids"] if at else []
    upto = lm.tok(prompt[:at + len(subject)], add_special_tokens=False)["input_ids"]
    if ids[:len(head)] != head or ids[:len(upto)] != upto or len(upto) <= len(head):
        return None
    return len(head), len(upto)


def categories(start: int, end: int, length: int) -> list[str]:
    """ROME's category of every token position of a prompt with the subject at [start, end)."""
    out = []
    for i in range(length):
        if i == length - 1:
            out.append("last")
        elif start <= i < end:
            out.append("first subject" if i == start else
                       "last subject" if i == end - 1 else "middle subject")
        else:
            out.append("first after" if i == end else "further")
    return out


def _answer_prob(lm: LM, ids: torch.Tensor, answer_id: int) -> torch.Tensor:
    """p(answer's first token) at the last position, one per row of `ids` (no padding)."""
    logits = lm.model(input_ids=ids).logits[:, -1]
    return torch.softmax(logits.float(), dim=-1)[:, answer_id]


@torch.no_grad()
def _trace_one(lm: LM, fact: TraceFact, span: tuple[int, int], noise: torch.Tensor,
               n_layers: int) -> dict:
    """Indirect effects of one fact: {kind: [layer][position]} plus the clean and
    corrupted probabilities. `noise` is (samples, span length, width). Every forward runs the
    clean row (row 0, never corrupted) with the noisy ones, so shapes never change."""
    p_ids, t_ids = tokenize_pair(lm, fact.prompt, fact.answer)
    ids = torch.tensor([p_ids] * (noise.shape[0] + 1))
    embed = layers.resolve(lm.model, "embed")
    names = [_SITE[k].format(L=L) for k in KINDS for L in range(n_layers)]
    start, end = span

    def corrupt(x: torch.Tensor) -> torch.Tensor:  # row 0 stays clean
        x = x.clone()
        x[1:, start:end] += noise.to(x.dtype)
        return x

    with nethook.TraceDict(lm.model, names) as clean_run:
        probs = _answer_prob(lm, ids[:1], t_ids[0])
    clean = {n: clean_run[n].output[0] for n in names}
    with nethook.replace_output(embed, corrupt):
        p_all = _answer_prob(lm, ids, t_ids[0])
        p_clean, p_corrupt = float(probs[0]), float(p_all[1:].mean())
        effects = {k: [[0.0] * len(p_ids) for _ in range(n_layers)] for k in KINDS}
        for kind in KINDS:
            for L in range(n_layers):
                name = _SITE[kind].format(L=L)
                module = layers.resolve(lm.model, name)
                for pos in range(len(p_ids)):
                    def restore(y: torch.Tensor, pos=pos, name=name) -> torch.Tensor:
                        y = y.clone()
                        y[:, pos] = clean[name][pos]
                        return y
                    with nethook.replace_output(module, restore):
                        p = float(_answer_prob(lm, ids, t_ids[0])[1:].mean())
                    effects[kind][L][pos] = p - p_corrupt
    return {"p_clean": p_clean, "p_corrupt": p_corrupt, "effects": effects,
            "categories": categories(start, end, len(p_ids))}


def choose_facts(lm: LM, candidates: Sequence[TraceFact], cfg: TraceConfig) -> list[TraceFact]:
    """A seeded sample of `cfg.facts` candidates that the model answers (the answer's first
    token is its top prediction) and whose subject is a whole run of tokens."""
    order = list(candidates)
    random.Random(cfg.seed).shuffle(order)
    out = []
    with torch.no_grad():
        for f in order:
            if len(out) == cfg.facts:
                break
            if subject_span(lm, f.prompt, f.subject) is None:
                continue
            p_ids, t_ids = tokenize_pair(lm, f.prompt, f.answer)
            logits = lm.model(input_ids=torch.tensor([p_ids])).logits[0, -1]
            if int(logits.argmax()) == t_ids[0]:
                out.append(f)
    return out


def causal_trace(lm: LM, facts: Sequence[TraceFact], cfg: TraceConfig,
                 progress: Callable[[int, int], None] | None = None) -> dict:
    """Trace `facts` (already chosen) and average by token category. Returns
    {"config", "facts", "p_clean", "p_corrupt", "layers", "effect": {kind: {category:
    [per layer]}}, "peak": {kind: {"layer", "category", "effect"}}, "per_fact": [...]}."""
    n_layers = layers.num_layers(lm.model)
    embed = layers.resolve(lm.model, "embed").weight.detach()
    spans = [subject_span(lm, f.prompt, f.subject) for f in facts]
    subject_ids = sorted({i for f, (s, e) in zip(facts, spans)
                          for i in lm.tok(f.prompt, add_special_tokens=False)["input_ids"][s:e]})
    std = float(embed[subject_ids].std()) if subject_ids else float(embed.std())
    gen = torch.Generator().manual_seed(cfg.seed)
    per_fact = []
    lm.model.eval()
    with torch.no_grad():
        for k, (fact, span) in enumerate(zip(facts, spans)):
            noise = torch.randn((cfg.samples, span[1] - span[0], embed.shape[1]),
                                generator=gen) * cfg.noise * std
            per_fact.append(_trace_one(lm, fact, span, noise, n_layers))
            if progress:
                progress(k + 1, len(facts))
    return _aggregate(per_fact, facts, cfg, n_layers, std)


def _aggregate(per_fact: list[dict], facts: Sequence[TraceFact], cfg: TraceConfig,
               n_layers: int, std: float) -> dict:
    effect = {k: {c: [0.0] * n_layers for c in CATEGORIES} for k in KINDS}
    counts = {c: 0 for c in CATEGORIES}
    for r in per_fact:
        for pos, cat in enumerate(r["categories"]):
            counts[cat] += 1
            for kind in KINDS:
                for L in range(n_layers):
                    effect[kind][cat][L] += r["effects"][kind][L][pos]
    for kind in KINDS:
        for cat in CATEGORIES:
            effect[kind][cat] = [round(v / counts[cat], 5) if counts[cat] else None
                                 for v in effect[kind][cat]]
    peak = {}
    for kind in KINDS:
        best = max(((v, L, c) for c, vals in effect[kind].items() for L, v in enumerate(vals)
                    if v is not None), default=(0.0, 0, CATEGORIES[0]))
        peak[kind] = {"effect": best[0], "layer": best[1], "category": best[2]}
    n = max(len(per_fact), 1)
    return {"config": to_dict(cfg), "facts": len(per_fact), "layers": n_layers,
            "noise_std": round(std * cfg.noise, 5),
            "p_clean": round(sum(r["p_clean"] for r in per_fact) / n, 5),
            "p_corrupt": round(sum(r["p_corrupt"] for r in per_fact) / n, 5),
            "effect": effect, "peak": peak,
            "per_fact": [{"prompt": f.prompt, "subject": f.subject, "answer": f.answer,
                          "p_clean": round(r["p_clean"], 5), "p_corrupt": round(r["p_corrupt"], 5)}
                         for f, r in zip(facts, per_fact)]}


def heatmap(result: dict, path: str | Path) -> None:
    """Draw the average indirect effect (category x layer) of each kind, side by side."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(KINDS), figsize=(4.2 * len(KINDS), 3.2), squeeze=False)
    top = max((v for k in KINDS for vals in result["effect"][k].values() for v in vals
               if v is not None), default=1.0)
    for ax, kind in zip(axes[0], KINDS):
        grid = [[v if v is not None else float("nan") for v in result["effect"][kind][c]]
                for c in CATEGORIES]
        im = ax.imshow(grid, cmap="Purples", vmin=0, vmax=max(top, 1e-6), aspect="auto")
        ax.set_title(f"restore {kind} ({result['facts']} facts)", fontsize=10)
        ax.set_xticks(range(result["layers"]))
        ax.set_xlabel("layer")
        ax.set_yticks(range(len(CATEGORIES)), CATEGORIES if kind == KINDS[0] else [""] * len(CATEGORIES),
                      fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.05, label="indirect effect on p(answer)")
    fig.suptitle(f"causal trace: p(answer) clean {result['p_clean']:.2f}, "
                 f"corrupted {result['p_corrupt']:.2f}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_trace(result: dict, out_dir: str | Path) -> list[Path]:
    """trace.json, trace.png and trace.md in `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "trace.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    heatmap(result, out / "trace.png")
    lines = [f"# Causal trace ({result['facts']} facts, {result['config']['samples']} noise "
             f"samples, noise {result['config']['noise']} x subject embedding std)", "",
             f"p(answer): clean {result['p_clean']:.3f}, subject corrupted "
             f"{result['p_corrupt']:.3f}.", "", "![heat map](trace.png)", "",
             "| restored | layer | " + " | ".join(CATEGORIES) + " |",
             "|---|---|" + "---|" * len(CATEGORIES)]
    for kind in KINDS:
        for L in range(result["layers"]):
            cells = [result["effect"][kind][c][L] for c in CATEGORIES]
            lines.append(f"| {kind} | {L} | " + " | ".join(
                "" if v is None else f"{v:.3f}" for v in cells) + " |")
    lines += ["", "Peak per kind: " + "; ".join(
        f"{k}: layer {p['layer']}, {p['category']} token ({p['effect']:.3f})"
        for k, p in result["peak"].items()) + "."]
    (out / "trace.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [out / "trace.json", out / "trace.png", out / "trace.md"]


def world_facts(world, seed: int) -> list[TraceFact]:
    """Candidate facts of a world: every fact in one seeded trained phrasing."""
    rng = random.Random(seed)
    return [TraceFact(world.prompt(f, rng.choice(world.trained_templates(f))), f.subject, f.value)
            for f in world]


def stream_facts(path: str) -> list[TraceFact]:
    """Candidate facts of an edit stream: each first edit's prompt, subject and the value it
    replaces (`previous`: what the unedited model should answer)."""
    from .stream import Edit, parse_stream
    seen, out = set(), []
    for ev in parse_stream(path).events:
        if isinstance(ev, Edit) and ev.subject and ev.previous and ev.fact not in seen:
            seen.add(ev.fact)
            out.append(TraceFact(ev.prompt, ev.subject, ev.previous))
    return out


@click.command("trace")
@click.option("--model", "model_path", default=None,
              help="'builtin' (default) or a model directory")
@click.option("--stream", "stream_path", type=click.Path(dir_okay=False),
              help="trace this stream's first edits (prompt, subject, previous value) instead "
                   "of the model's world.json facts")
@click.option("--facts", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--samples", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--noise", type=click.FloatRange(min=0.0), default=3.0, show_default=True)
@click.option("--seed", type=click.IntRange(min=0, max=2**63 - 1), default=0, show_default=True)
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False), default="out/trace",
              show_default=True, help="directory for trace.json, trace.png, trace.md")
@click.option("--quiet", is_flag=True)
def trace_command(model_path, stream_path, facts, samples, noise, seed, out_dir, quiet):
    """Causal tracing: where the model recalls its facts (layer x token heat map)."""
    from .errors import LifelongError
    from .model import load_model
    from .progress import Reporter
    from .world import World
    cfg = TraceConfig(facts=facts, samples=samples, noise=noise, seed=seed)
    lm = load_model(model_path)
    if stream_path:
        candidates = stream_facts(stream_path)
    else:
        wpath = Path(lm.path) / "world.json"
        if not wpath.exists():
            raise LifelongError(f"{wpath}: no world.json; give --stream FILE")
        candidates = world_facts(World.from_json(wpath), seed)
    chosen = choose_facts(lm, candidates, cfg)
    if not chosen:
        raise LifelongError("the model answers none of the candidate facts: nothing to trace")
    reporter = Reporter(quiet=quiet)
    reporter.start("trace", len(chosen), 0, unit="facts")
    result = causal_trace(lm, chosen, cfg, lambda k, n: reporter.update(k))
    reporter.stop()
    result["model"] = lm.name
    files = write_trace(result, out_dir)
    click.echo(f"traced {result['facts']} facts (of {len(candidates)} candidates): "
               + "; ".join(f"{k} peak at layer {p['layer']}, {p['category']} token "
                           f"({p['effect']:.3f})" for k, p in result["peak"].items()))
    click.echo("wrote " + ", ".join(str(f) for f in files))


def edit_layer(result: dict) -> int:
    """The layer whose MLP output carries most of a fact's recall, at whichever token that
    is (the peak of `effect["mlp"]` over layers and token categories; in GPT-2 XL the
    subject's last token, where ROME edits; in a model that gathers the subject into the last
    token first, the last token). The default layer of methods that edit one MLP, written to
    the model's config as `lifelong_edit_layer`. Ties go to the earlier layer."""
    best, layer = float("-inf"), 0
    for row in result["effect"]["mlp"].values():
        for L, v in enumerate(row):
            if v is not None and v > best:
                best, layer = v, L
    return layer


def annotate_model_dir(model_dir: str | Path, lm: LM, candidates: Sequence[TraceFact],
                       cfg: TraceConfig, layer: int | None = None) -> dict:
    """Trace `lm` (loaded from `model_dir`), write trace.json/png/md into `model_dir`/trace
    and set `lifelong_edit_layer` in its config.json: `layer` when given (a choice made on
    a dev stream among the layers the trace shows at work), else the trace's MLP peak
    (`edit_layer`). Returns a short record for the model's own JSON (facts, peaks, both
    layers)."""
    chosen = choose_facts(lm, candidates, cfg)
    if not chosen:  # a model that knows none of its facts: nothing to locate
        return {"facts": 0, "edit_layer": None}
    result = causal_trace(lm, chosen, cfg)
    write_trace(result, Path(model_dir) / "trace")
    traced = edit_layer(result)
    layer = traced if layer is None else layer
    path = Path(model_dir) / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["lifelong_edit_layer"] = layer
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    lm.model.config.lifelong_edit_layer = layer
    return {"facts": result["facts"], "config": result["config"], "peak": result["peak"],
            "p_clean": result["p_clean"], "p_corrupt": result["p_corrupt"],
            "mlp_last_subject": result["effect"]["mlp"]["last subject"],
            "mlp_last": result["effect"]["mlp"]["last"], "mlp_peak_layer": traced,
            "edit_layer": layer}
