"""Against the real sentence-transformers: output precisions bit for bit, drop-in vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_embed import Embedder
from edge_embed.manifest import RANGES_KEY
from edge_embed.precision import ranges_array

st = pytest.importorskip("sentence_transformers", reason="needs the bench extra (sentence-transformers)")

TEXTS = ["This is a test sentence.", "how do I reset my router?", "Raspberry Pi 5 has four Cortex-A76 cores.",
         "Café crème brûlée.", "def add(a, b): return a + b", "the weather is lovely today " * 8]


@pytest.mark.parametrize("precision", ["binary", "ubinary"])
def test_packed_bits_match_sentence_transformers(minilm_fp32: Path, precision: str) -> None:
    from sentence_transformers.quantization import quantize_embeddings

    emb = Embedder.load(minilm_fp32)
    floats = emb.encode(TEXTS)
    got = emb.encode(TEXTS, precision=precision)
    want = quantize_embeddings(floats, precision)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("precision", ["int8", "uint8"])
def test_scalar_int8_matches_sentence_transformers_with_the_bundles_ranges(minilm_fp32: Path,
                                                                          precision: str) -> None:
    from sentence_transformers.quantization import quantize_embeddings

    emb = Embedder.load(minilm_fp32)
    ranges = ranges_array(emb.manifest.extra[RANGES_KEY])
    floats = emb.encode(TEXTS)
    got = emb.encode(TEXTS, precision=precision)
    want = quantize_embeddings(floats, precision, ranges=ranges)
    assert got.dtype == want.dtype and got.shape == want.shape
    inside = (floats >= ranges[0]) & (floats <= ranges[1])
    assert inside.mean() > 0.9
    np.testing.assert_array_equal(got[inside], want[inside])
    # outside the recorded range edge-embed clips where sentence-transformers' cast wraps around
    info = np.iinfo(got.dtype)
    assert set(np.unique(got[floats < ranges[0]])) <= {info.min}
    assert set(np.unique(got[floats > ranges[1]])) <= {info.max}
