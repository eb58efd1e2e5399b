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
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from edge_embed import Embedder, Manifest
from edge_embed.manifest import FORMAT

from . import BuildError, DriftError
from .calibration import DEFAULT_SIZE, CalibrationSet, TextCalibrationReader, load_calibration
from .export import export_onnx, fetch, fuse, model_facts, save_tokenizer
from .from_onnx import locate, prepare_from_onnx
from .int8 import (
    CALIBRATION_METHODS,
    per_token_model,
    preset,
    quantizable_nodes,
    quantize_dynamic_int8,
    quantize_static_int8,
    weighted_matmuls,
    with_types,
)
from .ranges import add_int8_ranges
from .recipe import Recipe, fill_from_model_dir, recipe_named, resolve_source
from .selfcheck import FP32_MIN_COSINE, add_self_check
from .tune import emulator, mixed_precision, outlier_ratios, per_token_search, sensitivity
from .validate import LabelledChecks, check_thresholds, compare, drift_report, embed_with_progress, load_probes

__all__ = ["build", "write_bundle", "versions"]

METHODS = ("auto", "dynamic", "static", "fp32")
TUNERS = ("ort", "inc")
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


def build(source: str | None, out: str | Path, method: str = "auto", revision: str | None = None,
          pooling: str | None = None, max_length: int | None = None,
          thresholds: dict[str, float] | None = None, force: bool = False,
          fp32_out: str | Path | None = None, progress: bool = True, *,
          from_onnx: str | Path | None = None, tokenizer: str | Path | None = None,
          prompts: dict[str, str] | None = None, ort_format: bool = False, calibration: str | None = None,
          calibration_method: str = "minmax", calibration_size: int = DEFAULT_SIZE, target: str | None = None,
          eval_sts: str | None = None, eval_beir: str | None = None, tuner: str = "ort",
          tuner_trials: int = 20, tuner_timeout: int = 600, probes: str | None = None) -> dict[str, Any]:
    """Build a bundle; returns the validation report (empty for fp32). Raises DriftError.

    source is a recipe, HF directory or hub id. from_onnx starts from an existing fp32 ONNX
    export instead (no torch needed): an .onnx file with tokenizer, or a folder in the hub's
    layout (onnx/model.onnx + tokenizer.json); source then names the recipe that describes
    it, or is None and pooling says how it pools. ort_format: also write model.ort.
    method: auto (dynamic INT8 + accuracy-aware fp32 fallback), dynamic, static (needs
    calibration), fp32. eval_sts / eval_beir add labelled checks to the validation.
    probes: a file of probe texts to validate on instead of the shipped set.
    tuner: who runs auto's accuracy-aware search: ort (tune.py, onnxruntime only) or inc
    (neural-compressor's tuning, the inc extra; tuner_trials / tuner_timeout bound it).
    """
    if method not in METHODS:
        raise BuildError(f"--method: {method!r} is not one of {', '.join(METHODS)}")
    if tuner not in TUNERS:
        raise BuildError(f"--tuner: {tuner!r} is not one of {', '.join(TUNERS)}")
    if tuner == "inc":
        if method != "auto":
            raise BuildError(f"--tuner inc: tunes --method auto only (got --method {method})")
        from .inc import require

        require()  # before any slow work: a missing extra is one clear line
    # every input file is read and checked before the slow work starts
    calib: CalibrationSet | None = None
    if method == "static":
        if not calibration:
            raise BuildError("--method static: needs --calibration FILE (texts from your own corpus, one per line "
                             "or JSONL with a 'text' field); or use --method auto, which needs none")
        if calibration_method not in CALIBRATION_METHODS:
            raise BuildError(f"--calibration-method: {calibration_method!r} is not one of "
                             f"{', '.join(CALIBRATION_METHODS)}")
        calib = load_calibration(calibration, calibration_size)
    elif calibration:
        raise BuildError(f"--calibration: only --method static uses a calibration set (got --method {method})")
    target_name, _ = preset(target)
    if method == "fp32" and (eval_sts or eval_beir):
        raise BuildError("--eval-sts/--eval-beir: compare INT8 with fp32; --method fp32 has nothing to compare")
    if method == "fp32" and fp32_out:
        raise BuildError("--fp32-out: with --method fp32 the output already is the fp32 bundle; drop --fp32-out")
    checks = LabelledChecks(eval_sts, eval_beir) if method != "fp32" else None
    probe_texts = load_probes(probes)
    out = Path(out)
    for dest in (out, Path(fp32_out) if fp32_out else None):
        if dest is not None and dest.exists() and not force:
            raise BuildError(f"{dest}: already exists; pass --force to replace it")
    if source is None and from_onnx is None:
        raise BuildError("build: give a SOURCE (recipe, model directory or hub id) or --from-onnx PATH "
                         "(with a recipe name as SOURCE, or --pooling)")
    onnx_file = tok_file = None
    if from_onnx is not None:
        onnx_file, tok_file = locate(Path(from_onnx), Path(tokenizer) if tokenizer else None)
        if source is not None:
            # the recipe says what the graph cannot: pooling, prompts, max_length, thresholds
            recipe = recipe_named(source)
        elif pooling is None:
            raise BuildError(f"{from_onnx}: an ONNX file does not say how it pools; name its recipe "
                             "(edge-embed build RECIPE --from-onnx ...) or pass --pooling cls or --pooling mean")
        else:
            recipe = Recipe(name=out.name)
        load_from = str(onnx_file)
    else:
        recipe, load_from = resolve_source(source or "", revision)
    if prompts:
        recipe.prompts.update(prompts)
    if pooling:
        recipe.pooling = pooling
    if max_length:
        recipe.max_length = max_length
    if thresholds:
        recipe.thresholds.update(thresholds)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    t0 = time.perf_counter()
    try:
        if onnx_file is not None and tok_file is not None:
            stage(f"[1/5] reading {onnx_file} and {tok_file}" + (f" for recipe {recipe.name}" if source else ""))
            stage("[2/5] no export: the given fp32 ONNX (fused when it is a BERT graph) is the reference")
            prep = prepare_from_onnx(onnx_file, tok_file, work, recipe.max_length,
                                     fuse=recipe.quantization.get("fuse", True), dim=recipe.dim,
                                     recipe=recipe.name if source else None)
            fp32_model, dim, max_len = prep["fp32_model"], prep["dim"], prep["max_length"]
            fused = prep["fused"]
            # the recipe's model id when a recipe describes the graph, else the file's own name
            model_id = (recipe.hf_id or recipe.name) if source else onnx_file.name
            src_facts = {"model_id": model_id, **({"recipe": recipe.name} if source else {}),
                         "revision": recipe.revision if source else None, **prep["source"]}
        else:
            stage(f"[1/5] resolving {source} -> {load_from}")
            model_dir, src_facts = fetch(load_from, recipe.revision)
            fill_from_model_dir(recipe, model_dir)
            if recipe.pooling not in ("cls", "mean"):
                raise BuildError(f"{source}: pooling unknown (no recipe and no sentence-transformers config); "
                                 "pass --pooling cls or --pooling mean")
            facts = model_facts(model_dir)
            if recipe.dim and facts.get("hidden_size") and facts["hidden_size"] != recipe.dim:
                raise BuildError(f"{model_dir}: hidden_size is {facts['hidden_size']} but recipe {recipe.name!r} is "
                                 f"for a {recipe.dim}-d model; pick the recipe that matches the weights")
            if recipe.hf_id and src_facts.get("model_id") != recipe.hf_id:
                src_facts = {"model_id": recipe.hf_id, "recipe": recipe.name, **{k: v for k, v in src_facts.items()
                                                                                 if k != "model_id"}}
            limit = facts.get("max_position_embeddings") or 512
            max_len = min(recipe.max_length or limit, limit)

            stage("[2/5] exporting to ONNX with optimum (fp32)")
            raw = export_onnx(model_dir, work / "export")
            save_tokenizer(model_dir, work / "tokenizer.json", max_len)
            fp32_model = work / "fp32.onnx"
            fused = {}
            if recipe.quantization.get("fuse", True) and facts.get("model_type") == "bert":
                stage("      fusing BERT graph (Attention, SkipLayerNorm, BiasGelu)")
                fused = fuse(raw, fp32_model, facts.get("num_heads") or 0, facts.get("hidden_size") or 0)
            else:
                shutil.copyfile(raw, fp32_model)
            dim = int(facts.get("hidden_size") or 0)

        fp32_dir = work / "fp32-bundle"
        fp32_name = Path(fp32_out).name if fp32_out and method != "fp32" else out.name
        write_bundle(fp32_dir, fp32_model, work / "tokenizer.json", recipe, src_facts, dim, max_len,
                     {"method": "fp32", "graph_fusion": fused}, None, name=fp32_name)
        add_self_check(fp32_dir, Embedder.load(fp32_dir), FP32_MIN_COSINE)

        if method == "fp32":
            stage("[3/5] no quantization requested (fp32 bundle)")
            stage("[4/5] validation skipped: an fp32 bundle is its own reference")
            report: dict[str, Any] = {}
            final = fp32_dir
        else:
            report, qfacts, q_model = _quantize_and_validate(
                source or str(from_onnx), method, work, fp32_model, fp32_dir, recipe, src_facts, dim, max_len,
                target_name, calib, calibration_method, checks, progress,
                tuner=(tuner, tuner_trials, tuner_timeout), probes=probe_texts)
            qfacts["graph_fusion"] = fused
            final = work / "int8-bundle"
            write_bundle(final, q_model, work / "tokenizer.json", recipe, src_facts, dim, max_len, qfacts, report,
                         name=out.name)
            # the device-side check holds the INT8 bundle to its own fidelity floor
            add_self_check(final, Embedder.load(fp32_dir), recipe.thresholds.get("cosine_min", 0.97))

        for b in (final, fp32_dir) if fp32_out and final != fp32_dir else (final,):
            add_int8_ranges(b)  # for encode(precision="int8"/"uint8")
        stage(f"[5/5] writing {out}")
        if fp32_out:
            _place(fp32_dir, Path(fp32_out), force)
        _place(final, out, force)
        if ort_format:
            stage("      converting to ORT format (model.ort + required_operators_and_types.config)")
            from .ort_format import convert_bundle

            convert_bundle(out)
        Manifest.read(out).verify(out)
        stage(f"done in {time.perf_counter() - t0:.0f} s: {out}")
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _load_unchecked(model: Path, work: Path, recipe: Recipe, src: dict[str, Any], dim: int, max_len: int,
                    qfacts: dict[str, Any]) -> Embedder:
    """The candidate as a bundle without validation figures yet, loaded by the runtime."""
    cand = work / "candidate-bundle"
    if cand.exists():
        shutil.rmtree(cand)
    write_bundle(cand, model, work / "tokenizer.json", recipe, src, dim, max_len, qfacts, None)
    return Embedder.load(cand)


def _place(src: Path, dst: Path, force: bool) -> None:
    if dst.exists():
        if not force:
            raise BuildError(f"{dst}: already exists; pass --force to replace it")
        shutil.rmtree(dst) if dst.is_dir() else dst.unlink()
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(src), str(dst))


def _quantize_and_validate(source: str, method: str, work: Path, fp32_model: Path, fp32_dir: Path, recipe: Recipe,
                           src: dict[str, Any], dim: int, max_len: int, target: str, calib: CalibrationSet | None,
                           calibration_method: str, checks: LabelledChecks | None, progress: bool,
                           tuner: tuple[str, int, int] = ("ort", 0, 0),
                           probes: list[str] | None = None) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """Quantize, validate, and for auto/static keep sensitive nodes in fp32 until thresholds pass."""
    per_channel = recipe.quantization.get("per_channel", True)
    reference = Embedder.load(fp32_dir)
    fp32_bytes = fp32_model.stat().st_size
    base_kind = "static" if method == "static" else "dynamic"
    reader = None
    if calib is not None:
        import onnx

        inputs = [i.name for i in onnx.load(str(fp32_model), load_external_data=False).graph.input]
        fp32_model = with_types(fp32_model, work / "fp32-typed.onnx")
        reader = TextCalibrationReader(calib.texts, work / "tokenizer.json", inputs,
                                       fixed_length=calibration_method != "minmax")

    per_token: dict[str, float] = {}  # node -> outlier ratio, for the nodes given per-token scales

    def quantize(dst: Path, exclude: list[str] | None, only: list[str] | None) -> dict[str, Any]:
        if reader is not None and calib is not None:
            f = quantize_static_int8(fp32_model, dst, reader, work / "calibration-ranges.json",
                                     calibration_method, target, per_channel, exclude, only)
            f["calibration"] = calib.describe()
            return f
        pt = [n for n in per_token if n not in (exclude or [])] if only is None else []
        src = fp32_model
        if pt:
            src = work / "per-token.onnx"
            per_token_model(fp32_model, src, pt, target)
        f = quantize_dynamic_int8(src, dst, target, per_channel, exclude, only)
        if pt:
            f["activation_type"] = ("uint8, scales computed at run time: one per token for per_token_nodes, "
                                    "one per batch elsewhere")
            f["per_token_nodes"] = [{"node": n, "outlier_ratio": per_token[n]} for n in pt]
        return f

    ref_cache: dict[Any, Any] = {}

    def evaluate(model: Path, qfacts: dict[str, Any], quiet: bool = False, labelled: bool = True) -> dict[str, Any]:
        cand = _load_unchecked(model, work, recipe, src, dim, max_len, qfacts)
        extra: dict[str, Any] = {"model_size_ratio": round(model.stat().st_size / fp32_bytes, 6)}
        report = drift_report(reference, cand, recipe.thresholds, texts=probes, progress=progress and not quiet,
                              extra=extra, ref_cache=ref_cache)
        if report["passed"] and checks and labelled:
            # labelled checks are slow: only a candidate that met the probe thresholds earns them
            report.update(checks.run(reference, cand, progress=progress and not quiet))
            report["shortfalls"] = check_thresholds(report, recipe.thresholds)
            report["passed"] = not report["shortfalls"]
        return report

    if tuner[0] == "inc":
        return _inc_quantize_and_validate(source, work, fp32_model, recipe, target, evaluate, tuner[1], tuner[2])
    extra_note = f", {calibration_method} calibration on {len(calib.texts)} texts" if calib else ""
    stage(f"[3/5] quantizing: {base_kind} INT8, per-channel weights, preset {target}{extra_note}")
    q_model = work / "int8.onnx"
    qfacts = quantize(q_model, None, None)
    stage("[4/5] validating against the fp32 reference through edge_embed")
    report = evaluate(q_model, qfacts)
    if method == "auto":
        qfacts["method"] = "auto"
        qfacts["base_method"] = "dynamic"
    qfacts["fp32_nodes"] = []
    ratio = recipe.thresholds.get("model_size_ratio")

    def size_budget() -> float:
        """Bytes that keeping nodes in fp32 may still add to the INT8 model."""
        return ratio * fp32_bytes - q_model.stat().st_size if ratio else float("inf")

    budget = size_budget()
    # keeping nodes in fp32 only buys fidelity: it cannot help a model that is already too big
    search = (method in ("auto", "static") and not report["passed"] and budget > 0
              and any(not s.startswith("model_size_ratio") for s in report["shortfalls"]))
    tuning: dict[str, Any] = {}
    slice_: list[str] = []
    if search:
        texts = probes if probes is not None else load_probes()
        lengths = reference.token_count(texts)
        # short and medium probes keep the measuring passes fast; the full set judges every trial
        slice_ = [t for t, n in zip(texts, lengths, strict=True) if n <= 128][::3]
    matmuls = weighted_matmuls(fp32_model) if search and method == "auto" else []
    if matmuls:
        stage(f"      dynamic INT8 misses: {'; '.join(report['shortfalls'])}")
        stage(f"      measuring activation outliers at {len(matmuls)} MatMuls (fp32, {len(slice_)} probes)")
        ratios = outlier_ratios(fp32_model, work / "outliers.onnx", matmuls, reference, slice_)
        pt_model = work / "per-token-trial.onnx"

        last: dict[str, Any] = {}

        def try_per_token(nodes: list[str]) -> dict[str, Any]:
            per_token.clear()
            per_token.update({n: ratios[n] for n in nodes})
            last["facts"] = quantize(pt_model, None, None)
            return evaluate(pt_model, last["facts"], quiet=True)

        chosen, pt_report, pt_trials = per_token_search(ratios, try_per_token)
        tuning["per_token"] = {"outlier_ratios": dict(sorted(ratios.items(), key=lambda kv: -kv[1])),
                               "trials": pt_trials}
        per_token.clear()
        per_token.update({n: ratios[n] for n in chosen})
        if pt_report is not None and pt_report["passed"]:
            # the search stops at the first passing trial, so the trial model is the one that passed
            shutil.move(str(pt_model), str(q_model))
            report, facts = pt_report, last["facts"]
        else:
            # the best tier stays: the fp32 search below works on top of it. Later trials
            # overwrote the trial model, so it is written again (quantization is deterministic:
            # the same model, whose report the search already holds)
            facts = quantize(q_model, None, None)
            report = pt_report if pt_report is not None else evaluate(q_model, facts, quiet=True)
        qfacts = {**facts, "method": "auto", "base_method": "dynamic", "fp32_nodes": []}
        if report["passed"]:
            report["tuning"] = {"objective": "recipe thresholds", **tuning}
        budget = size_budget()
    if search and not report["passed"]:
        stage(f"      {base_kind} INT8{' with per-token scales' if per_token else ''} misses: "
              f"{'; '.join(report['shortfalls'])}")
        stage("      measuring each node's sensitivity (only that node quantized, probe slice)")
        ref_slice = embed_with_progress(reference, slice_, "fp32 probe slice", progress=False)

        def measure(model: Path) -> dict[str, float]:
            cand = _load_unchecked(model, work, recipe, src, dim, max_len, qfacts)
            return compare(ref_slice, cand.embed(slice_))

        candidates = quantizable_nodes(fp32_model)
        emulate = None
        if base_kind == "dynamic":
            emulate = emulator(fp32_model, work / "emulated.onnx", [c["node"] for c in candidates], target,
                               reference, slice_, ref_slice)
        # its time is printed, not recorded: validation.json stays byte-reproducible
        ranked = sensitivity(candidates, quantize, measure, work, budget, emulated=emulate)
        del emulate  # its session holds a second copy of the weights; the trials do not need it
        trial_model = work / "trial.onnx"

        trial_facts: dict[str, Any] = {}

        def try_exclusion(exclude: list[str]) -> dict[str, Any]:
            trial_facts.clear()
            trial_facts.update(quantize(trial_model, exclude, None))
            return evaluate(trial_model, trial_facts, quiet=True)

        excluded, best, trials = mixed_precision(ranked, report, recipe.thresholds, budget, try_exclusion)
        tuning = {"objective": "recipe thresholds", **tuning, "sensitivity_probes": len(slice_),
                  "size_budget_bytes": None if budget == float("inf") else int(budget),
                  "first_pass": {k: report.get(k) for k in ("cosine_mean", "cosine_p1", "cosine_min",
                                                             "top10_overlap", "model_size_ratio")},
                  "sensitivity": ranked, "trials": trials}
        if best["passed"]:
            # the search stops at the first passing trial, so trial.onnx is the model that passed
            shutil.move(str(trial_model), str(q_model))
            # the passing trial's own facts (its per-token nodes lose those it keeps in fp32)
            kept = {k: v for k, v in qfacts.items() if k not in ("per_token_nodes", "activation_type")}
            qfacts = {**kept, **trial_facts, "method": qfacts["method"], "excluded_nodes": sorted(excluded)}
            why = {c["node"]: c for c in ranked}
            qfacts["fp32_nodes"] = [
                {"node": n, "op": why[n]["op"], "params": why[n]["params"],
                 "why": (f"quantizing it alone cost {why[n]['mean_cosine_loss']:.5f} mean / "
                         f"{why[n]['p1_cosine_loss']:.5f} p1 cosine on {len(slice_)} probes")}
                for n in excluded]
        report = best
        report["tuning"] = tuning
    if not report["passed"]:
        raise DriftError(_drift_message(source, method, report, recipe.thresholds))
    return report, qfacts, q_model


def _inc_quantize_and_validate(source: str, work: Path, fp32_model: Path, recipe: Recipe, target: str,
                               evaluate: Callable[..., dict[str, Any]], max_trials: int,
                               timeout: int) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """auto with --tuner inc: INC's tuning picks the fp32 nodes, then the usual validation judges."""
    import onnx

    from . import inc

    _, p = preset(target)
    stage(f"[3/5] quantizing: neural-compressor accuracy-aware tuning (dynamic INT8, preset {target}, "
          f"at most {max_trials} trials / {timeout} s; each candidate validated through edge_embed)")
    base = {"method": "auto", "base_method": "dynamic", "target": target, "weight_type": "int8",
            "activation_type": "uint8, scales computed per batch at run time", "per_channel": "chosen by INC",
            "reduce_range": p["reduce_range"], "excluded_nodes": [], "calibration": None}

    def probe_only(model: Path) -> dict[str, Any]:
        return evaluate(model, base, quiet=True, labelled=False)

    q_model = work / "int8.onnx"
    try:
        tuning = inc.tune(fp32_model, q_model, reduce_range=p["reduce_range"], evaluate=probe_only, work=work,
                          max_trials=max_trials, timeout=timeout, say=lambda m: stage(f"      {m}"))
    except inc.NoModelError as e:
        best = {**e.best, "shortfalls": [f"{e}; best trial {e.best['trial']} (score {e.best['score']:.4f})"]}
        raise DriftError(_drift_message(source, "auto --tuner inc", best, recipe.thresholds)) from None
    tuned = onnx.load(str(q_model), load_external_data=False)
    kept = inc.fp32_nodes_of(quantizable_nodes(fp32_model), tuned)
    qfacts = {**base, "per_channel": inc.weight_granularity(tuned),
              "tuner": {k: v for k, v in tuning.items() if k != "trials"} | {"trials": len(tuning["trials"])},
              "excluded_nodes": sorted(c["node"] for c in kept),
              "fp32_nodes": [{"node": c["node"], "op": c["op"], "params": c["params"],
                              "why": "left in fp32 by neural-compressor's tuning"} for c in kept]}
    stage("[4/5] validating the tuned model against the fp32 reference through edge_embed")
    report = evaluate(q_model, qfacts)
    report["tuning"] = tuning
    if not report["passed"]:
        raise DriftError(_drift_message(source, "auto --tuner inc", report, recipe.thresholds))
    return report, qfacts, q_model


def _drift_message(source: str, method: str, report: dict[str, Any], thresholds: dict[str, float]) -> str:
    figs = ", ".join(f"{k} {report[k]:.4f}" for k in ("cosine_mean", "cosine_p1", "cosine_min", "top10_overlap",
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
    return (f"{source}: {method} INT8 missed the thresholds: {'; '.join(report['shortfalls'])}. "
            f"Best reached: {figs}; thresholds: {limits}. No bundle written. Try {hint}")
