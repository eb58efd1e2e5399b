"""Loaded embedders of the real MiniLM bundles, shared by the runtime tests (loaded once)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_embed import Embedder


@pytest.fixture(scope="session")
def int8(minilm_int8: Path) -> Embedder:
    return Embedder.load(minilm_int8)


@pytest.fixture(scope="session")
def fp32(minilm_fp32: Path) -> Embedder:
    return Embedder.load(minilm_fp32)
