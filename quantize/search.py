"""The quantize and search stages: INT8 candidates made by schemes, each one a recorded trial.

``Judge`` measures a candidate model against the fp32 reference through edge_embed.
``Search`` runs trials (a scheme plus a set of nodes kept in fp32), records each, and for
``auto`` and ``static`` walks the candidates tune.py proposes until one passes on the
probe set's *search* part. It does not give the final verdict (the gate part does, in
bundle.py) and never writes a bundle.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_embed import Embedder

from .int8 import quantizable_nodes, weighted_matmuls
from .plan import BuildPlan
from .schemes import BATCH_INDEPENDENT, SCHEMES, Dynamic, NBits, PerToken, Scheme, Smoothed, Static, bind
from .tune import FIGURES, emulator, fp32_node_sets, outlier_ratios, per_token_tiers, sensitivity, task_figures
from .validate import check_thresholds, compare, drift_report, embed_with_progress

__all__ = ["Fp32Graph", "Judge", "Search", "Trial"]


@dataclass(frozen=True)
class Fp32Graph:
    """What the export stage hands on: the fp32 reference model and the facts about it."""

    model: Path
    tokenizer: Path
    dim: int
    max_length: int
    source: dict[str, Any]
    fused: dict[str, int]
    bundle: Path  # the fp32 reference bundle, loaded by the runtime to validate against


@dataclass
class Trial:
    """One candidate: the scheme, the nodes it keeps in fp32, the model it wrote and its figures."""

    step: str
    scheme: Scheme
    fp32_nodes: list[str]
    model: Path
    facts: dict[str, Any]
    report: dict[str, Any]

    @property
    def passed(self) -> bool:
        return bool(self.report["passed"])

    def row(self) -> dict[str, Any]:
        """The trial as validation.json's tuning log records it."""
        return {"step": self.step, "scheme": self.scheme.name, "fp32_nodes": len(self.fp32_nodes),
                "per_token_nodes": len(self.facts.get("per_token_nodes", [])),
                **{k: self.report.get(k) for k in FIGURES}, "passed": self.passed}

    def better_than(self, other: Trial | None) -> bool:
        a, b = self.report, other.report if other else None
        return b is None or (a["cosine_p1"], a["cosine_mean"]) > (b["cosine_p1"], b["cosine_mean"])


class Judge:
    """Figures of a candidate against the fp32 reference, through the runtime's Embedder.

    Reference vectors are computed once per text set and reused by every trial.
    """

    def __init__(self, plan: BuildPlan, graph: Fp32Graph, work: Path) -> None:
        self.plan, self.graph, self.work = plan, graph, work
        self.reference = Embedder.load(graph.bundle)
        self.fp32_bytes = graph.model.stat().st_size
        self._ref_cache: dict[Any, Any] = {}

    def load(self, model: Path, facts: dict[str, Any]) -> Embedder:
        """The candidate as a bundle without validation figures yet, loaded by the runtime."""
        from .bundle import write_bundle

        cand = self.work / "candidate-bundle"
        if cand.exists():
            shutil.rmtree(cand)
        g = self.graph
        write_bundle(cand, model, g.tokenizer, self.plan.recipe, g.source, g.dim, g.max_length, facts, None)
        return Embedder.load(cand)

    def report(self, model: Path, facts: dict[str, Any], texts: list[str], quiet: bool = False,
               labelled: bool = True) -> dict[str, Any]:
        plan = self.plan
        cand = self.load(model, facts)
        extra: dict[str, Any] = {"model_size_ratio": round(model.stat().st_size / self.fp32_bytes, 6)}
        progress = plan.progress and not quiet
        report = drift_report(self.reference, cand, plan.recipe.thresholds, texts=texts, progress=progress,
                              extra=extra, ref_cache=self._ref_cache)
        if report["passed"] and plan.checks and labelled:
            # labelled checks are slow: only a candidate that met the probe thresholds earns them
            report.update(plan.checks.run(self.reference, cand, progress=progress))
            report["shortfalls"] = check_thresholds(report, plan.recipe.thresholds)
            report["passed"] = not report["shortfalls"]
        return report


def _say(msg: str) -> None:
    sys.stderr.write(f"      {msg}\n")
    sys.stderr.flush()


@dataclass
class Search:
    """Trials of schemes and fp32-node sets, judged on the search texts, each one recorded."""

    plan: BuildPlan
    graph: Fp32Graph
    judge: Judge
    work: Path
    texts: list[str]  # the probe set's search part
    trials: list[Trial] = field(default_factory=list)
    tuning: dict[str, Any] = field(default_factory=dict)

    @property
    def per_channel(self) -> bool:
        return bool(self.plan.recipe.quantization.get("per_channel", True))

    def base_scheme(self) -> Scheme:
        plan = self.plan
        if plan.scheme:
            return SCHEMES[plan.scheme]
        if plan.method == "static" and plan.calib is not None:
            return Static(plan.calib, plan.calibration_method, self.graph.tokenizer)
        return Dynamic()

    def trial(self, step: str, scheme: Scheme, fp32_nodes: list[str] | None = None,
              quiet: bool = True) -> Trial:
        fp32_nodes = list(fp32_nodes or [])
        if isinstance(scheme, Smoothed):  # measures activation ranges: on the search texts, in fp32
            scheme = bind(scheme, self.texts, self.judge.reference)
        model = self.work / f"trial-{len(self.trials)}.onnx"
        facts = scheme.quantize(self.graph.model, model, self.work, self.plan.target or "", self.per_channel,
                                fp32_nodes)
        t = Trial(step, scheme, fp32_nodes, model, facts, self.judge.report(model, facts, self.texts, quiet=quiet))
        self.trials.append(t)
        return t

    def first_passing(self, step: str, candidates: list[tuple[Scheme, list[str]]], best: Trial,
                      describe: Any) -> Trial:
        """Try candidates in order; the first that passes, else the best seen (best: the trial so far)."""
        for scheme, fp32_nodes in candidates:
            t = self.trial(step, scheme, fp32_nodes)
            _say(f"{step} trial {len(self.trials) - 1}: {describe(t)} -> mean {t.report['cosine_mean']:.4f}, "
                 f"p1 {t.report['cosine_p1']:.4f}, size {t.report['model_size_ratio']:.2f} of fp32"
                 + task_figures(t.report) + (" (passed)" if t.passed else ""))
            if t.passed:
                self._drop_models(keep=t)
                return t
            if t.better_than(best):
                best = t
            self._drop_models(keep=best)
        return best

    def _drop_models(self, keep: Trial) -> None:
        for t in self.trials:
            if t is not keep:
                t.model.unlink(missing_ok=True)

    def size_budget(self, trial: Trial) -> float:
        """Bytes that keeping nodes in fp32 may still add to the trial's INT8 model."""
        ratio = self.plan.recipe.thresholds.get("model_size_ratio")
        return ratio * self.judge.fp32_bytes - trial.model.stat().st_size if ratio else float("inf")

    def run(self) -> Trial:
        """The passing trial, or the best one (its report says what it missed)."""
        plan = self.plan
        scheme = self.base_scheme()
        kind = scheme.name
        note = f", {plan.calibration_method} calibration on {len(plan.calib.texts)} texts" if plan.calib else ""
        _stage(f"[3/5] quantizing: {kind} INT8, preset {plan.target}{note}; each trial "
               f"judged against the fp32 reference through edge_embed on the search part ({len(self.texts)} probes)")
        best = self.trial("base", scheme, quiet=False)
        # keeping nodes in fp32 only buys fidelity: it cannot help a model that is already too big
        if (plan.method not in ("auto", "static") or best.passed or self.size_budget(best) <= 0
                or all(s.startswith("model_size_ratio") for s in best.report["shortfalls"])):
            return best
        lengths = self.judge.reference.token_count(self.texts)
        # short and medium probes keep the measuring passes fast; every trial is judged on all
        slice_ = [t for t, n in zip(self.texts, lengths, strict=True) if n <= 128][::3]
        if plan.method == "auto" and not plan.scheme:
            per_batch_ok = not any(s.startswith("batch_independence") for s in best.report["shortfalls"])
            if per_batch_ok:  # per-token scales where the outliers are may be enough
                best = self._per_token(best, slice_)
            else:  # no per-batch scale can meet a batch-independence floor
                best = self._batch_independent(best)
        if not best.passed:
            best = self._fp32_nodes(best, slice_)
        return best

    def _batch_independent(self, base: Trial) -> Trial:
        """Schemes whose vectors do not depend on their batch, fastest first on the target."""
        order = BATCH_INDEPENDENT[self.plan.target or ""]
        if not NBits.available():
            _say("MatMulNBits schemes skipped: onnxruntime's quantizer for them needs onnx-ir "
                 "(pip install 'edge-embed[build]')")
            order = tuple(s for s in order if not isinstance(s, NBits))
        _say(f"{base.scheme.name} misses: {'; '.join(base.report['shortfalls'])}; trying "
             f"{', '.join(s.name for s in order)}")
        first = len(self.trials)
        best = self.first_passing("scheme", [(s, []) for s in order], base, lambda t: t.scheme.name)
        self.tuning["schemes"] = [t.row() for t in self.trials[first:]]
        return best

    def _per_token(self, base: Trial, slice_: list[str]) -> Trial:
        matmuls = weighted_matmuls(self.graph.model)
        if not matmuls:
            return base
        _say(f"dynamic INT8 misses: {'; '.join(base.report['shortfalls'])}")
        _say(f"measuring activation outliers at {len(matmuls)} MatMuls (fp32, {len(slice_)} probes)")
        ratios = outlier_ratios(self.graph.model, self.work / "outliers.onnx", matmuls, self.judge.reference, slice_)
        first = len(self.trials)
        tiers = per_token_tiers(ratios)
        candidates: list[tuple[Scheme, list[str]]] = [(PerToken({n: ratios[n] for n in nodes}), [])
                                                      for _, nodes in tiers]
        best = self.first_passing(
            "per-token", candidates, base,
            lambda t: f"{len(t.facts.get('per_token_nodes', []))} MatMul(s) with per-token scales")
        self.tuning["per_token"] = {
            "outlier_ratios": dict(sorted(ratios.items(), key=lambda kv: -kv[1])),
            "trials": [{**t.row(), "min_outlier_ratio": tier}
                       for t, (tier, _) in zip(self.trials[first:], tiers, strict=False)]}
        return best

    def _fp32_nodes(self, base: Trial, slice_: list[str]) -> Trial:
        plan, graph = self.plan, self.graph
        _say(f"{base.scheme.name} INT8 misses: {'; '.join(base.report['shortfalls'])}")
        _say("measuring each node's sensitivity (only that node quantized, probe slice)")
        ref_slice = embed_with_progress(self.judge.reference, slice_, "fp32 probe slice", progress=False)
        scheme = base.scheme

        def quantize_only(dst: Path, exclude: list[str] | None, only: list[str] | None) -> dict[str, Any]:
            return scheme.quantize(graph.model, dst, self.work, plan.target or "", self.per_channel,
                                   list(exclude or []), only)

        def measure(model: Path) -> dict[str, float]:
            return compare(ref_slice, self.judge.load(model, base.facts).embed(slice_))

        candidates = quantizable_nodes(graph.model)
        budget = self.size_budget(base)
        emulate = None
        if not isinstance(scheme, Static):
            emulate = emulator(graph.model, self.work / "emulated.onnx", [c["node"] for c in candidates],
                               plan.target, self.judge.reference, slice_, ref_slice)
        # its time is printed, not recorded: validation.json stays byte-reproducible
        ranked = sensitivity(candidates, quantize_only, measure, self.work, budget, emulated=emulate)
        del emulate  # its session holds a second copy of the weights; the trials do not need it
        first = len(self.trials)
        sets = fp32_node_sets(ranked, base.report, plan.recipe.thresholds, budget)
        best = self.first_passing("fp32-nodes", [(scheme, s) for s in sets], base,
                                  lambda t: f"{len(t.fp32_nodes)} node(s) in fp32")
        self.tuning.update({
            "sensitivity_probes": len(slice_),
            "size_budget_bytes": None if budget == float("inf") else int(budget),
            "first_pass": {k: base.report.get(k) for k in ("cosine_mean", "cosine_p1", "cosine_min",
                                                           "top10_overlap", "model_size_ratio")},
            "sensitivity": ranked,
            "trials": [{**t.row(), "added": s[-1]} for t, s in zip(self.trials[first:], sets, strict=False)]})
        if best.fp32_nodes:
            why = {c["node"]: c for c in ranked}
            best.facts["fp32_nodes"] = [
                {"node": n, "op": why[n]["op"], "params": why[n]["params"],
                 "why": (f"quantizing it alone cost {why[n]['mean_cosine_loss']:.5f} mean / "
                         f"{why[n]['p1_cosine_loss']:.5f} p1 cosine on {len(slice_)} probes")}
                for n in best.fp32_nodes]
        return best


def _stage(msg: str) -> None:
    sys.stderr.write(f"edge-embed build: {msg}\n")
    sys.stderr.flush()
