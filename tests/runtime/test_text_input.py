"""Text input policy: what embed() accepts, and long texts cut before tokenizing without
changing the tokens that are kept."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer

from edge_embed import Embedder, InputError


def whole_then_truncated(emb: Embedder, text: str) -> tuple[list[int], bool]:
    """The reference: tokenize the whole text, then truncate (what embed() did before cutting)."""
    tok = Tokenizer.from_str(emb._tok.to_str())
    tok.enable_truncation(emb.max_length)
    e = tok.encode(text)
    return e.ids, bool(e.overflowing)


def long_cases(limit: int) -> dict[str, str]:
    words = "the quick brown fox jumps over the lazy dog while edge embeddings run offline".split()
    english = " ".join(words[i % len(words)] for i in range(60_000))  # ~380 KB
    return {
        "english-380KB": english,
        "newlines-and-tabs": "\n\t".join(words * 800),
        "long-words": " ".join("x" * 150 + str(i) for i in range(300)),  # longer than WordPiece's 100 chars
        "cjk-no-spaces": "边缘嵌入模型在设备上运行" * 3000,
        "spaces-only-then-words": " " * (limit * 3) + " ".join(words * 100),
        "control-char-at-cut": ("ab\x1ccd " * (limit // 6 + 5)),
        "combining-after-space": ("e \u0301x " * (limit // 3)),
        "just-over-the-cut": ("a " * (limit // 2))[: limit + 1] + "tail words " * 50,
        "emoji": "🙂 " * (limit // 2) + "end",
        "one-giant-token-run": "a" * (limit * 5) + " b c",
        "punctuation": ",.;" * (limit * 2),
    }


def test_cut_keeps_exactly_the_tokens_of_the_whole_text(int8: Embedder) -> None:
    limit = int8.max_length * 8
    cases = long_cases(limit)
    got = int8.tokenize(list(cases.values()))
    for (name, text), enc in zip(cases.items(), got, strict=True):
        ids, overflow = whole_then_truncated(int8, text)
        assert enc.ids == ids, name
        assert bool(enc.overflowing) == overflow, name


def test_cut_with_a_prompt_and_the_counts_stay_honest(int8: Embedder) -> None:
    text = "word " * 5000
    res = int8.embed_detailed([text, "short"])
    assert res.truncated == 1 and list(res.tokens) == [int8.max_length, 3]
    assert int8.token_count([text]) == [5002]  # exact: before truncation


@pytest.mark.parametrize("bad", ["caf\udce9", "\ud800", "ok\udfff then more"])
def test_lone_surrogates_are_input_errors_naming_the_index(int8: Embedder, bad: str) -> None:
    with pytest.raises(InputError, match=r"texts\[1\]: character \d+ is a lone surrogate"):
        int8.embed(["fine", bad])
    with pytest.raises(InputError, match=r"texts\[0\]"):
        int8.token_count([bad])


def test_valid_non_ascii_text_is_accepted(int8: Embedder) -> None:
    v = int8.embed(["café ☃ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \U0001F600", "\x00 nul and \ufffd replacement"])
    assert v.shape == (2, 384)
