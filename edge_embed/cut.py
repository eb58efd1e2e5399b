"""Where a long text may be cut before tokenizing without changing the tokens that are kept.

A cut just before a character the tokenizer always starts a new word at leaves the words
before it, and so their tokens, as they are in the whole text. Which characters those are
is read from the tokenizer's own configuration (its ``tokenizer.json``):

- ASCII whitespace, for every tokenizer;
- CJK ideographs, when the normalizer is BERT's with ``handle_chinese_chars`` (it puts
  spaces around each one): Chinese and Japanese text has no spaces to cut at;
- punctuation, when the pre-tokenizer is BERT's (it isolates each punctuation character):
  only blocks whose punctuation is decades old, so that the tokenizers library's Unicode
  tables and Python's agree on it;

less any character that occurs inside an added token (``[MASK]`` ends in ``]``: a cut there
would split the special token). Deliberately does not guess for other tokenizers: they get
whitespace only, and a text without any (Thai, a giant run of one character) is tokenized whole.
"""

from __future__ import annotations

import json
import string
import unicodedata
from collections.abc import Callable
from typing import Any

__all__ = ["WHITESPACE", "break_test", "cut"]

# ASCII whitespace only: every tokenizer splits there (Python's str.isspace also takes control
# characters that BERT's normalizer deletes, joining the words around them)
WHITESPACE = frozenset(" \t\n\r")
# the code points BERT's normalizer treats as Chinese characters in the tokenizers library
# (its table differs from Google's BERT past U+2B81F: it starts again at U+2B920)
_IDEOGRAPHS = ((0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
               (0x2B740, 0x2B81F), (0x2B920, 0x2CEAF), (0x2F800, 0x2FA1F))
# BERT's punctuation: all ASCII punctuation (symbols such as < and $ included), and Unicode's
# punctuation categories, of which we take Latin-1, General Punctuation up to U+205E
# (Unicode 4.1), CJK Symbols and Punctuation and the fullwidth forms
_PUNCT_BLOCKS = ((0xA1, 0xBF), (0x2010, 0x205E), (0x3000, 0x303F), (0xFF01, 0xFF65))
_PUNCTUATION = frozenset(string.punctuation) | frozenset(
    chr(c) for lo, hi in _PUNCT_BLOCKS for c in range(lo, hi + 1) if unicodedata.category(chr(c)).startswith("P"))
LOOKBACK = 4096  # characters searched back from the limit for a place to cut


def _ideograph(c: str) -> bool:
    o = ord(c)
    return any(lo <= o <= hi for lo, hi in _IDEOGRAPHS)


def break_test(tokenizer_json: str) -> Callable[[str], bool]:
    """A test for "the tokenizer starts a new word at this character", from its serialized form."""
    try:
        config: Any = json.loads(tokenizer_json)
    except ValueError:
        config = {}
    if not isinstance(config, dict):
        config = {}
    normalizer, pre = config.get("normalizer") or {}, config.get("pre_tokenizer") or {}
    ideographs = (isinstance(normalizer, dict) and normalizer.get("type") == "BertNormalizer"
                  and normalizer.get("handle_chinese_chars") is True)
    punctuation = isinstance(pre, dict) and pre.get("type") == "BertPreTokenizer"
    inside: set[str] = set()  # characters after the first of an added token's content
    for added in config.get("added_tokens") or []:
        content = added.get("content") if isinstance(added, dict) else None
        if isinstance(content, str):
            inside.update(content[1:], content[1:].lower(), content[1:].upper())
    plain = (WHITESPACE | (_PUNCTUATION if punctuation else frozenset())) - inside
    if not ideographs:
        return plain.__contains__
    return lambda c: c in plain or (c not in inside and _ideograph(c))


def cut(text: str, limit: int, breaks: Callable[[str], bool]) -> str:
    """``text`` cut just before a break character at or before ``limit``; all of it if none is near."""
    if len(text) <= limit:
        return text
    for j in range(limit, max(limit - LOOKBACK, 0), -1):
        if breaks(text[j]):
            return text[:j]
    return text
