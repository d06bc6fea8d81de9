"""An import in the wrong format does not pass for a success: a format that finds none of its
locality/portability fields, in records that hold probes under other names, refuses and names
the format that reads them; probes it leaves out are counted as dropped."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lifelong.errors import StreamError
from lifelong.importers import ImportOptions, convert_records, import_file

ROOT = Path(__file__).resolve().parent.parent
KNOWEDIT_FILE = ROOT.parent / "shared" / "data" / "knowedit" / "recent-train.json"

# KnowEdit (WikiData-Recent layout): probes nested under `locality` / `portability`
KNOWEDIT = [
    {"subject": "Leo Arons", "prompt": "The place of death of Leo Arons is", "target_new": "Berlin",
     "locality": {"Relation_Specificity": [{"prompt": "The gender of Leo Arons is", "ground_truth": [["male"]]},
                                           {"prompt": "Leo Arons was a", "ground_truth": [["physicist"]]}]},
     "portability": {"Reasoning": [{"prompt": "Leo Arons died on which continent?", "ground_truth": [["Europe"]]}]}},
    {"subject": "Ada Holm", "prompt": "The employer of Ada Holm is", "target_new": "Nokia",
     "ground_truth": "Ericsson", "rephrase_prompt": "Ada Holm works for",
     "locality": {"Relation_Specificity": [{"prompt": "Ada Holm was born in", "ground_truth": "Oslo"}]}},
]


def records(objs: list) -> list[tuple[int, object]]:
    return list(enumerate(copy.deepcopy(objs), start=1))


def test_wrong_format_with_probes_under_other_names_is_refused():
    with pytest.raises(StreamError) as exc:
        convert_records(records(KNOWEDIT), "ke.json", ImportOptions(format="counterfact"))
    msg = str(exc.value)
    assert "format counterfact found no locality or portability probe" in msg
    assert "2 of them hold 4 such probe(s)" in msg and "locality, portability" in msg
    assert "--format knowedit reads them" in msg
    ok = convert_records(records(KNOWEDIT), "ke.json", ImportOptions(format="knowedit"))
    assert sum(len(e.get("locality", ())) + len(e.get("portability", ())) for e in ok.events) == 4
    assert ok.unread["records"] == 0 and ok.dropped == 0


def test_records_left_without_their_probes_are_counted_as_dropped():
    """A file mixing the layouts: the probes the format cannot read are dropped, and said."""
    flat = {"case_id": 7, "prompt": "The capital of Xland is", "target_new": "Yville",
            "ground_truth": "Zton", "locality_prompt": "Xland borders", "locality_ground_truth": "Qland"}
    got = convert_records(records([flat, *KNOWEDIT]), "mix.json", ImportOptions(format="counterfact"))
    assert len(got.events) == 3
    assert got.unread == {"records": 2, "probes": 4, "fields": ("locality", "portability")}
    assert got.dropped == 4
    # a field the format reads but leaves empty is a dropped probe with a note, not "unread"
    empty = dict(flat, locality_ground_truth="")
    again = convert_records(records([empty]), "e.json", ImportOptions(format="counterfact"))
    assert again.unread["records"] == 0 and again.dropped == len(again.notes) == 1


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lifelong.cli", *args], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          check=False)


def test_cli_counts_unread_probes_as_dropped(tmp_path):
    flat = {"case_id": 7, "prompt": "The capital of Xland is", "target_new": "Yville",
            "ground_truth": "Zton", "locality_prompt": "Xland borders", "locality_ground_truth": "Qland"}
    data = tmp_path / "mix.json"
    data.write_text(json.dumps([flat, *KNOWEDIT]))
    res = cli("streams", "import", "--format", "counterfact", str(data), "-o", str(tmp_path / "o.jsonl"))
    assert res.returncode == 0, res.stderr
    assert "4 probes dropped" in res.stdout
    assert "2 record(s) have no locality/portability probe" in res.stderr


@pytest.mark.skipif(not KNOWEDIT_FILE.exists(), reason="KnowEdit data not present")
def test_the_real_knowedit_file_as_counterfact(tmp_path):
    with pytest.raises(StreamError, match="--format knowedit reads them"):
        import_file(KNOWEDIT_FILE, ImportOptions(format="counterfact"))
    res = cli("streams", "import", "--format", "counterfact", str(KNOWEDIT_FILE), "-o",
              str(tmp_path / "o.jsonl"))
    assert res.returncode == 2 and res.stderr.startswith("lifelong: ")
    assert "--format knowedit" in res.stderr and not (tmp_path / "o.jsonl").exists()
