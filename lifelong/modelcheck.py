"""How well a model knows its world: accuracy on the objects of facts, in both protocols.

Two splits: *trained* (fact, template) pairs that pretraining showed, and *held-out* pairs
(a fact in a phrasing never shown with it: generalization). Two protocols, as in
`scoring`: teacher-forced token accuracy of the object, and generated exact match (greedy
decoding must reproduce the object's tokens).
"""

from __future__ import annotations

import random
from collections import defaultdict

from .model import LM
from .scoring import score_pairs
from .world import Fact, World


def _summarise(scores) -> dict:
    n = len(scores)
    if not n:
        return {"n": 0, "tf_acc": None, "tf_exact": None, "gen_exact": None}
    return {"n": n,
            "tf_acc": round(sum(s.tf_acc for s in scores) / n, 4),
            "tf_exact": round(sum(s.tf_exact for s in scores) / n, 4),
            "gen_exact": round(sum(s.gen_exact for s in scores) / n, 4)}


def _score_split(lm: LM, world: World, pairs: list[tuple[Fact, int]], batch_size: int):
    prompts = [world.prompt(f, t) for f, t in pairs]
    targets = [f.value for f, _ in pairs]
    return score_pairs(lm, prompts, targets, batch_size=batch_size)


def check_model(lm: LM, world: World, batch_size: int = 256,
                sample: int | None = None, seed: int = 0) -> dict:
    """Accuracy of `lm` on the world's initial facts.

    Returns {"trained": S, "heldout": S, "per_relation": {relation: {"trained": S,
    "heldout": S}}} where S = {"n", "tf_acc", "tf_exact", "gen_exact"}. With `sample`, each
    split is a seeded random sample of at most that many pairs (for quick checks).
    """
    splits = {"trained": world.trained_pairs(), "heldout": world.heldout_pairs()}
    if sample is not None:
        rng = random.Random(seed)
        splits = {k: rng.sample(v, min(sample, len(v))) for k, v in splits.items()}
    was_training = lm.model.training
    lm.model.eval()
    result: dict = {"per_relation": defaultdict(dict)}
    try:
        for name, pairs in splits.items():
            scores = _score_split(lm, world, pairs, batch_size)
            result[name] = _summarise(scores)
            by_rel = defaultdict(list)
            for (fact, _), s in zip(pairs, scores):
                by_rel[fact.relation].append(s)
            for rel, rel_scores in sorted(by_rel.items()):
                result["per_relation"][rel][name] = _summarise(rel_scores)
    finally:
        lm.model.train(was_training)
    result["per_relation"] = dict(result["per_relation"])
    return result


def format_check(result: dict) -> str:
    """A small plain-text table of a `check_model` result."""
    lines = [f"{'split':<26}{'n':>7}{'tf_acc':>9}{'gen_exact':>11}"]
    rows = [("trained", result["trained"]), ("held-out", result["heldout"])]
    for rel, splits in result["per_relation"].items():
        rows += [(f"  {rel} trained", splits.get("trained")),
                 (f"  {rel} held-out", splits.get("heldout"))]
    for name, s in rows:
        if s and s["n"]:
            lines.append(f"{name:<26}{s['n']:>7}{s['tf_acc']:>9.3f}{s['gen_exact']:>11.3f}")
    return "\n".join(lines)
