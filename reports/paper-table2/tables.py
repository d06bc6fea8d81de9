"""Collect the WISE-paper Table 2 runs into one Markdown table per organism:

    python reports/paper-table2/tables.py runs/zsre-t1.db runs/zsre-t10.db ... > tables.md

Each store holds one scenario (one T); the figures are `lifelong compare`'s (pooled over
the chunks, seed 0), teacher-forced / generated.
"""

import sys
from pathlib import Path

from lifelong.report import comparison, load_runs


def cell(row: dict, key: str) -> str:
    tf, gen = row.get(f"{key}_tf"), row.get(f"{key}_gen")
    return "-" if tf is None else f"{tf:.2f} / {gen:.2f}"


by_org: dict[str, list[tuple[int, list[dict]]]] = {}
for path in sys.argv[1:]:
    runs = load_runs([Path(path)])
    if not runs:
        continue
    org, t = Path(path).stem.rsplit("-t", 1)
    by_org.setdefault(org, []).append((int(t), comparison(runs).rows))
for org, tables in sorted(by_org.items()):
    tables.sort()
    print(f"### {org}\n")
    print("| method | figure | " + " | ".join(f"T = {t}" for t, _ in tables) + " |")
    print("| --- | --- |" + " ---: |" * len(tables))
    for m in [r["label"] for r in tables[0][1]]:
        for key, name in (("rel", "reliability"), ("gen", "generalization"), ("loc", "locality")):
            cells = []
            for _, rows in tables:
                row = next((r for r in rows if r["label"] == m), None)
                cells.append("-" if row is None or not row["complete"] else cell(row, key))
            print(f"| {m if key == 'rel' else ''} | {name} | " + " | ".join(cells) + " |")
    print()
