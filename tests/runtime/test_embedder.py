"""Embedder behaviour users rely on: shapes, norms, order, batching, errors, truncation."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from edge_embed import BundleError, Embedder, InputError

TEXTS = [
    "The cat sat on the mat.",
    "A dog is running through the park on a sunny afternoon, chasing a bright red ball.",
    "what is onnx?",
    "",
    "Quantized models trade a little accuracy for a lot of speed on small devices.",
]




def test_shape_dtype_unit_norm(int8: Embedder) -> None:
    v = int8.embed(TEXTS)
    assert v.shape == (len(TEXTS), 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert np.isfinite(v).all()


def test_empty_list_and_empty_string(int8: Embedder) -> None:
    assert int8.embed([]).shape == (0, 384)
    v = int8.embed([""])
    assert v.shape == (1, 384) and abs(float(np.linalg.norm(v)) - 1) < 1e-5


def test_batch_invariance_fp32(fp32: Embedder) -> None:
    together = fp32.embed(TEXTS, batch_size=32)
    alone = np.vstack([fp32.embed([t]) for t in TEXTS])
    np.testing.assert_allclose(together, alone, atol=2e-5)
    small_batches = fp32.embed(TEXTS, batch_size=2)
    np.testing.assert_allclose(together, small_batches, atol=2e-5)


def test_batch_invariance_int8(int8: Embedder, fp32: Embedder) -> None:
    # dynamic INT8 computes activation scales over the padded batch, so vectors move a
    # little with batch composition; each must stay as close to fp32 as the recipe's
    # cosine_min allows, batched or alone, and order and identity must not change
    floor = int8.manifest.validation["thresholds"]["cosine_min"]
    ref = fp32.embed(TEXTS)
    together = int8.embed(TEXTS)
    alone = np.vstack([int8.embed([t]) for t in TEXTS])
    for got in (together, alone):
        cos = (got * ref).sum(axis=1)
        assert cos.min() >= floor, cos
    sims = together @ alone.T
    assert (sims.argmax(axis=1) == np.arange(len(TEXTS))).all()


def test_order_is_input_order(fp32: Embedder) -> None:
    texts = ["short", "a much longer text that has many more tokens than the first one does", "mid length text"]
    fwd = fp32.embed(texts)
    rev = fp32.embed(texts[::-1])
    np.testing.assert_allclose(fwd, rev[::-1], atol=2e-5)


def test_golden_vectors_minilm(fp32: Embedder, int8: Embedder) -> None:
    golden = json.loads((Path(__file__).parents[1] / "data" / "golden_minilm.json").read_text())
    for entry in golden["vectors"]:
        got = fp32.embed([entry["text"]])[0]
        want = np.array(entry["vector"], dtype=np.float32)
        np.testing.assert_allclose(got[:8], want[:8], atol=1e-4)
        assert float(got @ want) > 0.9999
        # INT8 is held to the fidelity floor its own manifest promises
        q = int8.embed([entry["text"]])[0]
        assert float(q @ want) >= int8.manifest.validation["thresholds"]["cosine_min"]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("oops", "wrap a single text in a list"),
        (b"bytes", "wrap a single text in a list"),
        (["ok", 3], r"texts\[1\]: expected str, got int"),
        (["ok", None], r"texts\[1\]: expected str, got NoneType"),
        (42, "expected a list of strings, got int"),
    ],
)
def test_input_errors(int8: Embedder, bad: object, message: str) -> None:
    with pytest.raises(InputError, match=message):
        int8.embed(bad)  # type: ignore[arg-type]


def test_input_error_is_value_error(int8: Embedder) -> None:
    with pytest.raises(ValueError):
        int8.embed("x")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="batch_size"):
        int8.embed(["x"], batch_size=0)


def test_unknown_prompt(int8: Embedder) -> None:
    with pytest.raises(InputError, match=r"prompt: 'query' is not in this bundle's prompts \(known: none\)"):
        int8.embed(["x"], prompt="query")


def test_prompt_prefix_from_manifest(tiny_cls: Path) -> None:
    emb = Embedder.load(tiny_cls)
    assert emb.manifest.pooling == "cls"
    emb.manifest.prompts["query"] = "search query: "
    np.testing.assert_allclose(emb.embed(["hello"], prompt="query"), emb.embed(["search query: hello"]), atol=1e-6)
    assert emb.token_count(["hello"], prompt="query")[0] > emb.token_count(["hello"])[0]


def test_cls_pooling_matches_first_token(tiny_cls: Path) -> None:
    emb = Embedder.load(tiny_cls)
    enc = emb.tokenize(["hello world"])[0]
    ids = np.array([enc.ids], dtype=np.int64)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    feed = {i.name: feed[i.name] for i in emb.session.get_inputs()}
    hidden = emb.session.run(None, feed)[0]
    want = hidden[:, 0] / np.linalg.norm(hidden[:, 0], axis=1, keepdims=True)
    np.testing.assert_allclose(emb.embed(["hello world"]), want, atol=1e-6)


def test_truncation_is_counted_not_silent(int8: Embedder, caplog: pytest.LogCaptureFixture) -> None:
    long = "word " * 1000
    assert int8.token_count([long, "hi"]) == [1002, 3]
    res = int8.embed_detailed([long, "hi"])
    assert res.truncated == 1 and res.tokens.tolist() == [256, 3]
    with caplog.at_level(logging.WARNING, logger="edge_embed"):
        int8.embed([long])
    assert "1 of 1 texts were longer than 256 tokens and were truncated" in caplog.text
    with pytest.raises(InputError, match=r"texts\[0\]: longer than max_length=256"):
        int8.embed_detailed([long], long_text="error")


def test_huge_text_is_handled(int8: Embedder) -> None:
    v = int8.embed(["x" * 200_000 + " end"])
    assert v.shape == (1, 384) and np.isfinite(v).all()


def test_bad_bundles(minilm_int8: Path, tmp_path: Path) -> None:
    import shutil

    with pytest.raises(BundleError, match="no such bundle"):
        Embedder.load(tmp_path / "missing")
    broken = tmp_path / "broken"
    shutil.copytree(minilm_int8, broken)
    (broken / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match=r"tokenizer.json: missing"):
        Embedder.load(broken)
    shutil.copyfile(minilm_int8 / "tokenizer.json", broken / "tokenizer.json")
    data = bytearray((broken / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (broken / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        Embedder.load(broken)  # verified by default
    (broken / "model.onnx").write_bytes(b"\0" * len(data))
    with pytest.raises(BundleError, match="onnxruntime cannot load it"):
        Embedder.load(broken, verify=False)


def test_with_session_keeps_tokenizer_and_pooling_around_another_session(tiny_cls: Path) -> None:
    """Build tools run instrumented copies of the model through the bundle's own text handling."""
    e = Embedder.load(tiny_cls)
    feeds: list[dict[str, np.ndarray]] = []

    class Recording:
        def get_inputs(self):  # type: ignore[no-untyped-def]
            return e.session.get_inputs()

        def get_outputs(self):  # type: ignore[no-untyped-def]
            return e.session.get_outputs()

        def run(self, outputs, feed):  # type: ignore[no-untyped-def]
            feeds.append(feed)
            return e.session.run(outputs, feed)

    texts = ["a short one", "a somewhat longer text than the first one is"]
    got = e.with_session(Recording()).embed(texts)
    np.testing.assert_array_equal(got, e.embed(texts))
    assert len(feeds) == 1 and feeds[0]["input_ids"].shape[0] == 2
    width = feeds[0]["input_ids"].shape[1]
    longest_first = sorted(e.tokenize(texts), key=lambda x: -len(x.ids))
    assert feeds[0]["input_ids"].tolist() == [[*x.ids, *[0] * (width - len(x.ids))] for x in longest_first]
