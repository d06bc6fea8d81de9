"""F-Learning against its own learning step, per seed, from `lifelong compare --json`:

    python reports/table2-lora-flearning/pairs.py reports/table2-lora-flearning/compare.json \
        > reports/table2-lora-flearning/pairs.md

Each variant ran beside its control in the same sweep (same edits, chunks, seeds and
optimiser; the control only skips the forgetting step). A cell is the variant's figure, mean
over the seeds, and in brackets the variant minus its control computed seed by seed, then
mean ± std over the seeds (teacher-forced / generated). Held-out perplexity: the variant's
and the control's, x the unedited organism's.
"""

import json
import statistics
import sys
from collections import defaultdict

#: variant label -> (forget / learn, control label)
PAIRS = {
    "f-learning": ("FT / FT", "ft"),
    "f-learning-lora": ("LoRA / LoRA", "f-learning-lora-learn-only"),
    "f-learning-lora-ft": ("LoRA / FT", "ft"),
}
FIGURES = (("rel", "reliability"), ("gen", "generalization"), ("loc", "locality"))


def by_run(path: str) -> dict[str, dict[str, dict[int, dict]]]:
    """scenario -> method label -> seed -> the run's row."""
    out: dict = defaultdict(lambda: defaultdict(dict))
    for row in json.load(open(path))["rows"]:
        head, _, label = row["label"].rpartition(":")
        out[head.split(",", 1)[0]][label][row["seed"]] = row
    return out


def mean_std(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):+.3f} ± {sd:.3f}"


def cell(variant: dict[int, dict], control: dict[int, dict], key: str) -> str:
    seeds = sorted(set(variant) & set(control))
    parts = []
    for proto in ("tf", "gen"):
        v = [variant[s][f"{key}_{proto}"] for s in seeds]
        d = [variant[s][f"{key}_{proto}"] - control[s][f"{key}_{proto}"] for s in seeds]
        parts.append(f"{statistics.fmean(v):.3f} ({mean_std(d)})")
    return " / ".join(parts)


def ppl(rows: dict[int, dict]) -> str:
    values = [r["health_ppl"] for r in rows.values() if r.get("health_ppl") is not None]
    return f"{statistics.fmean(values):.3g}x" if values else "-"


def main(path: str) -> None:
    runs = by_run(path)
    print("| scenario | forget / learn | seeds | " + " | ".join(h for _, h in FIGURES)
          + " | held-out ppl (variant, control) |")
    print("|---|---|---:|" + "---|" * (len(FIGURES) + 1))
    for scenario in sorted(runs, key=lambda s: (s.rsplit("-t", 1)[0], int(s.rsplit("-t", 1)[1]))):
        labels = runs[scenario]
        for variant, (name, control) in PAIRS.items():
            if variant not in labels or control not in labels:
                continue
            v, c = labels[variant], labels[control]
            n = len(set(v) & set(c))
            cells = " | ".join(cell(v, c, key) for key, _ in FIGURES)
            print(f"| {scenario} | {name} | {n} | {cells} | {ppl(v)}, {ppl(c)} |")


if __name__ == "__main__":
    main(sys.argv[1])
