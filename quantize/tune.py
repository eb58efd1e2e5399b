"""Accuracy-aware INT8: per-token activation scales where activations have outlier tokens,
then fp32 for the nodes whose quantization still costs fidelity.

0. Per-token (dynamic INT8 only): one fp32 pass over a probe slice measures, for every MatMul,
   how much the largest |activation| exceeds a typical token's (outlier_ratios). MatMuls are
   given per-token activation scales (int8.per_token_model) a tier of ratios at a time, each
   trial validated, smallest set first (per_token_search). If no tier passes, the best one is
   the base of steps 1-2.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_embed import Embedder
from edge_embed.progress import Progress

__all__ = ["PER_TOKEN_TIERS", "emulator", "mixed_precision", "outlier_ratios", "per_token_search", "sensitivity"]

# per-token trials take the MatMuls whose outlier ratio is at least each of these, in turn
PER_TOKEN_TIERS = (16.0, 8.0, 4.0, 2.0, 0.0)

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
    # the emulating graph has one input a bundle must not have: the gate feeds it
    emb = reference.with_session(gated)

    def measure(node: str) -> dict[str, float] | None:
        if node not in index:
            return None
        gated.gate[:] = 0.0
        gated.gate[index[node]] = 1.0
        return compare(ref_vecs, emb.embed(texts))

    return measure


class _RecordingSession:
    """The few InferenceSession methods Embedder uses; every run also fetches some inner tensors
    and records, per tensor, the ratio of its largest |value| to the median token's."""

    def __init__(self, session: Any, tensors: list[str]) -> None:
        self._s, self._tensors = session, tensors
        self.ratios: dict[str, list[float]] = {t: [] for t in tensors}

    def get_inputs(self) -> list[Any]:
        return list(self._s.get_inputs())

    def get_outputs(self) -> list[Any]:
        return [o for o in self._s.get_outputs() if o.name not in self.ratios]

    def run(self, outputs: list[str], feed: dict[str, Any]) -> list[Any]:
        import numpy as np

        got = self._s.run(outputs + self._tensors, feed)
        for name, x in zip(self._tensors, got[len(outputs):], strict=True):
            rows = np.abs(x.reshape(-1, x.shape[-1])).max(axis=1)
            typical = float(np.median(rows))
            self.ratios[name].append(float(rows.max()) / typical if typical > 0 else 1.0)
        return list(got[:len(outputs)])


def outlier_ratios(fp32_model: Path, dst: Path, nodes: list[str], reference: Embedder,
                   texts: list[str]) -> dict[str, float]:
    """node -> how much larger the whole activation input's |max| is than a typical token's
    (median over the batches ``texts`` makes, fp32). One shared activation scale gives a
    typical token about 255 / ratio integer levels; per-token scales give each token all 255.
    """
    import numpy as np
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(fp32_model))
    wanted = set(nodes)
    inputs = {n.name: n.input[0] for n in model.graph.node if n.name in wanted}
    tensors = sorted(set(inputs.values()))
    known = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
                              for t in tensors if t not in known)
    onnx.save(model, str(dst))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    rec = _RecordingSession(ort.InferenceSession(str(dst), so, providers=["CPUExecutionProvider"]), tensors)
    reference.with_session(rec).embed(texts)
    return {node: round(float(np.median(rec.ratios[t])), 3) for node, t in inputs.items()}


def per_token_search(ratios: dict[str, float], try_per_token: Callable[[list[str]], dict[str, Any]],
                     ) -> tuple[list[str], dict[str, Any] | None, list[dict[str, Any]]]:
    """Give per-token activation scales to the MatMuls with the largest outlier ratios, a tier
    at a time (PER_TOKEN_TIERS), each trial validated, until one passes.

    Per-token scales cost no model size and some speed, so the smallest set is tried first.
    Returns (nodes, report, trial log) of the first passing trial, or of the best one.
    """
    trials: list[dict[str, Any]] = []
    best: tuple[list[str], dict[str, Any] | None] = ([], None)
    seen: set[frozenset[str]] = set()
    for tier in PER_TOKEN_TIERS:
        chosen = sorted((n for n, r in ratios.items() if r >= tier), key=lambda n: -ratios[n])
        if not chosen or frozenset(chosen) in seen:
            continue
        seen.add(frozenset(chosen))
        report = try_per_token(chosen)
        figures = {key: report.get(key) for key in _FIGURES}
        trials.append({"per_token_nodes": len(chosen), "min_outlier_ratio": tier, **figures,
                       "passed": report["passed"]})
        _say(f"per-token trial {len(trials)}: {len(chosen)} MatMul(s) with outlier ratio >= {tier:g} -> "
             f"mean {report['cosine_mean']:.4f}, p1 {report['cosine_p1']:.4f}" + _task_figures(report)
             + (" (passed)" if report["passed"] else ""))
        if report["passed"]:
            return chosen, report, trials
        if best[1] is None or _better(report, best[1]):
            best = (chosen, report)
    return best[0], best[1], trials


_FIGURES = ("cosine_mean", "cosine_p1", "cosine_min", "top10_overlap", "sts_spearman_retained", "ndcg10_retained",
            "model_size_ratio")


def _task_figures(report: dict[str, Any]) -> str:
    return "".join(f", {label} {report[key]:.4f}" for key, label in
                   (("sts_spearman_retained", "STS retained"), ("ndcg10_retained", "nDCG@10 retained"))
                   if isinstance(report.get(key), float))


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
    shown = Progress("      sensitivity", len(fits), unit="nodes")
    for c in fits:
        fig = emulated(c["node"]) if emulated else None
        how = "emulated"
        if fig is None:
            path = work / "sens.onnx"
            quantize(path, None, [c["node"]])
            fig, how = measure(path), "quantized"
        loss = {"mean_cosine_loss": 1.0 - fig["cosine_mean"], "p1_cosine_loss": 1.0 - fig["cosine_p1"]}
        out.append({**c, **{k: round(v, 7) for k, v in loss.items()}, "measured": how})
        shown.update(1)
    shown.close()
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
        figures = {key: report.get(key) for key in _FIGURES}
        trials.append({"fp32_nodes": len(excluded), "added": c["node"], **figures, "passed": report["passed"]})
        _say(f"trial {len(trials)}: {len(excluded)} node(s) in fp32 -> mean {report['cosine_mean']:.4f}, "
             f"p1 {report['cosine_p1']:.4f}, size {report['model_size_ratio']:.2f} of fp32" + _task_figures(report)
             + (" (passed)" if report["passed"] else ""))
        if report["passed"]:
            return list(excluded), report, trials
        if _better(report, best[1]):
            best = (list(excluded), report)
    return best[0], best[1], trials


def _better(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return (a["cosine_p1"], a["cosine_mean"]) > (b["cosine_p1"], b["cosine_mean"])
