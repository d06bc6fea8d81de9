"""What several methods share (not methods: the registry skips folders starting with "_"):

* `loop`     - `frozen(model)` and the one edit loop (`optimise`) with its receipt;
* `hooks`    - `Hooks`: a method's serving hooks, opened at attach and suspended while the
               method captures keys or trains (modes are which nethook context is open);
* `keys`     - where a row's key is read (its last prompt token, or the prompt's mean) and
               which positions a value replaces;
* `keytable` - a FAISS index of edit keys, each labelled with its memory and its edit;
* `facts`    - `as_seen`: a request without the stream's fact oracle (`use_fact_identity`);
* `conditioning` - an edit written before an input as token ids, a batch's rows served by a
               model on such conditioned inputs, and `RowServed`, the serving hooks that do it
               (SERAC's counterfactual model, IKE);
* `editlog`  - the edits of a memory-based editor, verbatim, and which of them are served;
* `features` - a prompt's feature read from a frozen block, and its standardisation;
* `replayed`, `trained`, `saved`, `ffn` - weights edited in place with exact retraction by
               replay; editors trained at attach and cached; a saved network; side FFN units.
"""
