"""The edit gradient's factors, the editor's update served through hooks, and the editor's
meta-training on a train split (with its cache entry).

Factors (`factors`): one forward of prompt + target with, on every edited projection, a
`Trace` of its input ``u`` and output ``y``, the first edited projection's input made a leaf
that requires a gradient (`replace_input`, so the graph exists inside `frozen(model)`), then
``δ = ∂L/∂y`` by `torch.autograd.grad`, L the target's mean NLL (`scoring.batch_target_loss`).
Rows: every real token whose ``u`` and ``δ`` are both non-zero (padding and the last token,
which no loss term sees, drop out). ΔW's fine-tuning gradient is ``Σ_rows δ uᵀ``.

Post-edit forward (`edited`): each edited projection's output ``y`` becomes ``y + x ΔWᵀ``
(`rewrite_output`): the function of the weights ``W + ΔW`` without touching ``W``, and
differentiable in ΔW, so the meta-loss reaches the editor.

Training (`train_editor`, the paper's algorithm 1, one edit per batch): for each training
edit, the factors at the base weights (the editor's normalisation statistics observe them
first), the editor's ΔW, then ``c_edit · NLL(target | rephrase)`` and ``c_loc · KL(pre ‖
post)`` over a locality prompt + answer; `accumulate` edits per update (`_common.loop.
optimise`; Adam: the editor at `lr`, the step sizes at `lr_lr`; gradient norm clipped to
`grad_clip` by an optimizer pre-step hook). Deterministic from the seed: the order of edits
(a seeded permutation per epoch), the rephrase and locality pair of each (seeded draws),
and V's initialisation.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ...model import LM
from ...nethook import Trace, replace_input, rewrite_output
from ...progress import Reporter
from ...scoring import batch_target_loss, encode_pairs, forward_logits
from .._common.checkpoint import Checkpoint, ResumableDraws
from .._common.loop import Step, frozen, optimise
from .._common.rng import seeded_rng
from ..context import TrainRecord
from .config import MendConfig
from .editor import MendEditor

#: bump when what is cached changes meaning (invalidates older entries)
FORMAT = 1


def factors(lm: LM, modules: Sequence[nn.Module], batch
            ) -> tuple[float, list[tuple[torch.Tensor, torch.Tensor]]]:
    """The target loss of `batch` (an `encode_pairs` batch) and, per module (in forward
    order, the first one earliest), the rows (u, δ) of its fine-tuning gradient (float32,
    detached)."""
    with contextlib.ExitStack() as stack, frozen(lm.model), torch.enable_grad():
        stack.enter_context(replace_input(modules[0], lambda x: x.detach().requires_grad_()))
        traces = [stack.enter_context(Trace(m, capture="both", detach=False)) for m in modules]
        loss = batch_target_loss(lm, batch)
        grads = torch.autograd.grad(loss, [t.output for t in traces])
    real = batch[1].to(lm.device).bool()
    out = []
    for t, g in zip(traces, grads):
        u, d = t.input.detach()[real].float(), g[real].float()
        keep = (u != 0).any(-1) & (d != 0).any(-1)
        out.append((u[keep], d[keep]))
    return float(loss.detach()), out


def _plus(delta: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y + (x.to(delta.dtype) @ delta.T).to(y.dtype)
    return fn


@contextlib.contextmanager
def edited(modules: Sequence[nn.Module], deltas: Sequence[torch.Tensor]) -> Iterator[None]:
    """Inside the block the model computes with ``W + ΔW`` on each module (see above)."""
    with contextlib.ExitStack() as stack:
        for m, d in zip(modules, deltas):
            stack.enter_context(rewrite_output(m, _plus(d)))
        yield


def kl_pre_post(pre: torch.Tensor, post: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the real tokens of KL(pre ‖ post) between next-token distributions."""
    lp, lq = torch.log_softmax(pre.float(), -1), torch.log_softmax(post.float(), -1)
    kl = (lp.exp() * (lp - lq)).sum(-1)
    m = mask.to(kl.device).float()
    return (kl * m).sum() / m.sum()


def split_digest(records: Sequence[TrainRecord]) -> str:
    """A hash of the train split's content (requests, rephrases, locality pairs, and the
    task where a record names one: a split without tasks hashes as it did before them)."""
    rows = [[vars(r.request), list(r.rephrases), [list(p) for p in r.locality]]
            + ([r.task] if r.task else []) for r in records]
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16]


def cache_entry(cfg: MendConfig, layer_ids: Sequence[int], seed: int, digest: str,
                skip: Sequence[str] = ()) -> str:
    """The cache entry's name: every setting that shapes the trained editor, the edited
    layers, the training seed and the train split's hash (never `retract`, nor the
    settings in `skip`: ones that act only after training)."""
    keys = {k: v for k, v in vars(cfg).items()
            if k not in ("retract", "editor_seed", "layers", *skip)}
    spec = json.dumps({"format": FORMAT, **keys, "layers": list(layer_ids), "seed": seed,
                       "split": digest}, sort_keys=True)
    return "editor-" + hashlib.sha256(spec.encode()).hexdigest()[:16]


@dataclass
class Training:
    """What training did: updates taken, seconds, the mean loss of each update."""

    steps: int = 0
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)


class _Examples(ResumableDraws):
    """The training edits in a seeded order: a fresh permutation of the records per epoch;
    per edit its rephrase (the prompt itself when it has none) and locality pair (the next
    record's prompt and target when it has none)."""

    def __init__(self, records: Sequence[TrainRecord], seed: int):
        self.records, self.rng, self.order = list(records), seeded_rng(seed, "mend-train"), []

    def next(self) -> tuple[TrainRecord, str, tuple[str, str]]:
        if not self.order:
            self.order = list(range(len(self.records)))
            self.rng.shuffle(self.order)
        i = self.order.pop()
        r = self.records[i]
        rephrase = self.rng.choice(r.rephrases) if r.rephrases else r.request.prompt
        if r.locality:
            loc = self.rng.choice(r.locality)
        else:
            other = self.records[(i + 1) % len(self.records)].request
            loc = (other.prompt, other.target)
        return r, rephrase, loc


def meta_loss(lm: LM, modules: Sequence[nn.Module], editor: MendEditor, cfg: MendConfig,
              record: TrainRecord, rephrase: str, loc: tuple[str, str]) -> torch.Tensor:
    """One training edit's loss, differentiable in the editor (the model is frozen)."""
    req = record.request
    _, facs = factors(lm, modules, encode_pairs(lm, [req.prompt], [req.target]))
    for i, (u, d) in enumerate(facs):
        editor.observe(i, u, d)
    deltas = [editor.delta(i, u, d) for i, (u, d) in enumerate(facs)]
    loc_batch = encode_pairs(lm, [loc[0]], [loc[1]])
    with torch.no_grad():
        pre = forward_logits(lm, *loc_batch[:3])
    with edited(modules, deltas):
        l_edit = batch_target_loss(lm, encode_pairs(lm, [rephrase], [req.target]))
        l_loc = kl_pre_post(pre, forward_logits(lm, *loc_batch[:3]), loc_batch[1])
    return cfg.c_edit * l_edit + cfg.c_loc * l_loc


def train_editor(lm: LM, modules: Sequence[nn.Module], editor: MendEditor, cfg: MendConfig,
                 records: Sequence[TrainRecord], seed: int, label: str = "mend",
                 checkpoint: Checkpoint | None = None) -> Training:
    """Meta-train `editor` in place (module docstring); the model's weights are not changed.
    With a `checkpoint`, the training resumes from its saved state and saves its own as it
    goes (`_common.checkpoint`: the same updates as an uninterrupted training)."""
    examples = _Examples(records, seed)
    opt = torch.optim.Adam([{"params": editor.editor_parameters(), "lr": cfg.lr},
                            {"params": [editor.edit_lrs], "lr": cfg.lr_lr}])
    params = list(editor.parameters())

    def clip(*_: object) -> None:
        nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    opt.register_step_pre_hook(clip)
    result, ck = Training(), checkpoint or Checkpoint()
    saved = ck.resume(editor, opt, examples)
    result.losses = [float(x) for x in saved.get("losses", [])]
    prior = float(saved.get("seconds", 0.0))
    resumed = len(result.losses)  # one loss per update taken (`fresh_last=False`)
    report = Reporter(every_seconds=10.0)
    report.start(f"{label} editor training", cfg.steps, unit="updates")
    if resumed:
        report.update(resumed, f"resumed at update {resumed}")
    start = time.monotonic()

    def state() -> dict:
        return ck.state(editor, opt, examples, losses=list(result.losses),
                        seconds=prior + time.monotonic() - start)

    def step() -> Step:
        # the first accumulate-1 edits are backpropagated here, one graph at a time; the
        # loop backpropagates the last (gradients add up: it zeroed them before this call)
        total = 0.0
        for k in range(cfg.accumulate):
            loss = meta_loss(lm, modules, editor, cfg, *examples.next()) / cfg.accumulate
            total += float(loss.detach())
            if k < cfg.accumulate - 1:
                loss.backward()
        result.losses.append(total)
        report.update(len(result.losses), f"loss {total:.4f}")
        return Step(loss, total)

    taken = 0
    try:
        with frozen(lm.model):
            if cfg.steps > resumed:
                taken = optimise(opt, step, cfg.steps - resumed, fresh_last=False,
                                 after_update=lambda: ck.at_update(state)).steps
    finally:
        report.stop()
    result.steps, result.seconds = resumed + taken, prior + time.monotonic() - start
    return result
