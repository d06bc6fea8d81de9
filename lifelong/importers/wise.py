"""wise-temporal, wise-hallucination: the WISE data sets (EasyEdit's flat layout) -> edits.

Field mapping (the stream field <- the format's field):

=================  ========================================================================
format             mapping
=================  ========================================================================
wise-temporal      WISE Temporal. prompt, target <- target_new (a long description),
                   rephrases <- ood_rephrase (out-of-distribution: meta.rephrase_kind "ood";
                   a rephrase_prompt, if any, comes first and meta.rephrase_groups counts
                   both), locality <- (locality_prompt, locality_ground_truth).
wise-hallucination WISE hallucination (WikiBio/SelfCheckGPT). prompt (a passage), target
                   <- target_new (the correct next sentence), locality <- (locality_prompt,
                   locality_ground_truth). No previous: the hallucinated text is not given.
=================  ========================================================================

A passage used as the prompt can make `subject|prompt` longer than 256 characters; the
edit's fact then uses the prompt's SHA-1 (see `common._fact`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .common import Format, _has, _Rec
from .counterfact import _flat

if TYPE_CHECKING:
    from .convert import ImportOptions


def _temporal(rec: _Rec, opts: ImportOptions) -> dict:
    """The flat layout with `ood_rephrase` (out-of-distribution rephrases) read too."""
    return _flat(rec, opts, ood=True)


TEMPORAL = Format("wise-temporal", "temporal", _temporal,
                  "WISE Temporal: prompt, target_new, ood_rephrase, locality_prompt, locality_ground_truth",
                  "prompt, target_new, ood_rephrase",
                  lambda r: _has(r, "prompt", "target_new") and "ood_rephrase" in r)
HALLUCINATION = Format("wise-hallucination", "hallucination", _flat,
                       "WISE hallucination: prompt, target_new, locality_prompt, locality_ground_truth",
                       "prompt, target_new", lambda r: _has(r, "prompt", "target_new"))
