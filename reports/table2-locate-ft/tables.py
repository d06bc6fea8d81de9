"""The Table 2 sweeps' figures as Markdown, one table per organism, the WISE paper's
LLaMA-2-7B numbers beside ours where it has the method (ZsRE only: it has no CounterFact
table):

    python reports/table2-locate-ft/tables.py reports/table2-locate-ft/compare.json \
        zsre-t1000=reports/table2-locate-ft/compare-ft-zsre-1000.json \
        zsre-t1000=reports/table2-locate-ft/compare-locate-zsre-1000.json \
        reports/table2-locate-ft/compare-locate-single.json \
        reports/table2-locate-ft/compare-none.json > reports/table2-locate-ft/tables.md

Cells: mean ± std over the seeds, teacher-forced / generated. The last column: the paper's
reliability / generalization / locality, teacher-forced token accuracy (its evaluation), so
comparable with our first number of each cell. Rows are read from `lifelong compare --json` (`seed_means`).
"""

import json
import sys
from collections import defaultdict

#: WISE (arXiv 2405.14768) Table 2, LLaMA-2-7B, ZsRE: (rel, gen, loc) at T = 1, 10, 100, 1000
PAPER = {
    "ft": ((0.57, 0.52, 0.96), (0.48, 0.48, 0.76), (0.30, 0.27, 0.23), (0.19, 0.16, 0.03)),
    "ft-ewc": ((0.96, 0.95, 0.02), (0.82, 0.76, 0.01), (0.83, 0.74, 0.08), (0.76, 0.69, 0.08)),
    "rome": ((0.85, 0.80, 0.99), (0.64, 0.62, 0.75), (0.23, 0.22, 0.04), (0.01, 0.01, 0.00)),
    "memit": ((0.84, 0.81, 0.99), (0.58, 0.58, 0.85), (0.02, 0.02, 0.02), (0.04, 0.04, 0.02)),
    "mend": ((0.95, 0.93, 0.98), (0.26, 0.28, 0.28), (0.00, 0.00, 0.00), (0.00, 0.00, 0.00)),
    "wise": ((0.98, 0.92, 1.00), (0.94, 0.88, 1.00), (0.90, 0.81, 1.00), (0.77, 0.72, 1.00)),
}
#: routing columns, shown for an organism where some row has them: edit and rephrase probes
#: sent to the memory holding their edit; unrelated (locality) prompts kept on the main model
ROUTING = (("routing", "edits to their memory"), ("routing_loc", "unrelated to main"))
T_INDEX = {1: 0, 10: 1, 100: 2, 1000: 3}
FIGURES = ("rel", "gen", "loc")  # reliability, generalization, locality


def cell(row: dict, key: str) -> str:
    return (f"{row[f'{key}_tf']:.2f} ± {row[f'{key}_tf_std']:.2f} / "
            f"{row[f'{key}_gen']:.2f} ± {row[f'{key}_gen_std']:.2f}")


def load(args: list[str]) -> dict[str, dict[int, dict[str, dict]]]:
    """organism -> T -> label -> seed-mean row. An argument `SCENARIO=FILE` names the
    scenario of a sweep that ran only one (its labels then carry no scenario)."""
    out: dict = defaultdict(lambda: defaultdict(dict))
    for arg in args:
        fixed, _, path = arg.rpartition("=")
        for row in json.load(open(path))["seed_means"]:
            label = row["label"].split(":")[-1].removesuffix(" (mean)")
            scenario = fixed or row["label"].split(",", 1)[0]
            organism, t = scenario.rsplit("-t", 1)
            out[organism][int(t)][label] = row
    return out


def main(paths: list[str]) -> None:
    for organism, by_t in sorted(load(paths).items()):
        labels = sorted({lab for rows in by_t.values() for lab in rows})
        routing = [(k, head) for k, head in ROUTING
                   if any(r.get(k) is not None for rows in by_t.values() for r in rows.values())]
        print(f"### {organism}\n")
        print("| method | T | seeds | reliability | generalization | locality | "
              + "".join(f"{head} | " for _, head in routing) + "paper |")
        print("| --- | ---: | ---: | --- | --- | --- | " + "--- | " * len(routing) + "--- |")
        for label in labels:
            for t in sorted(by_t):
                row = by_t[t].get(label)
                if row is None:
                    continue
                paper = PAPER.get(row["method"]) if organism == "zsre" else None
                ref = " / ".join(f"{v:.2f}" for v in paper[T_INDEX[t]]) if paper else "-"
                routed = "".join(f"{row[k]:.2f} ± {row[f'{k}_std']:.2f} | " if row.get(k) is not None
                                 else "- | " for k, _ in routing)
                print(f"| {label} | {t} | {row['n_seeds']} | "
                      + " | ".join(cell(row, key) for key in FIGURES) + f" | {routed}{ref} |")
        print()


if __name__ == "__main__":
    main(sys.argv[1:])
