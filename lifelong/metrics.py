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
from typing import Any, Iterable, Sequence

import numpy as np

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


def retention_matrix(probes: Sequence[dict], checkpoints: Sequence[dict], group_size: int,
                     mode: str = "teacher_forced") -> tuple[list[int], list[int], np.ndarray]:
    """R[g, k]: mean reliability of edit group g (edits g*G .. (g+1)*G-1, newest edits of their
    facts) at checkpoint k. NaN where the group had no probed edit yet. A final checkpoint
    with the same number of edits as the one before it replaces that one."""
    cks = sorted(checkpoints, key=lambda c: c["checkpoint"])
    keep: list[dict] = []
    for c in cks:
        if keep and keep[-1]["edits_done"] == c["edits_done"]:
            keep[-1] = c
        else:
            keep.append(c)
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


def latency(events: Sequence[dict], timings: Sequence[dict]) -> dict[str, Any]:
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
    if mem and base and base["p50"]:
        query["overhead"] = mem["p50"] / base["p50"]
    return {"edit": percentiles(edits), "merge": percentiles(merges), "query": query}


def run_metrics(run: dict, events: Sequence[dict], checkpoints: Sequence[dict],
                probes: Sequence[dict], timings: Sequence[dict]) -> dict[str, Any]:
    """All final metrics of one run, from its rows (the stable keys of the JSON summary)."""
    config = json.loads(run["config"]) if isinstance(run["config"], str) else run["config"]
    sched = config["scenario"]["schedule"]
    group = sched["group_size"] or sched["checkpoint_every"] or max(1, run.get("edits_total") or 1)
    final = max((c for c in checkpoints if c["when"] == "final"), key=lambda c: c["checkpoint"],
                default=None)
    roles = by_role(probes, final["checkpoint"]) if final else {}
    edit_rows = [e for e in events if e["kind"] == "edit"]
    after = [e for e in edit_rows if e.get("tf_acc") is not None]
    retracts = [e for e in events if e["kind"] == "retract"]
    unsupported = sum(e["outcome"] == "unsupported" for e in retracts)
    lat = latency(events, timings)
    edit_ms = sum(e["ms"] for e in edit_rows if e.get("ms") is not None)
    retraction = rate(roles.get("retract", []))
    if retraction is not None or retracts:
        retraction = {"restored": retraction, "requested": len(retracts), "unsupported": unsupported,
                      "when": "final"}
    return {
        "run_id": run["run_id"], "method": run["method"], "label": run["label"], "seed": run["seed"],
        "status": run["status"], "complete": final is not None,
        "edits": {"applied": sum(e["outcome"] == "applied" for e in edit_rows),
                  "total": len(edit_rows)},
        "reliability": rate(roles.get("rel", [])),
        "reliability_after_edit": rate(after, when="after_edit"),
        "generalization": rate(roles.get("gen", [])),
        "locality": rate(roles.get("loc", [])),
        "portability": rate(roles.get("port", [])),
        "retention": retention(probes, checkpoints, group),
        "retention_by_age": retention_by_age(probes, checkpoints, group),
        "conflict": conflict(roles),
        "retraction": retraction,
        "latency_ms": lat,
        "memory_bytes": final["memory_bytes"] if final else None,
        "memory_growth": [{"edits": c["edits_done"], "bytes": c["memory_bytes"]}
                          for c in sorted(checkpoints, key=lambda c: c["checkpoint"])],
        "edits_per_second": (len(edit_rows) / (edit_ms / 1e3)) if edit_ms > 0 else None,
    }


def compute_run_metrics(store, run_id: str) -> dict[str, Any]:
    """Read a run's rows from `store` and compute its metrics."""
    run = store.get_run(run_id)
    return run_metrics(run, store.rows("events", run_id), store.rows("checkpoints", run_id),
                       store.rows("probes", run_id), store.rows("timings", run_id))
