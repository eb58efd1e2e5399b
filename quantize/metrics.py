"""Labelled quality checks for a build: STS Spearman and BEIR-style retrieval nDCG@10.

The metrics themselves are the runtime's (``edge_embed.evaluate``, the ``eval`` verb's),
so a build and ``edge-embed eval`` score alike. This module adds readers that fail with
build-side errors naming file and line, and the batch form the build's checks need. It
compares a quantized model with its fp32 reference; it is not a benchmark harness.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import BuildError

__all__ = ["BeirSet", "StsSet", "load_beir", "load_sts", "ndcg_at_k", "spearman", "sts_spearman"]

EmbedFn = Callable[[list[str]], np.ndarray]


@dataclass(frozen=True)
class StsSet:
    path: str
    scores: np.ndarray
    first: list[str]
    second: list[str]


def load_sts(path: str | Path) -> StsSet:
    """score<TAB>sentence1<TAB>sentence2 with a header line (STS Benchmark layout)."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise BuildError(f"{p}: cannot read the STS file ({e.strerror}); give a score<TAB>s1<TAB>s2 file") from None
    except UnicodeDecodeError:
        raise BuildError(f"{p}: not UTF-8 text; give a score<TAB>s1<TAB>s2 file") from None
    scores, first, second = [], [], []
    for n, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        parts = line.split("\t")
        try:
            if len(parts) != 3:
                raise ValueError
            scores.append(float(parts[0]))
        except ValueError:
            raise BuildError(f"{p}:{n}: expected score<TAB>sentence1<TAB>sentence2 after a header line, "
                             f"got {line[:60]!r}") from None
        first.append(parts[1])
        second.append(parts[2])
    if len(scores) < 3:
        raise BuildError(f"{p}: needs at least 3 scored pairs after the header line, found {len(scores)}")
    return StsSet(str(p), np.asarray(scores, dtype=np.float64), first, second)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from edge_embed.evaluate import spearman as rho

    return rho(a, b)


def sts_spearman(sts: StsSet, first: np.ndarray, second: np.ndarray) -> float:
    """Spearman between the gold scores and the cosine of each pair's embeddings."""
    a = first / np.linalg.norm(first, axis=1, keepdims=True)
    b = second / np.linalg.norm(second, axis=1, keepdims=True)
    return spearman(sts.scores, (a * b).sum(axis=1))


@dataclass(frozen=True)
class BeirSet:
    path: str
    doc_ids: list[str]
    docs: list[str]
    query_ids: list[str]
    queries: list[str]
    qrels: dict[str, dict[str, int]]


def _jsonl(path: Path, what: str) -> list[dict[str, object]]:
    rows = []
    try:
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise BuildError(f"{path}:{n}: not a JSON line ({e.msg}); {what} must be JSONL") from None
    except OSError as e:
        raise BuildError(f"{path}: cannot read ({e.strerror}); a BEIR folder holds corpus.jsonl, "
                         "queries.jsonl and qrels/test.tsv") from None
    return rows


def load_beir(folder: str | Path, split: str = "test") -> BeirSet:
    """A BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv; only judged queries are kept."""
    d = Path(folder)
    if not d.is_dir():
        raise BuildError(f"{d}: not a directory; give a BEIR folder (corpus.jsonl, queries.jsonl, qrels/{split}.tsv)")
    corpus = _jsonl(d / "corpus.jsonl", "the corpus")
    queries = _jsonl(d / "queries.jsonl", "the queries")
    qrels: dict[str, dict[str, int]] = {}
    qfile = d / "qrels" / f"{split}.tsv"
    try:
        lines = qfile.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise BuildError(f"{qfile}: cannot read ({e.strerror}); BEIR qrels are query-id<TAB>corpus-id<TAB>score") \
            from None
    for n, line in enumerate(lines, 1):
        parts = line.split("\t")
        if len(parts) < 3 or not parts[0].strip():
            continue
        try:
            rel = int(float(parts[2]))
        except ValueError:
            if n == 1:  # the usual header line
                continue
            raise BuildError(f"{qfile}:{n}: score {parts[2]!r} is not a number") from None
        qrels.setdefault(parts[0], {})[parts[1]] = rel
    doc_ids = [str(r["_id"]) for r in corpus]
    docs = [" ".join(str(r.get(k) or "") for k in ("title", "text")).strip() for r in corpus]
    judged = [(str(r["_id"]), str(r.get("text") or "")) for r in queries if str(r["_id"]) in qrels]
    if not doc_ids or not judged:
        raise BuildError(f"{d}: needs a non-empty corpus and at least one query with qrels in qrels/{split}.tsv")
    return BeirSet(str(d), doc_ids, docs, [q for q, _ in judged], [t for _, t in judged], qrels)


def ndcg_at_k(beir: BeirSet, query_vecs: np.ndarray, doc_vecs: np.ndarray, k: int = 10) -> float:
    """Mean nDCG@k over the judged queries, cosine ranking, gains 2^rel - 1 (BEIR/trec_eval)."""
    from edge_embed.evaluate import ndcg_at_k as one_query

    q = query_vecs / np.linalg.norm(query_vecs, axis=1, keepdims=True)
    d = doc_vecs / np.linalg.norm(doc_vecs, axis=1, keepdims=True)
    scores = q @ d.T
    total = 0.0
    for i, qid in enumerate(beir.query_ids):
        top = np.argsort(-scores[i], kind="stable")[:k]
        total += one_query([beir.doc_ids[j] for j in top], beir.qrels[qid], k)
    return total / len(beir.query_ids)
