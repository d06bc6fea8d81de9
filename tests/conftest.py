"""Fixtures shared by the whole test suite: a tiny word-level tokenizer and tiny random-init
causal LMs of every supported family, built from config objects (never downloaded).

Plain functions (`tiny_tokenizer`, `make_tiny_model`, `FAMILIES`) are importable from tests
(``from conftest import make_tiny_model``) for parametrized or custom builds; the pytest
fixtures (`tiny_tok`, `tiny_gpt2`, `tiny_model`, `family_name`) wrap them.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPTJConfig,
    LlamaConfig,
    MistralConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

# Test the checkout itself, whether or not the package is installed (pip install -e .).
_REPO_ROOT = str(Path(__file__).resolve().parent.parent)
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from hypothesis import settings  # noqa: E402

from lifelong.tokenizer import build_word_tokenizer  # noqa: E402

# Property-based tests draw the same examples on every run by default ("fixed"): a test
# result is reproducible, and a submission's CI cannot fail on a rare draw that has nothing
# to do with it. `HYPOTHESIS_PROFILE=explore python -m pytest` draws fresh random examples
# (run it before ending work on code a property covers); a counterexample it finds is
# pinned in its test with `@example`. No example database is written either way.
settings.register_profile("fixed", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False, database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fixed"))

#: The model families every family-independent piece of code is tested on.
FAMILIES: tuple[str, ...] = ("gpt2", "gptj", "llama", "mistral", "qwen2")

# A small fake world: the vocabulary of the tiny tokenizer, in a fixed order (ids depend on
# it: specials first, then the words below in first-seen order).
_PEOPLE = (
    "Aldric Brenna Caspar Delphine Evander Fenella Gideon Hestia Ignatius Juniper Kaspar "
    "Lucasta Mordecai Nerissa Octavian Persephone Quintus Rosalind Silvanus Thessaly Ulric "
    "Vespera Wendeline Xander Yseult Zebulon Amaro Bexley Corwin Dagny Elowen Faramond "
    "Galen Hollis Isolde Jory Kellan Liora Maelis Nolan Orla Pascoe Quilla Rhosyn Soren "
    "Tamsin Ulla Varek Wynn Yorick Zinnia"
)
_COMPANIES = ("Vantex Orbica Quillon Marabel Zentro Halvik Corvane Lumora Brixel Tandor "
              "Ferrovia Pellium Oskaro Nimbrel Dravex Solvane")
_CITIES = ("Lisbon Oslo Nairobi Kyoto Lima Dublin Cairo Quito Hanoi Vienna Dakar Perth "
           "Tbilisi Bogota Riga Seoul Havana Tunis Zagreb Manila")
_LANGUAGES = ("French Swahili Japanese Portuguese Finnish Greek Hindi Polish Turkish Korean "
              "Dutch Arabic Tagalog Hungarian Welsh Basque")
_SPORTS = ("tennis rugby cricket fencing rowing hockey volleyball golf badminton lacrosse "
           "curling archery handball squash polo judo")
_INSTRUMENTS = ("violin cello trumpet harp oboe banjo clarinet flute tuba accordion mandolin "
                "saxophone bassoon ukulele sitar harmonica")
_COLOURS = ("crimson teal amber violet indigo scarlet olive maroon ochre turquoise lavender "
            "magenta cobalt emerald saffron charcoal")
_OBJECTS = ("apple river mountain castle bridge lantern compass anchor feather mirror garden "
            "library tower harbor island forest desert valley meadow orchard")
_TEMPLATES = (
    "{s} works for . The employer of {s} is . Who employs {s} ? Answer : "
    "{s} is employed by . Q : Which company does {s} work for ? A : "
    "{s} was born in . The city of birth of {s} is . Where was {s} born ? "
    "{s} is a native of the city of . In which city was {s} born ? "
    "{s} speaks . The native language of {s} is . Which language does {s} speak ? "
    "The mother tongue of {s} is . What is the first language of {s} ? "
    "{s} plays the sport of . The favourite sport of {s} is . On weekends {s} competes in . "
    "{s} plays the . The instrument of {s} is the . In the band {s} plays the . "
    "What instrument does {s} perform on ? The favourite colour of {s} is . "
    "{s} likes the colour . {s} always dresses in . Which colour does {s} prefer ? "
    "{s} lives near the . {s} owns a . {s} visited , and then returned home . "
    "It is true that {s} is not , but was , or has been , and will be ! "
    "Yes no maybe also never always sometimes before after during since until from to with "
    "at on by as an a this that these those he she they it his her their its we you I me "
    "year month day week January February March April May June July August September "
    "October November December Monday Tuesday Wednesday Thursday Friday Saturday Sunday "
    "new old first last next previous current former moved joined left changed became "
    "started stopped learned teaches studied writes reads sings paints builds ' \" ( ) - : ;"
)
_DIGITS = "0 1 2 3 4 5 6 7 8 9 10 11 12 100 1000 2020 2021 2022 2023 2024 2025"

#: The texts the tiny tokenizer's vocabulary is built from (fixed order: fixed ids).
TINY_TEXTS: tuple[str, ...] = (_PEOPLE, _COMPANIES, _CITIES, _LANGUAGES, _SPORTS,
                               _INSTRUMENTS, _COLOURS, _OBJECTS, _TEMPLATES.replace("{s}", ""),
                               _DIGITS)


@functools.lru_cache(maxsize=1)
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """The shared word-level tokenizer of the tiny fake world (a few hundred words; pads on
    the left; ``[PAD]``=0, ``[UNK]``=1, ``[EOS]``=2). Cached: treat it as read-only."""
    return build_word_tokenizer(TINY_TEXTS)


def _config(family: str, vocab_size: int, n_layer: int, width: int, n_head: int,
            mlp_width: int, max_positions: int) -> PretrainedConfig:
    ids = dict(bos_token_id=2, eos_token_id=2, pad_token_id=0)
    if family == "gpt2":
        return GPT2Config(vocab_size=vocab_size, n_positions=max_positions, n_embd=width,
                          n_layer=n_layer, n_head=n_head, n_inner=mlp_width,
                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **ids)
    if family == "gptj":
        return GPTJConfig(vocab_size=vocab_size, n_positions=max_positions, n_embd=width,
                          n_layer=n_layer, n_head=n_head, n_inner=mlp_width,
                          rotary_dim=width // n_head, resid_pdrop=0.0, embd_pdrop=0.0,
                          attn_pdrop=0.0, **ids)
    llama_like = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}
    if family in llama_like:
        # Grouped-query attention (2 key/value heads) so code is exercised on it too.
        kv_heads = 2 if n_head % 2 == 0 else n_head
        return llama_like[family](vocab_size=vocab_size, hidden_size=width,
                                  intermediate_size=mlp_width, num_hidden_layers=n_layer,
                                  num_attention_heads=n_head, num_key_value_heads=kv_heads,
                                  max_position_embeddings=max_positions, attention_dropout=0.0,
                                  **ids)
    raise ValueError(f"unknown tiny-model family {family!r}; known: {', '.join(FAMILIES)}")


def make_tiny_model(family: str = "gpt2", vocab_size: int | None = None, seed: int = 0,
                    n_layer: int = 2, width: int = 32, *, n_head: int = 4,
                    mlp_width: int | None = None, max_positions: int = 128) -> PreTrainedModel:
    """A random-init causal LM of `family` (one of :data:`FAMILIES`) in eval mode, float32,
    dropout 0, eager attention.

    Deterministic: the same arguments give bit-identical weights (seeded inside a forked RNG,
    so the global torch RNG is left untouched). `vocab_size` defaults to the tiny tokenizer's
    size; `mlp_width` to ``4 * width`` (distinct from `width`, so orientation mix-ups show).
    `width` must be divisible by `n_head` with an even head size (rotary embeddings).
    Embedding tying follows each family's default (tied for GPT-2 only).
    """
    if vocab_size is None:
        vocab_size = len(tiny_tokenizer())
    if width % n_head or (width // n_head) % 2:
        raise ValueError(f"width {width} must be divisible by n_head {n_head} with an even "
                         f"head size")
    config = _config(family, vocab_size, n_layer, width, n_head,
                     4 * width if mlp_width is None else mlp_width, max_positions)
    logger = logging.getLogger("transformers")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        level = logger.level
        logger.setLevel(logging.ERROR)
        try:
            model = AutoModelForCausalLM.from_config(config, attn_implementation="eager",
                                                     dtype=torch.float32)
        finally:
            logger.setLevel(level)
    return model.eval()


@pytest.fixture
def tiny_tok() -> PreTrainedTokenizerFast:
    """The shared tiny word-level tokenizer (read-only)."""
    return tiny_tokenizer()


@pytest.fixture
def tiny_gpt2() -> PreTrainedModel:
    """A fresh 2-layer, width-32 random-init GPT-2 over the tiny tokenizer's vocabulary."""
    return make_tiny_model("gpt2")


@pytest.fixture(params=FAMILIES)
def family_name(request: pytest.FixtureRequest) -> str:
    """Parametrizes a test over every family in :data:`FAMILIES`."""
    return request.param


@pytest.fixture
def tiny_model(family_name: str) -> PreTrainedModel:
    """A fresh tiny model of each family in turn (parametrized through `family_name`)."""
    return make_tiny_model(family_name)


@pytest.fixture
def single_thread():
    """Run the test with one intra-op torch thread (restored afterwards). Tiny models gain
    nothing from threads, and on a busy 2-core machine OpenMP threads contending for cores make
    each small matmul ~50x slower. Opt in per module with
    ``pytestmark = pytest.mark.usefixtures("single_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def single_thread_module():
    """`single_thread` for a whole module (module-scoped fixtures that build stores run
    before function-scoped ones). Opt in with an autouse fixture or `usefixtures`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Methods' caches (key statistics, prefixes) go to a session temp dir, never the user's
    ~/.cache/lifelong: a test run leaves nothing behind and never reads a stale entry."""
    mp = pytest.MonkeyPatch()
    mp.setenv("LIFELONG_CACHE", str(tmp_path_factory.mktemp("lifelong-cache")))
    yield
    mp.undo()
