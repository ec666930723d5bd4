"""Builds a Hugging Face `tokenizer.json` (WordPiece) by hand, without the `tokenizers` library.

The result loads in `@huggingface/tokenizers` 0.2 (`new Tokenizer(json, {})`) and in Python `tokenizers`
(`Tokenizer.from_str`). Text is lowercased and split on whitespace and punctuation (BERT rules); each
word becomes whole-word entries or `##` continuation pieces. There is no post-processor: the runtime
adds BOS itself (docs/bundle-format.md, prompt assembly).
"""

from __future__ import annotations

import string
from typing import Iterable, List

# Fixed ids: the manifest's tokens section and the runtime rely on them for bundles built here.
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "<s>", "</s>", "<image>")
PAD_ID, UNK_ID, BOS_ID, EOS_ID, IMAGE_ID = range(len(SPECIAL_TOKENS))

# Single characters (and their ## continuations) make every lowercase ASCII word encodable without [UNK].
FALLBACK_CHARS = string.ascii_lowercase + string.digits
PUNCTUATION = string.punctuation


def _added_token(token_id: int, content: str) -> dict:
    return {"id": token_id, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": True}


def build_wordpiece_vocab(words: Iterable[str], with_fallback: bool = True) -> List[str]:
    """Specials first (ids 0..4), then the words in order (lowercased, deduplicated), then fallbacks."""
    vocab: List[str] = list(SPECIAL_TOKENS)
    seen = set(vocab)

    def add(token: str) -> None:
        if token not in seen:
            seen.add(token)
            vocab.append(token)

    for word in words:
        word = word.strip().lower()
        if not word or any(c.isspace() for c in word):
            raise ValueError(f"vocabulary words must be non-empty and without whitespace, got {word!r}")
        if len(word) > 1 and any(c in PUNCTUATION for c in word) and not word.startswith("##"):
            raise ValueError(f"{word!r} mixes letters and punctuation; the BERT pre-tokenizer would never produce it")
        add(word)
    if with_fallback:
        for c in PUNCTUATION + FALLBACK_CHARS:
            add(c)
        for c in FALLBACK_CHARS:
            add(f"##{c}")
    return vocab


def build_wordpiece_tokenizer(words: Iterable[str], with_fallback: bool = True) -> dict:
    """The tokenizer.json object for a WordPiece vocabulary built from `words`."""
    vocab = build_wordpiece_vocab(words, with_fallback)
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [_added_token(i, tok) for i, tok in enumerate(SPECIAL_TOKENS)],
        "normalizer": {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True,
                       "strip_accents": None, "lowercase": True},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": None,
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": {tok: i for i, tok in enumerate(vocab)}},
    }


def tokenizer_vocab_size(tokenizer: dict) -> int:
    """Highest id + 1 over the model vocabulary and the added tokens (BPE/WordPiece dicts, Unigram lists)."""
    model = tokenizer.get("model", {})
    vocab = model.get("vocab", {})
    ids = list(vocab.values()) if isinstance(vocab, dict) else list(range(len(vocab)))
    ids += [t["id"] for t in tokenizer.get("added_tokens", [])]
    return max(ids) + 1 if ids else 0


# ---------------------------------------------------------------------------------------------------
# A Python encoder for the tokenizers built above (BertNormalizer + BertPreTokenizer + WordPiece), so
# producers can tokenize training data and fixtures without the `tokenizers` package. It follows the
# Rust implementation's rules; test/bundle-graphs.test.ts checks it against @huggingface/tokenizers.


def _is_punctuation(ch: str) -> bool:
    import unicodedata

    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _bert_normalize(text: str) -> str:
    import unicodedata

    out = []
    for ch in text:
        cp = ord(ch)
        if cp == 0 or cp == 0xFFFD or (unicodedata.category(ch).startswith("C") and ch not in "\t\n\r"):
            continue  # clean_text drops control characters
        out.append(" " if ch.isspace() else ch)
    text = unicodedata.normalize("NFD", "".join(out))
    text = "".join(c for c in text if unicodedata.category(c) != "Mn")  # strip_accents follows lowercase
    return text.lower()


def encode_wordpiece(tokenizer: dict, text: str) -> List[int]:
    """ids of `text` without special tokens, for a tokenizer from build_wordpiece_tokenizer."""
    model = tokenizer["model"]
    vocab, prefix = model["vocab"], model["continuing_subword_prefix"]
    unk = vocab[model["unk_token"]]
    words: List[str] = []
    for chunk in _bert_normalize(text).split():
        word = ""
        for ch in chunk:
            if _is_punctuation(ch):
                if word:
                    words.append(word)
                words.append(ch)
                word = ""
            else:
                word += ch
        if word:
            words.append(word)
    ids: List[int] = []
    for word in words:
        if len(word) > model["max_input_chars_per_word"]:
            ids.append(unk)
            continue
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else prefix + word[start:end]
                if piece in vocab:
                    break
                end -= 1
            if end == start:
                pieces = [unk]
                break
            pieces.append(vocab[piece])
            start = end
        ids.extend(pieces)
    return ids
