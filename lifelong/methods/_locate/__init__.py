"""What the locate-then-edit family shares (ROME, MEMIT, AlphaEdit; not a method: the
registry skips folders starting with "_"):

* `stats`   - the key covariance C = E[k kᵀ] of an MLP output projection's input over a
              text corpus, computed once per (model fingerprint, layer, corpus sample) and
              kept in the attach context's cache, with its cost;
* `lookup`  - where an edit is made (the subject's last token, or the prompt's last), the
              random prefix contexts, and the key k* averaged over them;
* `values`  - the value optimisation: the vector v* (z) that makes the model output the
              target, with ROME's KL term, weight decay and norm clamp;
* `method`  - the base class the three methods share: weights edited in place, a log of
              edits replayed from the base weights for exact retraction, state, detach.
"""
