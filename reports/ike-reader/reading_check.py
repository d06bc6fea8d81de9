"""How well a reading organism reads, beyond the held-record figure organism.json keeps:
teacher-forced exact match of reading rows (lifelong/reading.py) of 200 records it was
trained to read and of the 100 it never read, with their own phrasing and with their
phrasing put to another record's subject, each at the organism's context (64) and at 40
positions (less context before the fact). One fixed draw ("check"); run from the
repository root:

    python reports/ike-reader/reading_check.py lifelong/organisms/counterfact-bpe-reader
"""

from __future__ import annotations

import sys

from lifelong.methods.context import read_train_split
from lifelong.model import load_model
from lifelong.organism import OrganismConfig, collect_facts
from lifelong.pretrain import pad_rows, quick_accuracy
from lifelong.reading import KINDS, build_reading, split_facts


def main(model_dir: str) -> None:
    import json
    from pathlib import Path
    made = json.loads((Path(model_dir) / "organism.json").read_text())
    cfg = OrganismConfig(**made["organism"])
    lm = load_model(model_dir)
    records = list(read_train_split(cfg.reading))
    n_held = made["reading"]["held_records"]
    used, held = records[:-n_held], records[-n_held:]
    known = list(collect_facts(made["stream"]).pairs) + split_facts(records)
    print("| records | phrasing | context | " + " | ".join(KINDS) + " |")
    print("| --- | --- | ---: | " + " | ".join("---:" for _ in KINDS) + " |")
    for name, group in (("read in training (first 200)", used[:200]), ("never read (held)", held)):
        for phrasing, swap in (("own", 0.0), ("another subject", 1.0)):
            for limit in (64, 40):
                rows = build_reading(group, known, lm.tok, separator=cfg.reading_separator,
                                     variants=1, limit=limit, seed="check", context=used,
                                     swap=swap)
                accs = [quick_accuracy(lm.model, pad_rows(rows.of(k), lm.tok.pad_token_id, 10 ** 6))
                        for k in KINDS]
                print(f"| {name} | {phrasing} | {limit} | " + " | ".join(f"{a:.3f}" for a in accs) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
