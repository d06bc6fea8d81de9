"""F-Learning against its own learning step as Markdown, from the `differences` that
`lifelong compare --minus` writes:

    lifelong compare runs/table2-lora-flearning-t1/sweep.db --minus f-learning=ft \
        --minus f-learning-lora=f-learning-lora-learn-only --minus f-learning-lora-ft=ft \
        --json reports/table2-lora-flearning/compare-t1.json
    python reports/table2-lora-flearning/pairs.py reports/table2-lora-flearning/compare*.json \
        > reports/table2-lora-flearning/pairs.md

Each variant ran beside its control in the same sweep (same edits, chunks, seeds and
optimiser; the control only skips the forgetting step). A cell: the variant's figure, mean
over the seeds, and in brackets the variant minus its control seed by seed, mean ± std over
the seeds; teacher-forced / generated.
"""

import json
import sys

from lifelong.report_pairs import cell

#: variant label -> forget / learn
NAMES = {"f-learning": "FT / FT", "f-learning-lora": "LoRA / LoRA", "f-learning-lora-ft": "LoRA / FT"}
FIGURES = (("rel", "reliability"), ("gen", "generalization"), ("loc", "locality"))


def order(row: dict) -> tuple:
    organism, t = row["scenario"].rsplit("-t", 1)
    return organism, int(t), list(NAMES).index(row["variant"])


def main(paths: list[str]) -> None:
    rows = sorted((r for p in paths for r in json.load(open(p))["differences"]), key=order)
    print("| scenario | forget / learn (control) | seeds | "
          + " | ".join(h for _, h in FIGURES) + " | held-out ppl, variant / control |")
    print("|---|---|---:|" + "---|" * (len(FIGURES) + 1))
    for r in rows:
        cells = " | ".join(f"{cell(r, f'{k}_tf')} / {cell(r, f'{k}_gen')}" for k, _ in FIGURES)
        ppl = (f"{r['health_ppl_variant']:.3g}x / {r['health_ppl_control']:.3g}x"
               if "health_ppl" in r else "-")
        print(f"| {r['scenario']} | {NAMES[r['variant']]} ({r['control']}) | {r['n_seeds']} | "
              f"{cells} | {ppl} |")


if __name__ == "__main__":
    main(sys.argv[1:])
