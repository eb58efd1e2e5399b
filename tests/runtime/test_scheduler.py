"""The server's scheduler on its own, over a fake model: which texts share a micro-batch.

No model, no HTTP: a fake embedder records every call and returns vectors that name their
text, so the test asserts the composition and order of micro-batches, never a time.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
import pytest

pytest.importorskip("prometheus_client", reason="needs the serve extra: pip install 'edge-embed[serve]'")

from edge_embed.embedder import EmbedResult  # noqa: E402
from edge_embed.server import ServerConfig  # noqa: E402
from edge_embed.server.metrics import Metrics  # noqa: E402
from edge_embed.server.scheduler import Scheduler  # noqa: E402

MAX_LENGTH = 64


class FakeEmbedder:
    """Tokens per text = its number of words (capped at max_length); vector = (id, 1, 0, ...)."""

    max_length = MAX_LENGTH
    dim = 4

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.gate = threading.Event()  # the first call waits for it: requests queue up meanwhile

    @staticmethod
    def tokens(text: str) -> int:
        return min(len(text.split()), MAX_LENGTH)

    def embed_detailed(self, texts: list[str], **kw: Any) -> EmbedResult:
        self.calls.append(list(texts))
        if len(self.calls) == 1 and not self.gate.wait(30):
            raise RuntimeError("gate never opened")
        vecs = np.zeros((len(texts), self.dim), dtype=np.float32)
        vecs[:, 0] = [float(t.split()[0]) for t in texts]
        vecs[:, 1] = 1
        return EmbedResult(vecs, np.array([self.tokens(t) for t in texts], dtype=np.int64), 0)


def text(i: int, words: int) -> str:
    return " ".join([str(i)] + ["w"] * (words - 1))


async def _serve(emb: FakeEmbedder, config: ServerConfig, requests: list[list[str]]) -> list[Any]:
    sched = Scheduler(emb, config, Metrics())  # type: ignore[arg-type]
    sched.start()
    try:
        hold = asyncio.ensure_future(sched.submit([text(-1, 1)], None, [1]))
        while not emb.calls:
            await asyncio.sleep(0.001)
        tasks = [asyncio.ensure_future(sched.submit(r, None, [emb.tokens(t) for t in r])) for r in requests]
        while len(sched.jobs) < len(requests):
            await asyncio.sleep(0.001)
        emb.gate.set()
        await hold
        return list(await asyncio.gather(*tasks))
    finally:
        emb.gate.set()
        await sched.stop()


def test_micro_batches_stay_within_the_padded_token_budget_and_answers_stay_in_order() -> None:
    """The budget counts rows x the longest text of the batch, so a run of long texts holds few
    rows and one of short texts many: every run stays within it, whatever the mix of lengths."""
    emb = FakeEmbedder()
    budget = 128
    long_request = [text(i, [60, 3, 30, 8, 64, 1][i % 6]) for i in range(60)]
    mixed = [text(100 + i, [2, 50][i % 2]) for i in range(10)]
    answers = asyncio.run(_serve(emb, ServerConfig(max_batch_tokens=budget, batch_size=32, warmup=False),
                                 [long_request, mixed]))
    runs = emb.calls[1:]
    for run in runs:
        assert len(run) == 1 or len(run) * max(emb.tokens(t) for t in run) <= budget, run
    assert sorted(t for run in runs for t in run) == sorted(long_request + mixed)  # each text once
    assert max(len(r) for r in runs) > 8  # short texts do fill a run with many rows
    for request, (vectors, tokens) in zip([long_request, mixed], answers, strict=True):
        assert list(vectors[:, 0]) == [float(t.split()[0]) for t in request]
        assert list(tokens) == [emb.tokens(t) for t in request]


def test_a_short_request_runs_before_the_rest_of_the_long_one() -> None:
    emb = FakeEmbedder()
    long_request = [text(i, 40) for i in range(20)]
    short = [text(999, 2)]
    asyncio.run(_serve(emb, ServerConfig(max_batch_tokens=256, batch_size=32, warmup=False),
                       [long_request, short]))
    runs = emb.calls[1:]
    assert runs[0] == short  # the request a micro-batch completes runs first, on its own
    assert all(len(r) * 40 <= 256 for r in runs[1:])


class MainLaneGate(FakeEmbedder):
    """Every run in the main inference thread waits for the gate; express runs do not."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[str] = []

    def embed_detailed(self, texts: list[str], **kw: Any) -> EmbedResult:
        self.threads.append(threading.current_thread().name)
        if threading.current_thread().name.startswith("edge-embed-infer") and not self.gate.wait(30):
            raise RuntimeError("gate never opened")
        self.calls.append(list(texts))
        vecs = np.zeros((len(texts), self.dim), dtype=np.float32)
        vecs[:, 0] = [float(t.split()[0]) for t in texts]
        vecs[:, 1] = 1
        return EmbedResult(vecs, np.array([self.tokens(t) for t in texts], dtype=np.int64), 0)


async def _short_beside_long(config: ServerConfig, short: list[str], n_long: int = 20,
                             wait: float = 1.5) -> tuple[bool, MainLaneGate]:
    """A request of n_long texts of 40 tokens has its first run held in the main thread; is the
    short one answered within ``wait`` seconds meanwhile (a fake run takes microseconds)?"""
    emb = MainLaneGate()
    sched = Scheduler(emb, config, Metrics())  # type: ignore[arg-type]
    sched.start()
    try:
        long_request = [text(i, 40) for i in range(n_long)]
        long_task = asyncio.ensure_future(sched.submit(long_request, None, [40] * n_long))
        while not emb.threads:
            await asyncio.sleep(0.001)
        short_task = asyncio.ensure_future(sched.submit(short, None, [emb.tokens(t) for t in short]))
        done, _ = await asyncio.wait([short_task], timeout=wait)
        answered_beside = bool(done)
        emb.gate.set()
        (vectors, _), (long_vectors, _) = await short_task, await long_task
        assert list(vectors[:, 0]) == [float(t.split()[0]) for t in short]
        assert list(long_vectors[:, 0]) == list(range(n_long))
        return answered_beside, emb
    finally:
        emb.gate.set()
        await sched.stop()


def test_a_short_request_does_not_wait_for_a_long_ones_run() -> None:
    """While the main thread computes a share of a request that needs more runs, a request that
    fits the express budget runs at once in the second thread, and its answer is not held back."""
    config = ServerConfig(max_batch_tokens=256, batch_size=32, warmup=False, express_tokens=64)
    beside, emb = asyncio.run(_short_beside_long(config, [text(999, 2), text(998, 3)], wait=30))
    assert beside
    assert sorted(emb.calls[0]) == sorted([text(999, 2), text(998, 3)])  # computed while the long run was held
    assert any(name.startswith("edge-embed-express") for name in emb.threads)


@pytest.mark.parametrize("express_tokens, short", [(0, [text(999, 2)]),  # off
                                                    (64, [text(999, 40), text(998, 40)])])  # over its budget
def test_no_express_run_when_off_or_over_its_budget(express_tokens: int, short: list[str]) -> None:
    config = ServerConfig(max_batch_tokens=256, batch_size=32, warmup=False, express_tokens=express_tokens)
    beside, emb = asyncio.run(_short_beside_long(config, short))
    assert not beside
    assert all(name.startswith("edge-embed-infer") for name in emb.threads)


def test_no_express_run_beside_a_request_that_fits_one_run() -> None:
    """Under steady load of small requests their texts share runs round-robin; none of them is
    long, so nothing runs beside them (two concurrent runs would only split the cores)."""
    config = ServerConfig(max_batch_tokens=256, batch_size=32, warmup=False, express_tokens=64)
    beside, emb = asyncio.run(_short_beside_long(config, [text(999, 2)], n_long=6))  # 6 x 40 = 240 tokens
    assert not beside
    assert all(name.startswith("edge-embed-infer") for name in emb.threads)
