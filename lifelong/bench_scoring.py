"""`lifelong bench scoring`: what probing costs, with the output projection computed only where
a figure reads it (`scoring.forward_logits`'s `keep`) against every position (as before).

The probes are a stream's edit prompts with their targets (both protocols, `score_answers`)
and its locality prompts with their answers (held-out perplexity, `health.perplexity`), on
one model. The two ways run interleaved, in alternating order, `rounds` times, so that load on
the machine hits both alike; the figures each gives are compared (token figures equal,
likelihoods to float rounding), so the bench also says whether skipping changed a result.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

from .bench import _pct


def every_position(lm):
    """A copy of `lm` whose forward takes no `logits_to_keep`: its output projection runs over
    every position, as scoring did before it kept only the read ones (the same weights)."""
    from .model import LM
    base = type(lm.model)

    class EveryPosition(base):
        def forward(self, input_ids=None, attention_mask=None, position_ids=None, **kw):
            kw.pop("logits_to_keep", None)
            return base.forward(self, input_ids=input_ids, attention_mask=attention_mask,
                                position_ids=position_ids, **kw)

    twin = EveryPosition(lm.model.config).to(lm.device).eval()
    twin.load_state_dict(lm.model.state_dict())
    return LM(twin, lm.tok, lm.name, lm.path)


def probes(stream: str, n: int) -> tuple[list[str], list[tuple[str, ...]], list[tuple[str, str]]]:
    """The first `n` edits' prompts and targets, and up to `n` of their locality pairs."""
    from .stream import Edit, parse_stream
    edits = [e for e in parse_stream(stream).events if isinstance(e, Edit)][:n]
    loc = [(p.prompt, p.answer) for e in edits for p in e.locality][:n]
    return [e.prompt for e in edits], [(e.target,) for e in edits], loc


def bench_scoring(model: str | None, stream: str, n: int = 200, rounds: int = 3,
                  device: str = "cpu", echo=print) -> dict[str, Any]:
    """Seconds per pass over the probes, kept against every position (module docstring)."""
    from .health import perplexity
    from .model import load_model
    from .scoring import score_answers

    lm = load_model(model, device)
    full = every_position(lm)
    prompts, answers, loc = probes(stream, n)
    times: dict[str, dict[str, list[float]]] = {w: {"score": [], "perplexity": []}
                                                for w in ("kept", "every")}
    results: dict[str, tuple] = {}
    for r in range(rounds):
        for way in ("kept", "every") if r % 2 == 0 else ("every", "kept"):
            m = lm if way == "kept" else full
            t0 = time.perf_counter()
            scores = score_answers(m, prompts, answers)
            t1 = time.perf_counter()
            ppl = perplexity(m, loc) if loc else float("nan")
            t2 = time.perf_counter()
            times[way]["score"].append((t1 - t0) * 1000)
            times[way]["perplexity"].append((t2 - t1) * 1000)
            results[way] = (scores, ppl)
    (kept, ppl_k), (every, ppl_e) = results["kept"], results["every"]
    out = {"model": model or "builtin", "stream": stream, "prompts": len(prompts),
           "locality_pairs": len(loc), "rounds": rounds, "device": device,
           "ms": {w: {k: _pct(v) for k, v in t.items()} for w, t in times.items()},
           "token_figures_equal": all(dataclasses.replace(a, nll=0.0) == dataclasses.replace(b, nll=0.0)
                                      for a, b in zip(kept, every)),
           "largest_nll_difference": max((abs(a.nll - b.nll) for a, b in zip(kept, every)), default=0.0),
           "perplexity": {"kept": ppl_k, "every": ppl_e},
           "perplexity_equal_to_rounding": math.isclose(ppl_k, ppl_e, rel_tol=1e-6)
           if loc else True}
    for what in ("score", "perplexity"):
        k, e = out["ms"]["kept"][what]["p50"], out["ms"]["every"][what]["p50"]
        echo(f"{what:>10}: kept {k:8.1f} ms   every position {e:8.1f} ms   x{e / k if k else 0:.2f}")
    echo(f"token figures equal: {out['token_figures_equal']}; largest nll difference "
         f"{out['largest_nll_difference']:.2e}; perplexity {ppl_k:.6g} / {ppl_e:.6g}")
    return out
