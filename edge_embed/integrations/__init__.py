"""Adapters for frameworks that take an embedding model object (optional extras).

``edge_embed.integrations.langchain`` (extra ``langchain``: langchain-core) and
``edge_embed.integrations.llamaindex`` (extra ``llamaindex``: llama-index-core). Nothing is
imported here: each adapter imports its framework when the adapter module is imported, and
a missing framework is an ImportError naming the extra to install.
"""

from __future__ import annotations

__all__: list[str] = []
