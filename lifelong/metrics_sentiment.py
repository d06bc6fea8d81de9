"""Sentiment success of ConvSent edits: a pure function over a run's recorded probe rows.

For each final probe row of an edit (`rel`: the edit's own question; `gen`: its rephrasings)
the generated answer (`gen_text`: greedy, as long as the target) is classified by a
`sentiment.SentimentModel`; success is that class being the edit's sentiment (the stream's
`meta.sentiment`). Only edits whose entity the classifier never trained on count (`held_out`),
so no answer is judged by a model that saw its sentence. `target_agrees` is the same
classifier on the target sentences themselves: the ceiling its errors leave (an answer that
reproduces its target scores that). An answer with no word the classifier knows has no
sentiment and is not a success.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .sentiment import SentimentModel

ROLES = ("rel", "gen")


def sentiment_success(roles: Mapping[str, Sequence[dict]], edits: Mapping[str, tuple[str, str]],
                      model: SentimentModel, held_out: Callable[[str], bool]) -> dict[str, Any]:
    """{role: {success, target_agrees, no_sentiment, n}} over the rows of `roles` (final
    probe rows by role, `metrics.final_roles`) whose edit is in `edits` (edit id -> (entity,
    sentiment)) with a `held_out` entity; a role without such rows maps to None."""
    out: dict[str, Any] = {}
    for role in ROLES:
        rows = [r for r in roles.get(role, []) if r["edit_id"] in edits
                and held_out(edits[r["edit_id"]][0])]
        if not rows:
            out[role] = None
            continue
        said = [model.classify(r["gen_text"] or "") for r in rows]
        want = [edits[r["edit_id"]][1] for r in rows]
        n = len(rows)
        out[role] = {"success": sum(s == w for s, w in zip(said, want)) / n,
                     "target_agrees": sum(model.classify(r["target"]) == w
                                          for r, w in zip(rows, want)) / n,
                     "no_sentiment": sum(s is None for s in said) / n, "n": n}
    return out
