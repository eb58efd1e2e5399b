"""LangChain and LlamaIndex adapters, run against the real langchain-core and llama-index-core."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_embed import Embedder
from tests.conftest import write_manifest

QUERY = "Represent this sentence for searching relevant passages: "


@pytest.fixture(scope="module")
def prompted(minilm_int8: Path, tmp_path_factory: pytest.TempPathFactory) -> Embedder:
    """The session's MiniLM bundle with a query prompt in its manifest, as bge bundles have."""
    dst = tmp_path_factory.mktemp("prompted") / "bundle"
    shutil.copytree(minilm_int8, dst)
    data = json.loads((dst / "manifest.json").read_text())
    data["prompts"] = {"query": QUERY}
    write_manifest(dst, data)
    return Embedder.load(dst)


def test_langchain_embeddings(prompted: Embedder) -> None:
    pytest.importorskip("langchain_core", reason="needs the langchain extra")
    from langchain_core.embeddings import Embeddings

    from edge_embed.integrations.langchain import EdgeEmbedEmbeddings

    lc = EdgeEmbedEmbeddings(prompted)
    assert isinstance(lc, Embeddings)
    docs = lc.embed_documents(["first doc", "second doc"])
    assert isinstance(docs, list) and len(docs) == 2 and isinstance(docs[0][0], float) and len(docs[0]) == 384
    np.testing.assert_allclose(docs, prompted.embed(["first doc", "second doc"]), atol=1e-6)
    q = lc.embed_query("what is onnx?")
    np.testing.assert_allclose(q, prompted.embed(["what is onnx?"], prompt="query")[0], atol=1e-6)
    assert not np.allclose(q, prompted.embed(["what is onnx?"])[0], atol=1e-3)  # the prompt made a difference
    adocs, aq = asyncio.run(_both(lc.aembed_documents(["first doc", "second doc"]), lc.aembed_query("what is onnx?")))
    np.testing.assert_allclose(adocs, docs, atol=1e-6)
    np.testing.assert_allclose(aq, q, atol=1e-6)


async def _both(a, b):  # type: ignore[no-untyped-def]
    return await asyncio.gather(a, b)


def test_langchain_vector_store_round_trip(prompted: Embedder) -> None:
    pytest.importorskip("langchain_core", reason="needs the langchain extra")
    from langchain_core.vectorstores import InMemoryVectorStore

    from edge_embed.integrations.langchain import EdgeEmbedEmbeddings

    store = InMemoryVectorStore(EdgeEmbedEmbeddings(prompted))
    store.add_texts(["The cat sat on the mat.", "Stock markets fell sharply today.", "Raspberry Pi runs Linux."])
    assert store.similarity_search("which computer runs linux?", k=1)[0].page_content == "Raspberry Pi runs Linux."


def test_llamaindex_embedding(prompted: Embedder) -> None:
    pytest.importorskip("llama_index.core", reason="needs the llamaindex extra")
    from llama_index.core.base.embeddings.base import BaseEmbedding

    from edge_embed.integrations.llamaindex import EdgeEmbedEmbedding

    li = EdgeEmbedEmbedding(prompted, embed_batch_size=2)
    assert isinstance(li, BaseEmbedding)
    q = li.get_query_embedding("what is onnx?")
    np.testing.assert_allclose(q, prompted.embed(["what is onnx?"], prompt="query")[0], atol=1e-6)
    texts = ["a", "b c", "d e f", "g"]
    many = li.get_text_embedding_batch(texts)  # batched by embed_batch_size in llama-index itself
    # INT8 scales activations per batch: the same batches of two give the same vectors
    np.testing.assert_allclose(many, np.concatenate([prompted.embed(texts[:2]), prompted.embed(texts[2:])]),
                               atol=1e-6)
    np.testing.assert_allclose(li.get_text_embedding("a"), prompted.embed(["a"])[0], atol=1e-6)
    aq = asyncio.run(li.aget_query_embedding("what is onnx?"))
    np.testing.assert_allclose(aq, q, atol=1e-6)
    amany = asyncio.run(li.aget_text_embedding_batch(texts))
    np.testing.assert_allclose(amany, many, atol=1e-6)


def test_missing_framework_names_the_extra(tmp_path: Path) -> None:
    # a stand-in package that fails to import, first on sys.path
    for pkg in ("langchain_core", "llama_index"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("raise ImportError('not installed')\n")
    code = ("import sys; sys.path.insert(0, sys.argv[1])\n"
            "for mod in ('langchain', 'llamaindex'):\n"
            "    try:\n"
            "        __import__('edge_embed.integrations.' + mod)\n"
            "    except ImportError as e:\n"
            "        print(e)\n")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    assert "pip install 'edge-embed[langchain]'" in r.stdout
    assert "pip install 'edge-embed[llamaindex]'" in r.stdout
