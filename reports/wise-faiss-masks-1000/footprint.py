"""Where `wise-faiss`'s footprint goes, at the entry-mask defaults ("new") or the row-mask /
TIES / momentum 0.9 settings before them ("old"): the first N edits of
streams/test/edits-1000.jsonl made through the Python API, consolidated every 250 edits (the
scenario's merge_every), no unrelated prompts (so no kept pool distances).

    python reports/wise-faiss-masks-1000/footprint.py 1000 new
    python reports/wise-faiss-masks-1000/footprint.py 1000 old

Printed on this machine (one thread), for 1000 and 900 edits, identical for new and old:
15.2 MB at 1000 (21 memories, merged deltas 12.4 MB, key index 2.8 MB, no shard held) and
17.3 MB at 900 (19 memories, the open shards 2.4 MB).
"""

import json
import sys
import time

import lifelong
from lifelong.methods.base import tensor_bytes

OLD = {"mask_unit": "row", "merge": "ties", "lr": 4.0, "momentum": 0.9}


def main(n: int, which: str) -> None:
    events = [json.loads(line) for line in open("streams/test/edits-1000.jsonl", encoding="utf-8")]
    edits = [e for e in events if e["kind"] == "edit"][:n]
    ed = lifelong.open("builtin", method="wise-faiss", settings=OLD if which == "old" else {})
    m = ed.memory
    start = time.time()
    for i, e in enumerate(edits, 1):
        ed.edit(e["prompt"], e["target"], edit_id=e["id"], fact=e["fact"])
        if i % 250 == 0:
            ed.consolidate()
    mems = m.memories
    print(f"{which}: {n} edits in {time.time() - start:.0f} s, footprint {m.footprint() / 1e6:.1f} MB")
    print(f"  memories {len(mems)}, edits per memory {[len(x.log) for x in mems]}")
    parts = {"merged": [x.merged for x in mems], "open shard": [x.current for x in mems],
             "masks": [x.mask for x in mems], "closed shards": [s for x in mems for s in x.shards]}
    print("  " + ", ".join(f"{k} {tensor_bytes(*v) / 1e6:.1f} MB" for k, v in parts.items()))
    print(f"  key index {m.table.index.nbytes() / 1e6:.1f} MB, tombstones "
          f"{m.tombs.index.nbytes() / 1e6:.1f} MB, kept pool distances {m._kept.nbytes() / 1e6:.1f} MB")


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
