"""Cosine to the fp32 bundle on text no build sees: STS-B test sentences and msmarco passages.

The build's gate part (quantize/probes.txt) is the figure a build is judged on; this is the
check that it holds on other text. Texts are embedded as a user would (embed(), batch 32,
length-sorted batches), INT8 bundle and fp32 reference alike.

    .venv/bin/python benchmarks/heldout.py --bundle INT8 --reference FP32 [--passages 1000]

Prints mean / p1 / min cosine per text set and writes --out (JSON) when given.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from edge_embed import Embedder
from edge_embed.evaluate import read_beir, read_sts

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", required=True)
    p.add_argument("--reference", required=True, help="the fp32 bundle of the same graph")
    p.add_argument("--stsb", default=str(REPO.parent / "shared/data/stsb/test.tsv"))
    p.add_argument("--beir", default=str(REPO.parent / "shared/data/msmarco-5k"))
    p.add_argument("--passages", type=int, default=1000, help="msmarco passages compared")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out")
    args = p.parse_args()
    _, a, b = read_sts(Path(args.stsb))
    sets = {"STS-B test sentences": list(dict.fromkeys(a + b)),
            f"msmarco passages (first {args.passages})": list(read_beir(Path(args.beir), "test")[0].values())[
                :args.passages]}
    got, want = Embedder.load(args.bundle, threads=args.threads), Embedder.load(args.reference, threads=args.threads)
    rep: dict[str, dict[str, float]] = {}
    for label, texts in sets.items():
        print(f"heldout: {label}: {len(texts)} texts", file=sys.stderr, flush=True)
        c = (got.embed(texts) * want.embed(texts)).sum(axis=1)
        rep[label] = {"n": len(texts), "mean": float(c.mean()), "p1": float(np.percentile(c, 1)), "min": float(c.min())}
        print(f"| {label} ({len(texts)}) | {c.mean():.4f} / {np.percentile(c, 1):.4f} / {c.min():.4f} |", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"bundle": args.bundle, "reference": args.reference, "sets": rep},
                                             indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
