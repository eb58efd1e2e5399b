"""LangChain ``Embeddings`` over an edge-embed bundle (extra ``langchain``).

    from edge_embed.integrations.langchain import EdgeEmbedEmbeddings
    embeddings = EdgeEmbedEmbeddings("models/minilm-int8")
    vectors = embeddings.embed_documents(["first doc", "second doc"])

Queries get the bundle's ``query`` prompt, documents its ``document`` / ``passage`` /
``corpus`` prompt when it has one (as sentence-transformers' encode_query / encode_document).
The async variants run the model in a worker thread, so the event loop keeps serving.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

try:
    from langchain_core.embeddings import Embeddings
except ImportError:  # pragma: no cover - depends on the environment
    raise ImportError("edge_embed.integrations.langchain needs langchain-core: "
                      "pip install 'edge-embed[langchain]'") from None

from ..compat import load_model
from ..embedder import Embedder

__all__ = ["EdgeEmbedEmbeddings"]


class EdgeEmbedEmbeddings(Embeddings):
    """``model``: a bundle path, packed file, cached hub id / recipe name, or a loaded Embedder."""

    def __init__(self, model: str | os.PathLike[str] | Embedder, *, batch_size: int = 32) -> None:
        self.embedder = load_model(model)
        self.batch_size = batch_size

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        vecs = self.embedder.encode_document(list(texts), batch_size=self.batch_size)
        return [row.tolist() for row in vecs]

    def embed_query(self, text: str) -> list[float]:
        out: list[float] = self.embedder.encode_query(text, batch_size=self.batch_size).tolist()
        return out

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        return await asyncio.to_thread(self.embed_query, text)

    def __repr__(self) -> str:
        return f"EdgeEmbedEmbeddings({str(self.embedder.path)!r})"

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("EdgeEmbedEmbeddings holds an onnxruntime session and cannot be pickled; "
                        "create one per process")
