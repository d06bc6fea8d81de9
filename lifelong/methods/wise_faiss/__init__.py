"""`wise-faiss`: a key-routed side memory after WISE (Wang et al. 2024, arXiv 2405.14768).

Not the paper's method (that is `wise`, `lifelong/methods/wise/`): its default router is the
nearest edit key in a FAISS index within a radius (GRACE's key and rule), every step is
projected off the earlier edits' keys (`protect`), and its default merge is the shards' sum
(`merge = "linear"`): `consolidate()` folds the shards into the memory and leaves the served
weights unchanged. Kept as a named variant: its results are reported (docs/wise.md).

A side copy of one FFN output projection (`layers.{L}.mlp.out`) holds the edits; the main
weight is never changed. A routed row is served by a side memory at all its tokens; a row
routed to the main memory is left bit for bit. Rows are routed one by one (mixed batches
are fine). Design, measurements and where this departs from the paper: docs/wise.md.

Routers (`router.py`): the paper's activation score, or (default, `router = "faiss"`) the
nearest edit key, its keys held in a FAISS index and searched exactly (float64, through the
distance sketch GRACE's lookups use: `_common/keytable.py`). Editing (`trainer.py`) trains a delta of the side memory with SGD on the edit's
target loss (plus the paper's margin terms when a router reads activation scores); with
`protect`, every step is projected off the span of the memory's earlier edit keys.

The FAISS router's radius is calibrated on the run's unrelated prompts as GRACE's is
(`claim_rate`, `_common/guard.py`): `key_radius` x key norm x one common factor (at most 1),
the largest at which at most `claim_rate` of the attach context's unrelated prompts are
routed to a side memory; the receipt records it (`radius_factor`).

Knowledge sharding (`memory.py`): shards of `shard_size` edits, each under its own random
gradient mask (`mask_ratio` of the entries, default, or of the output rows);
`consolidate()` folds the shards into the memory by their sum (or TIES / DARE,
`lifelong.merging`), cycle by cycle with disjoint masks. With row masks the shards of a
cycle touch disjoint rows, so a TIES merge of them is also their sum; with entry masks and
`protect`, each masked step is projected along its rows, the shards overlap, and TIES's
disjoint mean would average overlapping edits (on the dev stream that lost reliability: the
reason the default merge is a sum).

WISE-Retrieve (`mode = "retrieve"`) starts a new side memory every `memory_size` edits;
with `protect`, either mode also starts one when the newest holds `protect_share` x key
width facts (past that a memory leaves new edits too little null space). A re-edit of a
fact removes the older edits' keys. Retraction: `unroute` drops the edit's keys (its prompts
go back to the main memory, bit-identical) and re-applies the fact's previous edit if one is
left; `rebuild` retrains the memory from its log without the edit (exact: every random
choice of an edit derives from the seed and the edit id, masks from the seed and the shard's
position).

Layout: `config.py` (settings), `memory.py` (side memories, masks, protection), `router.py`,
`trainer.py` (one edit's optimisation), `method.py` (the method: serving, editing, merging,
retraction, state).
"""

from .._common.keys import router_tokens, row_keys
from .config import WiseFaissConfig
from .memory import SideMemory
from .method import WiseFaiss

__all__ = ["SideMemory", "WiseFaiss", "WiseFaissConfig", "router_tokens", "row_keys"]
