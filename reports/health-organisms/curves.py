"""The health sweep's curves as Markdown: for each method, at each checkpoint, the held-out
perplexity ratio (the run's probed locality prompts' recorded answers, over the pre-stream
model's), the largest relative weight change, locality and reliability, teacher-forced,
mean ± std over the seeds:

    python reports/health-organisms/curves.py runs/health-organisms-seq/sweep.db \
        > reports/health-organisms/curves.md

(arguments: stores, and the checkpoints to show in edits; default 50 100 200 300 400 500)

Reads the store through `lifelong.report.load_runs` and groups seeds as the report does
(`seed_means`), so the figures are the ones the report plots; the ratio's mean over seeds
is a geometric mean (ratios span orders of magnitude), its spread the range over the seeds.
"""

import math
import statistics
import sys

from lifelong.metrics_seeds import mean_std
from lifelong.report import load_runs
from lifelong.report_groups import seed_means

CHECKPOINTS = (50, 100, 200, 300, 400, 500)


def point(run, edits: int) -> dict | None:
    """The run's checkpoint after `edits` edits (curves hold one per edit count)."""
    return next((c for c in run.curves if c["edits_done"] == edits), None)


def ratio_cell(values: list[float]) -> str:
    geo = math.exp(statistics.fmean(math.log(v) for v in values))
    return f"{geo:.3g} [{min(values):.3g}-{max(values):.3g}]"


def rate_cell(values: list[float]) -> str:
    m = mean_std(values)
    return f"{m['mean']:.2f} ± {m['std'] or 0.0:.2f}"


def main(dbs: list[str], checkpoints: tuple[int, ...] = CHECKPOINTS) -> None:
    print("| method | seeds | edits | perplexity ratio, geometric mean [range] | largest weight "
          "change | locality TF | reliability TF (edits so far) |")
    print("| --- | ---: | ---: | --- | --- | --- | --- |")
    for sm in seed_means(load_runs(dbs)):  # the report's own grouping of seeds
        label, runs = sm.label.removesuffix(" (mean)"), sm.members
        for edits in checkpoints:
            points = [point(r, edits) for r in runs]
            if any(p is None or not p["health"] for p in points):
                continue
            ratio = ratio_cell([p["health"]["ppl_ratio"] for p in points])
            weight = rate_cell([p["health"]["weight_delta_max"] for p in points])
            loc = rate_cell([p["locality"]["teacher_forced"] for p in points])
            rel = rate_cell([p["reliability"]["teacher_forced"] for p in points])
            print(f"| {label} | {len(runs)} | {edits} | {ratio} | {weight} | {loc} | {rel} |")


if __name__ == "__main__":
    args = sys.argv[1:]
    main([a for a in args if not a.isdigit()], tuple(int(a) for a in args if a.isdigit()) or CHECKPOINTS)
