"""A class for every vocabulary id (digits, punctuation, words, whitespace, special, other), computed once.

    classes = classify_vocab(tokenizer)      # (V,) int8, an index into CLASSES
    names = class_names(classes, t.token_id) # (N,) the class of each target, as CLASSES indices

Each id is decoded alone (`tokenizer.decode([id])`, ~0.2 s for a 49k vocabulary; faster than
`batch_decode`) and the text is classified by the first rule that matches:

    special      the tokenizer's special ids (all_special_ids, and added tokens marked special)
    whitespace   the text is non-empty and all whitespace; or empty because the decoder stripped
                 a lone word-boundary marker (a Metaspace "▁" decodes to "")
    digits       contains a digit, otherwise only whitespace, digits, "." and ","   ("12", " 3.5")
    punctuation  only punctuation/symbols (Unicode P* and S*) and whitespace      (".", " $", "**")
    words        contains a letter                                                 ("the", "3rd")
    other        the rest: mixed symbols and digits ("$2"), a partial UTF-8 byte that decodes
                 to U+FFFD, control characters

Without a tokenizer there are no classes: pass `classes=None` to the functions that take them
and the by-class tables are left out (never silently "other").
"""

from __future__ import annotations

import re
import unicodedata

import numpy as np

from tokensft.core.errors import ConfigError

CLASSES = ("digits", "punctuation", "words", "whitespace", "special", "other")
DIGITS, PUNCTUATION, WORDS, WHITESPACE, SPECIAL, OTHER = range(len(CLASSES))
_DIGITS = re.compile(r"^[\s\d.,]*\d[\s\d.,]*$")
_MARKERS = set("▁Ġ")  # word-boundary markers of Metaspace and byte-level vocabularies (Ġ is the byte-level space)


def classify_text(text: str, token: str = "") -> int:
    """The class (index into CLASSES) of a non-special token's decoded text; `token` is its raw vocabulary form."""
    if text == "":
        return WHITESPACE if token and set(token) <= _MARKERS | {" "} else OTHER
    if "\ufffd" in text:  # a lone byte of a multi-byte character
        return OTHER
    if text.isspace():
        return WHITESPACE
    if _DIGITS.match(text):
        return DIGITS
    if all(c.isspace() or unicodedata.category(c)[0] in "PS" for c in text):
        return PUNCTUATION
    if any(c.isalpha() for c in text):
        return WORDS
    return OTHER


def special_ids(tokenizer) -> set[int]:
    ids = set(tokenizer.all_special_ids)
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return ids | {i for i, tok in added.items() if getattr(tok, "special", False)}


def classify_vocab(tokenizer, vocab_size: int | None = None) -> np.ndarray:
    """(V,) int8 class of every id, V = max(len(tokenizer), vocab_size); ids the tokenizer lacks are "other"."""
    n = len(tokenizer)
    out = np.full(max(n, vocab_size or 0), OTHER, dtype=np.int8)
    raw = tokenizer.convert_ids_to_tokens(list(range(n)))
    for i in range(n):  # once per vocabulary id, not per target token
        out[i] = classify_text(tokenizer.decode([i]), raw[i] or "")
    out[[i for i in special_ids(tokenizer) if i < len(out)]] = SPECIAL
    return out


def target_classes(classes: np.ndarray, token_id: np.ndarray, where: str = "dataset") -> np.ndarray:
    """(N,) int8 class of each target token; a ConfigError when an id is outside the classified vocabulary."""
    if len(token_id) and int(token_id.max()) >= len(classes):
        raise ConfigError(f"{where}: token id {int(token_id.max())} is outside the tokenizer's {len(classes)} ids; "
                          "pass the tokenizer the dataset was scored with")
    return classes[token_id]


def token_strings(tokenizer, ids) -> list[str]:
    """Each id decoded alone, for tables of tokens (None tokenizer: "#id")."""
    if tokenizer is None:
        return [f"#{int(i)}" for i in ids]
    return [tokenizer.decode([int(i)]) for i in ids]
