"""`lifelong bench edit`: attach cost, per-edit time, footprint and query overhead of any
method, on a tiny model that has a world (its tokenizer built from the world's own text);
and `lifelong bench grace` on the same model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import make_tiny_model

from lifelong.bench import bench
from lifelong.bench_edit import attach_costs, bench_edit, cost_lines, parse_settings
from lifelong.errors import ConfigError

pytestmark = pytest.mark.usefixtures("single_thread")
ROME = {"prefixes": 0, "steps": 2, "stats_texts": 200}
SETTINGS = json.dumps({"ft": {"steps": 3}, "grace": {"steps": 3}, "rome": ROME})


@pytest.fixture(scope="module")
def world_model(tmp_path_factory) -> Path:
    """A 2-layer GPT-2 whose word-level vocabulary is a small generated world's, saved with
    the world.json a bench needs (and the corpus the locate family's statistics read)."""
    from lifelong.tokenizer import build_word_tokenizer
    from lifelong.world import World, WorldConfig
    out = tmp_path_factory.mktemp("world-model")
    world = World.generate(WorldConfig(n_people=8))
    tok = build_word_tokenizer(world.corpus())
    make_tiny_model("gpt2", vocab_size=len(tok)).save_pretrained(out)
    tok.save_pretrained(out)
    world.save(out / "world.json")
    return out


def test_the_command_reports_every_method_with_its_command(world_model, tmp_path):
    path = tmp_path / "b.json"
    res = CliRunner().invoke(bench, ["edit", "--method", "ft", "--method", "grace", "--method",
                                     "rome", "--model", str(world_model), "--edits", "2",
                                     "--queries", "32", "--settings", SETTINGS, "--fresh-cache",
                                     "--json", str(path)])
    assert res.exit_code == 0, res.output
    out = json.loads(path.read_text())
    assert out["command"].startswith("lifelong bench edit --method ft --method grace --method rome")
    assert "--fresh-cache" in out["command"] and "--json" not in out["command"]
    assert out["threads"] == 1 and out["torch"] and out["model"] == str(world_model)
    assert out["edits"] == 2 and out["fresh_cache"] is True
    by = {m["method"]: m for m in out["methods"]}
    assert list(by) == ["ft", "grace", "rome"]
    for name, m in by.items():
        assert m["attach"]["wall_s"] >= 0 and m["footprint_bytes"] > 0
        assert m["edits"]["n"] == 2 and m["edits"]["edit_ms_mean"] > 0
        assert set(m["edits"]["edit_ms"]) == {"p50", "p95"}
        assert m["edits"]["steps_mean"] is not None
        assert m["settings"]["steps"] == {"ft": 3, "grace": 3, "rome": 2}[name]
        assert f"\n{name}: attach " in "\n" + res.output  # its summary line
    for name in ("ft", "rome"):  # weight editing: said, not timed
        assert by[name]["queries"] == {"timed": False, "note": "no overhead: the model's own forward"}
        assert "queries: no overhead: the model's own forward" in res.output
    q = by["grace"]["queries"]
    assert q["timed"] and q["memory"]["batch1_ms"]["p50"] > 0 and "overhead_batch32" in q
    assert by["ft"]["attach"]["costs"] == [] == by["grace"]["attach"]["costs"]
    (stats,) = by["rome"]["attach"]["costs"]
    assert stats["what"] == "key statistics" and stats["how"] == "computed" and stats["tokens"] > 0
    assert "rome attach: key statistics of layers.1.mlp.out computed" in res.output


def test_query_at_times_the_queries_as_the_memory_grows(world_model, tmp_path):
    out = bench_edit(["grace", "ft"], str(world_model), edits=4, batch=3, queries=32,
                     settings='{"steps": 3}', fresh_cache=True, query_at=(4, 1, 2), echo=lambda _: None)
    assert out["query_at"] == [1, 2, 4] and "--query-at 1 --query-at 2 --query-at 4" in out["command"]
    grace, ft = out["methods"]
    # edits go in calls of 3: the counts 1 and 2 are both passed by the first call, timed once
    assert [g["after_edits"] for g in grace["queries_by_edits"]] == [3, 4]
    assert all(g["timed"] and g["memory"]["batch1_ms"]["p50"] > 0
               for g in grace["queries_by_edits"])
    assert grace["queries_by_edits"][-1] == {"after_edits": 4,
                                             "footprint_bytes": grace["footprint_bytes"],
                                             **grace["queries"]}
    # GRACE's codebook grows with the edits (each new key is an entry here)
    assert grace["queries_by_edits"][0]["footprint_bytes"] < grace["footprint_bytes"]
    assert [g["timed"] for g in ft["queries_by_edits"]] == [False, False]
    plain = bench_edit(["ft"], str(world_model), edits=2, queries=32, settings='{"steps": 3}',
                       fresh_cache=True, echo=lambda _: None)
    assert plain["methods"][0]["queries_by_edits"] == [] and plain["query_at"] == []


def test_statistics_are_computed_once_then_read_from_the_same_cache(world_model, tmp_path):
    runs = [bench_edit(["rome"], str(world_model), edits=2, batch=2, queries=32,
                       settings=json.dumps(ROME), cache_dir=str(tmp_path / "cache"),
                       echo=lambda *_: None)["methods"][0] for _ in range(2)]
    first, second = (r["attach"]["costs"] for r in runs)
    assert [c["how"] for c in first] == ["computed"] and [c["how"] for c in second] == ["read"]
    assert first[0]["tokens"] == second[0]["tokens"] and first[0]["seconds"] == pytest.approx(
        second[0]["seconds"])
    assert runs[1]["edits"]["calls"] == 1 and runs[1]["edits"]["batched"]
    assert runs[1]["cache_dir"] == str(tmp_path / "cache")


def test_the_reader_knows_the_locate_family_and_mend_and_nothing_else():
    locate = {"source": "corpus", "entry": "mom2-x", "layers": {
        n: {"read": True, "tokens": 10, "seconds": 2.0} for n in ("layers.1.mlp.out", "layers.2.mlp.out")}}
    costs = attach_costs(locate)
    assert [(c["part"], c["how"]) for c in costs] == [("layers.1.mlp.out", "read"),
                                                      ("layers.2.mlp.out", "read")]
    assert cost_lines("memit", costs) == [  # one pass over the corpus: one line
        "  memit attach: key statistics of layers.1.mlp.out, layers.2.mlp.out read from the "
        "cache (computed in 2.00 s over 10 tokens)"]
    trained = {"editor": "trained", "entry": "e", "steps": 500.0, "seconds": 12.5, "first": 1.0,
               "last": 0.5}
    assert attach_costs(trained) == [{"what": "editor", "part": None, "how": "trained",
                                      "steps": 500, "seconds": 12.5, "entry": "e"}]
    read = attach_costs({**trained, "editor": "read from the cache"})
    assert cost_lines("mend", read) == ["  mend attach: editor read from the cache (trained 500 "
                                        "steps, 12.50 s)"]
    identity = attach_costs({"source": "identity (no statistics)"})
    assert [c["how"] for c in identity] == ["none"]
    assert attach_costs(None) == attach_costs({"other": 1}) == attach_costs([1]) == []


def test_settings_apply_to_every_method_or_per_method():
    assert parse_settings(None, ["ft"]) == {"ft": {}}
    assert parse_settings('{"steps": 3}', ["ft", "grace"]) == {"ft": {"steps": 3}, "grace": {"steps": 3}}
    assert parse_settings('{"ft": {"steps": 3}}', ["ft", "grace"]) == {"ft": {"steps": 3}, "grace": {}}
    for bad in ("{steps: 3}", "[1]"):
        with pytest.raises(ConfigError, match="--settings"):
            parse_settings(bad, ["ft"])


@pytest.mark.parametrize(("args", "fragment"), [
    (["--method", "nope"], "unknown method 'nope'"),
    (["--method", "ft", "--settings", "{steps"], "--settings: not JSON"),
    (["--method", "ft", "--settings", '{"stepz": 3}'], "stepz"),
    (["--method", "ft", "--fresh-cache", "--cache-dir", "x"], "exclude each other"),
    (["--method", "ft", "--edits", "5", "--query-at", "6"], "--query-at 6: not between 1 and --edits 5"),
])
def test_mistakes_are_one_line(args, fragment, monkeypatch, capsys):
    from lifelong.cli import main
    monkeypatch.setattr(sys, "argv", ["lifelong", "bench", "edit", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("lifelong: ") and err.count("\n") == 1, err
    assert fragment in err and "Traceback" not in err


def test_bench_grace_sets_edits_against_their_training_and_checks_hnsw(world_model, tmp_path):
    """`bench grace`: every size reports the edit/training ratio and both overheads; the
    agreement is measured through an HNSW index, which, with efSearch above the codebook's
    size, answers every lookup as the exact search does."""
    path = tmp_path / "g.json"
    res = CliRunner().invoke(bench, ["grace", "--model", str(world_model), "--sizes", "20,40",
                                     "--edits", "2", "--queries", "32", "--pool", "8",
                                     "--hnsw-ef", "64", "--json", str(path)])
    assert res.exit_code == 0, res.output
    out = json.loads(path.read_text())
    assert len(out["rows"]) == 2 and all(r["keys"] <= s for r, s in zip(out["rows"], (20, 40)))
    for row in out["rows"]:
        assert row["edit_over_train"] > 0 and row["train_ms"]["p50"] > 0
        assert {"overhead_batch1", "overhead_batch32", "footprint_mb"} <= set(row)
        (hnsw,) = row["hnsw"]
        assert hnsw["ef_search"] == 64 and hnsw["approximate"]
        assert set(hnsw["agree"]) == {"held", "rephrased", "probe"}
        assert all(v == 1.0 for v in hnsw["agree"].values())
    assert "HNSW efSearch 64" in res.output
