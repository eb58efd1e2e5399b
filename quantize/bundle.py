"""Assemble bundles and run a whole build: fetch, export, fuse, quantize, validate, write.

A build works in a hidden sibling directory of the output and only renames it into
place once validation passed, so a failed build never leaves a bundle that looks valid.
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from edge_embed import Embedder, Manifest
from edge_embed.manifest import FORMAT

from . import BuildError, DriftError
from .export import export_onnx, fetch, fuse, model_facts, save_tokenizer
from .from_onnx import prepare_from_onnx
from .int8 import preset, quantizable_nodes
from .plan import METHODS, TUNERS, BuildPlan
from .ranges import add_int8_ranges
from .recipe import Recipe, fill_from_model_dir
from .schemes import Dynamic
from .search import Fp32Graph, Judge, Search, Trial
from .selfcheck import FP32_MIN_COSINE, add_self_check
from .validate import check_thresholds

__all__ = ["METHODS", "TUNERS", "BuildPlan", "build", "write_bundle", "versions"]
_VERSIONED = ("torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime",
              "tokenizers", "numpy", "huggingface-hub", "neural-compressor")


def versions() -> dict[str, str]:
    from edge_embed import __version__

    out = {"python": platform.python_version(), "edge-embed": __version__}
    for dist in _VERSIONED:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def stage(msg: str) -> None:
    sys.stderr.write(f"edge-embed build: {msg}\n")
    sys.stderr.flush()


def write_bundle(out: Path, model: Path, tokenizer: Path, recipe: Recipe, source: dict[str, Any],
                 dim: int, max_length: int, quantization: dict[str, Any],
                 validation: dict[str, Any] | None, name: str | None = None) -> Manifest:
    """Copy model + tokenizer into out/, write validation.json and manifest.json.

    name: the bundle's name in the manifest, default out/'s folder name (builds assemble in a
    work folder and pass the name of the folder the bundle will be placed at).
    """
    out.mkdir(parents=True, exist_ok=True)
    if model.resolve() != (out / "model.onnx").resolve():
        shutil.copyfile(model, out / "model.onnx")
    if tokenizer.resolve() != (out / "tokenizer.json").resolve():
        shutil.copyfile(tokenizer, out / "tokenizer.json")
    names = ["model.onnx", "tokenizer.json"]
    if validation is not None:
        (out / "validation.json").write_text(json.dumps(validation, indent=2) + "\n", encoding="utf-8")
        names.append("validation.json")
    summary = {k: v for k, v in (validation or {}).items() if k not in ("shortfalls", "tuning")}
    manifest = Manifest(
        format=FORMAT, name=name or out.name, source=source, dim=dim, max_length=max_length,
        pooling=recipe.pooling or "cls", normalize=recipe.normalize, prompts=dict(recipe.prompts),
        files=Manifest.describe_files(out, names), quantization=quantization, validation=summary,
        built_with=versions(),
    )
    manifest.write(out)
    return manifest


def build(plan: BuildPlan) -> dict[str, Any]:
    """Run the plan's stages; returns the validation report (empty for fp32). Raises DriftError.

    resolve (the plan itself) -> export and fuse (fp32 reference) -> quantize and search
    (trials of schemes on the probe set's search part) -> validate (the chosen trial on the
    gate part) -> write (bundle renamed into place).
    """
    out = plan.out
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    t0 = time.perf_counter()
    try:
        graph = export_stage(plan, work)
        if plan.method == "fp32":
            stage("[3/5] no quantization requested (fp32 bundle)")
            stage("[4/5] validation skipped: an fp32 bundle is its own reference")
            report: dict[str, Any] = {}
            final = graph.bundle
        else:
            judge = Judge(plan, graph, work)
            trial = quantize_stage(plan, graph, judge, work)
            report = validate_stage(plan, judge, trial)
            final = work / "int8-bundle"
            write_bundle(final, trial.model, graph.tokenizer, plan.recipe, graph.source, graph.dim,
                         graph.max_length, {**trial.facts, "graph_fusion": graph.fused}, report, name=out.name)
            # the device-side check holds the INT8 bundle to its own fidelity floor
            add_self_check(final, Embedder.load(graph.bundle), plan.recipe.thresholds.get("cosine_min", 0.97))
        write_stage(plan, graph, final)
        stage(f"done in {time.perf_counter() - t0:.0f} s: {out}")
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


def export_stage(plan: BuildPlan, work: Path) -> Fp32Graph:
    """[1/5] + [2/5]: the fp32 reference graph (exported and fused, or the given ONNX) and its bundle."""
    recipe = plan.recipe
    fuse_wanted = recipe.quantization.get("fuse", True)
    if plan.onnx_file is not None and plan.tokenizer is not None:
        by_recipe = plan.source is not None
        stage(f"[1/5] reading {plan.onnx_file} and {plan.tokenizer}"
              + (f" for recipe {recipe.name}" if by_recipe else ""))
        stage("[2/5] no export: the given fp32 ONNX (fused when it is a BERT graph) is the reference")
        prep = prepare_from_onnx(plan.onnx_file, plan.tokenizer, work, recipe.max_length, fuse=fuse_wanted,
                                 dim=recipe.dim, recipe=recipe.name if by_recipe else None)
        fp32_model, dim, max_len, fused = prep["fp32_model"], prep["dim"], prep["max_length"], prep["fused"]
        # the recipe's model id when a recipe describes the graph, else the file's own name
        model_id = (recipe.hf_id or recipe.name) if by_recipe else plan.onnx_file.name
        src_facts = {"model_id": model_id, **({"recipe": recipe.name} if by_recipe else {}),
                     "revision": recipe.revision if by_recipe else None, **prep["source"]}
    else:
        stage(f"[1/5] resolving {plan.source} -> {plan.load_from}")
        model_dir, src_facts = fetch(plan.load_from, recipe.revision)
        fill_from_model_dir(recipe, model_dir)
        if recipe.pooling not in ("cls", "mean"):
            raise BuildError(f"{plan.source}: pooling unknown (no recipe and no sentence-transformers config); "
                             "pass --pooling cls or --pooling mean")
        facts = model_facts(model_dir)
        if recipe.dim and facts.get("hidden_size") and facts["hidden_size"] != recipe.dim:
            raise BuildError(f"{model_dir}: hidden_size is {facts['hidden_size']} but recipe {recipe.name!r} is "
                             f"for a {recipe.dim}-d model; pick the recipe that matches the weights")
        if recipe.hf_id and src_facts.get("model_id") != recipe.hf_id:
            src_facts = {"model_id": recipe.hf_id, "recipe": recipe.name,
                         **{k: v for k, v in src_facts.items() if k != "model_id"}}
        limit = facts.get("max_position_embeddings") or 512
        max_len = min(recipe.max_length or limit, limit)

        stage("[2/5] exporting to ONNX with optimum (fp32)")
        raw = export_onnx(model_dir, work / "export")
        save_tokenizer(model_dir, work / "tokenizer.json", max_len)
        fp32_model = work / "fp32.onnx"
        fused = {}
        if fuse_wanted and facts.get("model_type") == "bert":
            stage("      fusing BERT graph (Attention, SkipLayerNorm, BiasGelu)")
            fused = fuse(raw, fp32_model, facts.get("num_heads") or 0, facts.get("hidden_size") or 0)
        else:
            shutil.copyfile(raw, fp32_model)
        dim = int(facts.get("hidden_size") or 0)

    fp32_dir = work / "fp32-bundle"
    fp32_name = plan.fp32_out.name if plan.fp32_out and plan.method != "fp32" else plan.out.name
    write_bundle(fp32_dir, fp32_model, work / "tokenizer.json", recipe, src_facts, dim, max_len,
                 {"method": "fp32", "graph_fusion": fused}, None, name=fp32_name)
    add_self_check(fp32_dir, Embedder.load(fp32_dir), FP32_MIN_COSINE)
    return Fp32Graph(fp32_model, work / "tokenizer.json", dim, max_len, src_facts, fused, fp32_dir)


def quantize_stage(plan: BuildPlan, graph: Fp32Graph, judge: Judge, work: Path) -> Trial:
    """[3/5]: INT8 candidates made by schemes and judged on the search texts, until one passes."""
    if plan.tuner == "inc":
        return _inc_search(plan, graph, judge, work)
    search = Search(plan, graph, judge, work, plan.probe_sets.search)
    best = search.run()
    facts = {**best.facts, "fp32_nodes": best.facts.get("fp32_nodes", [])}
    if plan.method == "auto":
        facts.update(method="auto", base_method="dynamic")
    if best.fp32_nodes:
        facts["excluded_nodes"] = sorted(best.fp32_nodes)
    best.facts = facts
    if search.tuning or len(search.trials) > 1:
        best.report["tuning"] = {"objective": "recipe thresholds", **search.tuning}
    if not best.passed:
        raise DriftError(_drift_message(plan.label, plan.method, best.report, plan.recipe.thresholds,
                                        where="on the probe set's search part"))
    return best


# figures of the labelled evaluation sets: measured once in the search, not part of the probe split
_LABELLED = ("sts", "beir", "sts_spearman_retained", "ndcg10_retained")


def validate_stage(plan: BuildPlan, judge: Judge, trial: Trial) -> dict[str, Any]:
    """[4/5]: the verdict on the chosen trial, from the probe set's gate part (texts no tuning
    step has seen). The search part's figures are kept beside it."""
    stage(f"[4/5] validating on the gate part ({len(plan.probe_sets.gate)} probes no tuning step saw)")
    report = judge.report(trial.model, trial.facts, plan.probe_sets.gate, labelled=False)
    searched = trial.report
    report.update({k: searched[k] for k in _LABELLED if k in searched})
    report["shortfalls"] = check_thresholds(report, plan.recipe.thresholds)
    report["passed"] = not report["shortfalls"]
    report["search"] = {k: v for k, v in searched.items()
                        if k not in ("reference", "thresholds", "tuning", *_LABELLED)}
    if "tuning" in searched:
        report["tuning"] = searched["tuning"]
    if not report["passed"]:
        raise DriftError(_drift_message(plan.label, plan.method, report, plan.recipe.thresholds,
                                        where="on the probe set's gate part; its search part passed"))
    return report


def write_stage(plan: BuildPlan, graph: Fp32Graph, final: Path) -> None:
    """[5/5]: rename the assembled bundle(s) into place; optional ORT format; verify checksums."""
    for b in (final, graph.bundle) if plan.fp32_out and final != graph.bundle else (final,):
        add_int8_ranges(b)  # for encode(precision="int8"/"uint8")
    stage(f"[5/5] writing {plan.out}")
    if plan.fp32_out:
        _place(graph.bundle, plan.fp32_out, plan.force)
    _place(final, plan.out, plan.force)
    if plan.ort_format:
        stage("      converting to ORT format (model.ort + required_operators_and_types.config)")
        from .ort_format import convert_bundle

        convert_bundle(plan.out)
    Manifest.read(plan.out).verify(plan.out)


def _place(src: Path, dst: Path, force: bool) -> None:
    if dst.exists():
        if not force:
            raise BuildError(f"{dst}: already exists; pass --force to replace it")
        shutil.rmtree(dst) if dst.is_dir() else dst.unlink()
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(src), str(dst))


def _inc_search(plan: BuildPlan, graph: Fp32Graph, judge: Judge, work: Path) -> Trial:
    """auto with --tuner inc: INC's tuning picks the fp32 nodes, then the usual validation judges."""
    import onnx

    from . import inc

    target = plan.target or ""
    max_trials, timeout = plan.tuner_trials, plan.tuner_timeout
    _, p = preset(target)
    stage(f"[3/5] quantizing: neural-compressor accuracy-aware tuning (dynamic INT8, preset {target}, "
          f"at most {max_trials} trials / {timeout} s; each candidate validated through edge_embed)")
    base = {"method": "auto", "base_method": "dynamic", "target": target, "weight_type": "int8",
            "activation_type": "uint8, scales computed per batch at run time", "per_channel": "chosen by INC",
            "reduce_range": p["reduce_range"], "excluded_nodes": [], "calibration": None}
    texts = plan.probe_sets.search

    def probe_only(model: Path) -> dict[str, Any]:
        return judge.report(model, base, texts, quiet=True, labelled=False)

    q_model = work / "int8.onnx"
    try:
        tuning = inc.tune(graph.model, q_model, reduce_range=p["reduce_range"], evaluate=probe_only, work=work,
                          max_trials=max_trials, timeout=timeout, say=lambda m: stage(f"      {m}"))
    except inc.NoModelError as e:
        best = {**e.best, "shortfalls": [f"{e}; best trial {e.best['trial']} (score {e.best['score']:.4f})"]}
        raise DriftError(_drift_message(plan.label, "auto --tuner inc", best, plan.recipe.thresholds)) from None
    tuned = onnx.load(str(q_model), load_external_data=False)
    kept = inc.fp32_nodes_of(quantizable_nodes(graph.model), tuned)
    qfacts = {**base, "per_channel": inc.weight_granularity(tuned),
              "tuner": {k: v for k, v in tuning.items() if k != "trials"} | {"trials": len(tuning["trials"])},
              "excluded_nodes": sorted(c["node"] for c in kept),
              "fp32_nodes": [{"node": c["node"], "op": c["op"], "params": c["params"],
                              "why": "left in fp32 by neural-compressor's tuning"} for c in kept]}
    stage("      judging the tuned model on the search part, labelled checks included")
    report = judge.report(q_model, qfacts, texts)
    report["tuning"] = tuning
    if not report["passed"]:
        raise DriftError(_drift_message(plan.label, "auto --tuner inc", report, plan.recipe.thresholds))
    return Trial("inc", Dynamic(name="inc"), [c["node"] for c in kept], q_model, qfacts, report)


def _drift_message(source: str, method: str, report: dict[str, Any], thresholds: dict[str, float],
                   where: str = "") -> str:
    figs = ", ".join(f"{k} {report[k]:.4f}" for k in ("cosine_mean", "cosine_p1", "cosine_min", "top10_overlap",
                                                       "batch_independence",
                                                       "model_size_ratio", "sts_spearman_retained",
                                                       "ndcg10_retained")
                     if isinstance(report.get(k), float))
    limits = ", ".join(f"{k} {'<=' if k == 'model_size_ratio' else '>='} {v}" for k, v in sorted(thresholds.items()))
    if method.endswith("--tuner inc"):
        hint = ("more --tuner-trials / --tuner-timeout, the default --tuner ort (ranks nodes by measured loss per "
                "byte), or looser thresholds (--threshold KEY=VALUE)")
    elif method == "static":
        hint = ("more or more typical calibration text (--calibration-size), another --calibration-method, "
                "--method auto (dynamic INT8 with fp32 fallback), or looser thresholds (--threshold KEY=VALUE)")
    elif method == "auto":
        hint = ("a larger size budget (--threshold model_size_ratio=...), or looser thresholds "
                "(--threshold KEY=VALUE) if the use allows, or --method fp32")
    else:
        hint = "--method auto (keeps sensitive nodes in fp32), or looser thresholds (--threshold KEY=VALUE)"
    return (f"{source}: {method} INT8 missed the thresholds: {'; '.join(report['shortfalls'])}"
            f"{' (' + where + ')' if where else ''}. "
            f"Best reached: {figs}; thresholds: {limits}. No bundle written. Try {hint}")
