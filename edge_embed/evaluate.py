"""Quality metrics and the two standard evaluation formats, MTEB's protocol, numpy only.

- STS files (``score<TAB>sentence1<TAB>sentence2``, header line): Spearman correlation
  (average ranks for ties, as scipy.stats.spearmanr) between the gold scores and the
  cosine similarity of the two sentences' vectors, x100 as MTEB reports it.
- BEIR folders (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``): exact search
  by cosine similarity over the whole corpus, nDCG@10 with gains 2^rel - 1 and recall@100,
  both averaged over the queries that have at least one relevant document, x100. Corpus
  texts are ``title + " " + text`` as in MTEB; the bundle's ``query`` prompt, when its
  manifest has one, goes on queries only.

Deliberately does not download data sets, call scipy/sklearn/pytrec_eval, or approximate
the search: every metric here is a few lines of numpy that the tests check by hand.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import InputError
from .progress import Progress

__all__ = [
    "cosine_rows", "eval_beir", "eval_sts", "ndcg_at_k", "rankdata", "read_beir", "read_sts",
    "recall_at_k", "search", "spearman",
]

FloatArray = npt.NDArray[np.float64]
EmbedFn = Callable[[list[str], str | None], npt.NDArray[np.float32]]
_CHUNK = 1024  # texts per embed call: keeps progress lines coming and batches length-sorted


# ---------------------------------------------------------------------- metrics
def rankdata(x: npt.ArrayLike) -> FloatArray:
    """1-based ranks; tied values share the average of their ranks (scipy's 'average')."""
    a = np.asarray(x, dtype=np.float64).ravel()
    order = np.argsort(a, kind="stable")
    sorted_a = a[order]
    # a run of equal values starts where the sorted value changes
    starts = np.r_[True, sorted_a[1:] != sorted_a[:-1]]
    run_id = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    counts = np.diff(np.r_[first, a.size])
    avg = first + (counts + 1) / 2.0  # mean of 1-based ranks first+1 .. first+count
    ranks = np.empty(a.size, dtype=np.float64)
    ranks[order] = avg[run_id]
    return ranks


def spearman(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    """Spearman's rho: Pearson correlation of the average ranks."""
    ra, rb = rankdata(a), rankdata(b)
    if ra.size != rb.size:
        raise InputError(f"spearman: {ra.size} values against {rb.size}; both sides need one value per pair")
    if ra.size < 2:
        raise InputError("spearman: needs at least 2 pairs")
    ra -= ra.mean()
    rb -= rb.mean()
    denom = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    if denom == 0.0:
        return float("nan")  # one side is constant: no correlation is defined
    return float((ra * rb).sum() / denom)


def cosine_rows(a: npt.ArrayLike, b: npt.ArrayLike) -> FloatArray:
    """Cosine similarity of row i of a with row i of b."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    num = (x * y).sum(axis=1)
    den = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
    return np.asarray(num / np.maximum(den, 1e-12), dtype=np.float64)


def ndcg_at_k(ranked: Sequence[str], relevance: Mapping[str, int], k: int = 10) -> float:
    """nDCG@k of one ranked list: gains 2^rel - 1, discount log2(rank + 1), ideal from all judged docs."""
    gains = [2.0 ** relevance.get(d, 0) - 1.0 for d in ranked[:k]]
    dcg = sum(g / np.log2(i + 2) for i, g in enumerate(gains))
    ideal = sorted((r for r in relevance.values() if r > 0), reverse=True)[:k]
    idcg = sum((2.0 ** r - 1.0) / np.log2(i + 2) for i, r in enumerate(ideal))
    return float(dcg / idcg) if idcg > 0 else 0.0


def recall_at_k(ranked: Sequence[str], relevance: Mapping[str, int], k: int = 100) -> float:
    """Share of the relevant (rel > 0) documents found in the top k."""
    relevant = {d for d, r in relevance.items() if r > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranked[:k])) / len(relevant)


def search(queries: npt.NDArray[np.float32], corpus: npt.NDArray[np.float32], k: int,
           chunk: int = 50_000) -> npt.NDArray[np.int64]:
    """Exact top-k corpus rows per query by cosine similarity, best first (ties: lower row first)."""
    q = _unit(queries)
    k = min(k, corpus.shape[0])
    best_s = np.full((q.shape[0], 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((q.shape[0], 0), dtype=np.int64)
    for start in range(0, corpus.shape[0], chunk):
        c = _unit(corpus[start:start + chunk])
        s = np.concatenate([best_s, q @ c.T], axis=1)
        i = np.concatenate([best_i, np.broadcast_to(np.arange(start, start + c.shape[0]), (q.shape[0], c.shape[0]))],
                           axis=1)
        # sort by score descending, then by corpus row, so ties resolve the same way every run
        order = np.lexsort((i, -s), axis=1)[:, :k]
        best_s = np.take_along_axis(s, order, axis=1)
        best_i = np.take_along_axis(i, order, axis=1)
    return best_i


def _unit(x: npt.ArrayLike) -> npt.NDArray[np.float32]:
    a = np.asarray(x, dtype=np.float32)
    out: npt.NDArray[np.float32] = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    return out


# ---------------------------------------------------------------------- readers
def read_sts(path: str | Path) -> tuple[FloatArray, list[str], list[str]]:
    """(gold scores, sentences1, sentences2) from a score<TAB>s1<TAB>s2 file with a header line."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such STS file; give a score<TAB>sentence1<TAB>sentence2 file")
    scores: list[float] = []
    s1: list[str] = []
    s2: list[str] = []
    try:
        with open(p, encoding="utf-8", newline="") as f:
            rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            next(rows, None)  # header
            for n, row in enumerate(rows, 2):
                if not row:
                    continue
                if len(row) < 3:
                    raise InputError(f"{p}:{n}: expected score<TAB>sentence1<TAB>sentence2, got {len(row)} field(s)")
                try:
                    scores.append(float(row[0]))
                except ValueError:
                    raise InputError(f"{p}:{n}: score {row[0]!r} is not a number") from None
                s1.append(row[1])
                s2.append(row[2])
    except UnicodeDecodeError as e:
        raise InputError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if len(scores) < 2:
        raise InputError(f"{p}: needs at least 2 scored pairs after the header line, found {len(scores)}")
    return np.asarray(scores, dtype=np.float64), s1, s2


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise InputError(f"{path}: missing; a BEIR folder holds corpus.jsonl, queries.jsonl and qrels/<split>.tsv")
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{n}: not a JSON line ({e.msg})") from None
            if not isinstance(obj, dict) or "_id" not in obj or "text" not in obj:
                raise InputError(f"{path}:{n}: each line needs '_id' and 'text'")
            out.append(obj)
    return out


def read_beir(folder: str | Path, split: str = "test") -> tuple[dict[str, str], dict[str, str],
                                                               dict[str, dict[str, int]]]:
    """(corpus id -> text, query id -> text, qrels query id -> {doc id: relevance}) of a BEIR folder."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"{root}: no such BEIR folder; it holds corpus.jsonl, queries.jsonl and qrels/")
    corpus = {}
    for d in _read_jsonl(root / "corpus.jsonl"):
        title = str(d.get("title") or "")
        corpus[str(d["_id"])] = (title + " " + str(d["text"])).strip() if title else str(d["text"]).strip()
    queries = {str(d["_id"]): str(d["text"]) for d in _read_jsonl(root / "queries.jsonl")}
    qpath = root / "qrels" / f"{split}.tsv"
    if not qpath.is_file():
        have = sorted(p.stem for p in (root / "qrels").glob("*.tsv")) if (root / "qrels").is_dir() else []
        raise InputError(f"{qpath}: missing; choose --split from {have or 'the qrels/ files'}")
    qrels: dict[str, dict[str, int]] = {}
    with open(qpath, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) < 3:
                if line.strip():
                    raise InputError(f"{qpath}:{n}: expected query-id<TAB>corpus-id<TAB>score")
                continue
            try:
                rel = int(float(parts[2]))
            except ValueError:
                if n == 1:
                    continue  # header line: query-id corpus-id score
                raise InputError(f"{qpath}:{n}: relevance {parts[2]!r} is not a number") from None
            qrels.setdefault(parts[0], {})[parts[1]] = rel
    return corpus, queries, qrels


# ---------------------------------------------------------------------- evaluation
def _embed_all(embed: EmbedFn, texts: list[str], prompt: str | None, label: str, progress: bool) -> Any:
    parts = []
    with Progress(label, len(texts), enabled=progress) as shown:
        for start in range(0, len(texts), _CHUNK):
            parts.append(embed(texts[start:start + _CHUNK], prompt))
            shown.update(len(parts[-1]))
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def eval_sts(embed: EmbedFn, path: str | Path, progress: bool = False) -> dict[str, Any]:
    """Cosine Spearman x100 of one STS file; embed(texts, prompt) returns a row per text."""
    gold, s1, s2 = read_sts(path)
    # both sides in one call: shared sentences and length-sorted batches across the pair
    vecs = _embed_all(embed, s1 + s2, None, f"sts {Path(path).name}", progress)
    cos = cosine_rows(vecs[:len(s1)], vecs[len(s1):])
    return {"task": "sts", "data": str(path), "pairs": len(gold), "cosine_spearman": 100.0 * spearman(gold, cos)}


def eval_beir(embed: EmbedFn, folder: str | Path, split: str = "test", query_prompt: str | None = None,
              k_ndcg: int = 10, k_recall: int = 100, progress: bool = False) -> dict[str, Any]:
    """nDCG@k_ndcg and recall@k_recall (x100) of one BEIR folder by exact cosine search."""
    corpus, queries, qrels = read_beir(folder, split)
    judged = {q: r for q, r in qrels.items() if q in queries and any(v > 0 for v in r.values())}
    if not judged:
        raise InputError(f"{folder}: no query in queries.jsonl has a relevant document in qrels/{split}.tsv")
    doc_ids = list(corpus)
    q_ids = list(judged)
    dvecs = _embed_all(embed, [corpus[d] for d in doc_ids], None, "corpus", progress)
    qvecs = _embed_all(embed, [queries[q] for q in q_ids], query_prompt, "queries", progress)
    top = search(qvecs, dvecs, max(k_ndcg, k_recall))
    ndcg, recall = [], []
    for row, q in enumerate(q_ids):
        ranked = [doc_ids[i] for i in top[row]]
        ndcg.append(ndcg_at_k(ranked, judged[q], k_ndcg))
        recall.append(recall_at_k(ranked, judged[q], k_recall))
    return {
        "task": "retrieval", "data": str(folder), "split": split, "queries": len(q_ids), "corpus": len(doc_ids),
        "query_prompt": query_prompt, f"ndcg@{k_ndcg}": 100.0 * float(np.mean(ndcg)),
        f"recall@{k_recall}": 100.0 * float(np.mean(recall)),
    }
