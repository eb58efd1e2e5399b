"""Accuracy-aware mixed precision: keep in fp32 only the nodes whose quantization costs fidelity.

1. Sensitivity: for every quantizable node, the model with only that node quantized is run
   on a small slice of the probe set; its cosine loss to fp32 is the node's measured cost
   (isolated, so one node's error cannot hide behind another's). For dynamic INT8 the
   MatMul and Attention nodes are measured in ONE session of an emulating model (each
   node's weight and activation rounding switched on by a gate input, see
   int8.emulated_quantization_model) instead of quantizing, saving and loading a model per
   node; other nodes, and static QDQ, take the exact path.
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

from edge_embed import Embedder

__all__ = ["emulator", "mixed_precision", "sensitivity"]

QuantizeFn = Callable[[Path, list[str] | None, list[str] | None], dict[str, Any]]
MeasureNodeFn = Callable[[str], "dict[str, float] | None"]


class _GatedSession:
    """The few InferenceSession methods Embedder uses, feeding the emulation gate on every run."""

    def __init__(self, session: Any, size: int) -> None:
        import numpy as np

        from .int8 import GATE

        self._s, self._name = session, GATE
        self.gate = np.zeros(size, np.float32)

    def get_inputs(self) -> list[Any]:
        return [i for i in self._s.get_inputs() if i.name != self._name]

    def get_outputs(self) -> list[Any]:
        return list(self._s.get_outputs())

    def run(self, outputs: list[str], feed: dict[str, Any]) -> list[Any]:
        return list(self._s.run(outputs, {**feed, self._name: self.gate}))


def emulator(fp32_model: Path, dst: Path, nodes: list[str], target: str | None, reference: Embedder,
             texts: list[str], ref_vecs: Any) -> MeasureNodeFn:
    """node -> figures of the model with only that node (dynamically) quantized, or None when
    the node cannot be emulated. One ORT session serves every node: the reference bundle's
    tokenizer and pooling around the emulating graph."""
    import onnxruntime as ort

    from .int8 import emulated_quantization_model
    from .validate import compare

    emulated = emulated_quantization_model(fp32_model, dst, nodes, target)
    index = {n: i for i, n in enumerate(emulated)}
    if not emulated:
        return lambda node: None
    so = ort.SessionOptions()
    so.log_severity_level = 3
    gated = _GatedSession(ort.InferenceSession(str(dst), so, providers=["CPUExecutionProvider"]), len(emulated))
    # private constructor: the emulating graph has one input a bundle must not have
    emb = Embedder(reference.path, reference.manifest, gated, reference._tok)

    def measure(node: str) -> dict[str, float] | None:
        if node not in index:
            return None
        gated.gate[:] = 0.0
        gated.gate[index[node]] = 1.0
        return compare(ref_vecs, emb.embed(texts))

    return measure


def _say(msg: str) -> None:
    sys.stderr.write(f"      {msg}\n")
    sys.stderr.flush()


def sensitivity(candidates: list[dict[str, Any]], quantize: QuantizeFn, measure: Callable[[Path], dict[str, float]],
                work: Path, budget_bytes: float, emulated: MeasureNodeFn | None = None) -> list[dict[str, Any]]:
    """Isolated cosine loss of each candidate that fits the size budget, most costly first per byte.

    emulated: measures a node without writing a model (see emulator); nodes it answers None
    for are quantized alone and measured with ``measure``.
    """
    out = []
    fits = [c for c in candidates if c["fp32_extra_bytes"] <= budget_bytes]
    t0 = time.perf_counter()
    for i, c in enumerate(fits, 1):
        fig = emulated(c["node"]) if emulated else None
        how = "emulated"
        if fig is None:
            path = work / "sens.onnx"
            quantize(path, None, [c["node"]])
            fig, how = measure(path), "quantized"
        loss = {"mean_cosine_loss": 1.0 - fig["cosine_mean"], "p1_cosine_loss": 1.0 - fig["cosine_p1"]}
        out.append({**c, **{k: round(v, 7) for k, v in loss.items()}, "measured": how})
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
                                                     "sts_spearman_retained", "ndcg10_retained",
                                                     "model_size_ratio")}
        trials.append({"fp32_nodes": len(excluded), "added": c["node"], **figures, "passed": report["passed"]})
        _say(f"trial {len(trials)}: {len(excluded)} node(s) in fp32 -> mean {report['cosine_mean']:.4f}, "
             f"p1 {report['cosine_p1']:.4f}, size {report['model_size_ratio']:.2f} of fp32"
             + "".join(f", {label} {report[key]:.4f}" for key, label in
                       (("sts_spearman_retained", "STS retained"), ("ndcg10_retained", "nDCG@10 retained"))
                       if isinstance(report.get(key), float))
             + (" (passed)" if report["passed"] else ""))
        if report["passed"]:
            return list(excluded), report, trials
        if _better(report, best[1]):
            best = (list(excluded), report)
    return best[0], best[1], trials


def _better(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return (a["cosine_p1"], a["cosine_mean"]) > (b["cosine_p1"], b["cosine_mean"])
