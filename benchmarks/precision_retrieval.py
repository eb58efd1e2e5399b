"""Retrieval quality of encode()'s output precisions against float32 on a BEIR folder.

    .venv/bin/python benchmarks/precision_retrieval.py models/minilm-int8 ../shared/data/msmarco-5k

Queries and passages are both stored in the precision under test and ranked by exact
cosine over those stored codes (int8/uint8 codes as numbers, binary bits as +-1, which
ranks like Hamming distance), the way a vector index holding them would rank. A second
int8 row scores float32 queries against int8 passages ("asymmetric"), as when only the
index is compressed. The corpus is embedded once in float32 and quantized from that, so
every row sees the same model outputs. Prints a table and, with --json, the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_embed import Embedder  # noqa: E402
from edge_embed.evaluate import ndcg_at_k, read_beir, recall_at_k, search  # noqa: E402
from edge_embed.precision import quantize, ranges_array  # noqa: E402


def as_scores(codes: np.ndarray, precision: str) -> np.ndarray:
    if precision in ("binary", "ubinary"):
        bits = np.unpackbits(codes.view(np.uint8) if precision == "ubinary" else
                             (codes.astype(np.int16) + 128).astype(np.uint8), axis=1)
        return bits.astype(np.float32) * 2 - 1
    return codes.astype(np.float32)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bundle")
    ap.add_argument("beir", help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/test.tsv)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    emb = Embedder.load(args.bundle)
    corpus, queries, qrels = read_beir(args.beir)
    judged = {q: r for q, r in qrels.items() if q in queries and any(v > 0 for v in r.values())}
    doc_ids, q_ids = list(corpus), list(judged)
    d = emb.encode([corpus[i] for i in doc_ids], batch_size=32)
    q = emb.encode_query([queries[i] for i in q_ids])
    ranges = ranges_array(emb.manifest.extra["int8_ranges"])
    clipped = float(np.mean((d < ranges[0]) | (d > ranges[1])))

    def score(qv: np.ndarray, dv: np.ndarray) -> dict[str, float]:
        top = search(qv, dv, 100)
        ranked = [[doc_ids[i] for i in row] for row in top]
        pairs = list(zip(ranked, q_ids, strict=True))
        return {"ndcg@10": 100 * float(np.mean([ndcg_at_k(r, judged[x], 10) for r, x in pairs])),
                "recall@100": 100 * float(np.mean([recall_at_k(r, judged[x], 100) for r, x in pairs]))}

    rows = {"float32": score(q, d)}
    for p in ("int8", "uint8", "binary", "ubinary"):
        rows[p] = score(as_scores(quantize(q, p, ranges), p), as_scores(quantize(d, p, ranges), p))
    rows["int8 (float32 queries)"] = score(q, ranges[0] + (as_scores(quantize(d, "int8", ranges), "int8") + 128)
                                           * (ranges[1] - ranges[0]) / 255)
    base = rows["float32"]["ndcg@10"]
    for r in rows.values():
        r["ndcg@10_retained_pct"] = 100 * r["ndcg@10"] / base
    meta = {"bundle": args.bundle, "data": args.beir, "queries": len(q_ids), "corpus": len(doc_ids),
            "ranges_from_texts": emb.manifest.extra["int8_ranges"]["texts"],
            "corpus_values_outside_ranges_pct": 100 * clipped}
    if args.json:
        print(json.dumps({**meta, "rows": rows}, indent=2))
        return 0
    print(f"{args.bundle} on {args.beir}: {len(q_ids)} judged queries, {len(doc_ids)} passages; "
          f"ranges from {meta['ranges_from_texts']} probe vectors, "
          f"{meta['corpus_values_outside_ranges_pct']:.2f} % of corpus values outside them (clipped)")
    print(f"{'precision':<24} {'nDCG@10':>8} {'retained':>9} {'R@100':>7}")
    for name, r in rows.items():
        print(f"{name:<24} {r['ndcg@10']:>8.2f} {r['ndcg@10_retained_pct']:>8.2f}% {r['recall@100']:>7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
