"""What a method is attached with: `AttachContext`, and the cache it may keep files in.

The runtime (`Runtime._context`) and the Python API (`lifelong.open`) fill it. Everything
that costs something to produce is named here and read only when a method asks (`corpus_texts`,
`train_records`, `cache`, `new_model`), so a method that needs none of it pays nothing.

Invariants: an AttachContext is a value (frozen; equal contexts describe the same inputs;
the model factory and the memo of what was read are not part of equality); the accessors are
pure functions of the fields (a second call returns the same objects, read once). The memo
is keyed by every field a reading depends on, so contexts may share one: the runtime hands
the same memo to every chunk of a run (`restart_every`), which then reads the train split
and the corpus once, not once per chunk. A method may also keep there what it says once per
run (a key naming the method), so that a note is not repeated for every chunk.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import LifelongError

if TYPE_CHECKING:
    import torch

    from ..model import LM
    from .base import EditRequest


@dataclass(frozen=True)
class TrainRecord:
    """One edit of a data set's train split, for methods that learn before the stream (MEND,
    KE, SERAC): the request plus its rephrases and locality pairs (training data here, never
    the stream's evaluation data). `task`: the data set the record comes from, in a
    multi-task split (a stream line's ``meta.task``; `lifelong streams merge` writes it), or
    "" where the split does not say."""

    request: EditRequest
    rephrases: tuple[str, ...] = ()
    locality: tuple[tuple[str, str], ...] = ()
    task: str = ""


def default_cache_dir() -> Path:
    """$LIFELONG_CACHE, else $XDG_CACHE_HOME/lifelong, else ~/.cache/lifelong."""
    if os.environ.get("LIFELONG_CACHE"):
        return Path(os.environ["LIFELONG_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lifelong"


def default_corpus(model_dir: str | Path) -> str:
    """The model's own pretraining text, by the file that describes it: world.json beside
    the model (the built-in model), else organism.json (a model organism: its training
    stream), else "" (none known: a scenario names one with `corpus`)."""
    for name in ("world.json", "organism.json"):
        if (Path(model_dir) / name).is_file():
            return str(Path(model_dir) / name)
    return ""


def read_corpus(source: tuple[str, ...] | str) -> tuple[str, ...]:
    """The texts of `source`: the texts themselves, or a file: `world.json` (the world's
    pretraining text), `organism.json` (prompt + answer of every pair the organism learnt),
    any other file UTF-8 text with one text per line (blank lines skipped)."""
    if not source:
        raise LifelongError("no text corpus: this model has no world.json or organism.json "
                            "beside it; name a text file (one text per line) with the "
                            "scenario's `corpus` setting")
    if not isinstance(source, str):
        return tuple(source)
    path = Path(source)
    if not path.is_file():
        raise LifelongError(f"{source}: no such corpus file")
    if path.name == "world.json":
        from ..world import World
        try:
            return tuple(World.from_json(path).corpus())
        except (ValueError, KeyError) as exc:
            raise LifelongError(f"{source}: not a world this version reads ({exc})") from None
    if path.name == "organism.json":
        return _organism_corpus(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise LifelongError(f"{source}: cannot read the corpus ({exc})") from None
    return tuple(line.strip() for line in lines if line.strip())


def _organism_corpus(path: Path) -> tuple[str, ...]:
    """An organism's training text: its stream's (prompt, answer) pairs, as `organism.json`
    names the stream (relative to the repository root it was made in)."""
    from ..organism import facts_from_stream
    name = json.loads(path.read_text(encoding="utf-8")).get("stream", "")
    root = Path(__file__).resolve().parents[2]
    for where in (path.parent / name, root / name, Path.cwd() / name):
        if name and where.is_file():
            return tuple(f"{p} {a}" for p, a in facts_from_stream(where))
    raise LifelongError(f"{path}: its training stream {name!r} is not here; name a text "
                        "file with the scenario's `corpus` setting")


def read_train_split(source: tuple[TrainRecord, ...] | str) -> tuple[TrainRecord, ...]:
    """The records of `source`: the records themselves, or the edits of a stream file."""
    if not isinstance(source, str):
        return tuple(source)
    if not source:
        return ()
    from ..stream import Edit, parse_stream
    from .base import EditRequest
    events = parse_stream(source).events
    return tuple(TrainRecord(EditRequest(e.id, e.prompt, e.target, e.fact, e.subject, e.previous),
                             tuple(e.rephrases), tuple((p.prompt, p.answer) for p in e.locality),
                             str((e.meta or {}).get("task", "")))
                 for e in events if isinstance(e, Edit))


def _safe(part: str) -> str:
    """A path component from a free string (layer names, what is cached)."""
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", part).strip("._") or "_"


@dataclass(frozen=True)
class Cache:
    """Files a method computes once per base model and reuses across runs (key statistics,
    trained editors): `root/<model fingerprint>/<layer>/<what>`. Saves are atomic (a file
    is complete or absent); `exclusive` lets one process at a time compute an entry."""

    root: Path
    fingerprint: str

    def path(self, layer: str, what: str) -> Path:
        """Where entry (`layer`, `what`) of this model lives (its folder is created)."""
        where = self.root / _safe(self.fingerprint) / _safe(layer) / _safe(what)
        where.parent.mkdir(parents=True, exist_ok=True)
        return where

    def load(self, layer: str, what: str) -> dict[str, torch.Tensor] | None:
        """The tensors saved under (`layer`, `what`), or None when there are none."""
        from safetensors.torch import load_file
        where = self.path(layer, what).with_suffix(".safetensors")
        return load_file(where) if where.is_file() else None

    @contextlib.contextmanager
    def exclusive(self, layer: str, what: str, waiting: Callable[[], None] = lambda: None,
                  poll_seconds: float = 0.5) -> Iterator[None]:
        """Hold entry (`layer`, `what`)'s lock for the block, so that one process at a time
        computes it (two runs that need the same untrained editor: the second waits, then
        reads what the first cached). `waiting()` is called once when the lock is held
        elsewhere. An advisory `flock` on ``<entry>.lock``: released by the kernel when its
        holder exits or is killed, so a dead holder never blocks anyone; no lock where the
        platform has no `fcntl`. The wait polls, so an interrupt that raises ends it."""
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock, at worst the work is done twice
            yield
            return
        where = self.path(layer, what).with_suffix(".lock")
        with open(where, "a+b") as handle:
            told = False
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not told:
                        waiting()
                        told = True
                    time.sleep(poll_seconds)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def load_or_lock(self, layer: str, what: str,
                     waiting: Callable[[], None] = lambda: None) -> Iterator[dict | None]:
        """The saved tensors of entry (`layer`, `what`); or None, and then the block holds the
        entry's lock (`exclusive`) and is where the caller computes and saves it. A process
        that waited for the lock gets what the holder saved."""
        saved = self.load(layer, what)
        if saved is not None:
            yield saved
            return
        with self.exclusive(layer, what, waiting):
            yield self.load(layer, what)  # saved by the process waited for, if any

    def save(self, layer: str, what: str, tensors: dict[str, torch.Tensor]) -> Path:
        from safetensors.torch import save_file
        where = self.path(layer, what).with_suffix(".safetensors")
        tmp = where.with_name(where.name + f".{os.getpid()}.tmp")
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
        os.replace(tmp, where)
        return where


#: where a calibration pool comes from (`AttachContext.calibration_prompts`)
CALIBRATION_POOLS = ("stream", "stream+train", "stream-or-train")
#: most prompts a calibration pool holds (the train split tops the stream's up to this)
CALIBRATION_POOL_SIZE = 1024


@dataclass(frozen=True)
class AttachContext:
    """What the runtime hands a method when attaching it.

    seed: the run's seed. unrelated_prompts: prompts known not to be edited and never probed
    while the method is attached (the stream's unprobed locality prompts), for methods that
    train against unrelated inputs (WISE, DEFER). train_split: the data set's train split,
    as records or a stream file (`train_records()`). corpus: a text corpus for key
    statistics, as texts or a file (`corpus_texts()`; `default_corpus`). cache_dir: where
    `cache()` keeps files ("" for `default_cache_dir()`). model_fingerprint: `LM.fingerprint()`
    of the pristine base model (keys the cache). device: the model's torch device.
    held_out_subjects / held_out_facts: `train_records()` drops every record about one of
    these subjects or facts (the stream's own, when a scenario holds them out of training:
    `stream.train_exclude`), so a trained editor is scored on people it never trained on.
    model_factory: a fresh, pristine `LM` of the same base model per call (`new_model()`),
    for methods that need a second model (SERAC's counterfactual model). probed_prompts: the
    locality prompts probed while the method is attached; `calibration_prompts` never
    returns one of them (locality is never measured on what a method calibrated on).
    memo: what the accessors read, keyed by what it was read from, and what methods said once
    per run (module docstring); a fresh dict unless given.
    """

    seed: int
    unrelated_prompts: tuple[str, ...] = ()
    train_split: tuple[TrainRecord, ...] | str = ()
    corpus: tuple[str, ...] | str = ()
    cache_dir: str = ""
    model_fingerprint: str = ""
    device: str = "cpu"
    held_out_subjects: frozenset[str] = frozenset()
    held_out_facts: frozenset[str] = frozenset()
    probed_prompts: frozenset[str] = frozenset()
    model_factory: Callable[[], LM] | None = field(default=None, compare=False, repr=False)
    memo: dict = field(default_factory=dict, compare=False, repr=False)

    def train_records(self) -> tuple[TrainRecord, ...]:
        """The train split less the held-out subjects' and facts' records (read once; empty
        when none was given)."""
        key = ("train", self.train_split, self.held_out_subjects, self.held_out_facts)
        if key not in self.memo:
            self.memo[key] = tuple(
                r for r in read_train_split(self.train_split)
                if not (r.request.subject and r.request.subject in self.held_out_subjects)
                and not (r.request.fact and r.request.fact in self.held_out_facts))
        return self.memo[key]

    def calibration_prompts(self, limit: int, pool: str) -> list[str]:
        """At most `limit` distinct prompts known to be unrelated to the edits, none of them
        probed: the unrelated prompts, and, by `pool` (`CALIBRATION_POOLS`), the locality
        prompts of the train split's records after them ("stream+train": always, up to
        `limit`; "stream-or-train": only when the stream leaves none; "stream": never).
        The train split (`train_records()`: held-out subjects' records are not read) fills
        the pool where the stream leaves it empty: a stream whose every locality prompt is
        probed, or a chunk holding the whole stream."""
        if pool not in CALIBRATION_POOLS:
            raise LifelongError(f"calibration pool {pool!r} is not one of {CALIBRATION_POOLS}")
        out = dict.fromkeys(p for p in self.unrelated_prompts if p not in self.probed_prompts)
        if pool == "stream" or (pool == "stream-or-train" and out):
            return list(out)[:limit]
        for record in self.train_records():
            if len(out) >= limit:
                break
            out.update(dict.fromkeys(p for p, _ in record.locality if p not in self.probed_prompts))
        return list(out)[:limit]

    def corpus_texts(self) -> tuple[str, ...]:
        """The corpus's texts (read once; LifelongError saying what to set when there is none)."""
        key = ("corpus", self.corpus)
        if key not in self.memo:
            self.memo[key] = read_corpus(self.corpus)
        return self.memo[key]

    def cache(self) -> Cache:
        """This model's cache (LifelongError when the model's fingerprint is not known)."""
        if not self.model_fingerprint:
            raise LifelongError("no cache: the attach context does not know the model's "
                                "fingerprint")
        return Cache(Path(self.cache_dir) if self.cache_dir else default_cache_dir(),
                     self.model_fingerprint)

    def cache_if_known(self) -> Cache | None:
        """This model's cache, or None when the model's fingerprint is not known (a bare
        context: what would be cached is computed every time, never saved)."""
        return self.cache() if self.model_fingerprint else None

    def new_model(self) -> LM:
        """A fresh, pristine copy of the base model."""
        if self.model_factory is None:
            raise LifelongError("no model factory: this attach context cannot load a second "
                                "copy of the model")
        return self.model_factory()

    def to_meta(self) -> dict[str, Any]:
        """The JSON-able inputs a saved memory needs to be attached again the same way (the
        unrelated prompts always; the train split and corpus where they were given as data or
        as a file other than the model's own)."""
        meta: dict[str, Any] = {"unrelated_prompts": list(self.unrelated_prompts)}
        if self.train_split:
            meta["train_split"] = self.train_split if isinstance(self.train_split, str) else [
                {"request": vars(r.request), "rephrases": list(r.rephrases),
                 "locality": [list(p) for p in r.locality]} for r in self.train_split]
        if self.corpus:
            meta["corpus"] = self.corpus if isinstance(self.corpus, str) else list(self.corpus)
        if self.probed_prompts:
            meta["probed_prompts"] = sorted(self.probed_prompts)
        if self.held_out_subjects or self.held_out_facts:
            meta["held_out"] = {"subjects": sorted(self.held_out_subjects),
                                "facts": sorted(self.held_out_facts)}
        return meta


def context_fields(meta: dict[str, Any]) -> dict[str, Any]:
    """`AttachContext` keyword arguments from `to_meta` output (what memory.json holds)."""
    from .base import EditRequest
    out: dict[str, Any] = {"unrelated_prompts": tuple(meta["unrelated_prompts"])}
    split = meta.get("train_split")
    if split:
        out["train_split"] = split if isinstance(split, str) else tuple(
            TrainRecord(EditRequest(**r["request"]), tuple(r["rephrases"]),
                        tuple(tuple(p) for p in r["locality"])) for r in split)
    if meta.get("corpus"):
        corpus = meta["corpus"]
        out["corpus"] = corpus if isinstance(corpus, str) else tuple(corpus)
    if meta.get("probed_prompts"):
        out["probed_prompts"] = frozenset(meta["probed_prompts"])
    held = meta.get("held_out") or {}
    if held:
        out["held_out_subjects"] = frozenset(held.get("subjects", ()))
        out["held_out_facts"] = frozenset(held.get("facts", ()))
    return out
