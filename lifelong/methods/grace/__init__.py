"""`grace`: GRACE (Hartvigsen et al. 2023, "Aging with GRACE"), a codebook at one layer.

Where: one MLP output projection, ``layers.{layer}.mlp.out`` (default: the late-middle layer
of `layers.default_edit_layer`). Its *output* is replaced; the key is, by default, its *input*
(``key="mlp.out"``: the MLP's hidden activation, what the paper and the reference framework
use, 4x the model width), or the input of the whole MLP block (``key="mlp"``: the normalised
residual stream, the model width). A row's key token is its last *prompt* token
(`_common/keys.py`), both while scoring prompt+target teacher-forced and while generating.
The key is the activation there (``key_token="last"``, the paper's choice) or its mean over
the prompt span (``"mean"``: carries the subject, which a small model's last-token
activation at a middle layer barely does, at the price of even less generalization).

What an edit stores: its key(s), a value (one vector of the layer's output width, trained
with Adam for at most `steps` steps so that the model produces the target, starting from the
layer's own output), the target's tokens and an initial deferral radius `eps`. A re-edit of a
fact (same ``EditRequest.fact``) displaces every entry of that fact and also trains an entry
for each displaced prompt, so the newest value answers the old prompts too.

Lookup (per row, in the serving hook): the `candidates` nearest entries by exact float64
distance (`_common/nearest.py`: one matrix product per batch shortlists them; the HNSW index
of `lifelong.index.KeyIndex` instead above `approximate_above` entries); the nearest whose
radius covers the query wins, and its value replaces the layer output at the positions of
`replace`. Other rows are left bit-identical. Placement's range searches go through the
FAISS index. The conflict rules and exact retraction: `codebook.py`.

Radius calibrated on the run's own unrelated prompts (`claim_rate`, not in the paper, which
tunes eps per data set by hand): lookups scale every radius by one common factor (at most 1,
never below the distance to an entry's farthest member key, so an edit keeps its own prompt),
the largest at which at most `claim_rate` (0.01) of the attach context's unrelated prompts (the
stream's locality prompts never probed while the method is attached) lie within reach of an
entry (`_common/guard.py`; the per-entry figures it reads are kept across edits and
recomputed only for the entries an edit touches, `calibration.py`). Where eps already claims fewer, nothing changes (the built-in
model, ZsRE); on a CounterFact organism, whose paraphrases and neighbourhood prompts lie at the
same key distances, it shrinks the radii to about 0.2 x the key's norm: locality is kept and
generalization pays. With no unrelated prompts (every locality prompt probed) it is off; the
edit receipt records the factor (`radius_factor`).

Defaults scaled from the paper (eps 1.0 and ~100 value steps on 1000s-wide T5/LLaMA
activations): `eps` is measured in units of the key's own norm (``eps_relative``), so one
setting means the same on a 128-wide and a 4096-wide model, and the value's learning rate in
units of the layer output's RMS.

Layout: `config.py` (settings), `codebook.py` (placement rules, lookups, retraction),
`calibration.py` (the radius factor kept across edits), `method.py` (hooks, key capture,
value training).
"""

from .codebook import Codebook
from .config import GraceConfig
from .method import Grace

__all__ = ["Codebook", "Grace", "GraceConfig"]
