"""Model organisms (`lifelong pretrain --facts`): which pairs a stream teaches, that a tiny
organism learns them, that training is reproducible, and the CLI path end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from lifelong.cli import cli
from lifelong.errors import LifelongError
from lifelong.model import LM, load_model
from lifelong.organism import (
    check_organism,
    collect_facts,
    facts_from_stream,
    organism_tokenizer,
    pretrain_organism,
    resolve_config,
)
from lifelong.pretrain import PretrainConfig, build_model

pytestmark = pytest.mark.usefixtures("single_thread")

LANDS = ("Zorland", "Quivia", "Mestor", "Palundra", "Brevik", "Ostmark", "Tirellia", "Vandor",
         "Kelmoor", "Arvessa")
CAPITALS = ("Quarn", "Delvo", "Spira", "Munth", "Caldor", "Fennis", "Ravel", "Oskent",
            "Lumbra", "Thessio")
NEW = ("Plinth", "Gorse", "Wicke", "Harrow", "Slate", "Bramble", "Tarn", "Cobble", "Fjell",
       "Moss")
FLAGS = ("teal", "amber", "crimson", "olive", "violet", "ochre", "indigo", "scarlet", "cobalt",
         "saffron")


def _edit(i: int, prompt: str, target: str, **extra) -> dict:
    return {"kind": "edit", "id": f"e{i:03d}", "t": f"2030-01-01T{i:02d}:00:00Z",
            "prompt": prompt, "target": target, **extra}


def _write(events: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    return path


def _capitals_stream(path: Path) -> Path:
    """10 edits: each land's capital (with one rephrase and one locality probe, its flag)."""
    return _write([_edit(i, f"The capital of {land} is", NEW[i], fact=f"{land}|capital",
                         previous=CAPITALS[i], rephrases=[f"{land} is governed from the city of"],
                         locality=[{"prompt": f"The flag of {land} is coloured",
                                    "answer": FLAGS[i]}])
                   for i, land in enumerate(LANDS)], path)


def test_facts_come_from_first_edits_rephrases_and_locality(tmp_path):
    stream = _write([
        _edit(0, "The capital of Zorland is", "Plinth", fact="Z|capital", previous="Quarn",
              rephrases=["Zorland is governed from"],
              locality=[{"prompt": "The flag of Quivia is", "answer": "amber"}],
              portability=[{"prompt": "The mayor of Plinth is",
                            "answer": "Ada Lovelace of the Royal Society"}]),
        # a re-edit: its `previous` is the first edit's target, not ground truth
        _edit(1, "Zorland's capital city is", "Gorse", fact="Z|capital", previous="Plinth",
              rephrases=["Zorland is governed from"],
              locality=[{"prompt": "The flag of Quivia is", "answer": "amber"}]),
        # no previous: nothing to learn from the edit itself, only its locality probe
        _edit(2, "Mestor is famous for", "cheese", fact="M|fame",
              locality=[{"prompt": "The flag of Mestor is", "answer": "teal"}]),
        _edit(3, "Mestor is best known for", "wine", fact="M|fame", previous="cheese"),
    ], tmp_path / "s.jsonl")
    facts = collect_facts(stream)
    assert facts_from_stream(stream) == list(facts.pairs) == [
        ("The capital of Zorland is", "Quarn"), ("Zorland is governed from", "Quarn"),
        ("The flag of Quivia is", "amber"), ("Zorland's capital city is", "Quarn"),
        ("The flag of Mestor is", "teal")]
    assert facts.by_role("prompts") == [("The capital of Zorland is", "Quarn"),
                                        ("Zorland's capital city is", "Quarn")]
    counts = facts.counts()
    assert counts["edits"] == 4 and counts["reedits"] == 2 and counts["facts"] == 2
    assert counts["edits_without_ground_truth"] == 2
    assert (counts["prompts"], counts["rephrases"], counts["locality"]) == (2, 1, 2)
    # targets and portability are never trained but are in the vocabulary
    tok = organism_tokenizer(facts)
    for word in ("Plinth", "Gorse", "wine", "mayor", "Lovelace"):
        assert tok.convert_tokens_to_ids(word) != tok.unk_token_id, word
    # positions: longest prompt (6: Zorland ' s capital city is) + longest answer (6) + EOS,
    # rounded up to a multiple of 8; never below the config's own
    assert resolve_config(PretrainConfig(n_positions=8), tok, facts).n_positions == 16
    assert resolve_config(PretrainConfig(n_positions=40), tok, facts).n_positions == 40


def test_conflicting_answers_keep_the_first(tmp_path):
    stream = _write([
        _edit(0, "The flag of Quivia is", "red", previous="amber"),
        _edit(1, "Brevik lies near", "hills", previous="sea",
              locality=[{"prompt": "The flag of Quivia is", "answer": "green"}])],
        tmp_path / "c.jsonl")
    facts = collect_facts(stream)
    assert ("The flag of Quivia is", "amber") in facts.pairs
    assert facts.counts()["conflicts_dropped"] == 1 and len(facts.pairs) == 2


# Full-batch (30 pairs), 300 steps: every seed 0-4 learns all three roles (tf_acc 1.0).
TINY = PretrainConfig(n_layer=1, n_embd=32, n_head=2, steps=300, batch_size=30, lr=1e-2,
                      warmup_steps=10, eval_every=0, threads=1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, dict]:
    """(stream, model directory, record) of one tiny organism trained on the capitals stream."""
    root = tmp_path_factory.mktemp("organism")
    stream = _capitals_stream(root / "capitals.jsonl")
    with torch.random.fork_rng(devices=[]):
        record = pretrain_organism(stream, TINY, root / "a", progress=False)
    return stream, root / "a", record


def test_tiny_organism_learns_its_facts(trained):
    stream, out, record = trained
    assert record["check"]["prompts"]["tf_acc"] >= 0.9
    assert record["check"]["rephrases"]["tf_acc"] >= 0.9
    assert record["check"]["locality"]["tf_acc"] >= 0.9
    assert record["counts"]["pairs"] == 30 and record["steps_done"] == 300
    # the check could fail: the same model untrained knows (almost) nothing
    facts = collect_facts(stream)
    tok = organism_tokenizer(facts)
    fresh = build_model(resolve_config(TINY, tok, facts), tok).eval()
    before = check_organism(LM(model=fresh, tok=tok, name="fresh", path=""), facts)
    assert before["prompts"]["tf_acc"] < 0.5
    # the directory loads without a world.json and agrees with the record
    lm = load_model(str(out))
    assert not (out / "world.json").exists()
    assert check_organism(lm, facts) == record["check"]
    saved = json.loads((out / "organism.json").read_text())
    assert saved["stream_sha256"] and saved["pretrain_config"]["n_embd"] == 32
    assert saved["counts"]["edits_without_ground_truth"] == 0


def test_same_stream_and_config_give_identical_weights(trained, tmp_path):
    stream, out, _ = trained
    with torch.random.fork_rng(devices=[]):
        pretrain_organism(stream, TINY, tmp_path / "b", progress=False)
    a, b = load_file(out / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cli_facts_writes_a_loadable_directory(tmp_path):
    stream = _capitals_stream(tmp_path / "capitals.jsonl")
    recipe = tmp_path / "r.toml"
    recipe.write_text("[pretrain]\nn_embd = 16\nn_head = 2\nbatch_size = 8\nwarmup_steps = 1\n"
                      "eval_every = 2\nthreads = 1\n")
    out = tmp_path / "org"
    with torch.random.fork_rng(devices=[]):
        res = CliRunner().invoke(cli, ["pretrain", "--facts", str(stream), "--config",
                                       str(recipe), "--steps", "3", "--seed", "5", "-o",
                                       str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith(f"{out}: prompts ") and "(teacher-forced)" in res.stdout
    record = json.loads((out / "organism.json").read_text())
    assert record["steps_done"] == 3 and record["pretrain_config"]["seed"] == 5
    assert record["stream"] == str(stream) and len(record["history"]) == 1
    assert record["history"][0]["heldout_acc"] is None
    lm = load_model(str(out))
    assert lm.model.config.n_embd == 16 and lm.model.config.n_positions % 8 == 0
    # a [world] table does not go with --facts
    recipe.write_text("[world]\nseed = 1\n")
    bad = CliRunner().invoke(cli, ["pretrain", "--facts", str(stream), "--config", str(recipe)])
    assert isinstance(bad.exception, LifelongError) and "[world]" in str(bad.exception)


def test_stream_with_nothing_to_learn_is_a_clear_error(tmp_path):
    stream = _write([_edit(0, "What do you think of Quivia?", "It is lovely."),
                     _edit(1, "What do you think of Brevik?", "It is grim.")],
                    tmp_path / "opinions.jsonl")
    with pytest.raises(LifelongError, match=r"opinions\.jsonl: no learnable") as err:
        pretrain_organism(stream, TINY, tmp_path / "out", progress=False)
    assert "2 without a `previous`" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_bpe_organism_splits_targets_and_records_its_tokenizer(tmp_path):
    """`[organism] tokenizer = "bpe"`: the targets become several tokens (a word-level
    organism of the same stream has one token per target), the choice and the target
    lengths are in organism.json, and the saved tokenizer is the BPE one."""
    stream = _capitals_stream(tmp_path / "capitals.jsonl")
    recipe = tmp_path / "r.toml"
    recipe.write_text('[organism]\ntokenizer = "bpe"\n\n[pretrain]\nvocab_size = 300\n'
                      "n_embd = 16\nn_head = 2\nbatch_size = 8\nwarmup_steps = 1\n"
                      "eval_every = 0\nthreads = 1\n")
    out = tmp_path / "org"
    with torch.random.fork_rng(devices=[]):
        res = CliRunner().invoke(cli, ["pretrain", "--facts", str(stream), "--config",
                                       str(recipe), "--steps", "2", "-o", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    record = json.loads((out / "organism.json").read_text())
    assert record["organism"]["tokenizer"] == "bpe" and not record["organism"]["reading"]
    assert record["vocab_size"] == 300
    assert record["target_tokens"]["multi_token"] > 0.5
    lm = load_model(str(out))
    assert len(lm.tok(" Plinth", add_special_tokens=False)["input_ids"]) > 1
    facts = collect_facts(stream)
    words = organism_tokenizer(facts)
    assert len(words(" Plinth", add_special_tokens=False)["input_ids"]) == 1
    assert json.loads((out / "tokenizer.json").read_text())["model"]["type"] == "BPE"


@pytest.mark.parametrize("table, with_facts, message", [
    ('[organism]\ntokenizer = "sentencepiece"\n', True, "organism.tokenizer"),
    ('[organism]\ntokenizer = "bpe"\n', False, "[organism] table needs --facts"),
])
def test_organism_table_mistakes_are_one_line_errors(tmp_path, table, with_facts, message):
    stream = _capitals_stream(tmp_path / "capitals.jsonl")
    recipe = tmp_path / "r.toml"
    recipe.write_text(table)
    args = ["pretrain", "--config", str(recipe), "--show-config"]
    res = CliRunner().invoke(cli, args + (["--facts", str(stream)] if with_facts else []))
    assert res.exit_code != 0 and message in str(res.exception)
    if with_facts:
        assert "bpe" in str(res.exception) and "word" in str(res.exception)


#: organisms trained on an earlier revision of their stream: counterfact (word level) on
#: streams/real/counterfact-edit-1k.jsonl before commit 4c352da, which rewrote the fact ids
#: and changed one training pair (Tirana's twin city: Beijing, then Istanbul; 1 of 2972)
REVISED_SINCE = {"counterfact"}
SHIPPED = sorted((Path(__file__).resolve().parents[1] / "lifelong" / "organisms").glob(
    "*/organism.json"))


@pytest.mark.parametrize("record", SHIPPED, ids=lambda p: p.parent.name)
def test_every_shipped_organism_names_its_training_stream_inside_the_repository(record):
    """ROME, MEMIT and AlphaEdit take an organism's key statistics from the stream it was
    trained on, so a fresh clone must hold that stream, byte for byte, at the path
    organism.json names (relative to the repository root, never a past machine's path)."""
    from lifelong.methods.context import read_corpus
    from lifelong.stream import file_sha256
    made = json.loads(record.read_text())
    name = Path(made["stream"])
    assert not name.is_absolute(), made["stream"]
    stream = Path(__file__).resolve().parents[1] / name
    # a listed organism must still differ, so the list cannot outlive a retraining
    assert (file_sha256(stream) == made["stream_sha256"]) != (record.parent.name in REVISED_SINCE)
    assert read_corpus(str(record))
