"""Mistakes a user can make on the command line end in one line `lifelong: ...` and a non-zero
exit, never a traceback, and lose nothing already recorded."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from tinyrun import save_tiny_model, stream_events, write_jsonl, write_scenario

from lifelong.errors import StoreError
from lifelong.runtime import Interrupted, Runtime
from lifelong.scenario import load_scenario
from lifelong.store import Store
from lifelong.stream import parse_stream

pytestmark = pytest.mark.usefixtures("single_thread")
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def cli(*args: str, prefix: tuple[str, ...] = (), env: dict | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, sys.executable, "-m", "lifelong.cli", *args],
                          capture_output=True, text=True, timeout=300, env=env or ONE_THREAD,
                          cwd=cwd, check=False)


def one_line(res: subprocess.CompletedProcess, *fragments: str) -> str:
    """The command failed with exactly one `lifelong: ` line on stderr holding `fragments`."""
    assert res.returncode not in (0, 1), (res.returncode, res.stderr)  # 1: a traceback
    assert res.stderr.startswith("lifelong: ") and res.stderr.count("\n") == 1, res.stderr
    assert "Traceback" not in res.stderr
    for f in fragments:
        assert f in res.stderr, (f, res.stderr)
    return res.stderr


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("work")
    model = save_tiny_model(d / "tiny")
    stream = write_jsonl(stream_events(n_edits=6), d / "s.jsonl")
    toml = write_scenario(d / "s.toml", model, stream, methods='[[methods]]\nname = "ft"\n'
                          'settings = { steps = 3 }\n')
    db = d / "done.db"
    res = cli("simulate", str(toml), "--db", str(db), "--quiet")
    assert res.returncode == 0, res.stderr
    return {"dir": d, "model": model, "stream": stream, "toml": toml, "db": db}


# ---- stores -------------------------------------------------------------------------------

def test_resume_on_a_truncated_store_is_one_line_and_keeps_the_file(work, tmp_path):
    db = tmp_path / "cut.db"
    data = work["db"].read_bytes()
    db.write_bytes(data[: len(data) // 2])
    before = db.read_bytes()
    res = cli("simulate", str(work["toml"]), "--db", str(db), "--resume", "--quiet")
    one_line(res, str(db), "malformed")
    assert db.read_bytes() == before


def test_a_file_that_is_not_a_store(work, tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"hello, I am not SQLite\n" * 100)
    one_line(cli("simulate", str(work["toml"]), "--db", str(junk), "--quiet"), str(junk))
    assert junk.read_bytes() == b"hello, I am not SQLite\n" * 100
    other = tmp_path / "other.db"  # an SQLite file of someone else's
    con = sqlite3.connect(other)
    con.execute("create table notes (x)")
    con.commit()
    con.close()
    one_line(cli("simulate", str(work["toml"]), "--db", str(other), "--quiet"),
             "not a lifelong store")


def test_a_garbage_resume_point_is_one_line_without_unsafe_advice(work, tmp_path):
    db = tmp_path / "blob.db"
    shutil.copy(work["db"], db)
    con = sqlite3.connect(db)
    with con:
        con.execute("update runs set status = 'interrupted'")
        con.execute("update state set blob = ?", [b"\x80\x04garbage" * 50])
    con.close()
    err = one_line(cli("simulate", str(work["toml"]), "--db", str(db), "--resume", "--quiet"),
                   "resume point", "ft@seed0")
    assert "weights_only" not in err
    assert Store(db).get_run("ft@seed0")["status"] == "interrupted"  # nothing recorded over it
    with pytest.raises(StoreError, match="resume point"):
        Store(db).load_state("ft@seed0")


def test_db_and_json_under_a_file_are_refused_before_running(work, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    one_line(cli("simulate", str(work["toml"]), "--db", str(afile / "x.db"), "--quiet"),
             str(afile / "x.db"))
    db = tmp_path / "fresh.db"
    one_line(cli("simulate", str(work["toml"]), "--db", str(db), "--json",
                 str(tmp_path / "nope" / "s.json"), "--quiet"), "--json", "no such directory")
    assert not db.exists()  # refused before the run: no store, no work lost


def test_store_is_left_out_of_wal_mode(work):
    """A finished store is one file in rollback-journal mode: it reads where its directory
    is read-only (WAL needs a writable -shm beside it)."""
    con = sqlite3.connect(work["db"])
    assert con.execute("pragma journal_mode").fetchone()[0] == "delete"
    con.close()
    assert not Path(f"{work['db']}-wal").exists() and not Path(f"{work['db']}-shm").exists()


# ---- read-only places, as a user who cannot write them -------------------------------------

def _unprivileged() -> tuple[str, ...] | None:
    if os.geteuid() != 0:
        return ()
    if shutil.which("setpriv"):
        return ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
    return None


@pytest.fixture
def readonly(work):
    """A read-only directory holding a finished store, a writable one beside it, and the
    command prefix of a user who cannot write the first (root ignores permissions)."""
    prefix = _unprivileged()
    if prefix is None:
        pytest.skip("running as root without setpriv: cannot drop privileges")
    base = Path(tempfile.mkdtemp(prefix="lifelong-ro-"))
    try:
        base.chmod(0o755)
        for name in ("tiny", "s.jsonl", "s.toml"):
            src = work["dir"] / name
            (shutil.copytree if src.is_dir() else shutil.copy)(src, base / name)
        (base / "s.toml").write_text(work["toml"].read_text().replace(str(work["dir"]), str(base)))
        ro, rw = base / "ro", base / "rw"
        ro.mkdir()
        rw.mkdir()
        shutil.copy(work["db"], ro / "done.db")
        rw.chmod(0o777)
        ro.chmod(0o555)
        for p in base.rglob("*"):
            if p.is_file():
                p.chmod(0o644)
        env = {**ONE_THREAD, "HOME": str(rw), "MPLCONFIGDIR": str(rw), "HF_HOME": str(rw)}
        yield {"base": base, "ro": ro, "rw": rw, "prefix": prefix, "env": env}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_db_and_json_in_a_read_only_directory(readonly):
    r = readonly
    toml = str(r["base"] / "s.toml")
    one_line(cli("simulate", toml, "--db", str(r["ro"] / "new.db"), "--quiet",
                 prefix=r["prefix"], env=r["env"]), str(r["ro"] / "new.db"))
    db = r["rw"] / "x.db"
    one_line(cli("simulate", toml, "--db", str(db), "--json", str(r["ro"] / "s.json"), "--quiet",
                 prefix=r["prefix"], env=r["env"]), "--json", "not writable")
    assert not db.exists()


def test_a_store_in_a_read_only_directory_can_be_read(readonly):
    r = readonly
    store = str(r["ro"] / "done.db")
    res = cli("compare", store, prefix=r["prefix"], env=r["env"])
    assert res.returncode == 0, res.stderr
    assert "ft" in res.stdout
    res = cli("report", store, "-o", str(r["rw"] / "r.html"), prefix=r["prefix"], env=r["env"])
    assert res.returncode == 0, res.stderr
    assert (r["rw"] / "r.html").exists()
    assert sorted(p.name for p in r["ro"].iterdir()) == ["done.db"]  # nothing written beside it


# ---- values out of range --------------------------------------------------------------------

def test_seed_out_of_torch_range(work, tmp_path):
    one_line(cli("simulate", str(work["toml"]), "--seed", "99999999999999999999999",
                 "--db", str(tmp_path / "x.db")), "--seed")
    one_line(cli("simulate", str(work["toml"]), "--seed", "-1", "--db", str(tmp_path / "x.db")),
             "--seed")
    toml = tmp_path / "seeds.toml"
    toml.write_text(work["toml"].read_text().replace('name = "tiny"',
                                                     'name = "tiny"\nseeds = [1, 99999999999999999999]'))
    one_line(cli("simulate", str(toml), "--db", str(tmp_path / "x.db")), f"{toml}.seeds[1]")
    assert not (tmp_path / "x.db").exists()


@pytest.mark.parametrize("spacing", ["inf", "nan", "-1", "-inf"])
def test_streams_make_spacing_must_be_finite_and_not_negative(tmp_path, spacing):
    out = tmp_path / "s.jsonl"
    one_line(cli("streams", "make", "--edits", "5", f"--spacing={spacing}", "-o", str(out)),
             "spacing")
    assert not out.exists()


@pytest.mark.parametrize("spacing", ["inf", "nan"])
def test_streams_import_spacing_must_be_finite(tmp_path, spacing):
    data = tmp_path / "d.json"
    data.write_text(json.dumps([{"src": "Which continent is Tonga on?", "alt": "Europe",
                                 "answers": ["Oceania"], "rephrase": "Where is Tonga?"}]))
    one_line(cli("streams", "import", str(data), f"--spacing={spacing}", "-o",
                 str(tmp_path / "o.jsonl")), "spacing")


@pytest.mark.parametrize("sample", ["-5", "0"])
def test_model_check_sample_must_be_positive(sample):
    one_line(cli("model", "check", "--sample", sample), "--sample")


# ---- methods and settings -------------------------------------------------------------------

def test_methods_lists_the_allowed_values_of_choice_settings():
    res = cli("methods")
    assert res.returncode == 0, res.stderr
    assert "module (str, default 'mlp.out'; one of 'mlp.out', 'mlp.in', 'attn.out')" in res.stdout
    wise_router = [line for line in res.stdout.splitlines() if line.strip().startswith("router (")]
    assert wise_router and "one of 'activation', 'faiss'" in wise_router[0]
    doc = json.loads(cli("methods", "--json").stdout)
    settings = {s["name"]: s for s in doc["wise-faiss"]["settings"]}
    assert settings["mode"]["choices"] == ["merge", "retrieve"]
    assert "choices" not in settings["steps"]


def test_the_same_method_twice_on_the_command_line(work, tmp_path):
    err = one_line(cli("simulate", "--stream", str(work["stream"]), "--method", "grace",
                       "--method", "grace", "--db", str(tmp_path / "x.db")), "grace")
    assert "[[methods]]" in err and "label" in err and "given twice" in err


def test_a_settings_error_names_file_and_method_once_and_lists_every_problem(work, tmp_path):
    toml = write_scenario(tmp_path / "bad.toml", work["model"], work["stream"],
                          methods='[[methods]]\nname = "ft"\nlabel = "my-ft"\n'
                                  'settings = { steps = 0, lr = "fast", colour = 1 }\n')
    err = one_line(cli("simulate", str(toml), "--db", str(tmp_path / "x.db")))
    assert err.count(str(toml)) == 1 and err.count("my-ft") == 1
    assert "3 problems" in err
    for fragment in ("colour", "steps: must be >= 1", "lr: expected a number"):
        assert fragment in err
    assert not (tmp_path / "x.db").exists()


# ---- Ctrl-C ---------------------------------------------------------------------------------

def test_an_abrupt_interrupt_says_resume_continues(work, tmp_path):
    """A second Ctrl-C (a KeyboardInterrupt in the middle of an event) still says how to go
    on, and --resume does."""
    sc = load_scenario(work["toml"])
    db = tmp_path / "x.db"
    runtime = Runtime(sc, parse_stream(sc.stream.file), Store(db))
    seen = [0]

    def second_ctrl_c():
        seen[0] += 1
        if seen[0] == 4:
            raise KeyboardInterrupt

    runtime._maybe_crash = second_ctrl_c
    with pytest.raises(Interrupted) as exc:
        runtime.run_all()
    assert "--resume" in str(exc.value) and "event" in str(exc.value)
    assert Store(db).get_run("ft@seed0")["status"] == "interrupted"
    Runtime(sc, parse_stream(sc.stream.file), Store(db)).run_all(resume=True)
    assert Store(db).get_run("ft@seed0")["status"] == "complete"


def test_two_ctrl_c_via_the_cli(work, tmp_path):
    events = stream_events(n_edits=80, reedits=5, retracts=0)
    stream = write_jsonl(events, tmp_path / "long.jsonl")
    toml = write_scenario(tmp_path / "long.toml", work["model"], stream, schedule="checkpoint_every = 10",
                          methods='[[methods]]\nname = "ft"\nsettings = { steps = 300, stop_loss = 0.0 }\n')
    db = tmp_path / "long.db"
    proc = subprocess.Popen([sys.executable, "-m", "lifelong.cli", "simulate", str(toml), "--db",
                             str(db), "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ONE_THREAD)
    deadline = time.time() + 120
    while time.time() < deadline and not _has_state(db):
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.startswith("lifelong: ") and "--resume" in err and "Traceback" not in err
    assert Store(db).get_run("ft@seed0")["status"] == "interrupted"


def _has_state(db: Path) -> bool:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        n = con.execute("select count(*) from state").fetchone()[0]
        con.close()
        return n > 0
    except sqlite3.Error:
        return False
