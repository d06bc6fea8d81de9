"""Golden rows: the store rows of small runs of every method, before and after a change to the
method platform, must be identical (wall-clock columns aside).

Not a stored-golden test (stored rows would rot with every deliberate change): a script run
against two checkouts. Record in a worktree of the old code, compare in the new one:

    git worktree add /tmp/old HEAD
    OMP_NUM_THREADS=1 .venv/bin/python tests/test_platform_golden.py record --repo /tmp/old -o /tmp/golden.json
    OMP_NUM_THREADS=1 .venv/bin/python tests/test_platform_golden.py compare --repo . /tmp/golden.json

or, with the recorded file, `LIFELONG_GOLDEN=/tmp/golden.json pytest tests/test_platform_golden.py`
(skipped without it). The runs: every method with several settings variants (routers, modes,
key and replacement variants, retraction variants), on a tiny GPT-2 and a tiny LLaMA, one
stream with re-edits, retractions between edits, a merge event, queries; a scheduled merge
and checkpoints; and a chunked (`restart_every`) schedule for the hook-based methods.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
from pathlib import Path

VOLATILE = {"ms", "probe_ms", "saved_at", "started_at", "finished_at"}
TABLES = ("events", "probes", "checkpoints")

#: (label, method, settings) run on every family
VARIANTS: list[tuple[str, str, dict]] = [
    ("none", "none", {}),
    ("ft", "ft", {"steps": 4, "lr": 0.01}),
    ("ft-in", "ft", {"steps": 3, "module": "mlp.in", "lr": 0.02}),
    ("ft-attn", "ft", {"steps": 3, "module": "attn.out", "norm_constraint": None}),
    ("grace", "grace", {"steps": 6}),
    ("grace-mean-key", "grace", {"steps": 4, "key_token": "mean", "replace": "key"}),
    ("grace-ma", "grace", {"steps": 4, "conflict": "moving_average", "eps": 0.5,
                           "replace": "prompt"}),
    ("grace-abs", "grace", {"steps": 4, "eps_relative": False, "eps": 3.0, "replace": "all",
                            "candidates": 2}),
    ("defer", "defer", {"steps": 5, "negatives": 8}),
    ("defer-noretract", "defer", {"steps": 4, "retract": "unsupported", "replace": "key",
                                  "hidden": 8}),
    ("wise", "wise-faiss", {"steps": 5}),
    ("wise-retrieve", "wise-faiss", {"steps": 4, "mode": "retrieve", "memory_size": 3,
                               "shard_size": 2}),
    ("wise-act", "wise-faiss", {"steps": 4, "router": "activation", "negatives": 2,
                          "shard_size": 3}),
    ("wise-mix", "wise-faiss", {"steps": 4, "measure_activation_router": True, "faiss_check": True,
                          "optimizer": "adam", "lr": 0.05, "mask_unit": "entry",
                          "merge": "dare", "density": 0.7, "replay": 1, "protect": False,
                          "key_token": "mean", "retract": "rebuild", "merge_every": 3,
                          "disjoint_masks": False, "shard_size": 2}),
    ("ft-fast", "ft", {"steps": 8, "lr": 0.2, "norm_constraint": None, "stop_loss": 5.5}),
    ("grace-fast", "grace", {"steps": 30, "lr": 6.0, "stop_loss": 5.3}),
    ("defer-fast", "defer", {"steps": 30, "lr": 0.2, "stop_loss": 5.3, "negatives": 4}),
    ("wise-fast", "wise-faiss", {"steps": 20, "lr": 8.0, "stop_loss": 5.4, "mask_ratio": 1.0}),
    ("wise-act-fast", "wise-faiss", {"steps": 20, "lr": 8.0, "stop_loss": 5.8, "router": "activation",
                               "negatives": 2, "margin_weight": 0.1}),
    ("wise-linear", "wise-faiss", {"steps": 3, "merge": "linear", "momentum": 0.5,
                             "retract": "unsupported", "shard_size": 2}),
]
CHUNKED = ("ft", "grace-fast", "defer", "wise-fast", "wise-retrieve")
FAMILIES = ("gpt2", "llama")


def stream(n_edits: int = 14) -> list[dict]:
    """Edits with re-edits, a retraction between edits, a merge event, retractions (one of a
    re-edit) and queries at the end."""
    from tinyrun import stream_events
    events = stream_events(n_edits=n_edits, reedits=3, retracts=0, queries=0)
    events.insert(5, {"kind": "retract", "id": "r-mid", "t": 55, "edit_id": "e001"})
    events.insert(9, {"kind": "merge", "id": "m-mid", "t": 85})
    t = events[-1]["t"]
    tail = [{"kind": "retract", "id": "r-a", "edit_id": "e003"},
            {"kind": "retract", "id": "r-b", "edit_id": events[-1]["id"]},
            {"kind": "query", "id": "q-a", "prompt": events[0]["prompt"],
             "answer": events[0]["target"]},
            {"kind": "query", "id": "q-b", "prompt": events[2]["prompt"]}]
    for i, ev in enumerate(tail, 1):
        events.append({**ev, "t": t + 10 * i})
    return events


def _toml_settings(settings: dict) -> str:
    parts = []
    for k, v in settings.items():
        if v is None:
            continue  # written below as a removal: TOML has no null
        parts.append(f"{k} = {json.dumps(v)}")
    return "{ " + ", ".join(parts) + " }"


def scenario(path: Path, model: Path, stream_file: Path, labels: list[str], schedule: str) -> Path:
    tables = []
    for label, name, settings in VARIANTS:
        if label not in labels:
            continue
        tables.append(f'[[methods]]\nname = "{name}"\nlabel = "{label}"\n'
                      f'settings = {_toml_settings(settings)}\n')
    path.write_text(f'name = "golden"\nmodel = "{model}"\nthreads = 1\n[stream]\n'
                    f'file = "{stream_file}"\n[schedule]\n{schedule}\nlatency_queries = 2\n'
                    f'latency_rounds = 1\nlocality_sample = 2\n\n' + "\n".join(tables),
                    encoding="utf-8")
    return path


def settings_overrides() -> dict[str, dict]:
    """Settings that TOML cannot say (None values), applied after loading."""
    return {label: {k: v for k, v in s.items() if v is None} for label, _, s in VARIANTS
            if any(v is None for v in s.values())}


def table_rows(db: Path, table: str) -> list[dict]:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    rows = [{k: r[k] for k in r.keys() if k not in VOLATILE}  # noqa: SIM118 (a Row)
            for r in con.execute(f"select * from {table}")]
    con.close()
    return sorted(rows, key=lambda r: json.dumps(r, sort_keys=True, default=str))


def run_all(repo: Path) -> dict:
    """Every golden run with the code of `repo`: {case: {table: rows}}."""
    sys.path.insert(0, str(repo / "tests"))
    sys.path.insert(0, str(repo))
    import dataclasses

    import torch
    from conftest import make_tiny_model, tiny_tokenizer
    from tinyrun import write_jsonl

    import lifelong
    from lifelong.runtime import Runtime
    from lifelong.scenario import MethodSpec, load_scenario
    from lifelong.store import Store
    from lifelong.stream import parse_stream
    assert Path(lifelong.__file__).resolve().parent.parent == repo.resolve(), lifelong.__file__
    torch.set_num_threads(1)
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        s = write_jsonl(stream(), d / "s.jsonl")
        none_values = settings_overrides()
        for fam in FAMILIES:
            model = d / fam
            make_tiny_model(fam, seed=1, n_layer=2, width=32).save_pretrained(model)
            tiny_tokenizer().save_pretrained(model)
            labels = [v[0] for v in VARIANTS]
            for kind, sched, chosen in (
                    ("stream", "checkpoint_every = 4\nmerge_every = 5", labels),
                    ("chunks", "checkpoint_every = 0\nrestart_every = 5", list(CHUNKED))):
                sc = load_scenario(scenario(d / f"{fam}-{kind}.toml", model, s, chosen, sched))
                specs = tuple(dataclasses.replace(m, settings={**(m.settings or {}),
                                                               **none_values.get(m.display, {})})
                              for m in sc.methods)
                sc = dataclasses.replace(sc, methods=tuple(MethodSpec(m.name, m.label, m.settings)
                                                           for m in specs))
                db = d / f"{fam}-{kind}.db"
                Runtime(sc, parse_stream(sc.stream.file), Store(db)).run_all()
                for table in TABLES:
                    for row in table_rows(db, table):
                        out.setdefault(f"{fam}/{kind}/{row['run_id']}", {}).setdefault(
                            table, []).append(row)
                print(f"{fam} {kind}: {len(chosen)} runs", file=sys.stderr)
    return out


def compare(old: dict, new: dict) -> list[str]:
    problems = []
    for case in sorted(set(old) | set(new)):
        if case not in old or case not in new:
            problems.append(f"{case}: only in {'new' if case in new else 'old'}")
            continue
        for table in TABLES:
            a, b = old[case].get(table, []), new[case].get(table, [])
            if a != b:
                diff = next((f"{x} != {y}" for x, y in zip(a, b) if x != y),
                            f"{len(a)} rows != {len(b)} rows")
                problems.append(f"{case} {table}: {diff[:600]}")
    return problems


def test_rows_equal_the_recorded_ones():
    import pytest
    path = os.environ.get("LIFELONG_GOLDEN")
    if not path:
        pytest.skip("set LIFELONG_GOLDEN to a file recorded with the old code (module docstring)")
    old = json.loads(Path(path).read_text())
    new = json.loads(json.dumps(run_all(Path(__file__).resolve().parent.parent), default=str))
    assert compare(old, new) == []


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("action", choices=("record", "compare"))
    p.add_argument("golden", nargs="?", help="compare: the recorded file")
    p.add_argument("--repo", required=True, help="checkout whose code runs")
    p.add_argument("-o", "--out", help="record: where to write")
    a = p.parse_intermixed_args()
    with tempfile.TemporaryDirectory() as cache:  # trained editors and statistics: not the user's cache
        os.environ.setdefault("LIFELONG_CACHE", cache)
        rows = json.loads(json.dumps(run_all(Path(a.repo).resolve()), default=str))
    if a.action == "record":
        Path(a.out).write_text(json.dumps(rows))
        print(f"{len(rows)} runs recorded in {a.out}")
        return
    problems = compare(json.loads(Path(a.golden).read_text()), rows)
    print("\n".join(problems) or f"identical: {len(rows)} runs")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
