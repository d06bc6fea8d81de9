"""The command line as a user meets it: exit codes, one-line reasons, documented JSON keys."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tinyrun import save_tiny_model, stream_events, write_jsonl

from lifelong.model import builtin_dir

ROOT = Path(__file__).resolve().parent.parent
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}
HAS_BUILTIN = (builtin_dir() / "config.json").exists()


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lifelong.cli", *args], capture_output=True,
                          text=True, timeout=600, env=ONE_THREAD, cwd=cwd)


def test_methods_lists_registered_methods_and_settings():
    res = cli("methods")
    assert res.returncode == 0, res.stderr
    heads = [line.split(":")[0] for line in res.stdout.splitlines() if not line.startswith(" ")]
    assert {"ft", "none"} <= set(heads) and heads == sorted(heads)
    assert "steps (int, default 25)" in res.stdout
    as_json = json.loads(cli("methods", "--json").stdout)
    assert {"ft", "none"} <= set(as_json)


def test_streams_validate_reports_every_bad_line(tmp_path):
    lines = [json.dumps(e) for e in stream_events(n_edits=5)]
    lines[1] = "{not json"
    lines[3] = lines[3].replace('"kind": "edit"', '"kind": "edtt"')
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    res = cli("streams", "validate", str(bad))
    assert res.returncode == 2
    err = res.stderr.splitlines()
    assert err[0].startswith(f"{bad}:2: json: ")
    assert err[1].startswith(f"{bad}:4: kind: ")
    assert err[-1].startswith("lifelong: ") and "2 invalid lines" in err[-1]
    good = write_jsonl(stream_events(n_edits=5), tmp_path / "good.jsonl")
    ok = cli("streams", "validate", str(good))
    assert ok.returncode == 0 and "valid, 7 events" in ok.stdout


def test_unknown_scenario_key_is_one_line(tmp_path):
    toml = tmp_path / "s.toml"
    toml.write_text('name = "x"\n[schedule]\ncheckpoint_evry = 3\n')
    res = cli("simulate", str(toml))
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0
    assert "checkpoint_evry" in res.stderr and "checkpoint_every" in res.stderr


def test_simulate_without_scenario_writes_documented_summary(tmp_path):
    model = save_tiny_model(tmp_path / "m")
    stream = write_jsonl(stream_events(n_edits=8, reedits=2, retracts=1), tmp_path / "s.jsonl")
    out = tmp_path / "sum.json"
    res = cli("simulate", "--stream", str(stream), "--method", "none", "--method", "ft",
              "--model", str(model), "--db", str(tmp_path / "x.db"), "--json", str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    summary = json.loads(out.read_text())
    assert summary["schema"] == "lifelong.summary/1"
    assert list(summary["methods"]) == ["none", "ft"]
    documented = set(re.findall(r"^\| `([a-z_]+)[`.]", (ROOT / "docs/metrics.md").read_text(), re.M))
    for run in summary["runs"]:
        top = {k for k in run if k not in ("run_id", "method", "label", "seed", "status", "complete")}
        assert top <= documented, top - documented
        for key in ("reliability", "generalization", "locality"):
            assert set(run[key]) == {"teacher_forced", "generated", "n", "when"}
            assert run[key]["when"] == "final"
        assert run["conflict"]["facts"] >= 1
        assert run["latency_ms"]["edit"]["p50"] is not None
        assert run["latency_ms"]["query"]["p50_base"] is not None
    assert summary["methods"]["ft"]["retraction"]["unsupported"] == 1
    assert summary["methods"]["none"]["locality"]["generated"] == 1.0


@pytest.mark.skipif(not HAS_BUILTIN, reason="built-in model not shipped")
def test_model_check_on_the_builtin_model(tmp_path):
    res = cli("model", "check", "--sample", "300", "--json", str(tmp_path / "c.json"))
    assert res.returncode == 0, res.stderr
    result = json.loads((tmp_path / "c.json").read_text())
    assert result["trained"]["tf_acc"] >= 0.9
    assert result["heldout"]["tf_acc"] >= 0.7


def test_missing_model_directory_is_a_clear_error(tmp_path):
    stream = write_jsonl(stream_events(n_edits=3), tmp_path / "s.jsonl")
    res = cli("simulate", "--stream", str(stream), "--method", "none", "--model",
              str(tmp_path / "nope"), "--db", str(tmp_path / "x.db"), "--quiet")
    assert res.returncode == 2
    assert "not a model directory" in res.stderr
