"""counterfact, rome-counterfact: the EasyEdit and the ROME CounterFact layouts -> edits.

`_flat` (EasyEdit's flat layout) is shared with the WISE formats (see wise.py).

Field mapping (the stream field <- the format's field):

=================  ========================================================================
format             mapping
=================  ========================================================================
counterfact        EasyEdit CounterFact. prompt, target <- target_new, previous <-
                   ground_truth, rephrases <- rephrase_prompt, locality <- (locality_prompt,
                   locality_ground_truth), portability <- (portability_prompt,
                   portability_ground_truth) where present (an answer given as a list of
                   aliases: the probe's answer list); meta.case_id <- case_id.
rome-counterfact   ROME CounterFact. prompt <- requested_rewrite.prompt with the subject in
                   its "{}", target <- target_new.str, previous <- target_true.str, fact <-
                   subject|relation_id, rephrases <- paraphrase_prompts, locality <-
                   neighborhood_prompts (answer: target_true.str) then attribute_prompts
                   (other subjects whose true value is target_new.str; answer: that);
                   meta.locality_groups {"neighborhood": n, "attribute": m}; relation_id and
                   the Wikidata ids of both targets in meta. generation_prompts are dropped.
=================  ========================================================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .common import _MISSING, Format, _has, _jtype, _previous, _Probes, _Rec, _target, _text, _texts

if TYPE_CHECKING:
    from .convert import ImportOptions


def _flat(rec: _Rec, opts: ImportOptions, ood: bool = False) -> dict:
    """EasyEdit's flat layout (CounterFact, WISE Temporal and hallucination)."""
    out, meta = {"prompt": _text(rec, "prompt", rec.get("prompt"), True),
                 "target": _target(rec, "target_new", rec.get("target_new")),
                 "subject": _text(rec, "subject", rec.get("subject"))}, {}
    _previous(rec, "ground_truth", rec.get("ground_truth"), out, meta)
    rk = "rephrase_prompt" if rec.get("rephrase_prompt") is not _MISSING else "rephrase_prompts"
    reph = _texts(rec, rk, rec.get(rk))
    ood_reph = _texts(rec, "ood_rephrase", rec.get("ood_rephrase")) if ood else []
    out["rephrases"] = reph + ood_reph
    if ood_reph and reph:
        meta["rephrase_groups"] = {"in_distribution": len(reph), "ood": len(ood_reph)}
    elif ood_reph:
        meta["rephrase_kind"] = "ood"
    for name in ("locality", "portability"):
        probes = _Probes(rec, name)
        probes.pairs(f"{name}_prompt", f"{name}_ground_truth")
        probes.into(out, meta)
    return {**out, "meta": meta}


def _rome_counterfact(rec: _Rec, opts: ImportOptions) -> dict:
    rr = "requested_rewrite"
    if not isinstance(rec.obj.get(rr), dict):
        rec.problem(rr, "missing (required)" if rec.obj.get(rr) is None else
                    f"must be an object (got {_jtype(rec.obj[rr])})")
        return {}
    template = _text(rec, f"{rr}.prompt", rec.get(f"{rr}.prompt"), True)
    subject = _text(rec, f"{rr}.subject", rec.get(f"{rr}.subject"), True)
    if template and "{}" not in template:
        rec.problem(f"{rr}.prompt", "must contain {} where the subject goes")
    out: dict = {"prompt": template.replace("{}", subject, 1) if template and subject else None,
                 "target": None, "subject": subject}
    meta: dict = {}
    new = rec.get(f"{rr}.target_new")
    new_key = f"{rr}.target_new" + (".str" if isinstance(new, dict) else "")
    out["target"] = _target(rec, new_key, rec.get("str", new) if isinstance(new, dict) else new)
    true = rec.get(f"{rr}.target_true")
    true_key = f"{rr}.target_true" + (".str" if isinstance(true, dict) else "")
    truth = _text(rec, true_key, rec.get("str", true) if isinstance(true, dict) else true)
    if truth:
        out["previous"] = truth
    rel = rec.get(f"{rr}.relation_id")
    if isinstance(rel, str) and rel.strip():
        meta["relation_id"] = rel.strip()
    out["fact_key"] = meta.get("relation_id") or template
    for side, v in (("target_new_id", new), ("target_true_id", true)):
        if isinstance(v, dict) and isinstance(v.get("id"), (str, int)):
            meta[side] = v["id"]
    out["rephrases"] = _texts(rec, "paraphrase_prompts", rec.get("paraphrase_prompts"))
    loc = _Probes(rec, "locality")
    for key, answer, kind, needs, raw in (
            ("neighborhood_prompts", truth, "neighborhood", true_key, true),
            ("attribute_prompts", out["target"], "attribute", new_key, new)):
        prompts = _texts(rec, key, rec.get(key))
        if prompts and not answer:
            if raw is _MISSING:  # (otherwise its problem is already reported)
                rec.problem(needs, f"missing (required with {key})")
            continue
        loc.add(key, prompts, needs, answer, [answer] if answer else [], kind)
    loc.into(out, meta)
    if "pararel_idx" in rec.obj:
        rec.read.add("pararel_idx")
        meta["pararel_idx"] = rec.obj["pararel_idx"]
    return {**out, "meta": meta}


COUNTERFACT = Format("counterfact", "counterfact", _flat,
                     "EasyEdit CounterFact: case_id, prompt, target_new, ground_truth, rephrase_prompt, "
                     "locality_prompt, locality_ground_truth",
                     "prompt, target_new and ground_truth, rephrase_prompt or case_id",
                     lambda r: _has(r, "prompt", "target_new")
                     and any(_has(r, k) for k in ("ground_truth", "rephrase_prompt", "case_id")))
ROME_COUNTERFACT = Format("rome-counterfact", "rome-counterfact", _rome_counterfact,
                          "ROME CounterFact: requested_rewrite{prompt, subject, target_new, target_true}, "
                          "paraphrase_prompts, neighborhood_prompts, attribute_prompts",
                          "requested_rewrite {prompt, subject, target_new} (one object)",
                          lambda r: isinstance(r.get("requested_rewrite"), dict)
                          and _has(r["requested_rewrite"], "prompt", "subject", "target_new"))
