"""Metrics: pure functions over the rows a run recorded (never over live objects), so a
report can recompute them from any store, old or new.

Every figure carries its protocol: `teacher_forced` (token accuracy with the gold prefix fed
in) and `generated` (greedy decoding reproduces the target exactly), and `when` it was
measured (`final`: after the whole stream, the WISE-paper protocol; `after_edit`: right after
each edit; `checkpoints`: along the stream). Locality and retraction compare with the model
*before the stream* (token agreement / identical greedy output). See docs/metrics.md.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .metrics_health import health, health_point, leaked

MODES = ("teacher_forced", "generated")
_COL = {"teacher_forced": "tf_acc", "generated": "gen_exact"}


def _mean(values: Iterable[float]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def rate(rows: Sequence[dict], when: str = "final") -> dict[str, Any] | None:
    """Both protocols' mean over `rows`, with the count; None when there are no rows."""
    if not rows:
        return None
    return {m: _mean(r[_COL[m]] for r in rows) for m in MODES} | {"n": len(rows), "when": when}


def protocol_gap(rows: Sequence[dict]) -> dict[str, Any] | None:
    """Where the two protocols score the same probes differently. `teacher_forced` (mean
    token accuracy) and `generated` (exact greedy output) are the two figures and `gap` their
    difference; `disagree` is the share of rows the two score differently (tf_acc != gen_exact),
    `partial` the share teacher forcing gives part credit (0 < tf_acc < 1) that generation,
    all or nothing, does not. `exact_disagree`: rows whose every target token is ranked first
    given the gold prefix (`tf_exact`; rows without it: tf_acc == 1) but that greedy output
    misses, or the reverse; greedy decoding follows that argmax path, so it is non-zero only
    where a method serves generation differently from teacher forcing, or an alias matched.
    On one-token answers `partial` is 0 by construction. None without rows."""
    if not rows:
        return None
    n = len(rows)
    tf = [float(r["tf_acc"] or 0.0) for r in rows]
    gen = [int(bool(r["gen_exact"])) for r in rows]
    exact = [bool(r["tf_exact"]) if r.get("tf_exact") is not None else t >= 1.0
             for r, t in zip(rows, tf)]
    return {"teacher_forced": sum(tf) / n, "generated": sum(gen) / n,
            "gap": (sum(tf) - sum(gen)) / n,
            "disagree": sum(t != g for t, g in zip(tf, gen)) / n,
            "partial": sum(0.0 < t < 1.0 for t in tf) / n,
            "exact_disagree": sum(e != bool(g) for e, g in zip(exact, gen)) / n, "n": n}


def percentiles(ms: Sequence[float]) -> dict[str, float] | None:
    if not ms:
        return None
    a = np.asarray(ms, dtype=float)
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
            "p99": float(np.percentile(a, 99)), "mean": float(a.mean()), "n": int(a.size)}


def by_role(probes: Sequence[dict], checkpoint: int) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for r in probes:
        if r["checkpoint"] == checkpoint:
            out[r["role"]].append(r)
    return out


def pooled_roles(probes: Sequence[dict], checkpoint_ids: set[int]) -> dict[str, list[dict]]:
    """Rows of several checkpoints by role (the chunks of a `restart_every` run)."""
    out: dict[str, list[dict]] = defaultdict(list)
    for r in probes:
        if r["checkpoint"] in checkpoint_ids:
            out[r["role"]].append(r)
    return out


def perplexity(rows: Sequence[dict], when: str = "final") -> dict[str, Any] | None:
    """Mean over rows of exp(mean target-token NLL), teacher-forced (the WISE paper's Table 4
    measure for long corrected texts; lower is better). None without NLLs."""
    vals = [float(np.exp(r["nll"])) for r in rows if r.get("nll") is not None
            and not np.isnan(r["nll"])]
    if not vals:
        return None
    return {"teacher_forced": float(np.mean(vals)), "median": float(np.median(vals)),
            "n": len(vals), "when": when}


def conflict(roles: dict[str, list[dict]], when: str = "final") -> dict[str, Any] | None:
    """Re-edited facts: does the newest value win (`latest`), or does a superseded value
    still come out (`stale`)? latest: over the newest prompt and the older edits' prompts;
    stale (generated): share of facts whose newest prompt generates any superseded value;
    stale (teacher-forced): mean token accuracy of the superseded values."""
    reedited = {r["fact"] for r in roles.get("conflict", []) + roles.get("stale", [])}
    if not reedited:
        return None
    latest = [r for r in roles.get("rel", []) if r["fact"] in reedited] + roles.get("conflict", [])
    stale_rows = roles.get("stale", [])
    per_fact: dict[str, int] = defaultdict(int)
    for r in stale_rows:
        per_fact[r["fact"]] = max(per_fact[r["fact"]], int(r["gen_exact"]))
    stale = {"teacher_forced": _mean(r["tf_acc"] for r in stale_rows),
             "generated": (sum(per_fact[f] for f in reedited) / len(reedited))}
    return {"latest": {m: _mean(r[_COL[m]] for r in latest) for m in MODES},
            "stale": stale, "facts": len(reedited), "when": when}


def distinct_checkpoints(checkpoints: Sequence[dict]) -> list[dict]:
    """Checkpoints in order; a checkpoint at the same number of edits as the one before it
    replaces that one (the final checkpoint after the last scheduled one).
    Invariant: `edits_done` is strictly increasing in the result."""
    keep: list[dict] = []
    for c in sorted(checkpoints, key=lambda c: c["checkpoint"]):
        if keep and keep[-1]["edits_done"] == c["edits_done"]:
            keep[-1] = c
        else:
            keep.append(c)
    return keep


def retention_matrix(probes: Sequence[dict], checkpoints: Sequence[dict], group_size: int,
                     mode: str = "teacher_forced") -> tuple[list[int], list[int], np.ndarray]:
    """R[g, k]: mean reliability of edit group g (edits g*G .. (g+1)*G-1, newest edits of their
    facts) at checkpoint k. NaN where the group had no probed edit yet. A final checkpoint
    with the same number of edits as the one before it replaces that one."""
    keep = distinct_checkpoints(checkpoints)
    col = {c["checkpoint"]: j for j, c in enumerate(keep)}
    sums: dict[tuple[int, int], list[float]] = defaultdict(list)
    for r in probes:
        if r["role"] == "rel" and r["checkpoint"] in col:
            sums[(r["edit_index"] // group_size, col[r["checkpoint"]])].append(r[_COL[mode]])
    groups = sorted({g for g, _ in sums})
    R = np.full((len(groups), len(keep)), np.nan)
    for (g, j), vals in sums.items():
        R[groups.index(g), j] = float(np.mean(vals))
    return groups, [c["checkpoint"] for c in keep], R


def forgetting(R: np.ndarray) -> float | None:
    """Mean over groups seen before the last column of (best earlier value - final value)."""
    if R.shape[1] < 2:
        return None
    vals = []
    for row in R:
        earlier = row[:-1][~np.isnan(row[:-1])]
        if earlier.size and not np.isnan(row[-1]):
            vals.append(float(earlier.max() - row[-1]))
    return float(np.mean(vals)) if vals else None


def backward_transfer(R: np.ndarray) -> float | None:
    """Mean over groups seen before the last column of (final value - first value)."""
    vals = []
    for row in R:
        seen = np.flatnonzero(~np.isnan(row))
        if seen.size and seen[0] < R.shape[1] - 1 and not np.isnan(row[-1]):
            vals.append(float(row[-1] - row[seen[0]]))
    return float(np.mean(vals)) if vals else None


def retention(probes, checkpoints, group_size: int) -> dict[str, Any] | None:
    """Retention of old edits: final reliability of groups probed before the end, forgetting
    and backward transfer, per protocol, plus the matrix itself."""
    out: dict[str, Any] = {"when": "checkpoints", "group_size": group_size}
    for mode in MODES:
        groups, cols, R = retention_matrix(probes, checkpoints, group_size, mode)
        if R.size == 0:
            return None
        old = [row[-1] for row in R if np.flatnonzero(~np.isnan(row))[0] < R.shape[1] - 1
               and not np.isnan(row[-1])]
        out[mode] = _mean(old)
        out[f"forgetting_{mode}"] = forgetting(R)
        out[f"backward_transfer_{mode}"] = backward_transfer(R)
        out[f"matrix_{mode}"] = [[None if np.isnan(v) else round(float(v), 4) for v in row] for row in R]
    out["groups"], out["checkpoints"] = groups, cols
    return out


def retention_by_age(probes, checkpoints, bucket: int) -> list[dict]:
    """Reliability against an edit's age (edits applied after it), pooled over checkpoints."""
    done = {c["checkpoint"]: c["edits_done"] for c in checkpoints}
    acc: dict[int, list[dict]] = defaultdict(list)
    for r in probes:
        if r["role"] == "rel" and r["checkpoint"] in done:
            age = done[r["checkpoint"]] - 1 - r["edit_index"]
            acc[age // bucket].append(r)
    return [{"age_from": b * bucket, "age_to": (b + 1) * bucket - 1, "n": len(rows),
             **{m: _mean(r[_COL[m]] for r in rows) for m in MODES}} for b, rows in sorted(acc.items())]


def route_accuracy(roles: dict[str, list[dict]], when: str = "final") -> dict[str, Any] | None:
    """For methods that route: the share of edit/rephrase probes sent to the memory holding
    their edit (`accuracy`), and of locality probes sent to the main memory (`locality`)."""
    edits = [r for role in ("rel", "gen") for r in roles.get(role, []) if r.get("routed_ok") is not None]
    loc = [r for r in roles.get("loc", []) if r.get("routed_ok") is not None]
    if not edits and not loc:
        return None
    shadow = {}  # routers a method measured beside the serving one: columns routed_ok_<name>
    for name in sorted({k[len("routed_ok_"):] for r in edits + loc for k in r
                        if k.startswith("routed_ok_") and r[k] is not None}):
        col = f"routed_ok_{name}"
        shadow[name] = {"accuracy": _mean(r.get(col) for r in edits),
                        "locality": _mean(r.get(col) for r in loc)}
    return {"accuracy": _mean(r["routed_ok"] for r in edits), "n": len(edits),
            "locality": _mean(r["routed_ok"] for r in loc), "n_locality": len(loc), "when": when,
            **({"shadow": shadow} if shadow else {})}


OVERHEAD_LEVEL = 0.95      # two-sided interval of the query overhead
OVERHEAD_RESAMPLES = 2000  # bootstrap resamples (seeded: same rows, same interval)


def _round_of(key: str | None) -> str | None:
    """The round of a batch-1 timing key "b1:<round>:<i>" (None for other layouts)."""
    parts = (key or "").split(":")
    return parts[1] if len(parts) == 3 and parts[0] == "b1" else None


def _ratio_interval(mem: np.ndarray, base: np.ndarray, paired: bool) -> tuple[float, float]:
    """Bootstrap interval of median(mem) / median(base): pairs resampled together when the
    rows are paired (same prompt, same round), the two samples independently otherwise.
    Seeded, so the same rows always give the same interval."""
    rng = np.random.default_rng(0)
    n_m, n_b = mem.size, base.size
    i = rng.integers(0, n_m, size=(OVERHEAD_RESAMPLES, n_m))
    j = i if paired else rng.integers(0, n_b, size=(OVERHEAD_RESAMPLES, n_b))
    ratios = np.median(mem[i], axis=1) / np.median(base[j], axis=1)
    tail = (1 - OVERHEAD_LEVEL) / 2 * 100
    return float(np.percentile(ratios, tail)), float(np.percentile(ratios, 100 - tail))


def query_overhead(timings: Sequence[dict], side_by_side: bool = True) -> dict[str, Any] | None:
    """Batch-1 query overhead of the memory: ratio of medians (with memory / base model) over
    the rows paired by key (same prompt, same round; every row when none pair), a bootstrap
    interval (`low`, `high`, level OVERHEAD_LEVEL), the ratio of medians of every round, and
    `significant`: the timings were taken side by side (`side_by_side`: interleaved at the end
    of the run, not the base model before the stream and the memory after it, minutes apart
    under another machine load), the interval excludes 1.0 and every round's ratio lies on
    the same side of 1.0 (with two rounds or more). A figure that is not significant is
    noise, not a measurement. None without at least two timings of each kind."""
    mem = {t.get("key"): t["ms"] for t in timings if t["op"] == "query" and t["batch"] == 1}
    base = {t.get("key"): t["ms"] for t in timings if t["op"] == "query_base" and t["batch"] == 1}
    keys = [k for k in mem if k is not None and k in base]
    paired = len(keys) >= 2
    if paired:
        m, b = np.array([mem[k] for k in keys]), np.array([base[k] for k in keys])
    else:  # rows without keys (or none in common): the two samples as they are
        m = np.array([t["ms"] for t in timings if t["op"] == "query" and t["batch"] == 1])
        b = np.array([t["ms"] for t in timings if t["op"] == "query_base" and t["batch"] == 1])
    if m.size < 2 or b.size < 2 or np.median(b) <= 0:
        return None
    low, high = _ratio_interval(m, b, paired)
    rounds: dict[str, list[int]] = defaultdict(list)
    for n, k in enumerate(keys):
        if _round_of(k) is not None:
            rounds[_round_of(k)].append(n)
    per_round = [float(np.median(m[ix]) / np.median(b[ix])) for _, ix in sorted(rounds.items())]
    ratio = float(np.median(m) / np.median(b))
    side = (low > 1.0) - (high < 1.0)  # +1: slower with memory, -1: faster, 0: contains 1
    consistent = len(per_round) < 2 or all((r > 1.0) - (r < 1.0) == side for r in per_round)
    return {"ratio": ratio, "low": low, "high": high, "level": OVERHEAD_LEVEL,
            "pairs": len(keys) if paired else 0, "rounds": per_round, "side_by_side": side_by_side,
            "significant": bool(side_by_side and side != 0 and consistent)}


def latency(events: Sequence[dict], timings: Sequence[dict], side_by_side: bool = True) -> dict[str, Any]:
    """Edit and merge latency percentiles; query latency with and without the memory and the
    overhead (`query_overhead`; `side_by_side` says how the query timings were taken)."""
    edits = [e["ms"] for e in events if e["kind"] == "edit" and e.get("ms") is not None]
    merges = [e["ms"] for e in events if e["kind"] == "merge" and e.get("outcome") == "applied"]

    def q(op: str, batch1: bool) -> list[float]:
        return [t["ms"] for t in timings if t["op"] == op and (t["batch"] == 1) == batch1]

    mem, base = percentiles(q("query", True)), percentiles(q("query_base", True))
    mem_b, base_b = q("query", False), q("query_base", False)
    batch = [t["batch"] for t in timings if t["op"] == "query" and t["batch"] != 1]
    query = {"p50_with_memory": mem["p50"] if mem else None, "p50_base": base["p50"] if base else None,
             "p95_with_memory": mem["p95"] if mem else None, "p95_base": base["p95"] if base else None,
             "batch": batch[0] if batch else None,
             "batch_ms_with_memory": _mean(mem_b), "batch_ms_base": _mean(base_b)}
    over = query_overhead(timings, side_by_side)
    if over is not None:
        query |= {"overhead": over["ratio"], "overhead_low": over["low"],
                  "overhead_high": over["high"], "overhead_level": over["level"],
                  "overhead_pairs": over["pairs"], "overhead_rounds": over["rounds"],
                  "overhead_side_by_side": side_by_side, "overhead_significant": over["significant"]}
    elif mem and base and base["p50"]:  # one timing of a kind: a ratio with no spread at all
        query |= {"overhead": mem["p50"] / base["p50"], "overhead_side_by_side": side_by_side,
                  "overhead_significant": False}
    return {"edit": percentiles(edits), "merge": percentiles(merges), "query": query}


def retraction(events: Sequence[dict], restore_rows: Sequence[dict]) -> dict[str, Any] | None:
    """Retractions: `requested` (events), `performed` (the method did it: outcome applied),
    `unsupported` (the method said it cannot), and `restored`: the retraction probes (facts
    left with no edit, judged against the pre-stream model) of facts whose every retraction
    was performed. A fact with a retraction the method did not perform is left out: if it
    behaves as before the stream, the method did not make it so. None without retractions
    and retraction probes."""
    retracts = [e for e in events if e["kind"] == "retract"]
    if not retracts and not restore_rows:
        return None
    fact_of = {e.get("event_id"): e.get("fact") for e in events if e["kind"] == "edit"}
    not_done = [e for e in retracts if e.get("outcome") != "applied"]
    skip = {fact_of.get(e.get("target_id")) for e in not_done}
    if None in skip:  # a refused retraction whose fact is unknown: nothing can be credited
        rows: list[dict] = []
    else:
        rows = [r for r in restore_rows if r["fact"] not in skip]
    return {"restored": rate(rows), "requested": len(retracts),
            "performed": sum(e.get("outcome") == "applied" for e in retracts),
            "unsupported": sum(e.get("outcome") == "unsupported" for e in retracts),
            "when": "final"}


def queries(events: Sequence[dict]) -> dict[str, Any] | None:
    """The stream's query events, scored when the stream asked them (`when: at_query`):
    both protocols over the queries that carry an answer (`n`), and `asked` (all of them).
    None without query events."""
    asked = [e for e in events if e["kind"] == "query"]
    if not asked:
        return None
    scored = [e for e in asked if e.get("tf_acc") is not None and e.get("gen_exact") is not None]
    out = rate(scored, when="at_query") or {m: None for m in MODES} | {"n": 0, "when": "at_query"}
    return out | {"asked": len(asked)}


def edit_counts(edit_rows: Sequence[dict]) -> dict[str, int | None]:
    """`applied`, `total`, and from the `converged` column (1/0 per edit: did the method's own
    optimisation reach its stop criterion) `converged` / `not_converged`; both None when no
    edit carries the column (old stores, methods with no notion of it)."""
    flags = [e.get("converged") for e in edit_rows if e.get("converged") is not None]
    return {"applied": sum(e["outcome"] == "applied" for e in edit_rows),
            "converged": sum(int(f) == 1 for f in flags) if flags else None,
            "not_converged": sum(int(f) == 0 for f in flags) if flags else None,
            "total": len(edit_rows)}


def _final(checkpoints: Sequence[dict]) -> dict | None:
    return max((c for c in checkpoints if c["when"] == "final"), key=lambda c: c["checkpoint"],
               default=None)


def final_roles(checkpoints: Sequence[dict], probes: Sequence[dict]) -> dict[str, list[dict]]:
    """The probe rows a run's final figures read, by role: the final checkpoint's, or in a
    chunked run (`restart_every`) every chunk's end probe pooled (the WISE paper's average)."""
    final, chunks = _final(checkpoints), [c for c in checkpoints if c["when"] == "chunk"]
    if chunks:
        return pooled_roles(probes, {c["checkpoint"] for c in chunks + ([final] if final else [])})
    return by_role(probes, final["checkpoint"]) if final else {}


def run_metrics(run: dict, events: Sequence[dict], checkpoints: Sequence[dict],
                probes: Sequence[dict], timings: Sequence[dict]) -> dict[str, Any]:
    """All final metrics of one run, from its rows (the stable keys of the JSON summary)."""
    config = json.loads(run["config"]) if isinstance(run["config"], str) else run["config"]
    sched = config["scenario"]["schedule"]
    group = sched["group_size"] or sched["checkpoint_every"] or max(1, run.get("edits_total") or 1)
    final, chunks = _final(checkpoints), [c for c in checkpoints if c["when"] == "chunk"]
    roles = final_roles(checkpoints, probes)
    edit_rows = [e for e in events if e["kind"] == "edit"]
    after = [e for e in edit_rows if e.get("tf_acc") is not None]
    # runs that record `latency_rounds` time the query latencies side by side at the end
    lat = latency(events, timings, side_by_side="latency_rounds" in sched)
    edit_ms = sum(e["ms"] for e in edit_rows if e.get("ms") is not None)
    return {
        "run_id": run["run_id"], "method": run["method"], "label": run["label"], "seed": run["seed"],
        "status": run["status"], "complete": final is not None,
        "edits": edit_counts(edit_rows),
        "reliability": rate(roles.get("rel", [])),
        "reliability_after_edit": rate(after, when="after_edit"),
        "generalization": rate(roles.get("gen", [])),
        "generalization_ood": rate(roles.get("gen_ood", [])),
        "locality": rate(roles.get("loc", [])),
        "portability": rate(roles.get("port", [])),
        "perplexity": perplexity(roles.get("rel", [])),
        "health": health(checkpoints),
        "leaked_rephrases": leaked(checkpoints),
        "chunks": {"size": sched.get("restart_every", 0), "count": len(chunks) + bool(
            final and final["n_items"])} if chunks else None,
        "retention": None if chunks else retention(probes, checkpoints, group),
        "retention_by_age": [] if chunks else retention_by_age(probes, checkpoints, group),
        "conflict": conflict(roles),
        "protocol_gap": {role: protocol_gap(roles.get(role, [])) for role in ("rel", "gen", "loc")},
        "routing": route_accuracy(roles),
        "retraction": retraction(events, roles.get("retract", [])),
        "queries": queries(events),
        "latency_ms": lat,
        "memory_bytes": (max(c["memory_bytes"] for c in chunks) if chunks  # the largest chunk's
                         else final["memory_bytes"] if final else None),
        "memory_growth": [{"edits": c["edits_done"], "bytes": c["memory_bytes"]}
                          for c in sorted(checkpoints, key=lambda c: c["checkpoint"])],
        "edits_per_second": (len(edit_rows) / (edit_ms / 1e3)) if edit_ms > 0 else None,
    }


def compute_run_metrics(store, run_id: str) -> dict[str, Any]:
    """Read a run's rows from `store` and compute its metrics."""
    run = store.get_run(run_id)
    return run_metrics(run, store.rows("events", run_id), store.rows("checkpoints", run_id),
                       store.rows("probes", run_id), store.rows("timings", run_id))


# ---- per-checkpoint curves (reports) ----------------------------------------------------------

def checkpoint_curves(probes: Sequence[dict], checkpoints: Sequence[dict]) -> list[dict[str, Any]]:
    """One entry per distinct checkpoint (see `distinct_checkpoints`), in order:
    `{checkpoint, edits_done, when, memory_bytes, reliability, generalization, locality,
    portability, conflict, routing}`. Each figure is computed from that checkpoint's probe rows
    only, by the same functions as the final figures (`rate`, `conflict`, `route_accuracy`:
    the probes' `routed_ok` column, recorded for methods that route), with
    `when` = "checkpoints" (or "final" at the final checkpoint); None where the checkpoint has
    no rows of that kind. Invariant: for a complete run the last entry's figures equal
    `run_metrics`' final ones."""
    per: dict[int, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in probes:
        per[r["checkpoint"]][r["role"]].append(r)
    out = []
    for c in distinct_checkpoints(checkpoints):
        roles = per.get(c["checkpoint"], {})
        when = "final" if c["when"] == "final" else "checkpoints"
        out.append({
            "checkpoint": c["checkpoint"], "edits_done": c["edits_done"], "when": c["when"],
            "memory_bytes": c.get("memory_bytes"),
            "reliability": rate(roles.get("rel", []), when),
            "generalization": rate(roles.get("gen", []), when),
            "generalization_ood": rate(roles.get("gen_ood", []), when),
            "locality": rate(roles.get("loc", []), when),
            "portability": rate(roles.get("port", []), when),
            "health": health_point(c),
            "conflict": conflict(dict(roles), when),
            "routing": route_accuracy(dict(roles), when),
        })
    return out


def edit_latency_windows(events: Sequence[dict], window: int) -> list[dict[str, Any]]:
    """Edit latency over consecutive, non-overlapping windows of `window` timed edits in stream
    order (`seq`): `{edits_from, edits_to, p50, p95, n}` with `edits_to` = the number of edits
    done at the window's end (1-based); the last window may be shorter. Empty without timed
    edits. Invariant: the windows' `n` sum to the number of timed edits."""
    window = max(1, int(window))
    edits = sorted((e for e in events if e["kind"] == "edit" and e.get("ms") is not None),
                   key=lambda e: e.get("seq", 0))
    out = []
    for start in range(0, len(edits), window):
        chunk = edits[start:start + window]
        p = percentiles([e["ms"] for e in chunk])
        out.append({"edits_from": start + 1, "edits_to": start + len(chunk), "p50": p["p50"],
                    "p95": p["p95"], "n": p["n"]})
    return out


def merge_latencies(events: Sequence[dict]) -> list[dict[str, Any]]:
    """Every applied consolidation: `{edits, ms}` (edits done when it ran), in stream order."""
    merges = [e for e in events if e["kind"] == "merge" and e.get("outcome") == "applied"
              and e.get("ms") is not None]
    return [{"edits": e["edit_index"], "ms": e["ms"]}
            for e in sorted(merges, key=lambda e: (e.get("seq", 0), e["edit_index"]))]
