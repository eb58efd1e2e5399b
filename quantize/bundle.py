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
from .int8 import quantize_dynamic_int8
from .recipe import Recipe, fill_from_model_dir, resolve_source
from .selfcheck import FP32_MIN_COSINE, add_self_check
from .validate import drift_report

__all__ = ["build", "write_bundle", "versions"]

METHODS = ("dynamic", "fp32")
_VERSIONED = ("torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime",
              "tokenizers", "numpy", "huggingface-hub")


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
                 validation: dict[str, Any] | None) -> Manifest:
    """Copy model + tokenizer into out/, write validation.json and manifest.json."""
    out.mkdir(parents=True, exist_ok=True)
    if model.resolve() != (out / "model.onnx").resolve():
        shutil.copyfile(model, out / "model.onnx")
    if tokenizer.resolve() != (out / "tokenizer.json").resolve():
        shutil.copyfile(tokenizer, out / "tokenizer.json")
    names = ["model.onnx", "tokenizer.json"]
    if validation is not None:
        (out / "validation.json").write_text(json.dumps(validation, indent=2) + "\n", encoding="utf-8")
        names.append("validation.json")
    summary = {k: v for k, v in (validation or {}).items() if k not in ("shortfalls",)}
    manifest = Manifest(
        format=FORMAT, name=out.name, source=source, dim=dim, max_length=max_length,
        pooling=recipe.pooling or "cls", normalize=recipe.normalize, prompts=dict(recipe.prompts),
        files=Manifest.describe_files(out, names), quantization=quantization, validation=summary,
        built_with=versions(),
    )
    manifest.write(out)
    return manifest


def build(source: str | None, out: str | Path, method: str = "dynamic", revision: str | None = None,
          pooling: str | None = None, max_length: int | None = None,
          thresholds: dict[str, float] | None = None, force: bool = False,
          fp32_out: str | Path | None = None, progress: bool = True, *,
          from_onnx: str | Path | None = None, tokenizer: str | Path | None = None,
          prompts: dict[str, str] | None = None, ort_format: bool = False) -> dict[str, Any]:
    """Build a bundle; returns the validation report (empty for fp32). Raises DriftError.

    source is a recipe, HF directory or hub id; or None with from_onnx + tokenizer, to start
    from an existing fp32 ONNX export (no torch needed). ort_format: also write model.ort.
    """
    if method not in METHODS:
        raise BuildError(f"--method: {method!r} is not one of {', '.join(METHODS)}")
    out = Path(out)
    for target in (out, Path(fp32_out) if fp32_out else None):
        if target is not None and target.exists() and not force:
            raise BuildError(f"{target}: already exists; pass --force to replace it")
    if (source is None) == (from_onnx is None):
        raise BuildError("build: give a SOURCE (recipe, model directory or hub id) or --from-onnx FILE, not both")
    if from_onnx is not None:
        if tokenizer is None:
            raise BuildError(f"{from_onnx}: --from-onnx needs --tokenizer TOKENIZER_JSON")
        if pooling is None:
            raise BuildError(f"{from_onnx}: an ONNX file does not say how it pools; pass --pooling cls or "
                             "--pooling mean")
        recipe, load_from = Recipe(name=out.name), str(from_onnx)
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
        if from_onnx is not None:
            stage(f"[1/5] reading {from_onnx} and {tokenizer}")
            stage("[2/5] no export: the given fp32 ONNX (fused when it is a BERT graph) is the reference")
            prep = prepare_from_onnx(Path(from_onnx), Path(tokenizer or ""), work, recipe.max_length,
                                     fuse=recipe.quantization.get("fuse", True))
            fp32_model, dim, max_len = prep["fp32_model"], prep["dim"], prep["max_length"]
            src_facts, fused = prep["source"], prep["fused"]
        else:
            stage(f"[1/5] resolving {source} -> {load_from}")
            model_dir, src_facts = fetch(load_from, recipe.revision)
            fill_from_model_dir(recipe, model_dir)
            if recipe.pooling not in ("cls", "mean"):
                raise BuildError(f"{source}: pooling unknown (no recipe and no sentence-transformers config); "
                                 "pass --pooling cls or --pooling mean")
            facts = model_facts(model_dir)
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
        write_bundle(fp32_dir, fp32_model, work / "tokenizer.json", recipe, src_facts, dim, max_len,
                     {"method": "fp32", "graph_fusion": fused}, None)
        add_self_check(fp32_dir, Embedder.load(fp32_dir), FP32_MIN_COSINE)

        if method == "fp32":
            stage("[3/5] no quantization requested (fp32 bundle)")
            stage("[4/5] validation skipped: an fp32 bundle is its own reference")
            report: dict[str, Any] = {}
            final = fp32_dir
        else:
            stage("[3/5] quantizing: dynamic INT8, per-channel weights")
            q_model = work / "int8.onnx"
            qfacts = quantize_dynamic_int8(fp32_model, q_model,
                                           per_channel=recipe.quantization.get("per_channel", True),
                                           reduce_range=recipe.quantization.get("reduce_range", False))
            qfacts["graph_fusion"] = fused
            stage("[4/5] validating against the fp32 reference through edge_embed")
            report = drift_report(Embedder.load(fp32_dir), _load_unchecked(q_model, work, recipe, src_facts,
                                                                          dim, max_len, qfacts),
                                  recipe.thresholds, progress=progress)
            if not report["passed"]:
                raise DriftError(
                    f"{source}: {method} INT8 drifted past the recipe's thresholds: "
                    + "; ".join(report["shortfalls"])
                    + ". No bundle written. Try: keep sensitive nodes in fp32, a different method, "
                    "or looser thresholds (--threshold KEY=VALUE) if the use allows"
                )
            final = work / "int8-bundle"
            write_bundle(final, q_model, work / "tokenizer.json", recipe, src_facts, dim, max_len, qfacts, report)
            # the device-side check holds the INT8 bundle to its own fidelity floor
            add_self_check(final, Embedder.load(fp32_dir), recipe.thresholds.get("cosine_min", 0.97))

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
