"""`lora`: LoRA fine-tuning (Hu et al. 2021) as an editing method, on `peft`'s LoRA layers.

One low-rank adapter (A: rank x in, B: out x rank, B starting at zero, A as peft initialises
it) sits on the chosen projections of the chosen layers; every edit of the stream trains the
same adapter further (the continual setting: one adapter accumulates all edits, as
EasyEdit's sequential LoRA reuses its peft model), with `ft`'s edit loop (`FineTune.edit`:
Adam on the masked target loss, `stop_loss`, a batch learnt jointly). Only A and B learn;
the base weights get no gradient.

Between edits the model holds plain modules whose weights are `W = base + alpha / rank *
B @ A` (the adapter merged), so it serves through its ordinary forward, `memory_kind` is
"weights" and `lifelong export` writes a plain Hugging Face model. For the span of one
optimisation `LoraAdapter.tuning` writes `base` back, injects peft's LoRA layers
(`peft.LoraModel`) holding the adapter's A and B, and after it keeps A and B, removes the
layers (`unload`: the original module objects return, requires-grad flags restored) and
merges again. The merge is computed here, in float32 from A and B, the same way every time,
so `state_dict` (A, B, the edit count) loads to bit-identical weights; `detach` writes the
pre-stream weights back. peft is an optional extra, imported when the method is built.

Defaults are EasyEdit's LoRA hyper-parameters (`hparams/LoRA/llama-7b.yaml`: rank 8,
lora_alpha 32, lora_dropout 0.1, lr 5e-3, num_steps 70, weight_decay 0, layers [] = every
layer, target_modules q_proj and v_proj). Deviations, named:

* targets: `lifelong.layers` names no query or value projection (GPT-2 and GPT-NeoX fuse
  q, k and v into one matrix), so the default adapts the attention output projection
  (`attn.out`), the attention projection every family has; `mlp.in` and `mlp.out` may be
  added (EasyEdit's commented alternative is up_proj and down_proj);
* early stop: the loop stops once the target loss is below `stop_loss` (1e-2, as `ft-m`);
  EasyEdit runs all num_steps (its loss check is commented out);
* dropout acts while an edit trains (the adapter's dropout modules alone are put in training
  mode; the model stays in eval mode), with masks drawn from a generator seeded by the run
  seed and the edit ids, so a replayed edit is identical; EasyEdit's LoRA code never puts
  its model (loaded in eval mode) in training mode, so its dropout likely never fires
  (`dropout = 0` is that);
* plain LoRA: EasyEdit's `lora_type` may also select AdaLoRA (its GPT2-XL file does).

Sequential edits train one adapter by default, as EasyEdit does (its behaviour is the
reference's). `shard_edits = N` gives each shard of N edits its own adapter instead: a full
shard's adapter is merged into the base (`LoraAdapter.fold`, peft's merge_and_unload: the
served weights do not move) and the next shard trains a fresh one, so the stream is no longer
confined to one rank-`rank` subspace (the merge-and-restart of ReLoRA, Lialin et al. 2023);
a shard's adapter starts from the weights every earlier shard left.

Serving the merged weight differs from the adapter's unmerged forward used in training by
float rounding only. Not Retractable: every edit of a shard trains the same adapter, and a
shard's change is entangled with every later one.

`LoraAdapter` is shared with `f-learning` (`tuner = "lora"`), whose forgetting trains a
fresh adapter on the old values and subtracts it from the base (`subtract_fitted`).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from .. import layers
from ..config import setting
from ..errors import ConfigError
from ..model import LM
from ._common.loop import LoopResult, Step, frozen, optimise
from ._common.rng import seeded_rng
from .base import EditRequest, tensor_bytes
from .context import AttachContext
from .ft import FineTune

Target = Literal["attn.out", "mlp.in", "mlp.out"]
_ADAPTER = "lifelong"  # peft's name for the adapter while it is injected


def require_peft(who: str) -> Any:
    """The `peft` module, or a one-line ConfigError naming the optional extra."""
    try:
        import peft
    except ImportError:
        raise ConfigError(f"{who} needs the optional extra: pip install -e '.[peft]'") from None
    return peft


def _clones(tensors: Sequence[torch.Tensor] | None) -> list[torch.Tensor] | None:
    return None if tensors is None else [t.detach().clone() for t in tensors]


@contextlib.contextmanager
def _seeded(device: torch.device, seed: int) -> Iterator[None]:
    """The global generators (CPU, and the model's CUDA device) seeded inside, restored after."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


class LoraAdapter:
    """One LoRA adapter on the projections `names` of `model` (module docstring), kept
    outside the model between optimisations. `base`: the weights (out, in) the adapter is
    added to, the pre-stream ones until `subtract_fitted` moves them; `a`, `b`: the adapter
    (None until its first optimisation, which takes peft's initialisation)."""

    def __init__(self, model: nn.Module, names: Sequence[str], *, rank: int, alpha: float,
                 dropout: float, seed: int, who: str):
        self.peft = require_peft(who)
        self.model, self.names = model, tuple(names)
        self.modules = [layers.resolve(model, n) for n in self.names]
        self.paths = [layers.module_path(model, n) for n in self.names]
        self.rank, self.alpha, self.dropout, self.seed = rank, alpha, dropout, seed
        self.original = [layers.weight_out_in(m).detach().clone() for m in self.modules]
        self.base = self.original
        self.a: list[torch.Tensor] | None = None
        self.b: list[torch.Tensor] | None = None

    def _config(self) -> Any:
        # GPT-2's Conv1D stores (in, out): weight_out_in gives a transposed view, not the weight
        conv = any(layers.weight_out_in(m) is not m.weight for m in self.modules)
        return self.peft.LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout,
                                    target_modules=list(self.paths), fan_in_fan_out=conv,
                                    bias="none")

    @contextlib.contextmanager
    def tuning(self, key: str) -> Iterator[list[nn.Parameter]]:
        """peft's LoRA layers over `base`, holding A and B, for the span of one optimisation;
        yields A's and B's parameters (the only ones that require a gradient inside). After
        it, also on error: A and B kept, the layers removed, every flag restored, merged.
        `key` seeds peft's initialisation and the dropout masks (with the run seed)."""
        params = list(self.model.parameters())
        flags = [p.requires_grad for p in params]
        had_config = "peft_config" in vars(self.model)
        seed = seeded_rng(self.seed, "lora", key).randrange(2**63)
        tuner = None
        try:
            self._write(self.base)
            with _seeded(self.base[0].device, seed):
                tuner = self.peft.LoraModel(self.model, self._config(), _ADAPTER)
                injected = [self.model.get_submodule(p) for p in self.paths]
                a = [layer.lora_A[_ADAPTER].weight for layer in injected]
                b = [layer.lora_B[_ADAPTER].weight for layer in injected]
                if self.a is not None:
                    with torch.no_grad():
                        for p, v in zip(a + b, self.a + self.b):
                            p.copy_(v)
                for layer in injected:
                    layer.lora_dropout.train()  # the model itself stays in eval mode
                self.a, self.b = a, b  # live: kept (cloned) when the span ends
                yield a + b
        finally:
            self.a, self.b = _clones(self.a), _clones(self.b)
            if tuner is not None:
                tuner.unload()
            if not had_config and "peft_config" in vars(self.model):  # older peft leaves it
                del self.model.peft_config
            for p, flag in zip(params, flags):
                p.requires_grad_(flag)
            self.merge()

    def deltas(self) -> list[torch.Tensor]:
        """alpha / rank * B @ A per projection, (out, in), in float32 (zeros before any)."""
        if self.a is None:
            return [torch.zeros_like(w, dtype=torch.float32) for w in self.base]
        scale = self.alpha / self.rank
        return [scale * (b.float() @ a.float()) for a, b in zip(self.a, self.b)]

    @torch.no_grad()
    def _write(self, weights: Sequence[torch.Tensor]) -> None:
        for module, w in zip(self.modules, weights):
            layers.weight_out_in(module).copy_(w)

    def fold(self) -> None:
        """The adapter's delta moves into `base` and the adapter is dropped, as peft's
        `merge_and_unload`: the served weights stay bit for bit what they were (`merge`
        computes base + delta the same way) and the next optimisation starts a fresh adapter
        (peft's initialisation: A drawn anew, B zero). No-op before the first optimisation."""
        if self.a is None:
            return
        self.base = [(w.float() + d).to(w.dtype) for w, d in zip(self.base, self.deltas())]
        self.a = self.b = None
        self.merge()

    def merge(self) -> None:
        """The model's weights become base + the adapter's delta."""
        self._write([w if self.a is None else (w.float() + d).to(w.dtype)
                     for w, d in zip(self.base, self.deltas())])

    def restore(self) -> None:
        """The model's weights become the pre-stream ones, bit for bit."""
        self._write(self.original)

    def subtract_fitted(self, step: Callable[[], Step], steps: int, lr: float, lam: float,
                        key: str) -> LoopResult:
        """Parametric arithmetic (F-Learning's forgetting): a fresh adapter on the weights
        served now runs `steps` Adam updates of `step` at `lr`, then base <- base - lam x its
        delta and the weights are merged again (also when the fit fails, then unmoved)."""
        fresh = copy.copy(self)
        fresh.base = [layers.weight_out_in(m).detach().clone() for m in self.modules]
        fresh.a = fresh.b = None
        try:
            with fresh.tuning(key) as params, frozen(self.model, trainable=params):
                fit = optimise(torch.optim.Adam(params, lr=lr), step, steps, fresh_last=False)
            self.base = [(w.float() - lam * d).to(w.dtype)
                         for w, d in zip(self.base, fresh.deltas())]
        finally:
            self.merge()
        return fit

    def state_dict(self) -> dict[str, Any]:
        return {"a": _clones(self.a), "b": _clones(self.b),
                "base": None if self.base is self.original else _clones(self.base)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load and merge: the weights become what they were when `state` was taken."""
        self.a, self.b = _clones(state["a"]), _clones(state["b"])
        self.base = self.original if state["base"] is None else _clones(state["base"])
        self.merge()

    def nbytes(self) -> int:
        shifted = [] if self.base is self.original else self.base
        return tensor_bytes(*(self.a or []), *(self.b or []), *shifted)


@dataclass(frozen=True)
class LoRAConfig:
    """LoRA's settings, EasyEdit's LoRA values as defaults (module docstring)."""

    targets: tuple[Target, ...] = setting(("attn.out",), "projections of each adapted layer "
                                                         "that get the adapter (paper/EasyEdit: "
                                                         "q_proj and v_proj; lifelong.layers "
                                                         "names no q or v projection, so the "
                                                         "attention output projection)")
    layers: tuple[int, ...] = setting((), "layers whose projections get the adapter, negative "
                                          "counting from the end; empty: every layer "
                                          "(paper/EasyEdit: layers [], every layer)")
    rank: int = setting(8, "rank of the adapter (paper/EasyEdit: rank 8)", min=1, max=4096)
    alpha: float = setting(32.0, "scaling: the delta is alpha / rank x B A (paper/EasyEdit: "
                                 "lora_alpha 32)", min=0.0)
    dropout: float = setting(0.1, "dropout on the adapter's input while an edit trains "
                                  "(paper/EasyEdit: lora_dropout 0.1, likely inert there: its "
                                  "model stays in eval mode)", min=0.0, max=0.99)
    steps: int = setting(70, "maximum Adam steps per edit (paper/EasyEdit: num_steps 70 on "
                             "LLaMA-2-7b, 30 on GPT2-XL)", min=1, max=10_000)
    lr: float = setting(5e-3, "Adam learning rate, no weight decay (paper/EasyEdit: lr 5e-3, "
                              "weight_decay 0)", min=0.0)
    stop_loss: float = setting(1e-2, "stop early once the edit's target loss is below this (as "
                                     "ft-m; paper/EasyEdit: no early stop, all num_steps)",
                               min=0.0)
    shard_edits: int = setting(0, "edits per adapter. 0: one adapter learns every edit of the "
                                  "stream (EasyEdit's sequential LoRA). N: once an adapter has "
                                  "learnt N edits it is merged into the weights (served outputs "
                                  "unchanged, as peft's merge_and_unload) and the next edits "
                                  "train a fresh one, so each shard of N edits gets its own "
                                  "rank-`rank` subspace; a batch is never split",
                               min=0, max=1_000_000)

    def __post_init__(self) -> None:
        if not self.targets:
            raise ConfigError("targets: name at least one projection")
        for name, values in (("targets", self.targets), ("layers", self.layers)):
            if len(set(values)) != len(values):
                raise ConfigError(f"{name}: {list(values)} names one twice")


class LoRA(FineTune):
    """LoRA (module docstring): `FineTune`'s loop over one adapter's parameters. State: the
    adapter (A and B per projection, the base once shards were merged into it), the edit
    count, the shards closed and the edits in the open one. Footprint: the adapter's bytes."""

    name = "lora"
    Config = LoRAConfig
    summary = ("LoRA: one low-rank adapter (peft) on every layer's attention output learns "
               "every edit (or one per shard of edits), merged into the weights (no retraction)")
    memory_kind = "weights"
    no_retraction = ("lora cannot retract one edit: every edit of a shard (the whole stream "
                     "by default) trains the same adapter, and merged shards share the weights, "
                     "so its change is entangled with every other edit's")

    def __init__(self, config: LoRAConfig, seed: int = 0):
        super().__init__(config, seed)
        require_peft("method lora")

    def attach(self, lm: LM, ctx: AttachContext) -> None:
        cfg, model = self.config, lm.model
        self.lm = lm
        chosen = cfg.layers or range(layers.num_layers(model))
        index = sorted({layers.layer_index(model, layer) for layer in chosen})
        self.adapter = LoraAdapter(model, [f"layers.{i}.{t}" for i in index for t in cfg.targets],
                                   rank=cfg.rank, alpha=cfg.alpha, dropout=cfg.dropout,
                                   seed=self.seed, who="method lora")
        every = not cfg.layers or len(index) == layers.num_layers(model)
        self.layer_name = (f"layers {'all' if every else ','.join(map(str, index))}: "
                           f"{'+'.join(cfg.targets)}")
        self.n_edits, self.n_shards, self.in_shard = 0, 0, 0

    def _tuning(self, requests: Sequence[EditRequest]
                ) -> contextlib.AbstractContextManager[list[nn.Parameter]]:
        return self.adapter.tuning("learn:" + ",".join(r.edit_id for r in requests))

    def _constrain(self) -> None:
        """No bound: the rank is LoRA's constraint (EasyEdit: norm_constraint false)."""

    def _after_edit(self, requests: Sequence[EditRequest]) -> dict[str, Any]:
        """Counts the open shard; with `shard_edits`, a full shard's adapter is merged into
        the weights (`LoraAdapter.fold`) and the next edit starts a fresh one."""
        shard = self.n_shards
        self.in_shard += len(requests)
        if self.config.shard_edits and self.in_shard >= self.config.shard_edits:
            self.adapter.fold()
            self.n_shards, self.in_shard = self.n_shards + 1, 0
        return {"adapter": shard} if self.config.shard_edits else {}

    def state_dict(self) -> dict[str, Any]:
        return {"adapter": self.adapter.state_dict(), "n_edits": self.n_edits,
                "n_shards": self.n_shards, "in_shard": self.in_shard}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.adapter.load_state_dict(state["adapter"])
        self.n_edits = int(state["n_edits"])
        # states saved before shards existed: one adapter, every edit in it
        self.n_shards = int(state.get("n_shards", 0))
        self.in_shard = int(state.get("in_shard", self.n_edits))

    def footprint(self) -> int:
        return self.adapter.nbytes()

    def detach(self) -> None:
        self.adapter.restore()
