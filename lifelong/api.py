"""The memory runtime as a library: a base model with one editing method attached, for
notebooks and applications.

    import lifelong
    ed = lifelong.open("builtin", method="grace", seed=0)
    receipt = ed.edit("Aldric Brenna works for", "Vantex")   # or a list of requests
    ed.generate("Aldric Brenna works for", max_new_tokens=1)  # greedy text
    ed.score(["Aldric Brenna works for"], ["Vantex"])         # both protocols
    ed.save("mem/")                                           # the method's memory alone
    ed2 = lifelong.load("mem/")                               # onto a fresh base model

Everything goes through what `lifelong simulate` uses (`load_model`, `build_method`,
`AttachContext`, `EditRequest`, `score_pairs`): an edit made here is the edit the runtime
would make. The saved format is described in `lifelong/memoryfile.py` and docs/api.md.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import __version__, memoryfile
from .config import to_dict
from .errors import LifelongError
from .methods import (
    AttachContext,
    EditReceipt,
    EditRequest,
    TrainRecord,
    build_method,
    consolidate_memory,
    current_name,
    edit_batch,
    retract_edit,
)
from .methods.context import context_fields, default_corpus
from .model import BUILTIN, LM, load_model
from .scoring import PairScore, forward_logits, score_pairs

_REQUEST_KEYS = ("edit_id", "prompt", "target", "fact", "subject", "previous")


@dataclass(frozen=True)
class BaseModel:
    """The model a memory belongs to. `ref` is what `load_model` takes ("builtin" or an
    absolute directory); `fingerprint` is `LM.fingerprint()` of its pristine weights."""

    ref: str
    name: str
    fingerprint: str


class Editor:
    """A base model with one editing method attached.

    Invariants: the method was attached to the pristine model whose fingerprint is
    `base.fingerprint`; `log` lists every operation that changed the memory, in order
    (``{"op": "edit", **request}``, ``{"op": "retract", "edit_id"}``, ``{"op":
    "consolidate"}``); edit ids are unique over the whole log. Not thread-safe.
    """

    def __init__(self, lm: LM, memory: Any, seed: int, context: AttachContext,
                 base: BaseModel, log: Sequence[dict] = (), source: dict | None = None):
        self.lm = lm
        self.memory = memory
        self.seed = seed
        self.context = context
        self.base = base
        self.log: list[dict[str, Any]] = [dict(op) for op in log]
        self.source = dict(source or {})
        self._closed = False

    # ---- what it holds ---------------------------------------------------------------------
    @property
    def method(self) -> str:
        return self.memory.name

    @property
    def edits(self) -> dict[str, dict[str, Any]]:
        """Active edits (made and not retracted), edit id -> request, in edit order."""
        active: dict[str, dict[str, Any]] = {}
        for op in self.log:
            if op["op"] == "edit":
                active[op["edit_id"]] = {k: op.get(k) for k in _REQUEST_KEYS}
            elif op["op"] == "retract":
                active.pop(op["edit_id"], None)
        return active

    def __repr__(self) -> str:
        return (f"Editor(method={self.method!r}, model={self.base.name!r}, seed={self.seed}, "
                f"edits={len(self.edits)})")

    # ---- changing the memory -----------------------------------------------------------------
    def edit(self, prompt: str | Mapping | EditRequest | Iterable[Any],
             target: str | None = None, *, edit_id: str | None = None,
             fact: str | None = None, subject: str | None = None) -> EditReceipt:
        """Make one edit (`prompt`, `target`), or several at once: `prompt` a list of
        `EditRequest`s, (prompt, target) pairs or dicts with keys prompt, target and optional
        edit_id, fact, subject, previous (passed to the method as one batch).

        Ids default to "edit-N"; `fact` defaults to the prompt (edits of one fact are
        re-edits of each other: say so with the same `fact` for different prompts)."""
        self._check_open()
        if isinstance(prompt, str):
            items: list[Any] = [{"prompt": prompt, "target": target, "edit_id": edit_id,
                                 "fact": fact, "subject": subject}]
        elif isinstance(prompt, (Mapping, EditRequest)):
            items = [prompt]  # one request given on its own
        else:
            if target is not None or edit_id or fact or subject:
                raise LifelongError("edit: with a list of requests, give target, edit_id, fact "
                                    "and subject inside each request")
            items = list(prompt)
            if not items:
                raise LifelongError("edit: no requests given")
        requests = self._requests(items)
        receipt = self.memory.edit(requests)
        self._logged(requests)
        return receipt

    def edit_batch(self, items: Iterable[Any]) -> list[EditReceipt]:
        """Several edits (requests as for `edit`), one receipt per request: one joint call
        for a method that edits in batches (`BatchEditing`), else one edit after another.
        This is how the runtime hands edits over with `schedule.edit_batch`."""
        self._check_open()
        items = list(items)
        if not items:
            raise LifelongError("edit_batch: no requests given")
        requests = self._requests(items)
        receipts = edit_batch(self.memory, requests)
        self._logged(requests)
        return receipts

    def _logged(self, requests: Sequence[EditRequest]) -> None:
        self.log += [{"op": "edit", **{k: getattr(r, k) for k in _REQUEST_KEYS}} for r in requests]

    def retract(self, edit_id: str) -> None:
        """Undo one active edit; a method that cannot (not `Retractable`, or configured not
        to) raises `NotSupported` (a `LifelongError`) saying why, and the memory is left as
        it was."""
        self._check_open()
        if edit_id not in self.edits:
            raise LifelongError(f"retract: no active edit {edit_id!r}"
                                f"{_listing(' (active: ', list(self.edits), ')')}")
        retract_edit(self.memory, edit_id)
        self.log.append({"op": "retract", "edit_id": edit_id})

    def consolidate(self) -> dict[str, Any] | None:
        """Ask the method to merge what it has to merge (WISE's shards); None: nothing (also
        for every method that does not consolidate)."""
        self._check_open()
        info = consolidate_memory(self.memory)
        self.log.append({"op": "consolidate"})
        return info

    # ---- using the edited model --------------------------------------------------------------
    def generate(self, prompt: str | Sequence[str], max_new_tokens: int = 8,
                 stop_at_eos: bool = True) -> str | list[str]:
        """Greedy continuation of `prompt` (a list: one continuation per prompt), decoded
        and stripped; it ends early at the end-of-sequence token when `stop_at_eos`. The
        same decoding as the generated protocol of `score`."""
        self._check_open()
        if max_new_tokens < 0:
            raise LifelongError("generate: max_new_tokens must be >= 0")
        if isinstance(prompt, str):
            return self._greedy(prompt, max_new_tokens, stop_at_eos)
        return [self._greedy(p, max_new_tokens, stop_at_eos) for p in prompt]

    def score(self, prompts: str | Sequence[str], targets: str | Sequence[str],
              batch_size: int = 128) -> list[PairScore]:
        """`lifelong.scoring.score_pairs`: each pair teacher-forced (tf_acc, tf_exact, nll)
        and generated (gen_exact, gen_text), in input order."""
        self._check_open()
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        targets = [targets] if isinstance(targets, str) else list(targets)
        if len(prompts) != len(targets):
            raise LifelongError(f"score: {len(prompts)} prompts but {len(targets)} targets")
        return score_pairs(self.lm, prompts, targets, batch_size)

    # ---- saving ------------------------------------------------------------------------------
    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the method's memory alone (no base weights) to directory `path`:
        memory.json + tensors.safetensors (docs/api.md). `lifelong.load(path)` gives an
        editor whose outputs are bit-identical to this one's."""
        self._check_open()
        return memoryfile.write(path, self.metadata(), self.memory.state_dict(), overwrite)

    def metadata(self) -> dict[str, Any]:
        """What memory.json holds besides the state."""
        return {"method": self.method, "config": to_dict(self.memory.config), "seed": self.seed,
                "model": {"ref": self.base.ref, "name": self.base.name,
                          "fingerprint": self.base.fingerprint},
                "context": self._context_meta(),
                "log": self.log, "lifelong_version": __version__, "source": self.source}

    def _context_meta(self) -> dict[str, Any]:
        """The context's inputs, less the model's own corpus (found again beside the model
        wherever it is loaded)."""
        meta = self.context.to_meta()
        if meta.get("corpus") == default_corpus(self.lm.path):
            del meta["corpus"]
        return meta

    def close(self) -> None:
        """Detach the method: the model is its pristine self again (bit for bit)."""
        if not self._closed:
            self.memory.detach()
            self._closed = True

    # ---- helpers -----------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise LifelongError("this editor is closed (its method was detached)")

    def _requests(self, items: list[Any]) -> list[EditRequest]:
        taken = {op["edit_id"] for op in self.log if op["op"] == "edit"}
        out = []
        for i, item in enumerate(items):
            fields = _request_fields(item, i)
            if not fields.get("edit_id"):
                fields["edit_id"] = _next_id(taken)
            if fields["edit_id"] in taken:
                raise LifelongError(f"edit: edit id {fields['edit_id']!r} is already used")
            taken.add(fields["edit_id"])
            fields["fact"] = fields.get("fact") or fields["prompt"]
            out.append(EditRequest(**fields))
        return out

    @torch.no_grad()
    def _greedy(self, prompt: str, n: int, stop_at_eos: bool) -> str:
        ids = self.lm.tok(prompt, add_special_tokens=False)["input_ids"]
        if not ids:
            raise LifelongError("generate: the prompt has no tokens")
        x = torch.tensor([ids], dtype=torch.long)
        end = torch.tensor([len(ids)])
        eos = self.lm.tok.eos_token_id
        out: list[int] = []
        for _ in range(n):
            logits = forward_logits(self.lm, x, torch.ones_like(x), end)
            nxt = int(logits[0, -1].argmax())
            if stop_at_eos and nxt == eos:
                break
            out.append(nxt)
            x = torch.cat([x, torch.tensor([[nxt]])], dim=1)
        return self.lm.tok.decode(out).strip()


def _request_fields(item: Any, i: int) -> dict[str, Any]:
    """The EditRequest fields of one request given as an EditRequest, a pair or a dict."""
    if isinstance(item, EditRequest):
        fields = {k: getattr(item, k) for k in _REQUEST_KEYS}
    elif isinstance(item, (tuple, list)) and len(item) == 2:
        fields = {"prompt": item[0], "target": item[1]}
    elif isinstance(item, Mapping):
        unknown = sorted(set(item) - set(_REQUEST_KEYS))
        if unknown:
            raise LifelongError(f"edit: request {i}: unknown key(s) "
                                f"{', '.join(map(str, unknown))}; "
                                f"known: {', '.join(_REQUEST_KEYS)}")
        fields = dict(item)
    else:
        raise LifelongError(f"edit: request {i} is a {type(item).__name__}; give an "
                            "EditRequest, a (prompt, target) pair or a dict")
    for key in ("prompt", "target"):
        if not isinstance(fields.get(key), str) or not fields[key].strip():
            raise LifelongError(f"edit: request {i}: {key} must be a non-empty string")
    for key in ("edit_id", "fact", "subject", "previous"):
        if fields.get(key) is not None and not isinstance(fields[key], str):
            raise LifelongError(f"edit: request {i}: {key} must be a string")
    return fields


def _next_id(taken: set[str]) -> str:
    n = len(taken) + 1
    while f"edit-{n}" in taken:
        n += 1
    return f"edit-{n}"


def _listing(head: str, items: list[str], tail: str, most: int = 8) -> str:
    if not items:
        return " (there are none)"
    more = f", ... {len(items) - most} more" if len(items) > most else ""
    return head + ", ".join(items[:most]) + more + tail


def base_model(lm: LM) -> BaseModel:
    """Describe a pristine model (call before attaching anything to it)."""
    ref = BUILTIN if lm.name == BUILTIN else str(Path(lm.path).resolve())
    return BaseModel(ref=ref, name=lm.name, fingerprint=lm.fingerprint())


def model_context(lm: LM, base: BaseModel, seed: int, device: str = "cpu",
                  **fields: Any) -> AttachContext:
    """The attach context the API gives a method on the pristine `lm` (described by `base`):
    `fields` (unrelated_prompts, train_split, corpus, cache_dir; empty ones take their
    defaults), the model's own corpus unless one is named, its fingerprint, and a factory of
    fresh copies of the base model."""
    fields = {k: v for k, v in fields.items() if v}
    fields.setdefault("corpus", default_corpus(lm.path))
    return AttachContext(seed=seed, model_fingerprint=base.fingerprint, device=device,
                         model_factory=functools.partial(load_model, base.ref, device), **fields)


def attach(lm: LM, method: str, settings: Mapping[str, Any] | None, seed: int,
           context: AttachContext, state: dict | None = None, log: Sequence[dict] = (),
           source: dict | None = None, base: BaseModel | None = None) -> Editor:
    """Build `method` with `settings`, attach it to the pristine `lm` and, given `state`,
    restore it: the runtime's own steps (`build_method`, `attach`, `load_state_dict`).
    `base`: `base_model(lm)`, when the caller has it already (it hashes every weight)."""
    base = base or base_model(lm)
    memory = build_method(method, dict(settings or {}), seed)
    memory.attach(lm, context)
    if state is not None:
        try:
            memory.load_state_dict(state)
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:
            memory.detach()
            raise LifelongError(f"the saved state does not fit method {method!r} with these "
                                f"settings ({type(exc).__name__}: {exc})") from None
    return Editor(lm, memory, seed, context, base, log, source)


def open(model: str = BUILTIN, method: str = "none", settings: Mapping[str, Any] | None = None,
         seed: int = 0, *, unrelated_prompts: Sequence[str] = (),
         train_split: Sequence[TrainRecord] | str = (), corpus: Sequence[str] | str = "",
         cache_dir: str = "", device: str = "cpu") -> Editor:
    """Load `model` ("builtin" or a local Hugging Face directory) and attach `method` with
    `settings` (see `lifelong methods`). What the method may use (`AttachContext`, read only
    when it asks): `unrelated_prompts`, prompts known not to be edited (defer's gate, wise's
    margins and scale); `train_split`, a data set's train split (records or a stream file);
    `corpus`, texts or a text file for key statistics (default: the model's own); `cache_dir`
    (default: $LIFELONG_CACHE or ~/.cache/lifelong)."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise LifelongError(f"seed must be an integer, got {seed!r}")
    lm = load_model(model, device)
    base = base_model(lm)
    context = model_context(lm, base, seed, device, unrelated_prompts=tuple(unrelated_prompts),
                            train_split=train_split if isinstance(train_split, str)
                            else tuple(train_split),
                            corpus=corpus if isinstance(corpus, str) else tuple(corpus),
                            cache_dir=str(cache_dir))
    return attach(lm, method, settings, seed, context, base=base)


def load(path: str | Path, *, model: str | None = None, device: str = "cpu") -> Editor:
    """Load a saved memory (`Editor.save`, `lifelong export`) onto a freshly loaded copy of
    its base model (or `model`, a copy of it elsewhere). Refuses a base model whose
    fingerprint is not the one the memory was made on."""
    meta, state = memoryfile.read(path, device)
    try:
        config, seed = meta["config"], meta["seed"]
        name = current_name(meta["method"], config)
        ref, want = meta["model"]["ref"], meta["model"]["fingerprint"]
        fields = context_fields(meta["context"])
        log = list(meta["log"])
    except (KeyError, TypeError) as exc:
        raise LifelongError(f"{path}: memory.json lacks {exc}") from None
    lm = load_model(model or ref, device)
    base = base_model(lm)
    if base.fingerprint != want:
        raise LifelongError(f"{path}: made on base model {ref} (fingerprint {want}), but "
                            f"{model or ref} has fingerprint {base.fingerprint}; load it onto "
                            "the model it was made on")
    return attach(lm, name, config, seed, model_context(lm, base, seed, device, **fields),
                  state, log, meta.get("source"), base=base)
