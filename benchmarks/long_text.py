"""Time to embed one huge text against one max_length-sized text (the cut before tokenizing).

    .venv/bin/python benchmarks/long_text.py BUNDLE [--mb 5] [--runs 5]

Same process, interleaved runs, medians. Also times tokenizing the huge text whole
(``token_count``, exact), which is what embedding it cost before texts were cut first.
"""

from __future__ import annotations

import argparse
import statistics
import time

from edge_embed import Embedder

WORDS = ("the quick brown fox jumps over the lazy dog while small sentence embedding models "
         "run offline on laptops phones and single board computers").split()


def text_of(chars: int) -> str:
    out, n, i = [], 0, 0
    while n < chars:
        w = WORDS[i % len(WORDS)]
        out.append(w)
        n += len(w) + 1
        i += 1
    return " ".join(out)[:chars]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle")
    ap.add_argument("--mb", type=float, default=5.0)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    emb = Embedder.load(args.bundle)
    huge = text_of(int(args.mb * 1e6))
    short = text_of(20_000)
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
    print(f"{args.bundle}: max_length {emb.max_length}")
    print(f"  {emb.token_count([short])[0]}-token text: {s * 1e3:.1f} ms (median of {args.runs})")
    print(f"  {len(huge) / 1e6:.1f} MB text ({n_tokens} tokens): {h * 1e3:.1f} ms (median of {args.runs}), "
          f"{h / s:.2f}x the short text")
    print(f"  tokenizing the {len(huge) / 1e6:.1f} MB text whole (token_count): {whole * 1e3:.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
