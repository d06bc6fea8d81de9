"""Which runs a comparison puts side by side, and which are seeds of one experiment.

Runs compare when they share the model, the stream (file and number of events replayed) and
the chunk size (`restart_every`, which changes the protocol): a *comparison group*
(`group_key`). Runs are seeds of one experiment when they share a label, a group and their
recorded configuration apart from the seed (`setup_key`), from any store: the per-run stores
of a sweep pool. Two or more complete seeds get a `SeedMean`, drawn and ranked as one.

The runs are duck-typed (`report.RunData`): `store`, `run` (the runs row), `label`,
`colour`, `metrics` (run_metrics), `curves` (checkpoint_curves), `banner` (None: complete).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import PurePath
from typing import Any

from .metrics_seeds import mean_tree


def get(d: Any, *path: str) -> Any:
    """d[path[0]][path[1]]...; None where absent. JSON text (run config) is parsed on the way."""
    for k in path:
        try:
            d = json.loads(d) if isinstance(d, str) else d
        except ValueError:
            return None
        d = d.get(k) if isinstance(d, dict) else None
    return d


def short_names(values: Sequence[str]) -> dict[str, str]:
    """A short name per distinct value (a model path or a stream file): its last path part,
    more parts where two values would share one. Invariant: distinct values, distinct names."""
    distinct = list(dict.fromkeys(values))
    parts = {v: PurePath(v).parts or (v,) for v in distinct}
    depth = 1
    while True:
        names = {v: "/".join(parts[v][-depth:]) for v in distinct}
        if len(set(names.values())) == len(distinct) or depth > max(map(len, parts.values()), default=1):
            return names
        depth += 1


def stream_of(rd: Any) -> dict:
    """The run's stream record (`path`, `events`, `skipped_lines`); {} where absent."""
    s = rd.run.get("stream")
    try:
        s = json.loads(s) if isinstance(s, str) else s
    except ValueError:
        return {}
    return s if isinstance(s, dict) else {}


def group_key(rd: Any) -> tuple[str, str, Any, int]:
    """(model, stream, events replayed, chunk size): runs compare only within one. The model
    is its weights' fingerprint and the stream its file's digest where the run recorded them
    (one model or file in two places, or on two machines of a sweep, is one; one path whose
    model was rebuilt is two), else their paths."""
    stream = stream_of(rd)
    chunk = get(rd.run.get("config"), "scenario", "schedule", "restart_every") or 0
    ident = f"sha256:{stream['sha256']}" if stream.get("sha256") else str(stream.get("path") or "-")
    fp = rd.run.get("model_fingerprint")
    model = f"fingerprint:{fp}" if fp else model_path(rd)
    return (model, ident, stream.get("events"), int(chunk))


def model_path(rd: Any) -> str:
    """The run's model as its scenario named it ("builtin" where none): what tables show."""
    return str(rd.run.get("model") or "builtin")


def stream_path(rd: Any) -> str:
    """The run's stream file as it recorded it ("-" where absent): what tables show."""
    return str(stream_of(rd).get("path") or "-")


@dataclass
class SeedMean:
    """A method's complete seeds in one store and group, drawn and ranked as one: `label` is
    the table's ("ft (mean)"), `legend` the plots'; `curves` and `metrics` are the element-wise
    means over the seeds (`metrics_seeds.mean_tree`, checkpoints aligned by edits done)."""
    label: str
    members: list
    banner: None = None

    @property
    def colour(self) -> str:
        return self.members[0].colour  # the seeds share one colour (report._assign_colours)

    @property
    def legend(self) -> str:
        return f"{self.label[:-len(' (mean)')]}: mean of {len(self.members)} seeds, band min..max"

    @property
    def run(self) -> dict:
        return self.members[0].run

    @cached_property  # the plots read it many times
    def curves(self) -> list[dict]:
        done = set.intersection(*({c["edits_done"] for c in m.curves} for m in self.members))
        return mean_tree([[c for c in m.curves if c["edits_done"] in done] for m in self.members])[0]

    @cached_property
    def metrics(self) -> dict:
        return mean_tree([m.metrics for m in self.members])[0]

    @cached_property
    def edit_windows(self) -> list[dict]:
        return mean_tree([m.edit_windows for m in self.members])[0]

    @property
    def merges(self) -> list[dict]:
        return [x for m in self.members for x in m.merges]


def setup_key(rd: Any) -> str:
    """What makes runs seeds of one experiment: the configuration the run recorded (scenario,
    method and settings, stream) without its seed and its scenario's seed list, as canonical
    JSON; a run that recorded none is its store's alone. So the per-run stores of a sweep
    (one seed each) pool, and one label run twice with other settings does not."""
    try:
        config = json.loads(rd.run.get("config") or "null")
    except ValueError:
        config = None
    if not isinstance(config, dict):
        return f"store:{rd.store}"
    config = {k: v for k, v in config.items() if k != "seed"}
    if isinstance(config.get("scenario"), dict):
        config["scenario"] = {k: v for k, v in config["scenario"].items() if k != "seeds"}
    return json.dumps(config, sort_keys=True)


def seed_means(runs: Sequence[Any]) -> list[SeedMean]:
    """One SeedMean per (run label, comparison group, `setup_key`) with two or more complete
    runs, from any of the stores, in order of first appearance; labels unique (the first
    member's store name added where two means share a label, then a number if needed)."""
    by: dict[tuple, list] = {}
    for r in runs:
        if r.banner is None:
            by.setdefault((r.run.get("label") or r.run["run_id"], group_key(r), setup_key(r)),
                          []).append(r)
    means = [(k[0], ms) for k, ms in by.items() if len(ms) >= 2]
    labels = [label for label, _ in means]
    out, seen = [], {}
    for label, ms in means:
        name = f"{PurePath(str(ms[0].store)).stem}:{label}" if labels.count(label) > 1 else label
        seen[name] = seen.get(name, 0) + 1
        out.append(SeedMean(f"{name}{'' if seen[name] == 1 else f' #{seen[name]}'} (mean)", ms))
    return out
