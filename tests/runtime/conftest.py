"""Loaded embedders of the real MiniLM bundles, shared by the runtime tests (loaded once)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_embed import Embedder


@pytest.fixture(scope="session")
def int8(minilm_int8: Path) -> Embedder:
    return Embedder.load(minilm_int8)


@pytest.fixture(scope="session")
def fp32(minilm_fp32: Path) -> Embedder:
    return Embedder.load(minilm_fp32)


# the shared msmarco-5k passages (BEIR corpus.jsonl), beside the project root
MSMARCO = Path(__file__).resolve().parents[3] / "shared" / "data" / "msmarco-5k" / "corpus.jsonl"


def msmarco_records() -> list[dict[str, str]]:
    if not MSMARCO.is_file():
        pytest.skip(f"needs the msmarco-5k corpus at {MSMARCO} (../shared/data/msmarco-5k)")
    with open(MSMARCO, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


# the first 2,000 passages are the corpus the corpus and Ray tests run over (5 shards of a job);
# every 5th of them, 400, is the reference sample: every shard, every worker
CORPUS_N = 2000
SAMPLE_STEP = 5


@pytest.fixture(scope="session")
def msmarco_sample_fp32(fp32: Embedder) -> np.ndarray:
    """Embedder.embed of every SAMPLE_STEP-th of the first CORPUS_N msmarco-5k passages with the
    fp32 bundle: the corpus and Ray tests' reference (fp32 vectors do not depend on the batch,
    so a sample checks a whole job)."""
    return fp32.embed([r["text"] for r in msmarco_records()[:CORPUS_N:SAMPLE_STEP]])
