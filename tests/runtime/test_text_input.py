"""Text input policy: what embed() accepts, and long texts cut before tokenizing without
changing the tokens that are kept."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer

from edge_embed import Embedder, InputError
from edge_embed.cut import Shrinker, break_test, cut, run_shrinker


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
        "japanese": "これは端末で動く埋め込みモデルです。東京の駅で、電車を待つ。" * 1500,
        "cjk-and-special-tokens": "边缘[MASK]嵌入[SEP]" * (limit // 4),
        # "]" of a special token right at the cut, its "[" at the 255th token: cut inside it, the
        # cut text would overflow with "[" kept where the whole text keeps "[MASK]"
        "special-token-at-the-cut": " " * (limit - 258) + "边" * 253 + "[MASK]" + "边" * 1000,
        "words-joined-by-punctuation": "edge,embed;run.offline:" * (limit // 5),
        "fullwidth-punctuation": "（嵌入）「模型」！" * (limit // 3),
        "no-break-at-all": "ぁ" * (limit * 5),  # hiragana: neither an ideograph nor punctuation
        "thai-without-spaces": "ภาษาไทยไม่เว้นวรรคระหว่างคำ" * (limit // 4),  # vowel signs are marks
        "hex-dump": "0123456789abcdef" * limit,
        # a break the cut does not know (no-break space) between two giant runs, then words
        "runs-around-a-no-break-space": "a" * (limit * 2) + "\u00a0hello" + "b" * (limit * 2) + " tail" * 600,
        "runs-around-special-tokens": "x" * (limit * 2) + "[MASK]" + "y" * (limit * 2) + "[SEP] z" * 300,
        "accents-in-a-run": "e\u0301" * (limit * 2) + " after" * 600,
        "marks-only-run": "e" + "\u0301" * (limit * 2) + " after" * 600,
    }


def test_cut_keeps_exactly_the_tokens_of_the_whole_text(int8: Embedder) -> None:
    limit = int8.max_length * 8
    cases = long_cases(limit)
    got = int8.tokenize(list(cases.values()))
    for (name, text), enc in zip(cases.items(), got, strict=True):
        ids, overflow = whole_then_truncated(int8, text)
        assert enc.ids == ids, name
        assert bool(enc.overflowing) == overflow, name
    breaks = break_test(int8._tok.to_str())
    for name in ("cjk-no-spaces", "japanese", "cjk-and-special-tokens", "words-joined-by-punctuation",
                 "fullwidth-punctuation"):  # cut early, not tokenized whole
        assert len(cut(cases[name], limit, breaks)) <= limit, name
    assert cut(cases["no-break-at-all"], limit, breaks) == cases["no-break-at-all"]


def test_giant_runs_are_shortened_before_the_tokenizer_sees_them(int8: Embedder, monkeypatch) -> None:
    """A text with nowhere to cut costs about what a short one does: what reaches the tokenizer
    is short, and the tokens, counts and windows are those of the whole text."""
    from edge_embed import embedder as mod

    limit = int8.max_length * 8
    blobs = ["ぁ" * 1_000_000, "ภาษาไทย" * 100_000, "f" * 1_000_000, "a" * 500_000 + " b" * 10]
    seen: list[int] = []
    real = mod._tokenize_batch
    monkeypatch.setattr(mod, "_tokenize_batch", lambda tok, texts: seen.extend(map(len, texts)) or real(tok, texts))
    got = int8.tokenize(blobs)
    assert max(seen) <= limit
    for text, enc in zip(blobs, got, strict=True):
        assert enc.ids == whole_then_truncated(int8, text)[0]
    whole = Tokenizer.from_str(int8._tok.to_str())
    whole.no_truncation()
    assert int8.token_count(blobs) == [len(whole.encode(t).ids) for t in blobs] == [3, 3, 3, 13]
    res = int8.embed_detailed(blobs, long_text="window")
    assert list(res.tokens) == [3, 3, 3, 13] and max(seen) <= limit


def test_only_a_head_of_a_long_text_is_shortened(int8: Embedder, monkeypatch) -> None:
    """Shortening runs costs time in proportion to the text it reads, so tokenize reads a head a
    little longer than the cut; the head agrees with the text shortened whole up to past the cut."""
    limit = int8.max_length * 8
    shrink = run_shrinker(int8._tok.to_str())
    assert shrink is not None
    cases = {**long_cases(limit),
             "run-across-the-head": " a" * (limit - 100) + "q" * (limit * 3) + " b" * limit,
             "runs-then-words": ("z" * 5000 + " ") * 10 + "word " * limit}
    for name, text in cases.items():
        for size in (limit, 4 * limit):
            assert shrink.head(text, size)[: size + 1] == shrink(text)[: size + 1], (name, size)
    read: list[int] = []
    real = Shrinker.__call__
    monkeypatch.setattr(Shrinker, "__call__", lambda self, t: read.append(len(t)) or real(self, t))
    english = "edge embeddings run offline on the devices people own " * 100_000  # 5.4 MB
    assert int8.tokenize([english])[0].ids == int8.tokenize([english[: limit * 2]])[0].ids
    assert max(read) <= 4 * limit


def test_the_run_shrinker_is_only_for_bert_wordpiece() -> None:
    bert = {"normalizer": {"type": "BertNormalizer"}, "pre_tokenizer": {"type": "BertPreTokenizer"},
            "model": {"type": "WordPiece", "max_input_chars_per_word": 100}}
    assert run_shrinker(json.dumps(bert))("q" * 5000) == "q" * 202
    huge_words = {"model": {"type": "WordPiece", "max_input_chars_per_word": 10**6}}
    for change in ({"model": {"type": "BPE"}}, {"pre_tokenizer": {"type": "Metaspace"}},
                   {"normalizer": {"type": "NFKC"}}, huge_words,
                   {"added_tokens": [{"content": "<" + "x" * 300 + ">"}]}):
        assert run_shrinker(json.dumps({**bert, **change})) is None, change
    assert run_shrinker("not json") is None
    # an added token's first letter never starts or continues a run: "q" of "qq-token" splits them
    with_added = {**bert, "added_tokens": [{"content": "qq-token"}]}
    assert run_shrinker(json.dumps(with_added))("q" * 5000) == "q" * 5000


def test_every_character_the_cut_breaks_at_starts_a_word_for_the_real_tokenizer(int8: Embedder) -> None:
    """The cut's table of break characters agrees with the installed tokenizers library."""
    breaks = break_test(int8._tok.to_str())
    norm, pre = int8._tok.normalizer, int8._tok.pre_tokenizer
    candidates = [chr(c) for lo, hi in ((0, 0x3000), (0x3000, 0x3400), (0xFE00, 0x10000)) for c in range(lo, hi)]
    candidates += [chr(c) for lo, hi in ((0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0x20000, 0x2FA1F))
                   for c in range(lo, hi, 97)] + [chr(0x2B81F), chr(0x2B820), chr(0x2B920), chr(0x2CEAF)]
    taken = [c for c in candidates if breaks(c) and not c.isspace()]
    assert len(taken) > 400
    for c in taken:
        pieces = pre.pre_tokenize_str(norm.normalize_str("ab" + c + "cd"))
        assert pieces[0][0] == "ab", (hex(ord(c)), pieces)
    assert not any(breaks(c) for c in "]SEPMASK")  # inside added tokens: a cut there would split them


def test_the_cut_reads_the_tokenizer_and_guesses_nothing_for_others() -> None:
    bert = json.dumps({"normalizer": {"type": "BertNormalizer", "handle_chinese_chars": True},
                       "pre_tokenizer": {"type": "BertPreTokenizer"}, "added_tokens": [{"content": "<x|y>"}]})
    other = json.dumps({"normalizer": {"type": "NFKC"}, "pre_tokenizer": {"type": "Metaspace"}})
    cjk = "边缘嵌入模型在设备上运行，" * 1000
    assert len(cut(cjk, 100, break_test(bert))) <= 100
    assert cut(cjk, 100, break_test(other)) == cjk  # no whitespace: tokenized whole
    assert not break_test(bert)("|") and not break_test(bert)(">") and break_test(bert)("<")
    assert break_test("not json")(" ") and not break_test("not json")("，")


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
