"""Accuracy-aware INT8: per-token activation scales where activations have outlier tokens,
then fp32 for the nodes whose quantization still costs fidelity.

0. Per-token (dynamic INT8 only): one fp32 pass over a probe slice measures, for every MatMul,
   how much the largest |activation| exceeds a typical token's (outlier_ratios). MatMuls are
   given per-token activation scales (int8.per_token_model) a tier of ratios at a time, each
   smallest set first (per_token_tiers). If no tier passes, the best one is the base of
   steps 1-2.
1. Sensitivity: for every quantizable node, the model with only that node quantized is run
   on a small slice of the probe set; its cosine loss to fp32 is the node's measured cost
   (isolated, so one node's error cannot hide behind another's). For dynamic INT8 the
   MatMul and Attention nodes are measured in ONE session of an emulating model (each
   node's weight and activation rounding switched on by a gate input, see
   int8.emulated_quantization_model) instead of quantizing, saving and loading a model per
   node; other nodes, and static QDQ, take the exact path.
2. Greedy: nodes are kept in fp32 in order of loss per byte given up, starting from the
   smallest set whose summed isolated losses predict the thresholds are met, until the
   size budget is spent (fp32_node_sets).

This module measures and proposes; search.py validates each proposal as a trial, and
bundle.py writes what passed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_embed import Embedder
from edge_embed.progress import Progress

__all__ = ["FIGURES", "PER_TOKEN_TIERS", "emulator", "fp32_node_sets", "outlier_ratios", "per_token_tiers",
           "sensitivity", "task_figures"]

# per-token trials take the MatMuls whose outlier ratio is at least each of these, in turn
PER_TOKEN_TIERS = (16.0, 8.0, 4.0, 2.0, 0.0)

QuantizeFn = Callable[[Path, list[str] | None, list[str] | None], dict[str, Any]]
MeasureNodeFn = Callable[[str], "dict[str, float] | None"]


class _SessionView:
    """The few InferenceSession methods Embedder uses, over a session whose graph has one thing
    a bundle must not: hidden_inputs are fed on every run, extra_outputs are fetched with every
    run and handed to record(), and neither is shown to the Embedder."""

    def __init__(self, session: Any, hidden_inputs: dict[str, Any] | None = None,
                 extra_outputs: list[str] | None = None) -> None:
        self._s = session
        self.hidden_inputs = hidden_inputs or {}
        self.extra_outputs = extra_outputs or []

    def get_inputs(self) -> list[Any]:
        return [i for i in self._s.get_inputs() if i.name not in self.hidden_inputs]

    def get_outputs(self) -> list[Any]:
        return [o for o in self._s.get_outputs() if o.name not in self.extra_outputs]

    def run(self, outputs: list[str], feed: dict[str, Any]) -> list[Any]:
        got = self._s.run(outputs + self.extra_outputs, {**feed, **self.hidden_inputs})
        self.record(dict(zip(self.extra_outputs, got[len(outputs):], strict=True)))
        return list(got[:len(outputs)])

    def record(self, extra: dict[str, Any]) -> None:
        """Called with the extra outputs of every run."""


class _GatedSession(_SessionView):
    """Feeds the emulation gate (one weight per emulated node) on every run."""

    def __init__(self, session: Any, size: int) -> None:
        import numpy as np

        from .int8 import GATE

        self.gate = np.zeros(size, np.float32)
        super().__init__(session, hidden_inputs={GATE: self.gate})


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


class _RecordingSession(_SessionView):
    """Fetches some inner tensors with every run and records, per tensor, the ratio of its
    largest |value| to the median token's."""

    def __init__(self, session: Any, tensors: list[str]) -> None:
        super().__init__(session, extra_outputs=tensors)
        self.ratios: dict[str, list[float]] = {t: [] for t in tensors}

    def record(self, extra: dict[str, Any]) -> None:
        import numpy as np

        for name, x in extra.items():
            rows = np.abs(x.reshape(-1, x.shape[-1])).max(axis=1)
            typical = float(np.median(rows))
            self.ratios[name].append(float(rows.max()) / typical if typical > 0 else 1.0)


class _MaxRecorder(_SessionView):
    """Fetches some inner tensors with every run and keeps each one's largest |value| per
    channel (last axis) over all runs; padded rows count too, as they are computed alike."""

    def __init__(self, session: Any, tensors: list[str]) -> None:
        super().__init__(session, extra_outputs=tensors)
        self.amax: dict[str, Any] = {}

    def record(self, extra: dict[str, Any]) -> None:
        import numpy as np

        for name, x in extra.items():
            m = np.abs(x.reshape(-1, x.shape[-1])).max(axis=0)
            self.amax[name] = np.maximum(self.amax[name], m) if name in self.amax else m


def _record_matmul_inputs(fp32_model: Path, dst: Path, nodes: list[str], reference: Embedder, texts: list[str],
                          recorder: Callable[[Any, list[str]], _SessionView]) -> tuple[dict[str, str], Any]:
    """Embed ``texts`` through ``reference`` with a copy of the model (at ``dst``, removed after)
    that also outputs the activation input of each listed MatMul, handed to ``recorder``'s
    record(); returns (node -> its input tensor, the recorder)."""
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
    rec = recorder(ort.InferenceSession(str(dst), so, providers=["CPUExecutionProvider"]), tensors)
    reference.with_session(rec).embed(texts)
    dst.unlink(missing_ok=True)
    return inputs, rec


def channel_maxima(fp32_model: Path, dst: Path, nodes: list[str], reference: Embedder,
                   texts: list[str]) -> dict[str, Any]:
    """node -> the largest |value| of each channel of its activation input over ``texts``
    (fp32, embedded through ``reference``: its tokenizer and batching)."""
    inputs, rec = _record_matmul_inputs(fp32_model, dst, nodes, reference, texts, _MaxRecorder)
    return {node: rec.amax[t] for node, t in inputs.items()}


def outlier_ratios(fp32_model: Path, dst: Path, nodes: list[str], reference: Embedder,
                   texts: list[str]) -> dict[str, float]:
    """node -> how much larger the whole activation input's |max| is than a typical token's
    (median over the batches ``texts`` makes, fp32). One shared activation scale gives a
    typical token about 255 / ratio integer levels; per-token scales give each token all 255.
    """
    import numpy as np

    inputs, rec = _record_matmul_inputs(fp32_model, dst, nodes, reference, texts, _RecordingSession)
    return {node: round(float(np.median(rec.ratios[t])), 3) for node, t in inputs.items()}


def per_token_tiers(ratios: dict[str, float]) -> list[tuple[float, list[str]]]:
    """(tier, MatMuls whose outlier ratio is at least the tier, loudest first) for each of
    PER_TOKEN_TIERS, without empty or repeated sets.

    Per-token scales cost no model size and some speed, so the smallest set comes first.
    """
    out: list[tuple[float, list[str]]] = []
    seen: set[frozenset[str]] = set()
    for tier in PER_TOKEN_TIERS:
        chosen = sorted((n for n, r in ratios.items() if r >= tier), key=lambda n: -ratios[n])
        if chosen and frozenset(chosen) not in seen:
            seen.add(frozenset(chosen))
            out.append((tier, chosen))
    return out


FIGURES = ("cosine_mean", "cosine_p1", "cosine_min", "top10_overlap", "sts_spearman_retained", "ndcg10_retained",
            "model_size_ratio")


def task_figures(report: dict[str, Any]) -> str:
    return "".join(f", {label} {report[key]:.4f}" for key, label in
                   (("sts_spearman_retained", "STS retained"), ("ndcg10_retained", "nDCG@10 retained"))
                   if isinstance(report.get(key), float))


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


def fp32_node_sets(ranked: list[dict[str, Any]], base: dict[str, Any], thresholds: dict[str, float],
                   budget_bytes: float, max_steps: int = 8) -> list[list[str]]:
    """The growing fp32-node sets the greedy search validates in turn, at most max_steps.

    Nodes join in ranked order (loss per byte) while they fit the size budget; the first set
    is the smallest whose summed isolated losses predict the thresholds are met.
    """
    sets: list[list[str]] = []
    k = _first_guess(ranked, base, thresholds, budget_bytes)
    excluded: list[str] = []
    spent = 0.0
    for c in ranked:
        if len(sets) >= max_steps:
            break
        if spent + c["fp32_extra_bytes"] > budget_bytes:
            continue
        excluded.append(c["node"])
        spent += c["fp32_extra_bytes"]
        if len(excluded) >= k:
            sets.append(list(excluded))
    return sets
