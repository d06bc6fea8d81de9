"""`report` and `compare` with `--scenario`: a store holding several scenarios' runs (a
sweep's) reports one scenario at a time."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from tinyrun import save_tiny_model, stream_events, write_jsonl, write_scenario

from lifelong.report import load_runs

pytestmark = pytest.mark.usefixtures("single_thread")


def _simulate(scenario, db):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "lifelong.cli", "simulate", str(scenario), "--db",
                          str(db), "--quiet"], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr


def test_scenario_filter_keeps_only_that_scenarios_runs(tmp_path):
    model = save_tiny_model(tmp_path / "tiny")
    stream = write_jsonl(stream_events(n_edits=4, reedits=0, retracts=0, queries=0), tmp_path / "s.jsonl")
    db = tmp_path / "both.db"
    for name, method in (("alpha", "none"), ("beta", "ft")):
        sc = write_scenario(tmp_path / f"{name}.toml", model, stream,
                            methods=f'[[methods]]\nname = "{method}"\n' +
                                    ('settings = { steps = 2 }\n' if method == "ft" else ""))
        sc.write_text(sc.read_text().replace('name = "tiny"', f'name = "{name}"'))
        _simulate(sc, db)
    assert {r.run["scenario"] for r in load_runs([db])} == {"alpha", "beta"}
    assert [r.run["run_id"] for r in load_runs([db], ["beta"])] == ["ft@seed0"]
    out = tmp_path / "c.json"
    res = subprocess.run([sys.executable, "-m", "lifelong.cli", "compare", str(db), "--scenario",
                          "alpha", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert [r["run_id"] for r in json.loads(out.read_text())["rows"]] == ["none@seed0"]
