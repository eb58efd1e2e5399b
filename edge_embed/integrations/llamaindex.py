"""LlamaIndex ``BaseEmbedding`` over an edge-embed bundle (extra ``llamaindex``).

    from llama_index.core import Settings
    from edge_embed.integrations.llamaindex import EdgeEmbedEmbedding
    Settings.embed_model = EdgeEmbedEmbedding("models/minilm-int8")

Queries get the bundle's ``query`` prompt, texts its ``document`` / ``passage`` / ``corpus``
prompt when it has one. Async methods run the model in a worker thread.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

try:
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from llama_index.core.bridge.pydantic import PrivateAttr
except ImportError:  # pragma: no cover - depends on the environment
    raise ImportError("edge_embed.integrations.llamaindex needs llama-index-core: "
                      "pip install 'edge-embed[llamaindex]'") from None

from ..compat import load_model
from ..embedder import Embedder

__all__ = ["EdgeEmbedEmbedding"]


class EdgeEmbedEmbedding(BaseEmbedding):
    """``model``: a bundle path, packed file, cached hub id / recipe name, or a loaded Embedder."""

    _embedder: Embedder = PrivateAttr()

    def __init__(self, model: str | os.PathLike[str] | Embedder, *, embed_batch_size: int = 32,
                 **kwargs: Any) -> None:
        emb = load_model(model)
        kwargs.setdefault("model_name", str(emb.path))
        super().__init__(embed_batch_size=embed_batch_size, **kwargs)
        self._embedder = emb

    @classmethod
    def class_name(cls) -> str:
        return "EdgeEmbedEmbedding"

    @property
    def embedder(self) -> Embedder:
        return self._embedder

    def _get_query_embedding(self, query: str) -> list[float]:
        out: list[float] = self._embedder.encode_query(query).tolist()
        return out

    def _get_text_embedding(self, text: str) -> list[float]:
        out: list[float] = self._embedder.encode_document(text).tolist()
        return out

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        vecs = self._embedder.encode_document(list(texts), batch_size=self.embed_batch_size)
        return [row.tolist() for row in vecs]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)
