"""Time to embed one huge text against one max_length-sized text (the cut before tokenizing).

    .venv/bin/python benchmarks/long_text.py BUNDLE [--mb 5] [--runs 5] [--script latin|cjk|none]

Same process, interleaved runs, medians. Also times tokenizing the huge text whole
(``token_count``, exact), which is what embedding it cost before texts were cut first.
``--script cjk``: Chinese and Japanese sentences without spaces (cut before an ideograph or
punctuation); ``--script none``: one run of a character that is neither (hiragana), which
cannot be cut at a word boundary; for BERT's WordPiece it is one unknown token however long,
so the runtime shortens the run instead. It is compared with a text of 512 English tokens.
"""

from __future__ import annotations

import argparse
import statistics
import time

from edge_embed import Embedder

WORDS = ("the quick brown fox jumps over the lazy dog while small sentence embedding models "
         "run offline on laptops phones and single board computers").split()


CJK = ("小型句子嵌入模型可以在笔记本电脑和单板计算机上离线运行。", "边缘设备把文本变成向量，",
       "これは端末で動く埋め込みモデルです。", "東京の駅で、電車を待つ。")


def text_of(chars: int, script: str = "latin") -> str:
    if script == "none":
        return "ぁ" * chars
    words, sep = (WORDS, " ") if script == "latin" else (CJK, "")
    out, n, i = [], 0, 0
    while n < chars:
        w = words[i % len(words)]
        out.append(w)
        n += len(w) + len(sep)
        i += 1
    return sep.join(out)[:chars]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle")
    ap.add_argument("--mb", type=float, default=5.0, help="million characters of the huge text (5)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--script", choices=("latin", "cjk", "none"), default="latin",
                    help="English words (latin), Chinese/Japanese without spaces (cjk), or no break at all (none)")
    args = ap.parse_args()
    emb = Embedder.load(args.bundle)
    huge = text_of(int(args.mb * 1e6), args.script)
    # a text without breaks is a few tokens however long: compare it with 512 English tokens
    short = text_of(20_000, "latin" if args.script == "none" else args.script)
    while emb.token_count([short])[0] > 512:  # a 512-token text (cut at max_length when that is shorter)
        short = short[: int(len(short) * 0.95)]
    times: dict[str, list[float]] = {"huge": [], "short": []}
    emb.embed([short])
    for _ in range(args.runs):
        for name, t in (("short", short), ("huge", huge)):
            t0 = time.perf_counter()
            emb.embed_detailed([t])
            times[name].append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    n_tokens = emb.token_count([huge])[0]
    whole = time.perf_counter() - t0
    s, h = statistics.median(times["short"]), statistics.median(times["huge"])
    print(f"{args.bundle}: max_length {emb.max_length}, {args.script} text")
    print(f"  {emb.token_count([short])[0]}-token text: {s * 1e3:.1f} ms (median of {args.runs})")
    size = f"{len(huge) / 1e6:.1f} M-character ({len(huge.encode('utf-8')) / 1e6:.1f} MB UTF-8)"
    print(f"  {size} text ({n_tokens} tokens): {h * 1e3:.1f} ms (median of {args.runs}), "
          f"{h / s:.2f}x the short text")
    print(f"  tokenizing the {size} text whole (token_count): {whole * 1e3:.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
