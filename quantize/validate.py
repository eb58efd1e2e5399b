"""Fidelity of a built bundle against its fp32 reference, measured THROUGH edge_embed.

Both models are run by the runtime's own Embedder, so what is measured is what ships:
tokenizer, padding, pooling and normalisation included. Does not decide how to fix a
failing build; it reports figures and whether they meet the thresholds.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from edge_embed import Embedder
from edge_embed.progress import Progress

from . import BuildError

__all__ = ["BATCH", "THRESHOLD_KEYS", "UPPER_BOUNDS", "ProbeSets", "batch_independence", "check_thresholds",
           "compare", "default_probes", "drift_report", "format_table", "labelled_report", "load_probes"]

TOPK = 10
BATCH = 32  # the runtime's default batch size: batch independence is measured at it
# every figure a threshold can name: probe figures, the size ratio, and the labelled checks
THRESHOLD_KEYS = ("cosine_mean", "cosine_p1", "cosine_min", "top10_overlap", "batch_independence",
                  "model_size_ratio", "sts_spearman_retained", "ndcg10_retained")
# thresholds that are ceilings, not floors
UPPER_BOUNDS = frozenset({"model_size_ratio"})


@dataclass(frozen=True)
class ProbeSets:
    """The probe texts of a build: ``search`` steers every tuning step, ``gate`` judges the result."""

    search: list[str]
    gate: list[str]


def default_probes(path: str | None = None) -> ProbeSets:
    """The probe set (the shipped one, or the file at path), split once: in each '# Section',
    texts in sha256 order alternate between the search part and the gate part, so both hold
    every kind of text and the split depends neither on file order nor on the model."""
    search: list[str] = []
    gate: list[str] = []
    for section in _sections(path):
        ranked = sorted(section, key=lambda t: hashlib.sha256(t.encode()).hexdigest())
        search += ranked[0::2]
        gate += ranked[1::2]
    return ProbeSets(search=search, gate=gate)


def _sections(path: str | None) -> list[list[str]]:
    if path is None:
        text = resources.files("quantize").joinpath("probes.txt").read_text(encoding="utf-8")
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise BuildError(f"{path}: cannot read probe texts ({e})") from None
    sections: list[list[str]] = [[]]
    for line in text.splitlines():
        if line.startswith("# Section"):
            sections.append([])
        elif line.strip() and not line.startswith("#"):
            sections[-1].append(line)
    sections = [s for s in sections if s]
    count = sum(len(s) for s in sections)
    # each part must still rank more than TOPK neighbours
    if path is not None and count <= 2 * TOPK:
        raise BuildError(f"{path}: {count} probe texts; a search part and a gate part with top-{TOPK} neighbour "
                         f"agreement each need more than {2 * TOPK} (one text per line)")
    return sections


def load_probes(path: str | None = None) -> list[str]:
    """All probe texts: the fixed set shipped with the pipeline (queries, sentences, paragraphs,
    long passages, several domains), or the file at path in the same format (one text per
    line, '#' comments, optional '# Section' lines)."""
    return [t for section in _sections(path) for t in section]


def embed_with_progress(emb: Embedder, texts: list[str], label: str, prompt: str | None = None,
                        chunk: int = 64, progress: bool = True) -> np.ndarray:
    parts = []
    with Progress(f"  {label}", len(texts), enabled=progress) as shown:
        for i in range(0, len(texts), chunk):
            # truncation of long probes is expected and counted in the report, not warned about
            parts.append(emb.embed_detailed(texts[i:i + chunk], prompt=prompt).vectors)
            shown.update(len(parts[-1]))
    return np.concatenate(parts) if parts else np.zeros((0, emb.dim), np.float32)


def compare(ref: np.ndarray, got: np.ndarray, k: int = TOPK) -> dict[str, float]:
    """Per-text cosine between two embeddings of the same texts, and top-k neighbour overlap."""
    r = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    g = got / np.linalg.norm(got, axis=1, keepdims=True)
    cos = (r * g).sum(axis=1)
    out = {"cosine_mean": float(cos.mean()), "cosine_p1": float(np.percentile(cos, 1)),
           "cosine_min": float(cos.min())}
    n = len(r)
    if n > k:
        sr, sg = r @ r.T, g @ g.T
        np.fill_diagonal(sr, -np.inf)
        np.fill_diagonal(sg, -np.inf)
        top_r = np.argsort(-sr, axis=1)[:, :k]
        top_g = np.argsort(-sg, axis=1)[:, :k]
        overlap = [len(set(a) & set(b)) / k for a, b in zip(top_r, top_g, strict=True)]
        out[f"top{k}_overlap"] = float(np.mean(overlap))
    return out


def batch_independence(emb: Embedder, texts: list[str], batch_size: int = BATCH) -> float:
    """Min cosine between each text embedded alone and inside a mixed-length batch.

    Batches are a seeded shuffle of ``texts``, so short queries share a batch (and its padding
    and, with per-batch activation scales, its quantization ranges) with long passages. A
    model whose vectors do not depend on their batch scores 1.0 up to float rounding.
    """
    order = list(range(len(texts)))
    random.Random(0).shuffle(order)
    mixed = np.zeros((len(texts), emb.dim), np.float64)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        mixed[idx] = emb.embed_detailed([texts[i] for i in idx], batch_size=batch_size).vectors
    # truncated long probes are expected (counted in the report), so embed_detailed: no warnings
    alone = np.concatenate([emb.embed_detailed([t]).vectors for t in texts]).astype(np.float64)
    alone /= np.linalg.norm(alone, axis=1, keepdims=True)
    mixed /= np.linalg.norm(mixed, axis=1, keepdims=True)
    return float((alone * mixed).sum(axis=1).min()) if texts else 1.0


def check_thresholds(figures: dict[str, float], thresholds: dict[str, float]) -> list[str]:
    """Human-readable shortfalls; empty when every threshold is met."""
    short = []
    for key, limit in sorted(thresholds.items()):
        if key not in figures:
            continue
        if key in UPPER_BOUNDS:
            if figures[key] > limit:
                short.append(f"{key} {figures[key]:.4f} > {limit:.4f} (over by {figures[key] - limit:.4f})")
        elif figures[key] < limit:
            short.append(f"{key} {figures[key]:.4f} < {limit:.4f} (short by {limit - figures[key]:.4f})")
    return short


def drift_report(reference: Embedder, candidate: Embedder, thresholds: dict[str, float],
                 texts: list[str] | None = None, progress: bool = True,
                 extra: dict[str, Any] | None = None,
                 ref_cache: dict[Any, np.ndarray] | None = None) -> dict[str, Any]:
    """Embed the probe set with both, return the figures, thresholds and verdict.

    ref_cache: a dict kept across calls with the same reference (the trials of a search), so
    the reference's vectors are computed once.
    """
    probes = texts if texts is not None else load_probes()
    cache: dict[Any, np.ndarray] = ref_cache if ref_cache is not None else {}

    def ref_vectors(batch: list[str], label: str, prompt: str | None = None) -> np.ndarray:
        key = (prompt, hashlib.sha256("\n".join(batch).encode()).hexdigest())
        if key not in cache:
            cache[key] = embed_with_progress(reference, batch, label, prompt=prompt, progress=progress)
        return cache[key]

    ref = ref_vectors(probes, "fp32 reference")
    got = embed_with_progress(candidate, probes, "quantized", progress=progress)
    figures = compare(ref, got)
    figures["batch_independence"] = batch_independence(candidate, probes)
    # queries are embedded with each of the model's prompts too: that is how they are served
    prompt_figs = {}
    for name in sorted(candidate.prompts):
        short = [t for t in probes if len(t.split()) <= 12]
        if short:
            a = ref_vectors(short, f"fp32 '{name}' prompt", prompt=name)
            b = embed_with_progress(candidate, short, f"quantized '{name}' prompt", prompt=name, progress=progress)
            prompt_figs[name] = compare(a, b)
    lengths = candidate.token_count(probes)
    # size ratio and labelled checks are measured by the caller and judged here with the rest
    for key, value in (extra or {}).items():
        if isinstance(value, float):
            figures[key] = value
    shortfalls = check_thresholds(figures, thresholds)
    return {
        "reference": "fp32 ONNX export of the same source, run through edge_embed.Embedder",
        "probes": {
            "count": len(probes),
            "sha256": hashlib.sha256("\n".join(probes).encode()).hexdigest(),
            "tokens_min": int(min(lengths)), "tokens_max": int(max(lengths)),
            "truncated": int(sum(n > candidate.max_length for n in lengths)),
        },
        **{k: round(v, 6) for k, v in figures.items()},
        "prompts": {n: {k: round(v, 6) for k, v in f.items()} for n, f in prompt_figs.items()},
        **{k: v for k, v in (extra or {}).items() if not isinstance(v, float)},
        "thresholds": dict(thresholds),
        "passed": not shortfalls,
        "shortfalls": shortfalls,
    }


class LabelledChecks:
    """Optional STS and BEIR checks; fp32 figures are computed once and reused across trials."""

    def __init__(self, sts_path: str | None, beir_path: str | None) -> None:
        from .metrics import load_beir, load_sts

        self.sts = load_sts(sts_path) if sts_path else None
        self.beir = load_beir(beir_path) if beir_path else None
        self._ref: dict[str, float] = {}

    def __bool__(self) -> bool:
        return self.sts is not None or self.beir is not None

    def _sts(self, emb: Embedder, label: str, progress: bool) -> float:
        from .metrics import sts_spearman

        assert self.sts is not None
        a = embed_with_progress(emb, self.sts.first, f"{label} STS sentence 1", progress=progress)
        b = embed_with_progress(emb, self.sts.second, f"{label} STS sentence 2", progress=progress)
        return sts_spearman(self.sts, a, b)

    def _ndcg(self, emb: Embedder, label: str, progress: bool) -> float:
        from .metrics import ndcg_at_k

        assert self.beir is not None
        # queries take the model's query prompt when it has one (bge); passages never do
        prompt = "query" if "query" in emb.prompts else None
        q = embed_with_progress(emb, self.beir.queries, f"{label} queries", prompt=prompt, progress=progress)
        d = embed_with_progress(emb, self.beir.docs, f"{label} corpus", progress=progress)
        return ndcg_at_k(self.beir, q, d)

    def run(self, reference: Embedder, candidate: Embedder, progress: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.sts is not None:
            if "sts" not in self._ref:
                self._ref["sts"] = self._sts(reference, "fp32", progress)
            got = self._sts(candidate, "quantized", progress)
            out["sts"] = {"file": self.sts.path, "pairs": len(self.sts.scores),
                          "spearman_fp32": round(self._ref["sts"], 6), "spearman_int8": round(got, 6)}
            out["sts_spearman_retained"] = round(got / self._ref["sts"], 6)
        if self.beir is not None:
            if "beir" not in self._ref:
                self._ref["beir"] = self._ndcg(reference, "fp32", progress)
            got = self._ndcg(candidate, "quantized", progress)
            out["beir"] = {"folder": self.beir.path, "queries": len(self.beir.queries),
                           "docs": len(self.beir.docs), "ndcg10_fp32": round(self._ref["beir"], 6),
                           "ndcg10_int8": round(got, 6)}
            out["ndcg10_retained"] = round(got / self._ref["beir"], 6) if self._ref["beir"] else 0.0
        return out


def labelled_report(checks: LabelledChecks, reference: Embedder, candidate: Embedder,
                    progress: bool = True) -> dict[str, Any]:
    return checks.run(reference, candidate, progress) if checks else {}


def format_table(report: dict[str, Any]) -> str:
    """The readable end-of-build table: every figure measured, its threshold and verdict."""
    th = report.get("thresholds", {})
    rows = [("figure", "measured", "threshold", "")]
    keys = ["cosine_mean", "cosine_p1", "cosine_min", "top10_overlap", "batch_independence", "model_size_ratio",
            "sts_spearman_retained", "ndcg10_retained"]
    for k in keys:
        if k not in report:
            continue
        limit = th.get(k)
        if limit is None:
            verdict, shown = "", "-"
        else:
            ok = report[k] <= limit if k in UPPER_BOUNDS else report[k] >= limit
            verdict, shown = ("ok" if ok else "FAIL"), (f"<= {limit:.4f}" if k in UPPER_BOUNDS else f">= {limit:.4f}")
        rows.append((k, f"{report[k]:.4f}", shown, verdict))
    if "sts" in report:
        s = report["sts"]
        rows.append(("sts spearman", f"{s['spearman_int8']:.4f}", f"fp32 {s['spearman_fp32']:.4f}", ""))
    if "beir" in report:
        b = report["beir"]
        rows.append(("beir ndcg@10", f"{b['ndcg10_int8']:.4f}", f"fp32 {b['ndcg10_fp32']:.4f}", ""))
    w = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join(f"{a:<{w[0]}}  {b:>{w[1]}}  {c:>{w[2]}}  {d}".rstrip() for a, b, c, d in rows)
