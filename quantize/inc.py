"""Optional tuner backend: Intel Neural Compressor's accuracy-aware tuning (``--tuner inc``).

neural-compressor 3.7.1 is the last release with an ONNX Runtime path; it pins numpy<2 and
needs onnx 1.18, so it lives in an extra (``[inc]``) and a venv of its own
(``scripts/setup_inc.sh``). INC quantizes dynamically and falls back op type by op type,
then op by op, to fp32 until the candidate meets the accuracy goal. The goal is the
recipe's thresholds: every candidate is run through ``edge_embed.Embedder`` on the probe set
and scored 1.0 when it meets them all, less by the sum of its shortfalls otherwise.

This module only drives the tuner. It does not decide what ships: bundle.py validates the
model it returns exactly like every other method and raises DriftError below the thresholds.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from . import BuildError

__all__ = ["DIST", "MISSING_HINT", "SUPPORTED", "NoModelError", "available", "fp32_nodes_of", "is_quantized",
           "require", "score", "tune", "weight_granularity"]

DIST = "neural-compressor"
SUPPORTED = "3.7.1"
MISSING_HINT = ("--tuner inc: needs the inc extra (neural-compressor 3.7.1 with numpy<2 and onnx 1.18, in a venv of "
                "its own): run 'bash scripts/setup_inc.sh', then build with .venv-inc/bin/edge-embed; "
                "or use the default --tuner ort, which needs only onnxruntime")
# the graph ops that a dynamically quantized node leaves behind
_QUANT_OPS = frozenset({"DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul", "QAttention",
                        "QEmbedLayerNormalization", "QGemm", "QLinearMatMul", "QuantizeLinear", "DequantizeLinear"})


def available() -> str | None:
    """The installed neural-compressor version when its ONNX path can be imported, else None."""
    if importlib.util.find_spec("neural_compressor") is None:
        return None
    try:
        return metadata.version(DIST)
    except metadata.PackageNotFoundError:
        return None


def require() -> str:
    """The version of a usable neural-compressor, or BuildError naming the extra and the setup script."""
    version = available()
    if version is None:
        raise BuildError(MISSING_HINT)
    if not version.startswith("3.7"):
        # 3.8 dropped ONNX Runtime; older 2.x/3.x lines were not tried here
        raise BuildError(f"--tuner inc: neural-compressor {version} is installed, but only {SUPPORTED} has the "
                         "ONNX Runtime path edge-embed uses; run 'bash scripts/setup_inc.sh'")
    return version


def is_quantized(model: Any) -> bool:
    return any(n.op_type in _QUANT_OPS for n in model.graph.node)


def fp32_nodes_of(candidates: list[dict[str, Any]], quantized: Any) -> list[dict[str, Any]]:
    """The quantizable nodes that INC left in fp32: still in the graph under their name and op."""
    kept = {(n.name, n.op_type) for n in quantized.graph.node}
    return [c for c in candidates if (c["node"], c["op"]) in kept]


def weight_granularity(quantized: Any) -> dict[str, str]:
    """Per quantized op type, whether INC quantized its weights per channel or per tensor.

    INC picks this itself (on MiniLM: MatMul per channel, Attention per tensor, where ORT's
    dynamic path does both per channel); read from the zero-point/scale initializers' length.
    """
    sizes = {}
    for init in quantized.graph.initializer:
        n = 1
        for d in init.dims:
            n *= d
        sizes[init.name] = (len(init.dims), n)
    out: dict[str, str] = {}
    for node in quantized.graph.node:
        if node.op_type not in ("MatMulInteger", "QAttention", "QGemm", "DynamicQuantizeMatMul"):
            continue
        vectors = [sizes[i] for i in node.input if i in sizes and sizes[i][0] <= 1]
        gran = "per_channel" if any(n > 1 for _, n in vectors) else "per_tensor"
        if out.get(node.op_type) != "per_channel":
            out[node.op_type] = gran
    return out


def score(report: dict[str, Any], quantized: bool) -> float:
    """1.0 when every probe threshold holds, less by the summed shortfalls otherwise.

    The size ceiling is judged on quantized candidates only: INC scores the fp32 model first
    as its baseline, and that baseline must score 1.0 for 'no loss allowed' to mean 'meets
    the thresholds'.
    """
    from .validate import UPPER_BOUNDS

    loss = 0.0
    for key, limit in report["thresholds"].items():
        got = report.get(key)
        if not isinstance(got, float):
            continue
        if key in UPPER_BOUNDS:
            if quantized:
                loss += max(0.0, got - limit)
        else:
            loss += max(0.0, limit - got)
    return 1.0 - loss


def tune(fp32_model: Path, dst: Path, *, reduce_range: bool, evaluate: Callable[[Path], dict[str, Any]],
         work: Path, max_trials: int, timeout: int, say: Callable[[str], None]) -> dict[str, Any]:
    """Run INC's accuracy-aware dynamic quantization of ``fp32_model`` into ``dst``.

    evaluate(model_path) validates a candidate through edge_embed and returns the drift
    report. Returns what the manifest records about the tuning; raises BuildError when INC
    returns no model.
    """
    version = require()
    import onnx
    from neural_compressor import PostTrainingQuantConfig, quantization, set_workspace
    from neural_compressor.config import AccuracyCriterion, TuningCriterion
    from neural_compressor.utils.logger import Logger

    # INC logs every trial's tables at INFO and its guesses about the model at WARNING;
    # edge-embed prints one line a trial instead
    Logger().get_logger().setLevel(logging.ERROR)
    # its tuning history and scratch models go to the build's work folder, not the cwd
    set_workspace(str(work / "nc_workspace"))

    trials: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    cand_path = work / "inc-candidate.onnx"
    failures: list[BaseException] = []
    timed_out: list[float] = []

    def eval_func(model: Any) -> float:
        if trials and time.perf_counter() - t0 > timeout:
            # INC's own timeout would switch it from stop-at-first-pass to tune-until-timeout,
            # so the time limit is kept here; INC's fit() ends quietly on a KeyboardInterrupt
            timed_out.append(time.perf_counter() - t0)
            raise _TimeUp()
        if isinstance(model, str | Path):  # INC passes a path for models over 2 GB
            model = onnx.load(str(model))
        quantized = is_quantized(model)
        onnx.save(model, str(cand_path))
        try:
            report = evaluate(cand_path)
        except Exception as e:  # INC would log it and return None; the build reports it
            failures.append(e)
            raise
        s = score(report, quantized)
        if not quantized:
            say(f"inc baseline (fp32): score {s:.4f} ({time.perf_counter() - t0:.0f} s)")
            return s
        figs = {k: report.get(k) for k in ("cosine_mean", "cosine_p1", "cosine_min", "top10_overlap",
                                           "model_size_ratio")}
        trials.append({"trial": len(trials) + 1, **figs, "score": round(s, 6), "passed": report["passed"],
                       "seconds": round(time.perf_counter() - t0, 1)})
        say(f"inc trial {len(trials)}/{max_trials}: mean {figs['cosine_mean']:.4f}, p1 {figs['cosine_p1']:.4f}, "
            f"size {figs['model_size_ratio']:.2f} of fp32, score {s:.4f}"
            + (" (meets the thresholds)" if report["passed"] else "") + f" ({time.perf_counter() - t0:.0f} s)")
        return s

    conf = PostTrainingQuantConfig(
        approach="dynamic", backend="default", device="cpu", reduce_range=reduce_range, quant_level=1,
        # no loss allowed: a candidate passes only when it scores like the fp32 baseline (1.0)
        accuracy_criterion=AccuracyCriterion(higher_is_better=True, criterion="absolute", tolerable_loss=0.0),
        # timeout=0 is INC's early stop: the first candidate that meets the goal ends the tuning
        # (any other value makes it keep tuning for speed until the timeout or trial limit)
        tuning_criterion=TuningCriterion(strategy="basic", max_trials=max_trials, timeout=0),
    )
    model = onnx.load(str(fp32_model))
    try:
        q = quantization.fit(model, conf, eval_func=eval_func)
    except Exception as e:
        raise BuildError(f"{fp32_model}: neural-compressor {version} tuning failed ({type(e).__name__}: {e}); "
                         "use --tuner ort") from e
    if failures:
        err = failures[0]
        raise BuildError(f"{fp32_model}: evaluating a neural-compressor candidate failed ({type(err).__name__}: "
                         f"{err}); use --tuner ort") from err
    facts = {"tuner": "neural-compressor", "version": version, "strategy": "basic", "approach": "dynamic",
            "accuracy_criterion": "recipe thresholds on the probe set, no loss allowed",
            "max_trials": max_trials, "timeout_s": timeout, "timed_out": bool(timed_out), "trials": trials,
            "seconds": round(time.perf_counter() - t0, 1)}
    if q is None:
        if trials:
            # INC returns nothing when no trial met the goal within its limits
            best = max(trials, key=lambda t: t["score"])
            raise NoModelError(facts, best)
        raise BuildError(f"{fp32_model}: neural-compressor {version} returned no model and ran no trial (it needs "
                         "onnx 1.18: run 'bash scripts/setup_inc.sh'); use --tuner ort")
    onnx.save(q.model, str(dst))
    return facts


class _TimeUp(KeyboardInterrupt):
    """Raised from the eval function to end INC's tuning at edge-embed's time limit."""


class NoModelError(BuildError):
    """INC's tuning ended (trial limit or timeout) with no candidate meeting the thresholds."""

    def __init__(self, facts: dict[str, Any], best: dict[str, Any]) -> None:
        limit = f", stopped at the {facts['timeout_s']} s limit" if facts["timed_out"] else ""
        super().__init__(f"neural-compressor ran {len(facts['trials'])} trial(s) in {facts['seconds']:.0f} s{limit} "
                         "and none met the thresholds")
        self.facts, self.best = facts, best
