"""Tiny end-to-end material for runtime, CLI and contract tests: a random-init GPT-2 saved
as a model directory, small streams over the tiny tokenizer's vocabulary, and scenario files.
Everything is built locally in a few hundred milliseconds."""

from __future__ import annotations

import json
import random
from pathlib import Path

from conftest import make_tiny_model, tiny_tokenizer

PEOPLE = ("Aldric Brenna Caspar Delphine Evander Fenella Gideon Hestia Ignatius Juniper "
          "Kaspar Lucasta Mordecai Nerissa Octavian Persephone").split()
COMPANIES = "Vantex Orbica Quillon Marabel Zentro Halvik Corvane Lumora".split()
CITIES = "Lisbon Oslo Nairobi Kyoto Lima Dublin Cairo Quito".split()


def save_tiny_model(path: Path, seed: int = 0) -> Path:
    """A 2-layer, 32-wide GPT-2 with the tiny tokenizer, as a Hugging Face directory."""
    model = make_tiny_model("gpt2", seed=seed, n_layer=2, width=32)
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def stream_events(n_edits: int = 12, seed: int = 0, reedits: int = 2, retracts: int = 1,
                  queries: int = 1) -> list[dict]:
    """A valid stream: `n_edits` edits (of which `reedits` re-edit an earlier fact), then
    retractions of earlier edits and queries, interleaved in time order."""
    rng = random.Random(seed)
    events: list[dict] = []
    facts: list[str] = []
    t = 0
    for i in range(n_edits):
        t += 10
        if i >= n_edits - reedits and facts:
            person = facts[rng.randrange(len(facts))]
        else:
            person = PEOPLE[i % len(PEOPLE)]
            facts.append(person)
        events.append({
            "kind": "edit", "id": f"e{i:03d}", "t": t, "prompt": f"{person} works for",
            "target": rng.choice(COMPANIES), "subject": person, "fact": f"{person}|employer",
            "rephrases": [f"The employer of {person} is", f"Who employs {person} ? Answer :"],
            "locality": [{"prompt": f"{PEOPLE[-1 - i % 4]} was born in", "answer": CITIES[i % 8]}]})
    edit_ids = [e["id"] for e in events]
    for k in range(retracts):
        t += 10
        events.append({"kind": "retract", "id": f"r{k:03d}", "t": t, "edit_id": edit_ids[k]})
    for k in range(queries):
        t += 10
        events.append({"kind": "query", "id": f"q{k:03d}", "t": t, "prompt": events[0]["prompt"],
                       "answer": events[0]["target"]})
    return events


def write_jsonl(events: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    return path


def write_scenario(path: Path, model_dir: Path, stream: Path, methods: str = "",
                   schedule: str = "checkpoint_every = 4", extra: str = "",
                   stream_extra: str = "") -> Path:
    """A scenario TOML; `methods` is TOML for [[methods]] tables (default: none and ft)."""
    methods = methods or ('[[methods]]\nname = "none"\n\n[[methods]]\nname = "ft"\n'
                          'settings = { steps = 4, lr = 0.01 }\n')
    path.write_text(f'name = "tiny"\nmodel = "{model_dir}"\n{extra}\n[stream]\nfile = "{stream}"\n{stream_extra}\n'
                    f'[schedule]\n{schedule}\nlatency_queries = 4\n\n{methods}', encoding="utf-8")
    return path


class SimulatedCrash(Exception):
    """Raised where a kill -9 would strike (uncommitted rows are lost, as they would be)."""


def run_store(scenario: Path, db: Path, resume: bool = False, crash_at: int = 0):
    """Run a scenario file into the store `db` in this process; with `crash_at`, die like
    kill -9 after that many events (SimulatedCrash). Returns the Store."""
    from lifelong.runtime import Runtime
    from lifelong.scenario import load_scenario
    from lifelong.store import Store
    from lifelong.stream import parse_stream
    sc = load_scenario(scenario)
    store = Store(db)
    runtime = Runtime(sc, parse_stream(sc.stream.file), store)
    if crash_at:
        seen = [0]

        def crash():
            seen[0] += 1
            if seen[0] == crash_at:
                raise SimulatedCrash
        runtime._maybe_crash = crash
    runtime.run_all(resume=resume)
    return store
