"""Embedder.encode: sentence-transformers' shapes, iterables, prompts, precisions, similarity.

Exact comparisons use the fp32 bundle: dynamic INT8 computes activation scales per batch,
so an INT8 vector depends slightly on which texts share its batch.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_embed import BundleError, Embedder, InputError
from edge_embed.manifest import RANGES_KEY, Manifest
from tests.conftest import write_manifest

TEXTS = [f"sentence number {i} about {'long ' * (i % 5)}things" for i in range(21)]


def test_str_gives_1d_and_list_gives_2d(fp32: Embedder) -> None:
    one = fp32.encode("hello world")
    many = fp32.encode(["hello world", "another text"])
    assert one.shape == (fp32.dim,) and one.dtype == np.float32
    assert many.shape == (2, fp32.dim) and many.dtype == np.float32
    np.testing.assert_allclose(one, many[0], atol=1e-5)
    np.testing.assert_allclose(many, fp32.embed(["hello world", "another text"]), atol=1e-6)


def test_generator_is_read_once_in_batches(fp32: Embedder) -> None:
    pulled: list[int] = []

    def gen() -> Iterator[str]:
        for i, t in enumerate(TEXTS):
            pulled.append(i)
            yield t

    # batch_size=2 reads 16 texts at a time: the 21 texts span two chunks
    got = fp32.encode(gen(), batch_size=2)
    assert pulled == list(range(len(TEXTS)))  # every text pulled exactly once, in order
    np.testing.assert_allclose(got, fp32.encode(TEXTS), atol=1e-5)
    assert fp32.encode(iter([])).shape == (0, fp32.dim)
    assert fp32.encode([]).shape == (0, fp32.dim)


def test_bad_inputs_are_input_errors(int8: Embedder) -> None:
    with pytest.raises(InputError, match=r"sentences\[1\]: expected str, got int"):
        int8.encode(iter(["fine", 3]))
    with pytest.raises(InputError, match="precision"):
        int8.encode(["x"], precision="float16")
    with pytest.raises(InputError, match="batch_size"):
        int8.encode(["x"], batch_size=0)
    with pytest.raises(InputError, match="prompt: 'query' is not in this bundle's prompts"):
        int8.encode(["x"], prompt_name="query")
    with pytest.raises(InputError, match="expected a str or an iterable"):
        int8.encode(42)  # type: ignore[arg-type]


def test_prompt_is_a_literal_prefix(fp32: Embedder) -> None:
    np.testing.assert_allclose(fp32.encode(["x"], prompt="search: "), fp32.embed(["search: x"]), atol=1e-6)
    # no query prompt in this bundle: encode_query is plain encode
    np.testing.assert_allclose(fp32.encode_query("what is onnx?"), fp32.encode("what is onnx?"), atol=1e-6)
    np.testing.assert_allclose(fp32.encode_document(["a doc"]), fp32.encode(["a doc"]), atol=1e-6)


def test_encode_query_and_document_use_the_bundles_prompts(minilm_fp32: Path, tmp_path: Path) -> None:
    prompts = {"query": "query: ", "passage": "passage: "}
    emb = Embedder.load(_copy(minilm_fp32, tmp_path / "prompted", lambda d: d.update(prompts=prompts)))
    np.testing.assert_allclose(emb.encode_query(["q"]), emb.embed(["query: q"]), atol=1e-6)
    np.testing.assert_allclose(emb.encode_document(["d"]), emb.embed(["passage: d"]), atol=1e-6)
    np.testing.assert_allclose(emb.encode_query(["q"], prompt="x "), emb.embed(["x q"]), atol=1e-6)
    np.testing.assert_allclose(emb.encode(["q"], prompt_name="query"), emb.embed(["q"], prompt="query"), atol=1e-6)


def test_convert_to_numpy_false_and_normalize(fp32: Embedder) -> None:
    rows = fp32.encode(["a", "b"], convert_to_numpy=False)
    assert isinstance(rows, list) and len(rows) == 2 and rows[0].shape == (fp32.dim,)
    v = fp32.encode(["a"], normalize_embeddings=True)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)


def test_similarity_is_a_cosine_matrix(fp32: Embedder) -> None:
    a = fp32.encode(["a cat sits", "stock prices fell"])
    b = fp32.encode(["a kitten is sitting", "markets dropped", "weather today"])
    s = fp32.similarity(a, b)
    assert s.shape == (2, 3)
    np.testing.assert_allclose(s, a @ b.T, atol=1e-5)  # the bundle's vectors are unit length
    assert s[0, 0] > s[0, 1] and s[1, 1] > s[1, 0]
    assert fp32.similarity(a[0], b).shape == (1, 3)
    with pytest.raises(InputError, match="one width"):
        fp32.similarity(a, b[:, :10])


def test_packed_precisions(fp32: Embedder) -> None:
    f = fp32.encode(TEXTS)
    ub = fp32.encode(TEXTS, precision="ubinary")
    b = fp32.encode(TEXTS, precision="binary")
    assert ub.dtype == np.uint8 and ub.shape == (len(TEXTS), fp32.dim // 8)
    assert b.dtype == np.int8
    np.testing.assert_array_equal(np.unpackbits(ub, axis=1).astype(bool), f > 0)
    np.testing.assert_array_equal(b.astype(np.int16) + 128, ub)
    assert fp32.encode("one", precision="ubinary").shape == (fp32.dim // 8,)


def test_int8_uses_the_bundles_recorded_ranges(fp32: Embedder) -> None:
    r = fp32.manifest.extra[RANGES_KEY]
    lo, hi = np.asarray(r["min"], np.float32), np.asarray(r["max"], np.float32)
    assert r["texts"] > 100 and np.all(lo < hi)
    f = fp32.encode(TEXTS)
    u = fp32.encode(TEXTS, precision="uint8")
    i = fp32.encode(TEXTS, precision="int8")
    assert u.dtype == np.uint8 and i.dtype == np.int8 and u.shape == f.shape
    # the same buckets shifted by 128, up to casting's rounding toward zero (sentence-transformers' too)
    shift = i.astype(np.int16) + 128 - u.astype(np.int16)
    assert shift.min() >= 0 and shift.max() <= 1
    # dequantized, each value is within one step of the float (clipped at the range's ends)
    step = (hi - lo) / 255
    back = lo + u.astype(np.float32) * step
    assert np.all(np.abs(back - np.clip(f, lo, hi)) <= step * 1.001 + 1e-7)
    # one text alone gets the codes it gets in a batch: the ranges are the bundle's, not the batch's
    # (at most one step apart where fp32 rounding differs across batch shapes at a bucket edge)
    alone = fp32.encode(TEXTS[3], precision="uint8").astype(np.int16)
    assert np.abs(alone - u[3]).max() <= 1 and np.mean(alone == u[3]) > 0.95


def _copy(bundle: Path, dst: Path, edit) -> Path:  # type: ignore[no-untyped-def]
    shutil.copytree(bundle, dst)
    path = dst / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    write_manifest(dst, data)
    return dst


def test_bundle_without_ranges_says_to_rebuild(minilm_int8: Path, tmp_path: Path) -> None:
    assert RANGES_KEY in Manifest.read(minilm_int8).extra  # every build records them
    old = _copy(minilm_int8, tmp_path / "old", lambda d: d.pop(RANGES_KEY))
    emb = Embedder.load(old)
    with pytest.raises(BundleError, match=r"no 'int8_ranges'.*rebuild the bundle"):
        emb.encode(["x"], precision="int8")
    assert emb.encode(["x"], precision="binary").shape == (1, emb.dim // 8)  # needs no ranges


@pytest.mark.parametrize(("edit", "message"), [
    (lambda r: r.update(min=r["min"][:-1]), r"'int8_ranges.min' must be a list of dim=384 numbers, got 383"),
    (lambda r: r["max"].__setitem__(5, "x"), r"'int8_ranges.max\[5\]' must be a finite number"),
    (lambda r: r["max"].__setitem__(7, r["min"][7]), r"dimension 7 has min .* >= max"),
])
def test_bad_ranges_are_bundle_errors(minilm_int8: Path, tmp_path: Path, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    bad = _copy(minilm_int8, tmp_path / "bad", lambda d: edit(d[RANGES_KEY]))
    with pytest.raises(BundleError, match=message):
        Manifest.read(bad)


def test_progress_bar_counts_on_stderr(fp32: Embedder, capsys: pytest.CaptureFixture[str]) -> None:
    fp32.encode(TEXTS, batch_size=4, show_progress_bar=True)
    err = capsys.readouterr().err
    assert f"encode: {len(TEXTS)}/{len(TEXTS)} texts (100%)" in err
    fp32.encode(TEXTS)
    assert capsys.readouterr().err == ""  # off by default
