"""IKE's settings (see `ike/__init__.py` for what they mean together and the table of
deviations). "paper:" gives the value of Zheng et al. (EMNLP 2023, arXiv 2305.12740)."""

from __future__ import annotations

from dataclasses import dataclass

from ...config import setting
from .._common.facts import FACT_IDENTITY_HELP


@dataclass(frozen=True)
class IkeConfig:
    layer: int | None = setting(None, "block whose output, at a text's last prompt token and "
                                      "standardised, is its retrieval key (negative counts from "
                                      "the end); default: the last block (paper: a separate "
                                      "sentence encoder's embedding, cosine similarity)")
    demonstrations: int = setting(32, "k: at most this many stored edits, the nearest to the "
                                      "query first, are written before it; fewer when they do "
                                      "not fit the model's context with the row (the farthest "
                                      "are dropped first; the row is never cut) (paper: 32)",
                                  min=1, max=4096)
    corpus_demonstrations: int = setting(32, "the paper's demonstrations: at most this many "
                                             "copy/update/retain demonstrations built from the "
                                             "train split (stream.train_file; none: the stored "
                                             "edits alone, a variant, said at attach), those of "
                                             "the records nearest to the query's nearest stored "
                                             "edit, written before it (paper: 32); 0: none",
                                         min=0, max=4096)
    separator: str = setting(".", "text written after each demonstration, "
                                  "'{prompt} {target}{separator}' (paper: a template "
                                  "'New Fact: ... Prompt: ...' with newlines)")
    scope: str = setting("all", "which queries get demonstrations: every query ('all', the "
                                "paper: no scope test; unrelated prompts are conditioned too) or "
                                "only those whose nearest stored key is within `radius` x that "
                                "key's norm ('radius', GRACE's rule; not in the paper)",
                         choices=("all", "radius"))
    radius: float = setting(0.5, "with scope = 'radius': a query is conditioned when the "
                                 "Euclidean distance of its key to the nearest stored key is at "
                                 "most this share of that key's norm (not calibrated; an edit's "
                                 "own prompt is at distance 0, up to the rounding of a padded "
                                 "batch)", min=0.0)
    use_fact_identity: bool = setting(False, FACT_IDENTITY_HELP)
