"""Fidelity of a built bundle against its fp32 reference, measured THROUGH edge_embed.

Both models are run by the runtime's own Embedder, so what is measured is what ships:
tokenizer, padding, pooling and normalisation included. Does not decide how to fix a
failing build; it reports figures and whether they meet the thresholds.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from importlib import resources
from typing import Any

import numpy as np

from edge_embed import Embedder

__all__ = ["compare", "drift_report", "load_probes", "check_thresholds"]

TOPK = 10


def load_probes() -> list[str]:
    """The fixed probe set shipped with the pipeline: queries, sentences, long passages."""
    text = resources.files("quantize").joinpath("probes.txt").read_text(encoding="utf-8")
    return [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


def _progress(label: str) -> Callable[[int, int], None]:
    def show(done: int, total: int) -> None:
        sys.stderr.write(f"\r  {label}: {done}/{total} texts")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()
    return show


def embed_with_progress(emb: Embedder, texts: list[str], label: str, prompt: str | None = None,
                        chunk: int = 64, progress: bool = True) -> np.ndarray:
    show = _progress(label) if progress else None
    parts = []
    for i in range(0, len(texts), chunk):
        # truncation of long probes is expected and counted in the report, not warned about
        parts.append(emb.embed_detailed(texts[i:i + chunk], prompt=prompt).vectors)
        if show:
            show(min(i + chunk, len(texts)), len(texts))
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


def check_thresholds(figures: dict[str, float], thresholds: dict[str, float]) -> list[str]:
    """Human-readable shortfalls; empty when every threshold is met."""
    short = []
    for key, limit in sorted(thresholds.items()):
        if key not in figures:
            continue
        if figures[key] < limit:
            short.append(f"{key} {figures[key]:.4f} < {limit:.4f} (short by {limit - figures[key]:.4f})")
    return short


def drift_report(reference: Embedder, candidate: Embedder, thresholds: dict[str, float],
                 texts: list[str] | None = None, progress: bool = True) -> dict[str, Any]:
    """Embed the probe set with both, return the figures, thresholds and verdict."""
    probes = texts if texts is not None else load_probes()
    ref = embed_with_progress(reference, probes, "fp32 reference", progress=progress)
    got = embed_with_progress(candidate, probes, "quantized", progress=progress)
    figures = compare(ref, got)
    # queries are embedded with each of the model's prompts too: that is how they are served
    prompt_figs = {}
    for name in sorted(candidate.prompts):
        short = [t for t in probes if len(t.split()) <= 12]
        if short:
            a = embed_with_progress(reference, short, f"fp32 '{name}' prompt", prompt=name, progress=progress)
            b = embed_with_progress(candidate, short, f"quantized '{name}' prompt", prompt=name, progress=progress)
            prompt_figs[name] = compare(a, b)
    lengths = candidate.token_count(probes)
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
        "thresholds": dict(thresholds),
        "passed": not shortfalls,
        "shortfalls": shortfalls,
    }
