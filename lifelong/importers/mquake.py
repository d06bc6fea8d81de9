"""mquake: MQuAKE (MQuAKE-CF-3k, MQuAKE-CF, MQuAKE-T) -> edits with multi-hop probes.

A record is a *case*: one to four rewrites of single facts (`requested_rewrite`) and three
phrasings of a multi-hop question (`questions`) whose answer changes from `answer` to
`new_answer` once all of the case's rewrites are applied.

Field mapping (the stream field <- the format's field):

=================  ========================================================================
format             mapping
=================  ========================================================================
mquake             One edit per distinct rewrite: prompt <- requested_rewrite[k].prompt with
                   the subject in its "{}", target <- target_new.str, previous <-
                   target_true.str, fact <- subject|relation_id, rephrases <-
                   requested_rewrite[k].question and the question and cloze of the
                   new_single_hops entry about that edit (the hop whose answer is the edit's
                   target and whose cloze or question names its subject; never the edit's
                   own prompt); meta.relation_id, target_new_id, target_true_id, rewrite
                   (k + 1). Cases that share a rewrite (same subject, relation and target)
                   share its edit: one id (`mquake-RECORD-K` of the first record that has
                   it, in file order), placed with the first case that uses it in stream
                   order; meta.case_ids lists every case that has it.
                   portability <- the case's questions, answer [new_answer,
                   *new_answer_alias], each with `needs` = the ids of all the case's edits;
                   they sit on the case's last edit in stream order, so `needs` names only
                   earlier edits and that one; meta.portability_groups counts them per case
                   ("case CASE_ID": 3).
=================  ========================================================================

Not carried over, and counted in the import's summary line: `answer` and `answer_alias` (the
multi-hop answer before the edits), `single_hops` (the chain before the edits), `orig` (the
chains as Wikidata triples), `new_single_hops[].answer_alias` (a rephrase is judged against
the edit's target alone), `new_single_hops[] (unedited facts)` (hops of the new chain through
facts no rewrite of the case changes), and any other key of a rewrite
(`requested_rewrite[].KEY`).

Why single hops are rephrases: the hop about an edited fact asks that fact in another
phrasing, with the edit's target as answer: MQuAKE's edit-wise accuracy, the field's
generalization. It is not portability: nothing follows from the edit but the edit itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .common import _MISSING, Format, _answer, _has, _jtype, _Probes, _Rec, _target, _text, _texts

if TYPE_CHECKING:
    from .convert import ImportOptions

_RR = "requested_rewrite"
_REWRITE_KEYS = ("prompt", "subject", "target_new", "target_true", "relation_id", "question")


def _value(rec: _Rec, where: str, v: object, required: bool) -> tuple[str | None, str]:
    """A target given as {str, id} (MQuAKE, ROME) or as a plain string -> (text, key path)."""
    if isinstance(v, dict):
        where, v = f"{where}.str", rec.get("str", v)
    if required:
        return _target(rec, where, v), where
    return _text(rec, where, v), where


def _rewrite(rec: _Rec, k: int, rw: object) -> dict | None:
    """One rewrite -> the fields of its edit (None when it has problems)."""
    w = f"{_RR}[{k}]"
    if not isinstance(rw, dict):
        rec.problem(w, f"must be an object with prompt, subject, target_new (got {_jtype(rw)})")
        return None
    before = len(rec.errs)
    rec.left_out.update(f"{_RR}[].{key}" for key in rw if key not in _REWRITE_KEYS)
    template = _text(rec, f"{w}.prompt", rec.get("prompt", rw), True)
    subject = _text(rec, f"{w}.subject", rec.get("subject", rw), True)
    if template and "{}" not in template:
        rec.problem(f"{w}.prompt", "must contain {} where the subject goes")
    target, _ = _value(rec, f"{w}.target_new", rec.get("target_new", rw), True)
    previous, _ = _value(rec, f"{w}.target_true", rec.get("target_true", rw), False)
    rel = _text(rec, f"{w}.relation_id", rec.get("relation_id", rw))
    question = _texts(rec, f"{w}.question", rec.get("question", rw))
    if len(rec.errs) > before or not (template and subject and target):
        return None
    meta: dict = {"relation_id": rel} if rel else {}
    for side in ("target_new", "target_true"):
        v = rw.get(side)
        if isinstance(v, dict) and isinstance(v.get("id"), (str, int)):
            meta[f"{side}_id"] = v["id"]
    meta["rewrite"] = k + 1
    prompt = template.replace("{}", subject, 1)
    return {"prompt": prompt, "target": target, "subject": subject, "previous": previous,
            "fact_key": rel or template, "relation": rel or template,
            "rephrases": [q for q in question if q != prompt], "meta": meta,
            "share": (subject, rel or template, target)}


def _hops(rec: _Rec, edits: list[dict]) -> None:
    """new_single_hops: the hop about an edited fact adds its question and cloze to that
    edit's rephrases; the others are counted as left out."""
    hops = rec.get("new_single_hops")
    if hops is _MISSING:
        return
    if not isinstance(hops, list):
        rec.problem("new_single_hops", f"must be a list of {{question, cloze, answer}} (got {_jtype(hops)})")
        return
    for i, hop in enumerate(hops):
        w = f"new_single_hops[{i}]"
        if not isinstance(hop, dict):
            rec.problem(w, f"must be an object with question, cloze, answer (got {_jtype(hop)})")
            continue
        phrasings = _texts(rec, f"{w}.question", rec.get("question", hop)) + \
            _texts(rec, f"{w}.cloze", rec.get("cloze", hop))
        answer = _text(rec, f"{w}.answer", rec.get("answer", hop))
        edit = next((e for e in edits if e["target"] == answer
                     and any(e["subject"] in p for p in phrasings)), None)
        if edit is None:
            rec.left_out.add("new_single_hops[] (unedited facts)")
            continue
        if rec.get("answer_alias", hop) not in (_MISSING, []):
            rec.left_out.add("new_single_hops[].answer_alias")
        edit["rephrases"] += [p for p in phrasings if p != edit["prompt"] and p not in edit["rephrases"]]


def _mquake(rec: _Rec, opts: ImportOptions) -> dict:
    rewrites = rec.get(_RR)
    if not isinstance(rewrites, list) or not rewrites:
        rec.problem(_RR, "missing (required)" if rewrites is _MISSING else
                    f"must be a non-empty list of rewrites (got {_jtype(rewrites)}"
                    f"{' with no items' if rewrites == [] else ''})")
        return {}
    edits = [e for k, rw in enumerate(rewrites) if (e := _rewrite(rec, k, rw)) is not None]
    _hops(rec, edits)
    questions = _texts(rec, "questions", rec.get("questions"), required=True)
    answer, aliases = _answer(rec, "new_answer", rec.get("new_answer"), required=True)
    _, more = _answer(rec, "new_answer_alias", rec.get("new_answer_alias"))
    probes = _Probes(rec, "portability")
    probes.add("questions", questions, "new_answer", answer, aliases + [a for a in more if a not in aliases])
    return {"edits": edits, "portability": probes.items}


def _detect(r: dict) -> bool:
    rewrites = r.get(_RR)
    return isinstance(rewrites, list) and bool(rewrites) and isinstance(rewrites[0], dict) \
        and _has(rewrites[0], "prompt", "subject", "target_new") and _has(r, "questions")


FORMAT = Format("mquake", "mquake", _mquake,
                "MQuAKE (CF-3k, CF, T): case_id, requested_rewrite[{prompt, subject, target_new, "
                "target_true, relation_id, question}], questions, new_answer, new_answer_alias, "
                "new_single_hops",
                "requested_rewrite [{prompt, subject, target_new}] (a list), questions, new_answer",
                _detect)
