"""Word-level tokenizers for the project's own small models.

The built-in model and the small "model organisms" use a word-level vocabulary: every word
and punctuation mark of their world is one token. That keeps the models tiny and makes
"the object of a fact" a known, short token sequence. The result is an ordinary
`PreTrainedTokenizerFast`, saved as `tokenizer.json`, so `AutoTokenizer.from_pretrained`
loads it like any Hugging Face tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

PAD, UNK, EOS = "[PAD]", "[UNK]", "[EOS]"
SPECIALS = (PAD, UNK, EOS)


def split_words(text: str) -> list[str]:
    """The pre-tokenization the tokenizer applies: words and single punctuation marks."""
    pre = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                   pre_tokenizers.Punctuation(behavior="isolated")])
    return [piece for piece, _ in pre.pre_tokenize_str(text)]


def build_word_tokenizer(texts: Iterable[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer whose vocabulary is every word in `texts`, in first-seen order
    after the special tokens (so the same texts always give the same ids)."""
    vocab: dict[str, int] = {tok: i for i, tok in enumerate(SPECIALS)}
    for text in texts:
        for word in split_words(text):
            vocab.setdefault(word, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                  pre_tokenizers.Punctuation(behavior="isolated")])
    # Decoding joins words with single spaces; exact text round trips are not needed because
    # scoring always compares token ids.
    core.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, unk_token=UNK,
                                  eos_token=EOS, padding_side="left")
    return tok


def build_bpe_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (GPT-2's scheme: a word after a space carries it, so
    "New Orleans" after a prompt is " New" + " Orleans" or finer pieces) trained on `texts`.

    Byte-level means no text is ever unknown. Training is deterministic for the same texts in
    the same order. Special tokens: [PAD] (id 0) and [EOS] (id 1)."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    core.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, eos_token=EOS,
                                   padding_side="left")
