"""Sweep files (TOML): a grid of runs, expanded into planned runs with deterministic ids.

    name = "grace-radius"                      # default: the file's name
    scenario = "../scenarios/grace-1000.toml"  # or scenarios = ["a.toml", "b.toml"]
    seeds = [0, 1, 2]                          # axes; each left out keeps the scenario's own
    models = ["builtin"]
    [stream]
    file = ["../streams/test/edits-1000.jsonl"]
    max_edits = [100, 1000]
    order = ["file", "seeded"]
    [[methods]]                                # replaces the scenario's methods
    name = "grace"
    [grid]                                     # every combination, per method label
    grace.eps = [0.1, 0.2, 0.4]

Every planned run is one method and one seed of a fully resolved scenario (`to_dict`
form, validated by `config.from_mapping` exactly as a scenario file is). Its id is the run id
the runtime writes, `LABEL@seedN`: the method's label, the grid values in brackets
(`grace[eps=0.2]`), led by the other axes that take several values in this sweep
(`quickstart,model=tiny,edits=100:ft@seed0`); `#` and a short hash of the configuration
where two configurations would still read the same.

Invariants: expansion depends only on the sweep file and the scenario files it names (not
on the clock, the machine or what has already run), so ids are stable across invocations;
ids are unique within a sweep; the seeds of one configuration share one label, so reports
average them (mean ± std).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import from_mapping, read_toml, setting, to_dict
from ..errors import ConfigError
from ..scenario import MAX_SEED, MethodSpec, Scenario, load_scenario

ORDERS = ("file", "seeded")
#: keys whose value may be one scalar instead of a list (an axis of one value)
_AXES = ("seeds", "models")
_STREAM_AXES = ("file", "max_edits", "order")
_GRID_HELP = ("axis: method settings, one table per method label: `grace.eps = [0.1, 0.2]` "
              "(every combination, merged over the method's own settings)")


@dataclass(frozen=True)
class StreamAxes:
    file: tuple[str, ...] = setting((), "axis: stream files to replay (relative paths: to the "
                                        "sweep file; empty: each scenario's own)")
    max_edits: tuple[int, ...] = setting((), "axis: replay only up to the Nth edit (0: the "
                                             "whole stream; empty: each scenario's own)", min=0)
    order: tuple[str, ...] = setting((), "axis: replay order, 'file' or 'seeded' (empty: each "
                                         "scenario's own)")

    def __post_init__(self) -> None:
        bad = [o for o in self.order if o not in ORDERS]
        if bad:
            raise ValueError(f"stream.order: expected 'file' or 'seeded', got {bad[0]!r}")


@dataclass(frozen=True)
class SweepConfig:
    name: str = setting("", "sweep name (default: the sweep file's name; the default --out is "
                            "runs/NAME)")
    description: str = setting("", "free text")
    scenario: str = setting("", "the base scenario file (relative paths: to the sweep file)")
    scenarios: tuple[str, ...] = setting((), "several scenario files instead, each expanded "
                                             "over the same axes")
    seeds: tuple[int, ...] = setting((), "axis: seeds (empty: each scenario's own)", min=0,
                                     max=MAX_SEED)
    models: tuple[str, ...] = setting((), "axis: models, 'builtin' or Hugging Face model "
                                          "directories (relative paths: to the sweep file; "
                                          "empty: each scenario's own)")
    # (a frozen instance, and a dict defaulting to None: RUF009 misreads `setting`)
    stream: StreamAxes = setting(StreamAxes(), "axes over stream options")  # noqa: RUF009
    methods: tuple[MethodSpec, ...] = setting((), "axis: methods, [[methods]] tables as in a "
                                                  "scenario (empty: each scenario's own)")
    grid: dict | None = setting(None, _GRID_HELP)  # noqa: RUF009

    def __post_init__(self) -> None:
        if bool(self.scenario) == bool(self.scenarios):
            raise ValueError("give either scenario = \"FILE\" or scenarios = [\"FILE\", ...]")
        labels = [m.display for m in self.methods]
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        if dupes:
            raise ValueError(f"methods: duplicate label(s) {', '.join(dupes)}; give each a `label`")
        for label, table in (self.grid or {}).items():
            _check_grid_table(label, table)

    @property
    def scenario_files(self) -> tuple[str, ...]:
        return (self.scenario,) if self.scenario else self.scenarios


def _check_grid_table(label: str, table: Any) -> None:
    """A grid entry is `LABEL.SETTING = [values]` (a scalar is one value)."""
    if not isinstance(table, dict) or not table:
        raise ValueError(f"grid.{label}: expected a table of settings, e.g. "
                         f"{label}.steps = [5, 10]")
    for key, values in table.items():
        if isinstance(values, dict):
            raise TypeError(f"grid.{label}.{key}: expected a list of values, got a table")
        if isinstance(values, list) and not values:
            raise ValueError(f"grid.{label}.{key}: the list of values is empty")


@dataclass(frozen=True)
class PlannedRun:
    """One run of a sweep: `scenario` is the resolved single-method, single-seed scenario
    (`to_dict` form) the worker builds and the runtime stores; `key` hashes it."""

    run_id: str
    label: str
    seed: int
    scenario_file: str
    scenario: dict
    key: str
    store: str  # the run's own store, a file name under OUT/runs

    @property
    def method(self) -> dict:
        return self.scenario["methods"][0]

    @property
    def threads(self) -> int:
        return int(self.scenario["threads"])

    @property
    def device(self) -> str:
        return str(self.scenario["device"])

    def build(self) -> Scenario:
        return from_mapping(Scenario, self.scenario, where=self.run_id)

    def stream_text(self) -> str:
        s = self.scenario["stream"]
        parts = [Path(s["file"]).name]
        if s["max_edits"]:
            parts.append(f"first {s['max_edits']} edits")
        if s["order"] != "file":
            parts.append(f"order {s['order']}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Sweep:
    path: Path
    config: SweepConfig
    digest: str  # sha256 of the sweep file's bytes (first 16 hex digits)
    runs: tuple[PlannedRun, ...]

    @property
    def name(self) -> str:
        return self.config.name or self.path.stem


# ------------------------------------------------------------------------------------ loading
def load_sweep(path: str | Path) -> Sweep:
    """Read, validate and expand a sweep file (one-line ConfigError on any problem)."""
    p = Path(path)
    data = read_toml(p, "sweep file")
    raw = p.read_bytes()
    cfg = from_mapping(SweepConfig, _axes_as_lists(data), where=str(path))
    base = p.resolve().parent
    scenarios = [(f, load_scenario(_under(base, f))) for f in cfg.scenario_files]
    runs = expand(cfg, scenarios, base, where=str(path))
    return Sweep(p, cfg, hashlib.sha256(raw).hexdigest()[:16], runs)


def _axes_as_lists(data: dict) -> dict:
    """Axis keys given as one scalar become one-value lists."""
    out = dict(data)
    for k in _AXES:
        if k in out and not isinstance(out[k], list):
            out[k] = [out[k]]
    if isinstance(out.get("scenarios"), str):
        out["scenarios"] = [out["scenarios"]]
    if isinstance(out.get("stream"), dict):
        out["stream"] = {k: (v if k not in _STREAM_AXES or isinstance(v, list) else [v])
                         for k, v in out["stream"].items()}
    return out


def _under(base: Path, file: str) -> str:
    return file if Path(file).is_absolute() else str((base / file).resolve())


def _model_path(model: str, base: Path) -> str:
    """As scenario files do: a relative model directory that exists is made absolute."""
    if model in ("builtin", "") or Path(model).is_absolute() or not (base / model).exists():
        return model
    return str((base / model).resolve())


# ---------------------------------------------------------------------------------- expansion
@dataclass(frozen=True)
class _Draft:
    file: str
    variant: Scenario      # the scenario with this draft's model and stream options
    spec: MethodSpec
    grid: tuple[tuple[str, Any], ...]
    seed: int
    context: dict          # axis values that may lead the label


def expand(cfg: SweepConfig, scenarios: Sequence[tuple[str, Scenario]], base: Path,
           where: str = "sweep") -> tuple[PlannedRun, ...]:
    """The planned runs, in order: scenario, model, stream file, max_edits, order, method,
    grid point, seed (the runtime's own order: methods, then seeds)."""
    _check_grid_labels(cfg, scenarios, where)
    drafts = list(_drafts(cfg, scenarios, base))
    varying = {k for k in ("scenario", "model", "stream", "edits", "order")
               if len({d.context[k] for d in drafts}) > 1}
    labels = [_label(d, varying) for d in drafts]
    configs = [_config_key(d) for d in drafts]
    labels = _disambiguate(labels, configs)
    runs: dict[str, PlannedRun] = {}
    for d, label in zip(drafts, labels):
        run = _plan(d, label, where)
        runs.setdefault(run.run_id, run)  # the same run named twice is one run
    return tuple(runs.values())


def _check_grid_labels(cfg: SweepConfig, scenarios: Sequence[tuple[str, Scenario]],
                       where: str) -> None:
    known = {m.display for m in cfg.methods} if cfg.methods else {
        m.display for _, sc in scenarios for m in sc.methods}
    for label in cfg.grid or {}:
        if label not in known:
            raise ConfigError(f"{where}: grid.{label}: no method labelled {label!r} (methods: "
                              f"{', '.join(sorted(known)) or 'none'})")


def _drafts(cfg: SweepConfig, scenarios: Sequence[tuple[str, Scenario]],
            base: Path) -> Iterator[_Draft]:
    for file, sc in scenarios:
        models = [_model_path(m, base) for m in cfg.models] or [sc.model]
        files = [_under(base, f) for f in cfg.stream.file] or [sc.stream.file]
        axes = itertools.product(models, files, cfg.stream.max_edits or [sc.stream.max_edits],
                                 cfg.stream.order or [sc.stream.order])
        for model, stream_file, max_edits, order in axes:
            stream = dataclasses.replace(sc.stream, file=stream_file, max_edits=max_edits,
                                         order=order)
            variant = dataclasses.replace(sc, model=model, stream=stream)
            context = {"scenario": sc.name, "model": Path(model).name or model,
                       "stream": Path(stream_file).stem, "edits": max_edits, "order": order}
            for spec in cfg.methods or sc.methods:
                for point in _grid_points(cfg.grid, spec):
                    for seed in cfg.seeds or sc.seeds:
                        yield _Draft(file, variant, spec, point, seed, context)


def _grid_points(grid: dict | None, spec: MethodSpec) -> list[tuple[tuple[str, Any], ...]]:
    """Every combination of the grid's values for this method (in the file's key order)."""
    table = (grid or {}).get(spec.display)
    if not table:
        return [()]
    keys = list(table)
    values = [v if isinstance(v, list) else [v] for v in table.values()]
    return [tuple(zip(keys, combo)) for combo in itertools.product(*values)]


def fmt(value: Any) -> str:
    """A setting's value as it reads in a label: TOML-like, shortest float form."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value) if not isinstance(value, float) else repr(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _label(d: _Draft, varying: set[str]) -> str:
    """`AXES:METHOD[k=v,...]`: only the axes that take several values in this sweep."""
    head = [str(d.context["scenario"])] if "scenario" in varying else []
    head += [f"{k}={d.context[k]}" for k in ("model", "stream", "edits", "order") if k in varying]
    grid = f"[{','.join(f'{k}={fmt(v)}' for k, v in d.grid)}]" if d.grid else ""
    return (",".join(head) + ":" if head else "") + d.spec.display + grid


def _settings(d: _Draft) -> dict | None:
    if not d.grid and d.spec.settings is None:
        return None
    return {**(d.spec.settings or {}), **dict(d.grid)}


def _config_key(d: _Draft) -> str:
    """Hash of what a configuration is, label and seed aside (its seeds share it)."""
    data = to_dict(dataclasses.replace(d.variant, methods=(), seeds=(0,)))
    data["method"] = {"name": d.spec.name, "settings": _settings(d)}
    return digest(data)


def _disambiguate(labels: list[str], configs: list[str]) -> list[str]:
    """A label shared by different configurations gets `#` and its configuration's hash."""
    owners: dict[str, set[str]] = {}
    for label, key in zip(labels, configs):
        owners.setdefault(label, set()).add(key)
    return [f"{label}#{key[:6]}" if len(owners[label]) > 1 else label
            for label, key in zip(labels, configs)]


def _plan(d: _Draft, label: str, where: str) -> PlannedRun:
    spec = MethodSpec(name=d.spec.name, label="" if label == d.spec.name else label,
                      settings=_settings(d))
    data = to_dict(dataclasses.replace(d.variant, methods=(spec,), seeds=(d.seed,)))
    run_id = f"{label}@seed{d.seed}"
    from_mapping(Scenario, data, where=f"{where}: run {run_id}")  # validated as a scenario file
    return PlannedRun(run_id=run_id, label=label, seed=d.seed, scenario_file=d.file,
                      scenario=data, key=digest(data), store=store_name(run_id))


def digest(data: Any) -> str:
    """A stable short hash of plain data (canonical JSON)."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def store_name(run_id: str) -> str:
    """The run's store file name: the id where it is a safe, short file name, else the id
    with unsafe characters replaced, cut to 120 characters, and a hash of the id (so two
    ids never share a file)."""
    slug = re.sub(r"[^A-Za-z0-9._=@,+-]", "_", run_id)
    if slug != run_id or slug.startswith(".") or len(slug) > 120:
        slug = f"{slug[:120]}-{hashlib.sha256(run_id.encode('utf-8')).hexdigest()[:8]}"
    return f"{slug}.db"


__all__ = ["PlannedRun", "StreamAxes", "Sweep", "SweepConfig", "expand",
           "load_sweep", "store_name"]
