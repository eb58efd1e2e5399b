"""The INT8 schemes auto chooses from, on the real all-MiniLM-L6-v2: attention split, batch independence."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edge_embed import Embedder
from edge_embed.manifest import Manifest
from tests.conftest import run_cli


def _with_model(fp32: Path, dst: Path, model: Path) -> Embedder:
    """A copy of the fp32 bundle running another model file."""
    shutil.copytree(fp32, dst)
    shutil.copyfile(model, dst / "model.onnx")
    m = Manifest.read(dst)
    replace(m, files={**m.files, **Manifest.describe_files(dst, [m.model_file])}).write(dst)
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


@pytest.mark.parametrize("name", ["per-token-all", "per-token-asym", "per-token-asym-smooth", "nbits8-b128"])
def test_batch_independent_schemes_embed_a_text_alike_alone_and_in_any_batch(
        minilm_fp32: Path, tmp_path: Path, name: str) -> None:
    from quantize.schemes import SCHEMES, bind
    from quantize.validate import batch_independence, compare, default_probes

    scheme = bind(SCHEMES[name], default_probes().search[::4], Embedder.load(minilm_fp32))
    facts = scheme.quantize(minilm_fp32 / "model.onnx", tmp_path / "q.onnx", tmp_path, "avx2", True, [])
    assert scheme.batch_independent and facts["scheme"] == name
    if name.startswith("per-token"):  # what the manifest tells a reader: no per-batch scale anywhere
        assert "every MatMul" in facts["activation_type"] and "per batch" not in facts["activation_type"]
    emb = _with_model(minilm_fp32, tmp_path / "b", tmp_path / "q.onnx")
    texts = default_probes().gate[::3]
    assert batch_independence(emb, texts) > 0.99999
    fig = compare(Embedder.load(minilm_fp32).embed(texts), emb.embed(texts))
    assert fig["cosine_mean"] > 0.99  # and it is still the model
    import onnx

    ops = {n.op_type for n in onnx.load(str(tmp_path / "q.onnx"), load_external_data=False).graph.node}
    # no activation quantized per batch is left
    assert not ops & {"DynamicQuantizeLinear", "DynamicQuantizeMatMul", "QAttention", "Attention"}


def _one_matmul(path: Path, w: np.ndarray) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None, w.shape[0]])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None, w.shape[1]])],
                          [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))


@pytest.mark.parametrize("target", ["avx2", "avx512-vnni"])
def test_asymmetric_per_token_matmul_is_exactly_the_integer_product(tmp_path: Path, target: str) -> None:
    """Each row on its own [min, max] and zero point, 8-bit weights, the zero points folded out
    after the product: what onnxruntime computes equals the same arithmetic done in numpy."""
    import onnx
    import onnxruntime as ort

    from quantize.int8 import per_token_model

    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.05, (96, 40)).astype(np.float32)
    x = rng.normal(0.3, 1.0, (2, 5, 96)).astype(np.float32)
    x[0, 1] = np.abs(x[0, 1]) * 8  # a one-sided row with outliers: its zero point is 0
    x[1, 2] = -np.abs(x[1, 2])  # all negative: zero point 255
    x[1, 3] = 0.0  # all zero
    _one_matmul(tmp_path / "f.onnx", w)
    assert per_token_model(tmp_path / "f.onnx", tmp_path / "q.onnx", ["mm"], target, asymmetric=True) == ["mm"]
    got = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    wq = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(tmp_path / "q.onnx")).graph.initializer}
    codes = next(v for k, v in wq.items() if k.endswith("_wq"))
    # 8-bit weights as uint8 around 128 for every target: u8 x s8 would saturate on AVX2, and a
    # bundle built for VNNI must give the same vectors on an AVX2 machine
    assert codes.dtype == np.uint8
    wscale = np.abs(w).max(axis=0) / 127
    wint = np.clip(np.round(w / wscale), -127, 127)
    x2 = x.reshape(-1, 96).astype(np.float64)
    lo, hi = np.minimum(x2.min(axis=1), 0), np.maximum(x2.max(axis=1), 0)
    s = np.maximum((hi - lo) / 255, 1e-12)
    z = np.round(-lo / s)
    q = np.clip(np.round(x2 / s[:, None]) + z[:, None], 0, 255)
    want = ((q - z[:, None]) @ wint) * s[:, None] * wscale
    assert np.abs(got.reshape(-1, 40) - want).max() < 1e-4 * np.abs(want).max()
    assert np.all(got[1, 3] == 0)
    fp = (x2 @ w.astype(np.float64)).reshape(got.shape)
    cos = (got * fp).sum(-1)[got.any(-1)] / (np.linalg.norm(got, axis=-1) * np.linalg.norm(fp, axis=-1))[got.any(-1)]
    assert cos.min() > 0.9995  # and it is the float product, within 8-bit rounding


def test_batch_independent_schemes_quantize_the_embedding_table_of_an_unfused_graph(tmp_path: Path) -> None:
    """MPNet-like graphs have no EmbedLayerNormalization: their word-embedding Gather is
    weight-only and must be INT8 too, or the bundle keeps a float table (0.42x the size)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from quantize.schemes import SCHEMES

    rng = np.random.default_rng(1)
    table = rng.normal(0, 1, (2000, 64)).astype(np.float32)
    w = rng.normal(0, 0.1, (64, 32)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
         helper.make_node("MatMul", ["e", "w"], ["y"], name="mm")], "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [None, None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None, 32])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "f.onnx"))
    SCHEMES["per-token-asym"].quantize(tmp_path / "f.onnx", tmp_path / "q.onnx", tmp_path, "avx2", True, [])
    q = onnx.load(str(tmp_path / "q.onnx"))
    assert not [i for i in q.graph.initializer if i.data_type == TensorProto.FLOAT and i.dims[:1] == [2000]]
    assert (tmp_path / "q.onnx").stat().st_size < 0.4 * (tmp_path / "f.onnx").stat().st_size
    ids = np.array([[1, 7, 1999]], np.int64)
    got = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]
    want = table[ids] @ w
    cos = (got * want).sum(-1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(want, axis=-1))
    assert cos.min() > 0.999


def test_scheme_flag_is_checked_before_any_work(tmp_path: Path) -> None:
    r = run_cli("build", "all-minilm-l6-v2", "--scheme", "nbits3", "-o", str(tmp_path / "x"))
    assert r.returncode == 2 and "--scheme: 'nbits3' is not one of" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("build", "all-minilm-l6-v2", "--scheme", "per-token-all", "--method", "fp32", "-o",
                str(tmp_path / "x"))
    assert r.returncode == 2 and "--scheme: chooses the INT8 scheme" in r.stderr
    assert not (tmp_path / "x").exists()


def test_smoothing_factors_leave_the_fp32_product_unchanged(tmp_path: Path) -> None:
    """x (diag(1/f)) (diag(f) W) is x W: smooth_model moves range between activation and
    weight without changing what the graph computes."""
    import onnxruntime as ort

    from quantize.int8 import smooth_model

    rng = np.random.default_rng(3)
    w = rng.normal(size=(16, 8)).astype(np.float32)
    _one_matmul(tmp_path / "f.onnx", w)
    x = rng.normal(size=(2, 5, 16)).astype(np.float32)
    x[..., 3] *= 60  # an outlier channel
    maxima = {"mm": np.abs(x).reshape(-1, 16).max(axis=0)}
    assert smooth_model(tmp_path / "f.onnx", tmp_path / "s.onnx", maxima, 0.5) == ["mm"]
    run = {p: ort.InferenceSession(str(tmp_path / p), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
           for p in ("f.onnx", "s.onnx")}
    np.testing.assert_allclose(run["s.onnx"], run["f.onnx"], rtol=1e-4, atol=1e-4)
    import onnx
    from onnx import numpy_helper

    g = onnx.load(str(tmp_path / "s.onnx")).graph
    inv = next(numpy_helper.to_array(i) for i in g.initializer if i.name.endswith("/inverse"))
    assert inv[3] == inv.min()  # the loud channel is divided the most


def test_the_smoothed_scheme_refuses_to_guess_its_ranges(minilm_fp32: Path, tmp_path: Path) -> None:
    from quantize import BuildError
    from quantize.schemes import SCHEMES

    with pytest.raises(BuildError, match="needs texts"):
        SCHEMES["per-token-asym-smooth"].quantize(minilm_fp32 / "model.onnx", tmp_path / "q.onnx", tmp_path,
                                                  "avx2", True, [])
