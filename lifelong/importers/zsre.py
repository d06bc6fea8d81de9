"""zsre: MEND/ROME zsRE -> edits.

Field mapping (the stream field <- the format's field):

=================  ========================================================================
format             mapping
=================  ========================================================================
zsre               MEND/ROME zsRE. prompt <- src, target <- alt, previous <- answers[0]
                   (all answers in meta.previous_aliases when there are several),
                   rephrases <- rephrase (string or list), locality <- (loc, loc_ans),
                   kept verbatim including the "nq question:" prefix (several loc_ans
                   aliases: the probe's answer list); meta.pred <- pred. Not carried
                   over: cond (the old value, new value and prompt again), counted in the
                   import's summary line.
=================  ========================================================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .common import Format, _has, _previous, _Probes, _Rec, _target, _text, _texts

if TYPE_CHECKING:
    from .convert import ImportOptions


def _zsre(rec: _Rec, opts: ImportOptions) -> dict:
    out, meta = {"prompt": _text(rec, "src", rec.get("src"), True),
                 "target": _target(rec, "alt", rec.get("alt")),
                 "subject": _text(rec, "subject", rec.get("subject"))}, {}
    _previous(rec, "answers", rec.get("answers"), out, meta)
    out["rephrases"] = _texts(rec, "rephrase", rec.get("rephrase"))
    loc = _Probes(rec, "locality")
    loc.pairs("loc", "loc_ans")
    loc.into(out, meta)
    pred = rec.get("pred")
    if isinstance(pred, str) and pred.strip():
        meta["pred"] = pred.strip()
    return {**out, "meta": meta}


FORMAT = Format("zsre", "zsre", _zsre, "MEND/ROME zsRE: src, alt, answers, rephrase, loc, loc_ans",
                "src, alt", lambda r: _has(r, "src", "alt"))
