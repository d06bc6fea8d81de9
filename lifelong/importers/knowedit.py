"""knowedit: KnowEdit (ZsRE, WikiData-CounterFact, WikiData-Recent, WikiBio) -> edits.

Field mapping (the stream field <- the format's field):

=================  ========================================================================
format             mapping
=================  ========================================================================
knowedit           KnowEdit ZsRE / WikiData-CounterFact / WikiData-Recent (and WikiBio:
                   text, labels, concept stand in for prompt, target_new, subject).
                   prompt, target <- target_new, previous <- ground_truth (first of a list),
                   rephrases <- rephrase_prompt or rephrase, locality <- every probe of
                   locality{name: [{prompt, ground_truth}]}, portability <- every probe of
                   portability{name: [...]}, in the file's order; meta.locality_groups /
                   portability_groups give each name's count in that order (so probe i's
                   kind is recoverable); an answer that is a list (of lists) of aliases
                   keeps them all on the probe (its `answer` list, the first alias
                   canonical); previous keeps the first of several ground_truth values,
                   all of them in meta.previous_aliases.
=================  ========================================================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .common import _MISSING, Format, _has, _previous, _Probes, _Rec, _target, _text, _texts

if TYPE_CHECKING:
    from .convert import ImportOptions


def _knowedit(rec: _Rec, opts: ImportOptions) -> dict:
    def pick(*keys: str) -> str:
        return next((k for k in keys if rec.get(k) is not _MISSING), keys[0])

    pk, tk, sk, rk = pick("prompt", "text"), pick("target_new", "labels"), \
        pick("subject", "concept"), pick("rephrase_prompt", "rephrase")
    out, meta = {"prompt": _text(rec, pk, rec.get(pk), True),
                 "target": _target(rec, tk, rec.get(tk)),
                 "subject": _text(rec, sk, rec.get(sk))}, {}
    _previous(rec, "ground_truth", rec.get("ground_truth"), out, meta)
    out["rephrases"] = _texts(rec, rk, rec.get(rk))
    for name in ("locality", "portability"):
        probes = _Probes(rec, name)
        probes.nested(name)
        probes.into(out, meta)
    return {**out, "meta": meta}


def _detect(r: dict) -> bool:
    """prompt and target_new with probes nested by name, or WikiBio's text and labels."""
    nested = any(isinstance(r.get(k), (dict, list)) for k in ("locality", "portability"))
    return _has(r, "text", "labels") or nested and _has(r, "prompt", "target_new")


FORMAT = Format("knowedit", "knowedit", _knowedit,
                "KnowEdit (ZsRE, WikiData-CounterFact, Recent, WikiBio): prompt, target_new, "
                "ground_truth, locality{name: [...]}, portability{name: [...]}",
                "prompt, target_new and locality or portability {name: [...]} (WikiBio: text, labels)",
                _detect)
