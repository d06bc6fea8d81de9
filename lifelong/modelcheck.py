"""How well a model knows its world: accuracy on the objects of facts, in both protocols.

Splits:
- *trained*: (fact, template) pairs that pretraining showed;
- *held-out*: a fact in an in-distribution phrasing never shown with that fact (the
  phrasing was shown with other facts): generalization to a known form;
- *ood*: a fact in the out-of-distribution family, a phrasing style pretraining never showed
  for any fact;
- *two-hop*: questions composing two facts ("the headquarters of the employer of X"), never
  shown in pretraining.

Two protocols, as in `scoring`: teacher-forced token accuracy of the object, and generated
exact match (greedy decoding must reproduce the object's tokens). Teacher-forced exact match
and generated exact match always agree (greedy decoding follows the gold prefix exactly when
every gold token is the argmax), so where the protocols differ is partial credit: `partial`
is the share of pairs that teacher forcing credits in part (token accuracy above 0) while
generation does not produce the object.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable

from .model import LM
from .scoring import PairScore, score_pairs
from .world import World

SPLITS = ("trained", "heldout", "ood", "two_hop")


def _summarise(scores: list[PairScore]) -> dict:
    n = len(scores)
    if not n:
        return {"n": 0, "tf_acc": None, "tf_exact": None, "gen_exact": None, "partial": None}
    return {"n": n,
            "tf_acc": round(sum(s.tf_acc for s in scores) / n, 4),
            "tf_exact": round(sum(s.tf_exact for s in scores) / n, 4),
            "gen_exact": round(sum(s.gen_exact for s in scores) / n, 4),
            "partial": round(sum(s.tf_acc > 0 and not s.gen_exact for s in scores) / n, 4)}


def check_items(world: World) -> dict[str, list[tuple[str, str, str]]]:
    """(prompt, answer, group) per split; the group is the relation (two-hop: its kind)."""
    items = {
        "trained": [(world.prompt(f, t), f.value, f.relation) for f, t in world.trained_pairs()],
        "heldout": [(world.prompt(f, t), f.value, f.relation) for f, t in world.heldout_pairs()],
        "ood": [(p, v, f.relation) for p, v, f in world.ood_pairs()],
        "two_hop": [(h["prompt"], h["answer"], h["kind"]) for f in world for h in world.two_hop(f)],
    }
    return items


def check_model(lm: LM, world: World, batch_size: int = 256, sample: int | None = None,
                seed: int = 0, progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Accuracy of `lm` on the world's initial facts.

    Returns {split: S, "per_relation": {group: {split: S}}} for the splits of `SPLITS`,
    where S = {"n", "tf_acc", "tf_exact", "gen_exact", "partial"}. With `sample`, each split
    is a seeded random sample of at most that many pairs. `progress(split, done, total)` is
    called after every batch.
    """
    splits = check_items(world)
    if sample is not None:
        rng = random.Random(seed)
        splits = {k: rng.sample(v, min(sample, len(v))) for k, v in splits.items()}
    was_training = lm.model.training
    lm.model.eval()
    result: dict = {"per_relation": defaultdict(dict)}
    try:
        for name, items in splits.items():
            scores: list[PairScore] = []
            for start in range(0, len(items), batch_size):
                chunk = items[start:start + batch_size]
                scores += score_pairs(lm, [p for p, _, _ in chunk], [a for _, a, _ in chunk],
                                      batch_size=batch_size)
                if progress:
                    progress(name, len(scores), len(items))
            result[name] = _summarise(scores)
            by_group = defaultdict(list)
            for (_, _, group), s in zip(items, scores):
                by_group[group].append(s)
            for group, group_scores in sorted(by_group.items()):
                result["per_relation"][group][name] = _summarise(group_scores)
    finally:
        lm.model.train(was_training)
    result["per_relation"] = dict(result["per_relation"])
    return result


def format_check(result: dict) -> str:
    """A small plain-text table of a `check_model` result."""
    lines = [f"{'split':<34}{'n':>7}{'tf_acc':>9}{'gen_exact':>11}{'partial':>10}"]
    names = {"trained": "trained", "heldout": "held-out", "ood": "ood phrasings",
             "two_hop": "two-hop"}
    rows = [(names[s], result.get(s)) for s in SPLITS]
    for group, splits in result["per_relation"].items():
        rows += [(f"  {group} {names[s]}", splits.get(s)) for s in SPLITS]
    for name, s in rows:
        if s and s["n"]:
            lines.append(f"{name:<34}{s['n']:>7}{s['tf_acc']:>9.3f}{s['gen_exact']:>11.3f}"
                         f"{s['partial']:>10.3f}")
    return "\n".join(lines)
