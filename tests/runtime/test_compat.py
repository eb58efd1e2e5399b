"""edge_embed.compat: SentenceTransformer / FlagModel shapes over a bundle, found by path or id."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from edge_embed import BundleError, Embedder, InputError, compat
from edge_embed.cache import HOME_ENV, cache_dir, cache_name, resolve_bundle
from edge_embed.compat import FlagModel, SentenceTransformer
from tests.conftest import write_manifest

FLAG_SNIPPET = """\
from FlagEmbedding import FlagModel
model = FlagModel('BAAI/bge-base-en-v1.5')
embeddings = model.encode(['This is a test sentence.'])
"""


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture()
def cached(home: Path, minilm_int8: Path) -> Path:
    """The session's MiniLM INT8 bundle placed in the cache as a build without -o would."""
    home.mkdir(parents=True)
    (home / "all-minilm-l6-v2").symlink_to(minilm_int8)
    return home / "all-minilm-l6-v2"


def test_cache_names_of_hub_ids_and_recipes_agree(home: Path) -> None:
    assert cache_dir() == home
    assert cache_name("BAAI/bge-base-en-v1.5") == cache_name("bge-base-en-v1.5") == "bge-base-en-v1.5"
    assert cache_name("sentence-transformers/all-MiniLM-L6-v2") == "all-minilm-l6-v2"


def test_default_cache_is_under_the_user_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(HOME_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "edge-embed"


def test_missing_bundle_prints_the_build_command(home: Path) -> None:
    code = FLAG_SNIPPET.replace("from FlagEmbedding import FlagModel", "from edge_embed.compat import FlagModel")
    with pytest.raises(BundleError, match=r"BAAI/bge-base-en-v1.5: no bundle built for it in .*home.*"
                                          r"'edge-embed build BAAI/bge-base-en-v1.5'"):
        exec(code, {})
    with pytest.raises(BundleError, match=r"'edge-embed build bge-base-en-v1.5'"):
        SentenceTransformer("bge-base-en-v1.5")
    with pytest.raises(BundleError, match="no such bundle"):
        SentenceTransformer("./no/such/dir")
    (home.parent / "models").mkdir()
    with pytest.raises(BundleError, match="models/minilm-typo: no such bundle"):
        SentenceTransformer(str(home.parent / "models" / "minilm-typo"))


def test_hub_id_recipe_name_path_and_packed_file_all_load(cached: Path, minilm_int8: Path, tmp_path: Path) -> None:
    from edge_embed.archive import pack

    packed = pack(minilm_int8, tmp_path / "m.edgeembed")
    want = Embedder.load(minilm_int8).encode(["a test"])
    for name in ("sentence-transformers/all-MiniLM-L6-v2", "all-minilm-l6-v2", str(minilm_int8), str(packed)):
        np.testing.assert_allclose(SentenceTransformer(name).encode(["a test"]), want, atol=1e-6)


def test_another_orgs_id_does_not_load_the_cached_bundle(cached: Path) -> None:
    with pytest.raises(BundleError, match="holds a bundle of sentence-transformers/all-MiniLM-L6-v2, not "
                                          "someone/all-MiniLM-L6-v2"):
        SentenceTransformer("someone/all-MiniLM-L6-v2")


def test_sentence_transformer_surface(cached: Path) -> None:
    m = SentenceTransformer("sentence-transformers/all-MiniLM-L6-v2", device="cuda", trust_remote_code=True,
                            cache_folder="/nowhere", prompts={"query": "query: "})
    assert m.get_sentence_embedding_dimension() == 384 and m.max_seq_length == 256 and m.device == "cpu"
    one, two = m.encode("hi"), m.encode(["hi", "there"])
    assert one.shape == (384,) and two.shape == (2, 384)
    np.testing.assert_allclose(m.encode_query(["q"]), m.embedder.encode(["query: q"]), atol=1e-6)
    assert m.similarity(two, two).shape == (2, 2)
    cut = SentenceTransformer("all-minilm-l6-v2", truncate_dim=64).encode(["hi"], normalize_embeddings=True)
    assert cut.shape == (1, 64)
    np.testing.assert_allclose(np.linalg.norm(cut, axis=1), 1.0, atol=1e-5)
    assert m.encode(["hi"], precision="ubinary").shape == (1, 48)


def test_unknown_keywords_are_errors_not_swallowed(cached: Path) -> None:
    with pytest.raises(InputError, match=r"SentenceTransformer: model_kwargs not supported by edge-embed; "
                                         r"accepted and ignored: .*device"):
        SentenceTransformer("all-minilm-l6-v2", model_kwargs={"torch_dtype": "float16"})
    with pytest.raises(InputError, match="FlagModel: colbert_dim not supported"):
        FlagModel("all-minilm-l6-v2", colbert_dim=128)
    with pytest.raises(TypeError):
        SentenceTransformer("all-minilm-l6-v2").encode(["x"], not_a_kwarg=1)  # type: ignore[call-arg]
    with pytest.raises(InputError, match="pooling_method: 'cls', but this bundle pools by 'mean'"):
        FlagModel("all-minilm-l6-v2", pooling_method="cls")
    with pytest.raises(InputError, match="max_length=128: this bundle cuts texts at 256"):
        FlagModel("all-minilm-l6-v2", max_length=128)
    with pytest.raises(InputError, match="output_value"):
        SentenceTransformer("all-minilm-l6-v2").encode(["x"], output_value="token_embeddings")


def _with_query_prompt(bundle: Path, dst: Path) -> Path:
    shutil.copytree(bundle, dst, symlinks=False)
    data = json.loads((dst / "manifest.json").read_text())
    data["prompts"] = {"query": "Represent this sentence for searching relevant passages: "}
    write_manifest(dst, data)
    return dst


def test_flag_model_queries_use_the_bundles_query_prompt(minilm_int8: Path, tmp_path: Path) -> None:
    bundle = _with_query_prompt(minilm_int8, tmp_path / "prompted")
    emb = Embedder.load(bundle)
    m = FlagModel(str(bundle))
    assert m.query_instruction_for_retrieval == emb.prompts["query"]
    np.testing.assert_allclose(m.encode_queries(["what is onnx?"]), emb.embed(["what is onnx?"], prompt="query"),
                               atol=1e-6)
    np.testing.assert_allclose(m.encode_corpus(["a passage"]), emb.embed(["a passage"]), atol=1e-6)
    np.testing.assert_allclose(m.encode_queries("what is onnx?"), emb.embed(["what is onnx?"], prompt="query")[0],
                               atol=1e-6)
    own = FlagModel(str(bundle), query_instruction_for_retrieval="q: ")
    np.testing.assert_allclose(own.encode_queries(["x"]), emb.embed(["q: x"]), atol=1e-6)
    none = FlagModel(str(bundle), query_instruction_for_retrieval="")
    np.testing.assert_allclose(none.encode_queries(["x"]), emb.embed(["x"]), atol=1e-6)


def test_flag_model_normalize_and_use_fp16(cached: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compat, "_fp16_warned", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        FlagModel("all-minilm-l6-v2", use_fp16=True)
        raw = FlagModel("all-minilm-l6-v2", use_fp16=True, normalize_embeddings=False)
    assert len([w for w in caught if "use_fp16 is ignored" in str(w.message)]) == 1
    unit = FlagModel("all-minilm-l6-v2").encode(["some text", "other"])
    norms = np.linalg.norm(raw.encode(["some text", "other"]), axis=1)
    assert not np.allclose(norms, 1.0, atol=1e-3)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(raw.encode(["some text", "other"]) / norms[:, None], unit, atol=1e-5)


def test_resolve_bundle_returns_existing_paths_as_given(minilm_int8: Path) -> None:
    assert resolve_bundle(minilm_int8) == minilm_int8
