"""convsent: ConvSent (blender) -> edits that set the model's sentiment about an entity.

Field mapping (the stream field <- the format's field):

=================  ========================================================================
format             mapping
=================  ========================================================================
convsent           ConvSent (blender). An edit sets the model's sentiment about an entity:
                   prompt "What do you think of ENT?", target <- the first sentence of the
                   chosen sentiment's list (pos or neg), rephrases <- twelve other ways to
                   ask for an opinion of ENT, fact "ENT|sentiment", meta.sentiment. The
                   sentiment alternates by record (odd records positive, even negative) or
                   is fixed with --sentiment. No locality: every entity of the file is
                   edited, so none stays unrelated over a whole stream.
=================  ========================================================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .common import Format, _has, _Rec, _text, _texts

if TYPE_CHECKING:
    from .convert import ImportOptions


CONVSENT_PROMPT = "What do you think of {}?"
CONVSENT_REPHRASES = ("What do you feel about {}?", "How do you view {}?") + tuple(
    f"What is your {p} {{}}?" for p in (
        "opinion of", "stance on", "position on", "attitude about", "view on", "take on",
        "impression of", "assessment of", "judgment of", "sentiment of"))


def _convsent(rec: _Rec, opts: ImportOptions) -> dict:
    ent = _text(rec, "ent", rec.get("ent"), True)
    sentiment = opts.sentiment if opts.sentiment != "alternate" else \
        ("positive" if rec.n % 2 else "negative")
    key = sentiment[:3]
    sentences = _texts(rec, key, rec.get(key), required=True)
    if not ent:
        return {}
    return {"prompt": CONVSENT_PROMPT.format(ent), "target": sentences[0] if sentences else None,
            "subject": ent, "fact_key": "sentiment",
            "rephrases": [t.format(ent) for t in CONVSENT_REPHRASES],
            "meta": {"sentiment": sentiment}}


FORMAT = Format("convsent", "convsent", _convsent, "ConvSent: ent, pos, neg", "ent and pos or neg",
                lambda r: _has(r, "ent") and (_has(r, "pos") or _has(r, "neg")))
