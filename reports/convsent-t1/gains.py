"""Sentiment success per method and its gain over the unedited organism (`none`), seed by
seed, from one or more `lifelong sentiment score --json` files (the `none` runs may be in
another file than the methods', as long as the seeds replayed the same edits):

    python reports/convsent-t1/gains.py reports/convsent-t1/sentiment-loc.json \
        reports/convsent-t1/sentiment-loc-locate.json

Prints one Markdown row per label: success on the edit's question / on its rephrasings
(mean ± std over seeds), then the gain over `none` per seed (mean ± std), question /
rephrasings.
"""

import json
import sys

from lifelong.metrics_seeds import mean_std


def pm(values: list[float], signed: bool = False) -> str:
    """'mean ± sample std' (the spread left out for one seed), as the comparison table."""
    st = mean_std(values)
    spread = f" ± {st['std']:.3f}" if st["std"] is not None else ""
    return f"{st['mean']:{'+' if signed else ''}.3f}{spread}"


def main(paths: list[str]) -> None:
    runs = [r for p in paths for r in json.load(open(p))["runs"] if r["status"] == "complete"]
    base = {r["seed"]: r for r in runs if r["label"] == "none"}
    labels = list(dict.fromkeys(r["label"] for r in runs if r["label"] != "none"))
    print("| method | sentiment success (question / rephrasings) | gain over `none` | seeds |")
    print("|---|---|---|---|")
    for label in labels:
        mine = sorted((r for r in runs if r["label"] == label and r["seed"] in base),
                      key=lambda r: r["seed"])
        success = " / ".join(pm([r[k]["success"] for r in mine]) for k in ("rel", "gen"))
        gain = " / ".join(pm([r[k]["success"] - base[r["seed"]][k]["success"] for r in mine],
                                   signed=True) for k in ("rel", "gen"))
        cells = [success, gain]
        print(f"| `{label}` | {' | '.join(cells)} | {', '.join(str(r['seed']) for r in mine)} |")


if __name__ == "__main__":
    main(sys.argv[1:])
