"""Accuracy-aware mixed precision: keep in fp32 only the nodes whose quantization costs fidelity.

1. Sensitivity: for every quantizable node, a model with only that node quantized is run
   on a small slice of the probe set; its cosine loss to fp32 is the node's measured cost
   (isolated, so one node's error cannot hide behind another's).
2. Greedy: nodes are kept in fp32 in order of loss per byte given up, starting from the
   smallest set whose summed isolated losses predict the thresholds are met; each step is
   fully validated through edge_embed, until every threshold passes or the size budget
   is spent. The search never ships anything itself: bundle.py writes what passed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["mixed_precision", "sensitivity"]

QuantizeFn = Callable[[Path, list[str] | None, list[str] | None], dict[str, Any]]


def _say(msg: str) -> None:
    sys.stderr.write(f"      {msg}\n")
    sys.stderr.flush()


def sensitivity(candidates: list[dict[str, Any]], quantize: QuantizeFn, measure: Callable[[Path], dict[str, float]],
                work: Path, budget_bytes: float) -> list[dict[str, Any]]:
    """Isolated cosine loss of each candidate that fits the size budget, most costly first per byte."""
    out = []
    fits = [c for c in candidates if c["fp32_extra_bytes"] <= budget_bytes]
    t0 = time.perf_counter()
    for i, c in enumerate(fits, 1):
        path = work / "sens.onnx"
        quantize(path, None, [c["node"]])
        fig = measure(path)
        loss = {"mean_cosine_loss": 1.0 - fig["cosine_mean"], "p1_cosine_loss": 1.0 - fig["cosine_p1"]}
        out.append({**c, **{k: round(v, 7) for k, v in loss.items()}})
        sys.stderr.write(f"\r      sensitivity: {i}/{len(fits)} nodes measured ({time.perf_counter() - t0:.0f} s)")
        sys.stderr.flush()
    sys.stderr.write("\n")
    for c in out:
        c["loss_per_mb"] = (c["mean_cosine_loss"] + c["p1_cosine_loss"]) / (c["fp32_extra_bytes"] / 1e6)
    return sorted(out, key=lambda c: -c["loss_per_mb"])


def _first_guess(ranked: list[dict[str, Any]], base: dict[str, Any], thresholds: dict[str, float],
                 budget_bytes: float) -> int:
    """How many of the ranked nodes the summed isolated losses say must stay fp32."""
    need_mean = thresholds.get("cosine_mean", 0.0) - base["cosine_mean"]
    need_p1 = thresholds.get("cosine_p1", 0.0) - base["cosine_p1"]
    got_mean = got_p1 = spent = 0.0
    for k, c in enumerate(ranked):
        if got_mean >= need_mean and got_p1 >= need_p1:
            return max(k, 1)
        spent += c["fp32_extra_bytes"]
        if spent > budget_bytes:
            return max(k, 1)
        got_mean += c["mean_cosine_loss"]
        got_p1 += c["p1_cosine_loss"]
    return max(len(ranked), 1)


def mixed_precision(ranked: list[dict[str, Any]], base: dict[str, Any], thresholds: dict[str, float],
                    budget_bytes: float, try_exclusion: Callable[[list[str]], dict[str, Any]],
                    max_steps: int = 8) -> tuple[list[str], dict[str, Any], list[dict[str, Any]]]:
    """Grow the fp32 set greedily until a validated trial passes.

    Returns (excluded nodes, report of the last trial, trial log). The report's
    ``passed`` says whether thresholds were met; the caller decides what to write.
    """
    trials: list[dict[str, Any]] = []
    best: tuple[list[str], dict[str, Any]] = ([], base)
    k = _first_guess(ranked, base, thresholds, budget_bytes)
    excluded: list[str] = []
    spent = 0.0
    for c in ranked:
        if len(trials) >= max_steps:
            break
        if spent + c["fp32_extra_bytes"] > budget_bytes:
            continue
        excluded.append(c["node"])
        spent += c["fp32_extra_bytes"]
        if len(excluded) < k:
            continue
        report = try_exclusion(list(excluded))
        figures = {key: report.get(key) for key in ("cosine_mean", "cosine_p1", "cosine_min", "top10_overlap",
                                                     "sts_spearman_retained", "model_size_ratio")}
        trials.append({"fp32_nodes": len(excluded), "added": c["node"], **figures, "passed": report["passed"]})
        _say(f"trial {len(trials)}: {len(excluded)} node(s) in fp32 -> mean {report['cosine_mean']:.4f}, "
             f"p1 {report['cosine_p1']:.4f}, size {report['model_size_ratio']:.2f} of fp32"
             + (" (passed)" if report["passed"] else ""))
        if report["passed"]:
            return list(excluded), report, trials
        if _better(report, best[1]):
            best = (list(excluded), report)
    return best[0], best[1], trials


def _better(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return (a["cosine_p1"], a["cosine_mean"]) > (b["cosine_p1"], b["cosine_mean"])
