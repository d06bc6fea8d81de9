"""`ike`: IKE, in-context knowledge editing (Zheng et al., EMNLP 2023, "Can We Edit Factual
Knowledge by In-Context Learning?", arXiv 2305.12740). No weight ever changes and nothing is
trained: each edit is stored verbatim, and when the model is queried the stored edits
nearest to the query are written before it as demonstrations; the base model itself answers
the conditioned input.

Keys (`keys.py`): a text's key is the frozen base model's own hidden state, the output of one
block (`layer`, default the last) at the text's last prompt token, standardised per
dimension with statistics fitted once at attach (the context's unrelated and train-split
prompts, else its corpus, else none) and kept in the state. These are the features SERAC's
classifier reads, without its trained projection: IKE trains nothing.

Store (`memory.py`): each edit's request, its key and its demonstration tokens, in order; an
edit with an identical prompt (identical key) displaces the older one (the newest edit of an
input wins), and with `use_fact_identity` (default off) an edit displaces its fact's older
edits. Retrieval is an exact FAISS search (flat L2 over the served keys,
`lifelong.index.KeyIndex`), the k found re-sorted by exact distance, newest first among
equally near ones.

Demonstrations (`prompt.py`): an edit is written as its prompt's tokens, its target's tokens
and the separator's tokens (`separator`, "."), joined as token ids, never re-tokenised with
the query, so position j of a served row is position ``len(demonstrations) + j`` of its
conditioned input. Of the `demonstrations` (k, 32) nearest stored edits, the nearest is taken
first and further ones are added in order of distance while the demonstrations together with
the row (its prompt and its continuation in this forward) fit the model's context
(`max_positions`); the first that does not fit ends the list (the farthest are dropped
first, the row is never cut, no demonstration is cut in part). They are written farthest
first: the nearest is the last text before the query. When not even the nearest fits, the
row is answered by the base model unchanged.

Scope (`scope`): the paper writes demonstrations before every query, with no scope test, and
so does the default ("all"): an unrelated prompt is conditioned on its nearest edits too, and
locality is measured on exactly that. "radius" (not in the paper) conditions a row only when
its nearest key is within `radius` x that key's norm (GRACE's relative deferral radius);
such a row then gets its k nearest demonstrations, as under "all", whether or not they are
within the radius themselves.

Serving (`method.py`): hooks on the token embedding (the batch's ids), on the key block (its
output) and on the output projection ``lm_head``, as SERAC's: per row its key is read at its
last prompt token (scoring's `ForwardInfo.prompt_end`; a bare forward: its last token), the
demonstrations are chosen, the conditioned rows run through the same base model with the
serving hooks suspended, and their logits at every real position are replaced by the ones of
the conditioned input at the same token (`_common.conditioning.replace_rows`). Other rows are
bit-identical to the base model's. The key reads prompt tokens only, so teacher-forced
scoring and step-by-step generation route a row alike, and generation through the hooks is
greedy decoding of the base model on the conditioned input. The demonstrations are fitted to
the row as it is in each forward, so near the context limit a generation step (prompt and
the tokens generated so far) may hold more of them than teacher forcing (prompt and the whole
target); the two agree whenever prompt, target and the chosen demonstrations fit.

Cost: an edit costs two forwards (the receipt's losses) and one to read its key. A query
costs one forward of the conditioned input per conditioned row beside the ordinary one, so
its latency grows with k and with the length of the written context, not with the number of
edits held, but for the FAISS search: exact, linear in the keys held (about 10 ms for a batch
of 8 queries over 10,000 keys of width 768 on one busy core). The runtime measures query
latency; nothing special is recorded here.

Capabilities: `Routing` (a prompt goes to the served index of its nearest demonstration,
None: no demonstration is written; fitted to the prompt alone) and `Retractable`, exact: nothing but the log depends on
an edit, so removing it from the log is the memory that never had it. `memory_kind =
"hooks"`; `detach` removes the hooks. State: the log (requests, demonstration tokens, keys),
the standardisation and the key block.

Settings (ours vs the paper's, for GPT-J 6B on CounterFact):

===================  ====================================  ==================================
setting              ours                                  paper
===================  ====================================  ==================================
layer (the key)      the base model's last block at the    a separate sentence encoder (all-
                     prompt's last token, standardised,    MiniLM in EasyEdit's port), cosine
                     Euclidean distance                    similarity
demonstrations (k)   32, as many of the nearest as fit     32
                     the context with the row
separator            "." after "{prompt} {target}"         a "New Fact: ... Prompt: ..."
                                                           template with newlines
scope, radius        "all" (every query conditioned);      every query conditioned
                     "radius" 0.5 x the key's norm
order                nearest last, next to the query       sorted by similarity, the most
                                                           similar next to the input (as we
                                                           read it)
use_fact_identity    off                                   (no such oracle)
===================  ====================================  ==================================

Not calibrated or measured here yet. A development check while writing it (one seed, 30
edits of streams/quickstart.jsonl, teacher-forced exact match; not a result) found what the
built-in model predicts: it was never trained to read a fact from its context (SERAC's
counterfactual model starts at a loss of ~13 for the same reason), so IKE, which relies on
in-context learning alone, barely edits it (0.07 of the edits' own prompts), and under scope
"all" the demonstrations change nearly every unrelated answer; its 48 positions hold about 3
demonstrations. The method is meant for pretrained models that learn in context.

Deviations from the paper:
  * what is retrieved: the paper's demonstrations are examples from the data set's training
    corpus, of three kinds (copy: a new fact and its own prompt; update: a new fact and a
    paraphrase; retain: a new fact and an unrelated prompt answered with the old answer),
    and the edit being evaluated is written as the "New Fact" right before the query. Here,
    in a stream of edits, the demonstrations are the stored edits themselves (each a fact stated, with no probe
    after it) and nothing from a training corpus is written: no update or retain
    demonstration shows the model when not to use a fact, so locality under scope "all" is
    expected to be worse than the paper's;
  * the retriever: the base model's own hidden state, standardised, and Euclidean distance,
    instead of a separate sentence encoder and cosine similarity (no second model to hold);
  * the format: each edit's prompt and target as token ids followed by the separator ".",
    the query right after the last one, instead of a textual template (SERAC's conditioning
    format; template words would also take context positions that small models, 48 on the
    built-in one, do not have);
  * the context: the paper writes all k = 32 (GPT-J's 2048 positions hold them); here k is
    an upper bound and what does not fit the model's context is dropped, farthest first;
  * scope "radius" and `use_fact_identity` are ours (off by default).

Layout: `config.py` (settings), `keys.py` (features, standardisation), `memory.py` (the log
and its FAISS index), `prompt.py` (which demonstrations are written, in which order),
`method.py` (attach, hooks, edit, routing, retraction, state).
"""

from .config import IkeConfig
from .memory import DemoMemory
from .method import Ike

__all__ = ["DemoMemory", "Ike", "IkeConfig"]
