"""Run the `lifelong` CLI with `KeyTable.nearest` as it was before stop 38: a FAISS flat
search (one scan per query, float32 squared distances), for A/B timings of the router.

    python reports/bench/wise_router_before.py bench wise --keys 1000,4000,10000
"""
import sys

from lifelong.cli import main
from lifelong.methods._common.keytable import KeyTable


def faiss_nearest(self, queries, within=None):  # `within`: ignored, as the code before had none
    dist, ids = self.index.search(queries, k=1)
    return [(d ** 0.5, i) for d, i in zip(dist[:, 0].tolist(), ids[:, 0].tolist())]


if __name__ == "__main__":
    KeyTable.nearest = faiss_nearest
    sys.argv = ["lifelong"] + sys.argv[1:]
    main()
