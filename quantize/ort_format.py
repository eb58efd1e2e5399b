"""A bundle's ONNX model -> ONNX Runtime's ORT format, for ONNX Runtime Mobile and minimal builds.

Uses onnxruntime's own converter (``onnxruntime.tools.convert_onnx_models_to_ort``) with the
"Fixed" optimization style: the graph is optimized once, here, at level "all" (NCHWc
layout excluded, so the file runs on ARM too), and saved with those optimizations baked
in. On all-MiniLM-L6-v2 INT8 both styles gave vectors identical to the ONNX model; the
"Runtime" style needs ``session.enable_saved_runtime_optimizations`` on the device and a
larger operator list, which buys nothing for these graphs. The converter also writes the
operator/type list that ORT's minimal-build script takes (``--include_ops_by_config``).

Does not re-quantize or re-validate the model: it checks that the ORT-format model gives
the same vectors as the ONNX one, through the runtime, and refuses to write it otherwise.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from edge_embed import Embedder, Manifest
from edge_embed.manifest import DIGEST_NAME

from . import BuildError

__all__ = ["CONFIG_NAME", "ORT_NAME", "convert_bundle"]

ORT_NAME = "model.ort"
CONFIG_NAME = "required_operators_and_types.config"
MAX_ABS_DIFF = 1e-6


def convert_bundle(bundle_dir: str | Path, probes: list[str] | None = None) -> dict[str, Any]:
    """Write model.ort + required_operators_and_types.config into a bundle; update its manifest."""
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    root = Path(bundle_dir)
    if not root.is_dir():
        raise BuildError(f"{root}: convert works on a bundle directory (the one the build wrote); "
                         "convert first, then pack")
    manifest = Manifest.read(root)
    manifest.verify(root)
    with tempfile.TemporaryDirectory(prefix=".ort-convert-", dir=root.parent) as tmp:
        work = Path(tmp)
        # the converter writes next to its input and picks up every .onnx in a folder: give it one file
        shutil.copyfile(root / manifest.model_file, work / "model.onnx")
        try:
            # it reports on stdout; keep stdout for the command's own output
            with contextlib.redirect_stdout(sys.stderr):
                convert_onnx_models_to_ort(work / "model.onnx", output_dir=work / "out",
                                           optimization_styles=[OptimizationStyle.Fixed],
                                           enable_type_reduction=True)
        except Exception as e:
            raise BuildError(f"{root / manifest.model_file}: ORT-format conversion failed "
                             f"({type(e).__name__}: {e})") from None
        ort_file = work / "out" / "model.ort"
        config = work / "out" / f"model.{CONFIG_NAME}"
        if not ort_file.is_file() or not config.is_file():
            raise BuildError(f"{work / 'out'}: the converter wrote no model.ort / {CONFIG_NAME}")
        shutil.copyfile(ort_file, root / ORT_NAME)
        (root / CONFIG_NAME).write_text(_portable_config(config.read_text(encoding="utf-8")), encoding="utf-8")

    original = (root / "manifest.json").read_bytes()
    original_digest = (root / DIGEST_NAME).read_bytes() if (root / DIGEST_NAME).is_file() else None
    manifest.files.update(Manifest.describe_files(root, [ORT_NAME, CONFIG_NAME]))
    manifest.files = dict(sorted(manifest.files.items()))
    manifest.ort_model_file = ORT_NAME
    manifest.extra["ort_format"] = {
        "model_file": ORT_NAME,
        "required_operators_and_types": CONFIG_NAME,
        "optimization_style": "Fixed",
        "optimization_level": "all",
        "onnxruntime": metadata.version("onnxruntime"),
    }
    manifest.write(root)
    diff = _max_abs_diff(root, probes)
    if diff > MAX_ABS_DIFF:
        (root / "manifest.json").write_bytes(original)
        if original_digest is not None:
            (root / DIGEST_NAME).write_bytes(original_digest)
        (root / ORT_NAME).unlink()
        (root / CONFIG_NAME).unlink()
        raise BuildError(f"{root / ORT_NAME}: vectors differ from the ONNX model's by up to {diff:.2e} "
                         f"(limit {MAX_ABS_DIFF:g}); ship the ONNX model")
    manifest.extra["ort_format"]["max_abs_diff_vs_onnx"] = float(diff)
    manifest.write(root)
    Manifest.read(root).verify(root)
    return dict(manifest.extra["ort_format"])


def _portable_config(text: str) -> str:
    """The converter lists the absolute paths it read in comments; keep the file name only,
    so the same model gives the same bytes wherever it is converted."""
    out = []
    for line in text.splitlines():
        if line.startswith("# - "):
            line = f"# - {ORT_NAME}"
        out.append(line)
    return "\n".join(out) + "\n"


def _max_abs_diff(root: Path, probes: list[str] | None) -> float:
    from .validate import load_probes

    texts = probes if probes is not None else load_probes()
    a = Embedder.load(root).embed_detailed(texts).vectors
    b = Embedder.load(root, model_format="ort").embed_detailed(texts).vectors
    return float(np.abs(a - b).max()) if len(texts) else 0.0
