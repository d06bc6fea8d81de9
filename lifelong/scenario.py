"""Scenario files (TOML): model + stream + methods + schedule + seeds (+ fault injection).

    name = "quickstart"
    model = "builtin"                 # or a Hugging Face model directory
    seeds = [0]
    [stream]
    file = "../streams/quickstart.jsonl"   # relative to the scenario file
    [schedule]
    checkpoint_every = 50
    [[methods]]
    name = "ft"
    settings = { steps = 25 }

Everything is a frozen dataclass built by `config.from_mapping`: unknown keys are rejected,
values are type- and range-checked, and `to_dict(scenario)` is the resolved config that is
stored with every run.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import from_mapping, setting
from .errors import ConfigError


@dataclass(frozen=True)
class StreamSource:
    file: str = setting("", "JSONL stream to replay (relative paths: to the scenario file)")
    skip_bad: bool = setting(False, "drop invalid lines (each one is counted and reported) "
                                    "instead of refusing the stream")
    sort: bool = setting(False, "accept lines out of timestamp order and replay them sorted")
    max_edits: int = setting(0, "replay only up to the Nth edit (0: the whole stream)", min=0)


@dataclass(frozen=True)
class Schedule:
    checkpoint_every: int = setting(50, "probe every N applied edits (0: only at the end)", min=0)
    merge_every: int = setting(0, "ask the method to consolidate every M edits (0: never)", min=0)
    group_size: int = setting(0, "edits per retention group (0: same as checkpoint_every)", min=0)
    probe_edits: int = setting(0, "facts probed at intermediate checkpoints, a fixed seeded "
                                  "sample (0: all); the final probe always covers all", min=0)
    locality_sample: int = setting(300, "locality prompts probed at every checkpoint (a fixed "
                                        "seeded sample of the stream's locality pool)", min=0)
    eval_after_edit: bool = setting(True, "score each edit's own prompt right after applying it")
    latency_queries: int = setting(32, "prompts timed one at a time (and as one batch) to "
                                       "measure query latency with and without the memory", min=1)
    save_every_seconds: float = setting(20.0, "save a resume point at least this often", min=0.5)
    batch_size: int = setting(128, "probe batch size", min=1)
    restart_every: int = setting(0, "the WISE paper's T: edit the stream in chunks of T edits, "
                                    "each from a fresh model and method, and probe each chunk's "
                                    "own edits and their locality prompts at its end; figures "
                                    "are pooled over the chunks (0: one stream)", min=0)

    def __post_init__(self) -> None:
        if self.restart_every and self.checkpoint_every:
            raise ValueError("restart_every needs checkpoint_every = 0: each chunk is probed "
                             "once, at its end")


@dataclass(frozen=True)
class MethodSpec:
    name: str = setting(help="registered method name (see `lifelong methods`)")
    label: str = setting("", "name of this configuration in results (default: the method name)")
    settings: dict | None = setting(None, "method settings (see `lifelong methods`)")

    @property
    def display(self) -> str:
        return self.label or self.name


@dataclass(frozen=True)
class Faults:
    crash_after_events: int = setting(0, "testing: die like `kill -9` (no cleanup) after N "
                                         "events, counted over the whole simulate command; "
                                         "not applied with --resume (0: off)", min=0)


@dataclass(frozen=True)
class Scenario:
    name: str = setting("scenario", "experiment name (also the default store file name)")
    description: str = setting("", "free text")
    model: str = setting("builtin", "'builtin' or a local Hugging Face model directory")
    device: str = setting("cpu", "torch device for the model", choices=("cpu", "cuda"))
    seeds: tuple[int, ...] = setting((0,), "one run per method and seed")
    threads: int = setting(0, "torch CPU threads (0: torch's default). Small models on a busy "
                              "machine run faster and steadier with 1", min=0)
    stream: StreamSource = setting(StreamSource(), "the edit stream")
    schedule: Schedule = setting(Schedule(), "checkpoints, merges, probe sizes")
    methods: tuple[MethodSpec, ...] = setting((), "methods to compare, in order")
    faults: Faults = setting(Faults(), "fault injection, for testing resume")

    def __post_init__(self) -> None:
        labels = [m.display for m in self.methods]
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        # ConfigError, not ValueError: this also runs for dataclasses.replace (CLI overrides)
        if dupes:
            raise ConfigError(f"methods: duplicate label(s) {', '.join(dupes)}; give each a `label`")
        if not self.seeds:
            raise ConfigError("seeds: at least one seed is needed")


def load_scenario(path: str | Path | None, overrides: dict[str, Any] | None = None) -> Scenario:
    """Read a scenario TOML (or start from defaults when `path` is None) and apply CLI
    overrides. Relative paths in it are resolved against the scenario file's folder."""
    data: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such scenario file") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        base = p.resolve().parent
        data.setdefault("name", p.stem)
    scenario = from_mapping(Scenario, data, where=str(path or "scenario"))
    scenario = _resolve_paths(scenario, base)
    return apply_overrides(scenario, overrides or {})


def _resolve_paths(s: Scenario, base: Path) -> Scenario:
    stream = s.stream
    if stream.file and not Path(stream.file).is_absolute():
        stream = dataclasses.replace(stream, file=str((base / stream.file).resolve()))
    model = s.model
    if model not in ("builtin", "") and not Path(model).is_absolute() and (base / model).exists():
        model = str((base / model).resolve())
    return dataclasses.replace(s, stream=stream, model=model)


def apply_overrides(s: Scenario, o: dict[str, Any]) -> Scenario:
    """Apply command-line overrides: stream, methods (names), model, edits, seed."""
    if o.get("stream"):
        s = dataclasses.replace(s, stream=dataclasses.replace(s.stream, file=str(Path(o["stream"]).resolve())))
    if o.get("methods"):
        known = {m.name: m for m in s.methods}
        specs = tuple(known.get(n, MethodSpec(name=n, settings=None)) for n in o["methods"])
        s = dataclasses.replace(s, methods=specs)
    if o.get("model"):
        s = dataclasses.replace(s, model=o["model"])
    if o.get("edits"):
        s = dataclasses.replace(s, stream=dataclasses.replace(s.stream, max_edits=int(o["edits"])))
    if o.get("seed") is not None:
        s = dataclasses.replace(s, seeds=(int(o["seed"]),))
    if not s.stream.file:
        raise ConfigError("no stream: give a scenario with [stream] file = ..., or --stream FILE")
    if not s.methods:
        raise ConfigError("no methods: give a scenario with [[methods]], or --method NAME")
    return s
