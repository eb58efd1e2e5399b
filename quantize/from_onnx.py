"""Start a build from an existing fp32 ONNX export + tokenizer.json instead of PyTorch weights.

Many users have such files and no torch (the bge-base-en-v1.5 hub repository ships
``onnx/model.onnx``). Needs onnx and onnxruntime only: the given graph is fused with
onnxruntime's transformer optimizer when it is a BERT graph, and the fused fp32 graph is
the validation reference. Does not export, download or guess pooling: the caller says it.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from . import BuildError

__all__ = ["prepare_from_onnx"]

DEFAULT_MAX_LENGTH = 512


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _output_dim(model: Path) -> int:
    """Width of the hidden-state output: from the graph's declared shape, else by running it once."""
    import onnx
    import onnxruntime as ort

    try:
        graph = onnx.load(str(model), load_external_data=False).graph
    except Exception as e:
        raise BuildError(f"{model}: not a readable ONNX model ({type(e).__name__}: {e})") from None
    outputs = {o.name: o for o in graph.output}
    if not outputs:
        raise BuildError(f"{model}: the graph has no outputs")
    out = outputs.get("last_hidden_state") or graph.output[0]
    dims = out.type.tensor_type.shape.dim
    if dims and dims[-1].dim_value > 0:
        return int(dims[-1].dim_value)
    try:
        sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        feed = {i.name: np.ones((1, 2), dtype=np.int32 if "int32" in i.type else np.int64)
                for i in sess.get_inputs()}
        return int(sess.run([out.name], feed)[0].shape[-1])
    except Exception as e:
        raise BuildError(f"{model}: cannot tell the embedding width ({type(e).__name__}: {e})") from None


def prepare_from_onnx(onnx_path: Path, tokenizer_path: Path, work: Path, max_length: int | None,
                      fuse: bool = True) -> dict[str, Any]:
    """Copy/fuse the fp32 graph and configure the tokenizer in work/; return what the build needs."""
    from tokenizers import Tokenizer

    if not onnx_path.is_file():
        raise BuildError(f"{onnx_path}: --from-onnx needs an ONNX file; no such file")
    if not tokenizer_path.is_file():
        raise BuildError(f"{tokenizer_path}: --tokenizer needs the model's tokenizer.json; no such file")
    try:
        tok = Tokenizer.from_file(str(tokenizer_path))
    except Exception as e:  # tokenizers raises a bare Exception on bad JSON
        raise BuildError(f"{tokenizer_path}: not a tokenizers JSON file ({e})") from None
    trunc = tok.truncation or {}
    max_len = int(max_length or trunc.get("max_length") or DEFAULT_MAX_LENGTH)
    tok.no_padding()  # the runtime pads per batch
    tok.enable_truncation(max_len)
    tok.save(str(work / "tokenizer.json"), pretty=False)

    fp32 = work / "fp32.onnx"
    fused: dict[str, int] = {}
    if fuse:
        try:
            from .export import fuse as fuse_bert

            # num_heads=0 / hidden_size=0: the optimizer reads them from the graph
            fused = fuse_bert(onnx_path, fp32, 0, 0)
        except Exception as e:  # not a BERT graph the fuser understands: ship it unfused
            fused = {}
            fp32.unlink(missing_ok=True)
            import logging

            logging.getLogger("quantize").info("graph fusion skipped: %s", e)
    if not fp32.is_file():
        shutil.copyfile(onnx_path, fp32)
    return {
        "fp32_model": fp32,
        "tokenizer": work / "tokenizer.json",
        "dim": _output_dim(fp32),
        "max_length": max_len,
        "fused": fused,
        "source": {
            "model_id": onnx_path.name,
            "onnx_sha256": _sha256(onnx_path),
            "tokenizer_sha256": _sha256(tokenizer_path),
            "revision": None,
        },
    }
