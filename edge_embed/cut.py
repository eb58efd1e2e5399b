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
whitespace only.

A text with nowhere to cut (a giant run of one character, a hex dump, kana or Thai without
spaces) is first shortened inside its runs instead (``run_shrinker``): WordPiece turns a word
of more than ``max_input_chars_per_word`` characters into one unknown token however long it
is, so a run of letters that can only be one word keeps the same token when its middle goes.
"""

from __future__ import annotations

import json
import re
import string
import unicodedata
from collections.abc import Callable
from typing import Any

__all__ = ["WHITESPACE", "Shrinker", "break_test", "cut", "run_shrinker"]

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


# Letters that BERT's normalizer and pre-tokenizer keep inside a word on every tokenizers
# release: blocks assigned in full long before the Unicode tables the library was built with
# (a newer letter may read as unassigned there, and the normalizer deletes those), taken by
# category: letters, decimal digits and combining marks (accents go with strip_accents, so only
# letters and digits count towards a word's length)
_RUN_BLOCKS = ((0x30, 0x39), (0x41, 0x5A), (0x61, 0x7A), (0xC0, 0x24F), (0x386, 0x3CE), (0x400, 0x4FF),
               (0x5D0, 0x5EA), (0x620, 0x64A), (0xE01, 0xE59), (0x3041, 0x3096), (0x30A1, 0x30FA),
               (0xAC00, 0xD7A3))
_RUN_CATEGORIES = ("Lu", "Ll", "Lt", "Lm", "Lo", "Nd", "Mn", "Mc")
MIN_RUN = 1024  # runs shorter than this are left as they are


class Shrinker:
    """Shortens the giant runs of a text (see run_shrinker); calling it shortens them all."""

    def __init__(self, run: re.Pattern[str], other: re.Pattern[str], keep: int) -> None:
        self._run, self._other, self._keep = run, other, keep

    def _kept(self, m: re.Match[str]) -> str:
        text, counted = m.group(), 0
        for i, c in enumerate(text):
            if not unicodedata.category(c).startswith("M"):
                counted += 1
                if counted == self._keep:
                    return text[: i + 1]
        return text  # mostly marks: keep it all

    def __call__(self, text: str) -> str:
        return self._run.sub(self._kept, text)

    def head(self, text: str, size: int) -> str:
        """``text`` with its runs shortened in a head that is still over ``size`` characters once
        shortened, and left as they are after it: its first ``size + 1`` characters are those of
        ``self(text)``, for a cost in proportion to ``size`` rather than to the text.

        The head ends at a character no run holds, so no run is split. A short text, or one
        with no such character near the end of the head, is shortened whole.
        """
        at = 2 * size
        while at < len(text):
            m = self._other.search(text, at)
            if m is None:
                break
            end = m.start()
            head = self(text[:end])
            if len(head) > size:
                return head + text[end:]
            at = max(4 * at, end + 1)
        return self(text)


def run_shrinker(tokenizer_json: str) -> Shrinker | None:
    """For a WordPiece tokenizer behind BERT's normalizer and pre-tokenizer: a function that
    shortens every run of ``MIN_RUN``+ letters to its first ``2 * (max_input_chars_per_word + 1)``
    letters, which changes none of the text's tokens (the run is inside one word that is longer
    than WordPiece's limit before and after, so it is one unknown token either way). None for
    any other tokenizer: nothing is assumed about them.
    """
    try:
        config: Any = json.loads(tokenizer_json)
    except ValueError:
        return None
    if not isinstance(config, dict):
        return None
    normalizer, pre, model = (config.get(k) or {} for k in ("normalizer", "pre_tokenizer", "model"))
    if not (isinstance(model, dict) and model.get("type") == "WordPiece" and isinstance(pre, dict)
            and pre.get("type") == "BertPreTokenizer" and isinstance(normalizer, dict)
            and normalizer.get("type") == "BertNormalizer"):
        return None
    most = model.get("max_input_chars_per_word")
    if not isinstance(most, int) or isinstance(most, bool) or not 0 < most < MIN_RUN // 4:
        return None
    # no run may hold the start of an added token, and what is kept of a run is longer than any,
    # so an added token that starts before a run ends inside what is kept
    contents: list[str] = [a["content"] for a in config.get("added_tokens") or []
                           if isinstance(a, dict) and isinstance(a.get("content"), str) and a["content"]]
    starts = {v for c in contents for v in (c[0], c[0].lower(), c[0].upper())}
    keep = 2 * (most + 1)
    if max((len(c) for c in contents), default=0) >= keep:
        return None
    chars = [c for lo, hi in _RUN_BLOCKS for c in range(lo, hi + 1)
             if unicodedata.category(chr(c)) in _RUN_CATEGORIES and chr(c) not in starts]
    ranges, lo = [], chars[0]
    for prev, c in zip(chars, chars[1:] + [-1], strict=True):
        if c != prev + 1:
            ranges.append(f"{re.escape(chr(lo))}-{re.escape(chr(prev))}" if prev > lo else re.escape(chr(lo)))
            lo = c
    letters = "".join(ranges)
    return Shrinker(re.compile(f"[{letters}]{{{MIN_RUN},}}"), re.compile(f"[^{letters}]"), keep)
