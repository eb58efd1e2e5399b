"""Long-document retrieval: long_text="window" against "truncate" on documents built from msmarco-5k.

    .venv/bin/python benchmarks/long_docs.py BUNDLE [--data ../shared/data/msmarco-5k] [--per-query 4]
        [--passages 6] [--distractors 200] [--stride N ...] [--seed 0]

Each document is --passages passages joined by spaces: for every query, --per-query of its
most relevant passages, each placed among fillers (passages no query is judged relevant
to) at a position cycling through 0 .. passages-1, so the relevant text sits at the start
of some documents and past max_length tokens in others; plus --distractors documents of
fillers only. A document's relevance to a query is its relevant passage's grade. Reports
nDCG@10 (gains 2^rel - 1) and recall@10 for truncate and each window stride, overall and by
whether the relevant passage starts within the first max_length tokens.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np

from edge_embed import Embedder
from edge_embed.evaluate import ndcg_at_k, read_beir, recall_at_k, search


def build(data: Path, per_query: int, passages: int, distractors: int, seed: int
          ) -> tuple[dict[str, str], dict[str, str], dict[str, dict[str, int]], dict[str, str]]:
    corpus, queries, qrels = read_beir(data)
    judged = {d for rels in qrels.values() for d, r in rels.items() if r > 0}
    fillers = sorted(set(corpus) - judged)
    rng = random.Random(seed)
    docs: dict[str, str] = {}
    doc_qrels: dict[str, dict[str, int]] = {}
    before: dict[str, str] = {}  # doc id -> the text ahead of its relevant passage
    n = 0
    for qid in sorted(qrels):
        best = sorted(((r, d) for d, r in qrels[qid].items() if r > 0), key=lambda x: (-x[0], x[1]))[:per_query]
        for rel, pid in best:
            pos = n % passages
            parts = rng.sample(fillers, passages - 1)
            parts.insert(pos, pid)
            did = f"d{n}"
            docs[did] = " ".join(corpus[p] for p in parts)
            before[did] = " ".join(corpus[p] for p in parts[:pos])
            doc_qrels.setdefault(qid, {})[did] = rel
            n += 1
    for i in range(distractors):
        docs[f"x{i}"] = " ".join(corpus[p] for p in rng.sample(fillers, passages))
    return docs, {q: queries[q] for q in doc_qrels}, doc_qrels, before


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle")
    ap.add_argument("--data", default="../shared/data/msmarco-5k")
    ap.add_argument("--per-query", type=int, default=4)
    ap.add_argument("--passages", type=int, default=6)
    ap.add_argument("--distractors", type=int, default=200)
    ap.add_argument("--stride", type=int, action="append", help="window stride(s) to try (default: the bundle's)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    emb = Embedder.load(args.bundle)
    docs, queries, qrels, before = build(Path(args.data), args.per_query, args.passages, args.distractors, args.seed)
    ids = list(docs)
    texts = [docs[d] for d in ids]
    lengths = np.array(emb.token_count(texts))
    # does the relevant passage start within the max_length tokens that truncation keeps?
    ahead = dict(zip(before, emb.token_count(list(before.values())), strict=True))
    early = {d: ahead[d] - 2 < emb.max_length - 2 for d in before}  # token_count includes [CLS] and [SEP]
    prompt = "query" if "query" in emb.prompts else None
    q_ids = list(queries)
    q_vecs = emb.embed([queries[q] for q in q_ids], prompt=prompt)
    print(f"{args.bundle}: {len(ids)} documents ({len(before)} with one relevant passage, {args.distractors} "
          f"distractors), {len(q_ids)} queries; document tokens: median {int(np.median(lengths))}, "
          f"min {lengths.min()}, max {lengths.max()}; max_length {emb.max_length}; "
          f"{sum(early.values())} of {len(early)} relevant passages start within it", file=sys.stderr)
    modes: list[tuple[str, dict[str, object]]] = [("truncate", {"long_text": "truncate"})]
    for s in args.stride or [None]:
        label = f"window, stride {s if s is not None else emb.max_length // 8}"
        modes.append((label, {"long_text": "window", "stride": s}))
    print(f"{'mode':<24} {'nDCG@10':>8} {'recall@10':>10} {'nDCG@10 early':>14} {'nDCG@10 late':>13}")
    for label, kw in modes:
        vecs = emb.embed(texts, **kw)  # type: ignore[arg-type]
        top = search(q_vecs, vecs, 10)
        ranked = {q: [ids[i] for i in top[n]] for n, q in enumerate(q_ids)}
        ndcg = np.mean([ndcg_at_k(ranked[q], qrels[q]) for q in q_ids])
        rec = np.mean([recall_at_k(ranked[q], qrels[q], 10) for q in q_ids])
        split = {}
        for name, keep in (("early", True), ("late", False)):
            sub = [ndcg_at_k(ranked[q], {d: r for d, r in qrels[q].items() if early[d] == keep}) for q in q_ids
                   if any(early[d] == keep for d in qrels[q])]
            split[name] = float(np.mean(sub)) if sub else float("nan")
        print(f"{label:<24} {100 * ndcg:>8.2f} {100 * rec:>10.2f} {100 * split['early']:>14.2f} "
              f"{100 * split['late']:>13.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
