"""The INT8 schemes auto chooses from, on the real all-MiniLM-L6-v2: attention split, batch independence."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge_embed import Embedder
from tests.conftest import run_cli, write_manifest


def _with_model(fp32: Path, dst: Path, model: Path) -> Embedder:
    """A copy of the fp32 bundle running another model file."""
    shutil.copytree(fp32, dst)
    shutil.copyfile(model, dst / "model.onnx")
    m = json.loads((dst / "manifest.json").read_text())
    data = (dst / "model.onnx").read_bytes()
    m["files"]["model.onnx"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    write_manifest(dst, m)
    return Embedder.load(dst)


def test_split_attention_computes_what_fused_attention_does(minilm_fp32: Path, tmp_path: Path) -> None:
    import onnx

    from quantize.int8 import split_attention, weighted_matmuls
    from quantize.validate import default_probes

    out = tmp_path / "split.onnx"
    made = split_attention(minilm_fp32 / "model.onnx", out)
    ops = [n.op_type for n in onnx.load(str(out), load_external_data=False).graph.node]
    assert len(made) == 6 and "Attention" not in ops and ops.count("MultiHeadAttention") == 6
    assert set(made) <= set(weighted_matmuls(out))  # what per_token_model and MatMulNBits convert
    texts = default_probes().gate[::4]
    want = Embedder.load(minilm_fp32).embed(texts)
    got = _with_model(minilm_fp32, tmp_path / "b", out).embed(texts)
    assert float(np.abs(got - want).max()) < 1e-4


@pytest.mark.parametrize("name", ["per-token-all", "nbits8-b128"])
def test_batch_independent_schemes_embed_a_text_alike_alone_and_in_any_batch(
        minilm_fp32: Path, tmp_path: Path, name: str) -> None:
    from quantize.schemes import SCHEMES
    from quantize.validate import batch_independence, compare, default_probes

    scheme = SCHEMES[name]
    facts = scheme.quantize(minilm_fp32 / "model.onnx", tmp_path / "q.onnx", tmp_path, "avx2", True, [])
    assert scheme.batch_independent and facts["scheme"] == name
    emb = _with_model(minilm_fp32, tmp_path / "b", tmp_path / "q.onnx")
    texts = default_probes().gate[::3]
    assert batch_independence(emb, texts) > 0.99999
    fig = compare(Embedder.load(minilm_fp32).embed(texts), emb.embed(texts))
    assert fig["cosine_mean"] > 0.99  # and it is still the model
    import onnx

    ops = {n.op_type for n in onnx.load(str(tmp_path / "q.onnx"), load_external_data=False).graph.node}
    # no activation quantized per batch is left
    assert not ops & {"DynamicQuantizeLinear", "DynamicQuantizeMatMul", "QAttention", "Attention"}


def test_scheme_flag_is_checked_before_any_work(tmp_path: Path) -> None:
    r = run_cli("build", "all-minilm-l6-v2", "--scheme", "nbits3", "-o", str(tmp_path / "x"))
    assert r.returncode == 2 and "--scheme: 'nbits3' is not one of" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("build", "all-minilm-l6-v2", "--scheme", "per-token-all", "--method", "fp32", "-o",
                str(tmp_path / "x"))
    assert r.returncode == 2 and "--scheme: chooses the INT8 scheme" in r.stderr
    assert not (tmp_path / "x").exists()
