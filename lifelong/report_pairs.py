"""Paired differences (`lifelong compare --minus VARIANT=CONTROL`): a variant's figures minus
its control's, seed by seed, then the mean and sample std of those differences.

A pair is two complete runs, one of each label, with the same seed, in one comparison group
(`group_key`: model, stream, events replayed, chunk size), one scenario and one sweep setup
(what a sweep's run label says beside the method). Seeds replay their own edit orders, so
differencing within a seed removes what the two runs share (which edits, in which order and
chunks) and leaves what the variant changes: the spread of the differences can be far
smaller than that of either method's figures over seeds (F-Learning minus FT-L on the ZsRE
organism at T = 10, generated reliability: -0.017 ± 0.006, lower in every seed, where the
two alone read 0.17 ± 0.02 and 0.19 ± 0.02).
Pure: reads the figures the comparison table reads (`report_table.figures`).

Invariants: a difference is computed only where both runs have the figure; a pair never
crosses groups, scenarios or sweep setups; runs that are not complete are never paired.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .errors import LifelongError
from .metrics_seeds import mean_std
from .report_groups import get, group_key
from .report_table import COLUMNS, figures, fmt

#: the columns a difference is taken of: scores, ratios and plain numbers (not counts, times, sizes)
DIFFERENCED = tuple(c for c in COLUMNS if c.kind in ("score", "ratio", "number"))
#: the columns the terminal table shows, where some pair has them
SHOWN = ("rel_tf", "rel_gen", "gen_tf", "gen_gen", "loc_tf", "loc_gen", "port_gen",
         "conflict_latest_gen", "conflict_stale_gen")


@dataclass(frozen=True)
class Pair:
    """`variant` minus `control`, both run labels (a method's label, as the table shows it
    without the scenario and seed)."""

    variant: str
    control: str


def parse_pairs(specs: Sequence[str]) -> list[Pair]:
    """`VARIANT=CONTROL` texts as pairs; a one-line error names a malformed one."""
    out = []
    for spec in specs:
        variant, sep, control = spec.partition("=")
        if not sep or not variant.strip() or not control.strip() or variant == control:
            raise LifelongError(f"--minus {spec!r}: expected VARIANT=CONTROL, two different run "
                                "labels (e.g. --minus f-learning=ft)")
        out.append(Pair(variant.strip(), control.strip()))
    return out


def _label(rd: Any) -> str:
    """The method's label: a sweep's run label without its scenario part ("zsre-t10,...:ft"),
    a plain run id without its seed ("ft@seed0")."""
    return str(rd.run.get("label") or rd.run["run_id"]).rpartition(":")[2].split("@seed")[0]


def _scenario(rd: Any) -> str:
    return str(get(rd.run.get("config"), "scenario", "name") or "")


def _setup(rd: Any) -> str:
    """What a sweep's label says beside the method ("zsre-t1,model=zsre,edits=200"): runs of
    two sweeps that named their axes differently are not paired."""
    return str(rd.run.get("label") or "").rpartition(":")[0]


def differences(runs: Sequence[Any], pairs: Sequence[Pair]) -> list[dict[str, Any]]:
    """One row per (pair, scenario, comparison group) with at least one common seed:
    `variant`, `control`, `scenario`, `seeds`, `n_seeds`, then for every figure both runs
    have `{key}` (mean difference), `{key}_std` (sample std; None for one seed, as `metrics_seeds.mean_std`),
    `{key}_variant` and `{key}_control` (the two means over the same seeds).
    LifelongError where a pair finds no common seed anywhere (a label mistyped, or the two
    never ran in one group)."""
    index: dict[tuple, Any] = {}
    for r in runs:
        if r.banner is None:
            index[(_scenario(r), (group_key(r), _setup(r)), _label(r), r.run.get("seed"))] = r
    out = []
    for pair in pairs:
        rows = [_row(pair, scenario, group, index) for scenario, group in
                dict.fromkeys((s, g) for s, g, lab, _ in index if lab == pair.variant)]
        rows = [r for r in rows if r is not None]
        if not rows:
            labels = sorted({lab for _, _, lab, _ in index})
            raise LifelongError(f"--minus {pair.variant}={pair.control}: no seed has complete runs "
                                f"of both in one comparison group (labels: {', '.join(labels)})")
        out.extend(rows)
    return out


def _row(pair: Pair, scenario: str, group: tuple, index: dict) -> dict[str, Any] | None:
    seeds = sorted(s for sc, g, lab, s in index
                   if (sc, g, lab) == (scenario, group, pair.variant)
                   and (scenario, group, pair.control, s) in index)
    if not seeds:
        return None
    figs = [(figures(index[(scenario, group, pair.variant, s)]),
             figures(index[(scenario, group, pair.control, s)])) for s in seeds]
    row: dict[str, Any] = {"variant": pair.variant, "control": pair.control, "scenario": scenario,
                           "seeds": seeds, "n_seeds": len(seeds)}
    for col in DIFFERENCED:
        both = [(v[col.key], c[col.key]) for v, c in figs]
        if any(a is None or b is None for a, b in both):
            continue
        diff = mean_std([a - b for a, b in both])
        row[col.key], row[f"{col.key}_std"] = diff["mean"], diff["std"]
        row[f"{col.key}_variant"] = mean_std([a for a, _ in both])["mean"]
        row[f"{col.key}_control"] = mean_std([b for _, b in both])["mean"]
    return row


def shown_columns(rows: Sequence[dict]) -> list[tuple[str, str]]:
    """(key, header) of the terminal table's figure columns: `SHOWN` where some row has it."""
    headers = {c.key: c.header for c in COLUMNS}
    return [(k, headers[k]) for k in SHOWN if any(k in r for r in rows)]


def cell(row: dict, key: str) -> str:
    """'variant (difference ± std)', e.g. '0.998 (+0.003 ± 0.004)' ('(+0.003)' for one seed);
    '' where not computed."""
    if key not in row:
        return ""
    kind = next(c.kind for c in COLUMNS if c.key == key)
    std = row[f"{key}_std"]
    spread = f" ± {std:.3f}" if std is not None else ""
    return f"{fmt(row[f'{key}_variant'], kind)} ({row[key]:+.3f}{spread})"


def rich_table(rows: Sequence[dict]) -> Any:
    """The differences as one terminal table (rich), a row per pair and scenario."""
    from rich.table import Table
    t = Table(title="Paired differences: variant (variant minus control, per seed: mean ± std)")
    cols = shown_columns(rows)
    for head in ("scenario", "variant - control", "seeds"):
        t.add_column(head, justify="left")
    for _, header in cols:
        t.add_column("\n".join(header.rsplit(" ", 1)), justify="right")
    for r in rows:
        t.add_row(r["scenario"] or "-", f"{r['variant']} - {r['control']}",
                  ", ".join(map(str, r["seeds"])), *[cell(r, k) for k, _ in cols])
    return t
