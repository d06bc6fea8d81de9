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

Demonstrations from the train split (`bank.py`, the paper's): with a train split
(`stream.train_file`), each train record gives a copy, an update and a retain demonstration
(its fact followed by its own prompt, its first rephrase, or its first locality prompt, with
the answer to give after reading the fact: the new target, or the locality prompt's own
answer); a row gets those of the records nearest to its nearest stored edit, at most
`corpus_demonstrations` (32), written before that edit, which is written last as the new
fact. Without a train split only stored edits are written (a variant; attach says so).

Store (`memory.py`): each edit's request, its key and its demonstration tokens, in order; an
edit with an identical prompt (identical key) displaces the older one (the newest edit of an
input wins), and with `use_fact_identity` (default off) an edit displaces its fact's older
edits. Retrieval is an exact FAISS search (flat L2 over the served keys,
`lifelong.index.KeyIndex`), the k found re-sorted by exact distance, newest first among
equally near ones.

Writing (`prompt.py`): an edit is written as its prompt's tokens, its target's tokens and
the separator's tokens (`separator`, "."), joined as token ids, never re-tokenised with the
query, so position j of a served row is position ``len(written) + j`` of its conditioned
input. In priority order: the nearest stored edit (the new fact), the train split's
demonstrations nearest to it, then the further nearest stored edits (`demonstrations` in
all, 32); each is taken while everything taken with the row (its prompt and its continuation
in this forward) fits the model's context (`max_positions`); the first that does not fit
ends the list (the row is never cut, nothing is cut in part). They are written in reverse
priority: the new fact is the last text before the query. When not even the nearest edit
fits, the row is answered by the base model unchanged.

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

Capabilities: `Routing` (a prompt goes to the served index of its nearest stored edit,
None: nothing is written; fitted to the prompt alone) and `Retractable`, exact: nothing but the log depends on
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
demonstrations (k)   32 stored edits, the nearest as the   1 (the fact being evaluated),
                     new fact, then further ones after     after 32 demonstrations from
                     the train split's demonstrations, as  the training corpus
                     many as fit the context with the row
corpus_demonstra-    32 copy/update/retain demonstrations  32, from the training corpus,
tions                from the train split, of the records  nearest to the new fact
                     nearest to the new fact (by its key)  (sentence similarity)
separator            "." after "{prompt} {target}"         a "New Fact: ... Prompt: ..."
                                                           template with newlines
scope, radius        "all" (every query conditioned);      every query conditioned
                     "radius" 0.5 x the key's norm
order                nearest last, next to the query       sorted by similarity, the most
                                                           similar next to the input (as we
                                                           read it)
use_fact_identity    off                                   (no such oracle)
===================  ====================================  ==================================

Not calibrated. On the built-in model and the organisms, which were never trained to read a
fact from their context (SERAC's counterfactual model starts at a loss of ~13 for the same
reason), IKE barely edits (0.03 of 1000 sequential edits, README) and under scope "all" the
demonstrations change many unrelated answers. Measured on a model that reads as well:
`lifelong/organisms/counterfact-bpe-reader`, taught to read facts written in exactly the
format below (`[organism] reading`, lifelong/reading.py), in reports/ike-reader (a
context of 64 positions).

Deviations from the paper:
  * several stored edits: in a stream the edits held are all "new facts"; the nearest is
    written as the paper's one new fact and, where the context has room after the train
    split's demonstrations, further near ones before them;
  * without a train split no copy/update/retain demonstration is written (the stored edits
    alone: nothing shows the model when not to use a fact, so locality under scope "all" is
    expected to be worse than the paper's); attach says so;
  * the retriever: the base model's own hidden state, standardised, and Euclidean distance,
    instead of a separate sentence encoder and cosine similarity (no second model to hold);
  * the format: token ids, each part "prompt target ." (a demonstration: the fact, then the
    probe and its answer), the query right after the new fact, instead of a textual template
    "New Fact: ... Prompt: ..." (template words would also take context positions that small
    models, 48 on the built-in one, do not have);
  * the context: the paper writes all k = 32 (GPT-J's 2048 positions hold them); here k is
    an upper bound and what does not fit the model's context is dropped, lowest priority
    first;
  * scope "radius" and `use_fact_identity` are ours (off by default).

Layout: `config.py` (settings), `keys.py` (features, standardisation), `bank.py` (the train
split's demonstrations), `memory.py` (the log and its FAISS index), `prompt.py` (which demonstrations are written, in which order),
`method.py` (attach, hooks, edit, routing, retraction, state).
"""

from .config import IkeConfig
from .memory import DemoMemory
from .method import Ike

__all__ = ["DemoMemory", "Ike", "IkeConfig"]
