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
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import from_mapping, legacy_dict, read_toml, setting
from .errors import ConfigError

MAX_SEED = 2**63 - 1  # torch.manual_seed takes 0 <= seed < 2**63


@dataclass(frozen=True)
class StreamSource:
    file: str = setting("", "JSONL stream to replay (relative paths: to the scenario file)")
    skip_bad: bool = setting(False, "drop invalid lines (each one is counted and reported) "
                                    "instead of refusing the stream")
    sort: bool = setting(False, "accept lines out of timestamp order and replay them sorted")
    max_edits: int = setting(0, "replay only up to the Nth edit (0: the whole stream)", min=0)
    train_file: str = setting("", "the data set's train split, a stream file of edits (relative "
                                  "paths: to the scenario file), for methods that learn before "
                                  "the stream (AttachContext.train_records; read only when a "
                                  "method asks); '': none")
    train_exclude: str = setting("none", "'edited-subjects': drop from the train split every "
                                         "record about a subject or fact an edit of this run "
                                         "replays (after `order` and `max_edits`), so editors "
                                         "trained on it are scored on held-out people: for "
                                         "choosing their settings on a dev stream drawn from "
                                         "the train split's own people; 'none': keep all",
                                 choices=("none", "edited-subjects"))
    order: str = setting("file", "replay order: 'file' (the stream's own), or 'seeded' (each "
                                 "seed interleaves the facts' histories in its own order, every "
                                 "fact's events kept in order: see lifelong/streamorder.py)",
                         choices=("file", "seeded"))
    max_unknown_share: float = setting(0.05, "refuse a run when more than this share of the "
                                             "stream's answers (edit targets, locality and "
                                             "portability answers) contain the model's unknown "
                                             "token: the model cannot learn or say them (1: "
                                             "never refuse; `--allow-unknown` sets it)",
                                       min=0.0, max=1.0)


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
    latency_rounds: int = setting(5, "rounds of the end-of-run query timing: each round times "
                                     "every prompt on the edited model and on an unedited copy "
                                     "of the base model in alternation", min=1)
    save_every_seconds: float = setting(20.0, "save a resume point at least this often", min=0.5)
    batch_size: int = setting(128, "probe batch size", min=1)
    edit_batch: int = setting(1, "edits handed to a method per call, for methods that edit in "
                                 "batches (BatchEditing: one joint update and one receipt per "
                                 "edit); other methods get them one by one. A batch ends at a "
                                 "retraction, query or merge event and at every scheduled merge, "
                                 "checkpoint and chunk end; with eval_after_edit each edit is "
                                 "scored after its batch", min=1)
    restart_every: int = setting(0, "the WISE paper's T: edit the stream in chunks of T edits, "
                                    "each from a fresh model and method, and probe each chunk's "
                                    "own edits and their locality prompts at its end; figures "
                                    "are pooled over the chunks (0: one stream)", min=0)
    health_texts: int = setting(200, "model health: held-out texts whose perplexity is measured "
                                     "at every checkpoint (`health_corpus`, else the world's "
                                     "held-out phrasings of never-changing facts for a model "
                                     "with a world.json, else the run's locality probes with "
                                     "their recorded answers; 0: off)", min=0)
    health_corpus: str = setting("", "model health: a UTF-8 text file, one text per line "
                                     "(relative paths: to the scenario file); default: the "
                                     "model's world, else the stream's locality probes")
    weight_norms: bool = setting(True, "model health: record, at every checkpoint, the norm of "
                                       "each weight's change relative to the pre-stream weight "
                                       "(keeps a copy of the pre-stream weights)")

    def __post_init__(self) -> None:
        if self.restart_every and self.checkpoint_every:
            raise ValueError("restart_every needs checkpoint_every = 0: each chunk is probed "
                             "once, at its end")


@dataclass(frozen=True)
class MethodSpec:
    name: str = setting(help="registered method name (see `lifelong methods`)")
    label: str = setting("", "name of this configuration in results (default: the method name)")
    # (a dict-typed field whose default is None: `setting` gives the field, RUF009 misreads it)
    settings: dict | None = setting(None, "method settings (see `lifelong methods`)")  # noqa: RUF009

    @property
    def display(self) -> str:
        return self.label or self.name


#: the commits of a run's tail, in order (see `Faults.crash_at`)
CRASH_POINTS = ("after_final_checkpoint", "after_query_timing", "after_metrics",
                "after_complete")


@dataclass(frozen=True)
class Faults:
    crash_after_events: int = setting(0, "testing: die like `kill -9` (no cleanup) after N "
                                         "events, counted over the whole simulate command; "
                                         "not applied with --resume (0: off)", min=0)
    crash_at: str = setting("", "testing: die like `kill -9` right after this commit of the "
                                "first run that reaches it: after_final_checkpoint (its probes "
                                "and resume point), after_query_timing, after_metrics (the run "
                                "not yet marked complete), after_complete; not applied with "
                                "--resume ('': off)", choices=("", *CRASH_POINTS))


@dataclass(frozen=True)
class Scenario:
    name: str = setting("scenario", "experiment name (also the default store file name)")
    description: str = setting("", "free text")
    model: str = setting("builtin", "'builtin' or a local Hugging Face model directory")
    device: str = setting("cpu", "torch device for the model", choices=("cpu", "cuda"))
    seeds: tuple[int, ...] = setting((0,), "one run per method and seed (each 0 <= seed < 2**63, "
                                           "torch's seed range)", min=0, max=MAX_SEED)
    threads: int = setting(0, "torch CPU threads (0: torch's default). Small models on a busy "
                              "machine run faster and steadier with 1", min=0)
    corpus: str = setting("", "text corpus for key statistics (methods that need one: ROME, "
                              "MEMIT, ...): a UTF-8 text file, one text per line, or a world.json "
                              "/ organism.json (relative paths: to the scenario file); default: "
                              "the model's own (world.json or organism.json beside it)")
    cache_dir: str = setting("", "where methods keep statistics and trained editors, keyed by "
                                 "model fingerprint and layer (relative paths: to the scenario "
                                 "file); default: $LIFELONG_CACHE or ~/.cache/lifelong")
    # frozen dataclass instances: immutable defaults (`setting` makes them fields)
    stream: StreamSource = setting(StreamSource(), "the edit stream")  # noqa: RUF009
    schedule: Schedule = setting(Schedule(), "checkpoints, merges, probe sizes")  # noqa: RUF009
    methods: tuple[MethodSpec, ...] = setting((), "methods to compare, in order")
    faults: Faults = setting(Faults(), "fault injection, for testing resume")  # noqa: RUF009

    def __post_init__(self) -> None:
        labels = [m.display for m in self.methods]
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        # ConfigError, not ValueError: this also runs for dataclasses.replace (CLI overrides)
        if dupes:
            raise ConfigError(f"methods: duplicate label(s) {', '.join(dupes)}; give each a `label`")
        if not self.seeds:
            raise ConfigError("seeds: at least one seed is needed")
        if self.stream.train_exclude != "none" and not self.stream.train_file:
            raise ConfigError(f"stream.train_exclude = {self.stream.train_exclude!r} holds "
                              "records out of a train split, and stream.train_file names none")


def load_scenario(path: str | Path | None, overrides: dict[str, Any] | None = None, *,
                  methods: bool = False) -> Scenario:
    """Read a scenario TOML (or start from defaults when `path` is None) and apply CLI
    overrides. Relative paths in it are resolved against the scenario file's folder. With
    `methods`, every method is also checked against the registry (`check_methods`), so a
    mistake in its settings names the file and the method."""
    data: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        p = Path(path)
        data = read_toml(p, "scenario file")
        base = p.resolve().parent
        data.setdefault("name", p.stem)
    scenario = from_mapping(Scenario, data, where=str(path or "scenario"))
    scenario = _resolve_paths(scenario, base)
    from_file = scenario.methods
    scenario = apply_overrides(scenario, overrides or {})
    if methods:
        check_methods(scenario, str(path) if path is not None else None, from_file)
    return scenario


def check_methods(s: Scenario, source: str | None, from_file: tuple[MethodSpec, ...] = ()) -> None:
    """Check that every method is registered and accepts its settings (all problems of one
    method's table at once). Messages name the scenario file and the method's label once:
    `FILE.methods[LABEL]: ...` for a method of the file (`from_file`), `--method NAME: ...`
    for one from the command line, `methods[LABEL]: ...` without a file."""
    # (imported here: it imports every method module, torch included)
    from .methods import get_method
    for spec in s.methods:
        where = (f"methods[{spec.display}]" if source is None else
                 f"{source}.methods[{spec.display}]" if spec in from_file else
                 f"--method {spec.name}")
        try:
            cls = get_method(spec.name)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        from_mapping(cls.Config, spec.settings or {}, where=where)


def _resolve_paths(s: Scenario, base: Path) -> Scenario:
    stream = s.stream
    if stream.file and not Path(stream.file).is_absolute():
        stream = dataclasses.replace(stream, file=str((base / stream.file).resolve()))
    model = s.model
    if model not in ("builtin", "") and not Path(model).is_absolute() and (base / model).exists():
        model = str((base / model).resolve())
    sched = s.schedule
    if sched.health_corpus and not Path(sched.health_corpus).is_absolute():
        sched = dataclasses.replace(sched, health_corpus=str((base / sched.health_corpus).resolve()))
    if stream.train_file and not Path(stream.train_file).is_absolute():
        stream = dataclasses.replace(stream, train_file=str((base / stream.train_file).resolve()))
    paths = {k: str((base / v).resolve()) for k, v in (("corpus", s.corpus), ("cache_dir", s.cache_dir))
             if v and not Path(v).is_absolute()}
    return dataclasses.replace(s, stream=stream, model=model, schedule=sched, **paths)


def same_config(stored: dict, config: dict) -> bool:
    """Whether a run stored with config `stored` may continue as `config` (what `Runtime`
    stores with a run): equal, once settings added to the scenario or to the method since the
    run was stored are left out where they hold the value that reproduces how it ran (the
    default, or the setting's `before=` where the default changed the behaviour), and
    but for the scenario's list of methods: a run is its own method (`config["method"]`), so
    a scenario that gained or lost methods (or a `--method` pick) resumes the runs it kept."""
    from .methods import get_method
    config, stored = (_without_methods(json.loads(json.dumps(c, default=str)))
                      for c in (config, stored))
    defaults = {"scenario": legacy_dict(Scenario())}
    name = config.get("method", {}).get("name")
    try:
        defaults["method"] = {"settings": legacy_dict(get_method(name).Config())}
    except ConfigError:
        pass
    defaults = json.loads(json.dumps(defaults, default=str))
    return _without_new_defaults(config, stored, defaults) == stored


def _without_methods(config: dict) -> dict:
    """`config` without its scenario's `methods` (a copy; `config` is left as it is)."""
    scenario = config.get("scenario")
    if not isinstance(scenario, dict):
        return config
    return {**config, "scenario": {k: v for k, v in scenario.items() if k != "methods"}}


def _without_new_defaults(new: Any, stored: Any, defaults: Any) -> Any:
    """`new` without the keys `stored` lacks whose value is their default (recursively)."""
    if not (isinstance(new, dict) and isinstance(stored, dict)):
        return new
    defaults = defaults if isinstance(defaults, dict) else {}
    return {k: _without_new_defaults(v, stored[k], defaults.get(k)) if k in stored else v
            for k, v in new.items()
            if k in stored or k not in defaults or defaults[k] != v}


def _pick_methods(s: Scenario, names: list[str]) -> tuple[MethodSpec, ...]:
    """`--method` values: a scenario method by its label, else by its name, else the method
    with default settings. The same name twice is refused: it would run one configuration
    twice under one label."""
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"--method {twice[0]} given twice: the command line cannot tell two "
                          f"configurations of one method apart; to compare them, write a "
                          f"scenario with one [[methods]] table each, name = \"{twice[0]}\" "
                          f"and its own label = \"...\" and settings = {{...}}")
    by_label = {m.display: m for m in s.methods}
    by_name = {m.name: m for m in reversed(s.methods)}  # the first of a name wins
    return tuple(by_label.get(n) or by_name.get(n) or MethodSpec(name=n, settings=None)
                 for n in names)


def apply_overrides(s: Scenario, o: dict[str, Any]) -> Scenario:
    """Apply command-line overrides: stream, methods (names or labels), model, edits, seed,
    device."""
    if o.get("stream"):
        s = dataclasses.replace(s, stream=dataclasses.replace(s.stream, file=str(Path(o["stream"]).resolve())))
    if o.get("methods"):
        s = dataclasses.replace(s, methods=_pick_methods(s, list(o["methods"])))
    if o.get("model"):
        s = dataclasses.replace(s, model=o["model"])
    if o.get("edits"):
        s = dataclasses.replace(s, stream=dataclasses.replace(s.stream, max_edits=int(o["edits"])))
    if o.get("seed") is not None:
        seed = int(o["seed"])
        if not 0 <= seed <= MAX_SEED:
            raise ConfigError(f"--seed: must be between 0 and 2**63 - 1 (torch's seed range), "
                              f"got {seed}")
        s = dataclasses.replace(s, seeds=(seed,))
    if o.get("allow_unknown"):
        s = dataclasses.replace(s, stream=dataclasses.replace(s.stream, max_unknown_share=1.0))
    if o.get("device"):
        s = dataclasses.replace(s, device=o["device"])
    if not s.stream.file:
        raise ConfigError("no stream: give a scenario with [stream] file = ..., or --stream FILE")
    if not s.methods:
        raise ConfigError("no methods: give a scenario with [[methods]], or --method NAME")
    return s
