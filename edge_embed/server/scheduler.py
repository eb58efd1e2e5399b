"""Scheduler: fair micro-batches of one ONNX Runtime run each, over every queued request.

Requests are split: each micro-batch (at most ``batch_size`` texts and ``max_batch_tokens``
tokens: one ``Embedder.embed_detailed`` call per prompt, in one inference thread) takes
texts round-robin across the queued requests, one text from each in turn. A 1-text
request arriving behind a 512-text one therefore waits for the micro-batch being computed
and rides in the next, instead of waiting for all 512 texts; the requests a micro-batch
completes run first, in a run of their own, so the short request's answer does not wait
for the long one's share. Under load, micro-batches fill up with texts of many requests.
A request's texts are handed out longest first, so a micro-batch holds texts of similar
length (little padding), and each request gets exactly its own vectors back, in its
order, once all its texts are done.

A request small enough for one micro-batch of ``express_tokens`` padded tokens that arrives
while the worker is computing a share of a request too big for one run does not wait for
that run at all: it runs at once in a second inference thread (the express lane), beside
the long run. ONNX Runtime sessions take concurrent runs; the long request loses the few
milliseconds the short run costs.

There is no fixed batching delay: a lone request runs at once, and only under steady load
does the worker wait a moment (``batch_wait_ms``) for the clients it just answered to send
their next request.

Deliberately does not tokenize on the event loop (the caller measures texts in a thread
before ``submit``), interrupt a running micro-batch, or retry a failed one beyond
isolating the request that made it fail.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from ..embedder import Embedder
from .config import ServerConfig
from .errors import HTTPError
from .metrics import Metrics

__all__ = ["QueueFull", "Result", "Scheduler"]

log = logging.getLogger("edge_embed.server")

Result = tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]


class QueueFull(Exception):
    pass


@dataclass(eq=False)
class _Job:
    """One request: its texts, the tokens each costs a micro-batch, and what is done so far."""

    texts: list[str]
    prompt: str | None
    weights: list[int]
    long_text: str  # Embedder.embed_detailed's long_text: "truncate" or "window" ("error" is checked before)
    future: asyncio.Future[Result]
    vectors: npt.NDArray[np.float32]
    tokens: npt.NDArray[np.int64] = field(init=False)
    order: list[int] = field(init=False)  # the order texts are handed out: longest first
    next: int = 0  # texts handed to micro-batches so far
    left: int = field(init=False)  # texts not yet embedded
    # set by Scheduler.submit: the widest row it puts in a run (capped at max_length), the window-mode
    # tokens beyond that, and whether it is too big for one micro-batch on its own
    width: int = 0
    extra: int = 0
    big: bool = False

    def __post_init__(self) -> None:
        self.tokens = np.zeros(len(self.texts), dtype=np.int64)
        self.order = sorted(range(len(self.texts)), key=lambda i: -self.weights[i])
        self.left = len(self.texts)

    @property
    def waiting(self) -> int:
        return len(self.texts) - self.next


_Piece = tuple[_Job, list[int]]  # a job's texts (indices) inside one micro-batch


class Scheduler:
    """One background task cutting queued requests into fair micro-batches for one inference thread."""

    def __init__(self, embedder: Embedder, config: ServerConfig, metrics: Metrics) -> None:
        self.embedder = embedder
        self.config = config
        self.metrics = metrics
        self.jobs: collections.deque[_Job] = collections.deque()  # requests with texts not yet handed out
        self.queued_texts = 0  # texts not yet in a micro-batch
        self._unfinished: set[_Job] = set()  # queued or partly computed
        self._wake = asyncio.Event()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edge-embed-infer")
        self.express = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edge-embed-express")
        self._express_task: asyncio.Task[None] | None = None
        self._main_long = False  # the worker is computing a share of a request too big for one run
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False  # stop(): finish the queue, then end the task
        self._refusing = False  # after the shutdown cut: new requests get 503
        self._last_texts = 0
        metrics.watch_queue(lambda: self.queued_texts, lambda: len(self.jobs))

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    def warm_up(self) -> None:
        """Run the largest micro-batch the budgets allow (max_length-token texts) before serving.

        ONNX Runtime's CPU arena grows to the largest shape it has seen and keeps it; doing
        the largest shape first makes the server's memory flat from the first request on
        instead of creeping up as longer batches happen to arrive. Within the token budget,
        the widest shape (max_length) is the largest: attention grows with width squared.
        """
        limit = self.embedder.max_length
        rows = max(1, min(self.config.batch_size, self.config.max_batch_tokens // limit))
        self.embedder.embed_detailed(["edge " * (2 * limit)] * rows, batch_size=rows)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run(), name="edge-embed-scheduler")

    def begin_shutdown(self, grace: float) -> None:
        """Stop taking requests; what is not done ``grace`` seconds from now gets a 503 + Retry-After.

        Safe to call from any thread (a signal handler included). The cut comes a little before
        ``grace`` so the 503s are written before the HTTP server's own cap closes connections.
        """
        loop = self._loop
        if loop is None or loop.is_closed():
            return

        def begin() -> None:  # requests already accepted may still come in, until the cut
            loop.call_later(max(0.0, grace - min(1.0, grace / 2)), self._cut)

        loop.call_soon_threadsafe(begin)

    def _cut(self) -> None:
        self._refusing = True
        err = HTTPError(503, "server: shutting down before this request was done; retry (on another instance)",
                        kind="server_error", headers={"Retry-After": str(self.config.retry_after)})
        cut = 0
        for job in list(self._unfinished):
            if not job.future.done():
                job.future.set_exception(err)
                cut += 1
        self._unfinished.clear()
        self.jobs.clear()
        self.queued_texts = 0
        if cut:
            log.warning("shutdown: %d requests not done in time were answered 503", cut)

    async def stop(self) -> None:
        """Finish what is queued, then stop the task and the thread."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._express_task is not None and not self._express_task.done():
            with contextlib.suppress(asyncio.CancelledError):
                await self._express_task
        self.executor.shutdown(wait=True)
        self.express.shutdown(wait=True)

    async def submit(self, texts: list[str], prompt: str | None, weights: list[int],
                     long_text: str = "truncate") -> Result:
        """Queue one request's texts (``weights``: tokens per text); its vectors and tokens, in order."""
        if self._closing or self._refusing or not self.alive:
            raise HTTPError(503, "server: shutting down; retry on another instance", kind="server_error",
                            headers={"Retry-After": str(self.config.retry_after)})
        if self.queued_texts + len(texts) > self.config.queue_size:
            raise QueueFull()
        loop = asyncio.get_running_loop()
        job = _Job(texts, prompt, weights, "window" if long_text == "window" else "truncate", loop.create_future(),
                   np.empty((len(texts), self.embedder.dim), dtype=np.float32))
        limit = self.embedder.max_length
        job.width = min(max(weights, default=0), limit)
        job.extra = sum(max(0, w - limit) for w in weights)
        job.big = (len(texts) > self.config.batch_size
                   or len(texts) * job.width + job.extra > self.config.max_batch_tokens)
        self.jobs.append(job)
        self._unfinished.add(job)
        self.queued_texts += len(texts)
        self._wake.set()
        self._start_express()
        try:
            return await job.future
        finally:
            self._forget(job)

    def _forget(self, job: _Job) -> None:
        """Drop a job that is answered or whose caller went away (cancelled)."""
        self._unfinished.discard(job)
        if job.waiting and job in self.jobs:
            self.jobs.remove(job)
            self.queued_texts -= job.waiting
            job.next = len(job.texts)

    async def _gather(self) -> None:
        """Under steady load, give the clients just answered a moment to send their next request.

        Without it the worker, free again, takes only the first few requests to arrive and
        alternates big and small micro-batches. It waits (at most ``batch_wait_ms``) only while
        fewer texts are queued than the previous micro-batch held, so a lone request never waits.
        """
        wait = self.config.batch_wait_ms / 1000
        if wait <= 0 or self._closing or self.queued_texts >= self._last_texts:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while self.queued_texts < self._last_texts and not self._closing:
            left = deadline - loop.time()
            if left <= 0:
                return
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), left)

    def _take(self) -> list[_Piece]:
        """The next micro-batch: one text from each queued request in turn, up to the budgets.

        The token budget counts padded tokens (rows x the longest text, plus the extra windows
        of a window-mode text): what one ONNX Runtime run computes, so its time (the most a
        short request waits behind a long one) is bounded whatever the mix of lengths.
        The first request served moves to the back, so no request is always first.
        """
        budget, rows, limit = self.config.max_batch_tokens, self.config.batch_size, self.embedder.max_length
        width = extra = 0
        picked: dict[_Job, list[int]] = {}
        n = 0
        full = False
        while not full and self.jobs:
            progressed = False
            for job in self.jobs:
                if not job.waiting or job.future.done():
                    continue
                i = job.order[job.next]
                w = job.weights[i]
                wider, more = max(width, min(w, limit)), extra + max(0, w - limit)
                if n and (n == rows or (n + 1) * wider + more > budget):
                    full = True
                    break
                picked.setdefault(job, []).append(i)
                job.next += 1
                width, extra = wider, more
                n += 1
                progressed = True
            if not progressed:
                break
        if self.jobs and self.jobs[0] in picked:
            self.jobs.rotate(-1)
        for job in [j for j in self.jobs if not j.waiting]:
            self.jobs.remove(job)
        self.queued_texts -= n
        return list(picked.items())

    @property
    def _express_open(self) -> bool:
        """The main thread computes a share of a big request, and the lane is on and taking work."""
        return self._main_long and bool(self.config.express_tokens) and not self._closing and not self._refusing

    def _start_express(self) -> None:
        """Run the small requests that wait behind a long one's run in the express lane, now."""
        if self._express_open and (self._express_task is None or self._express_task.done()):
            pieces = self._take_small()
            if pieces:
                self._express_task = asyncio.get_running_loop().create_task(self._express_run(pieces))

    def _take_small(self) -> list[_Piece]:
        """Whole requests not yet started that fit, together, in one express micro-batch."""
        budget = min(self.config.express_tokens, self.config.max_batch_tokens)
        rows = self.config.batch_size
        width = extra = n = 0
        picked: list[_Piece] = []
        for job in self.jobs:
            if job.next or job.future.done():
                continue
            wider, more = max(width, job.width), extra + job.extra
            if n + len(job.texts) > rows or (n + len(job.texts)) * wider + more > budget:
                continue
            picked.append((job, list(job.order)))
            width, extra, n = wider, more, n + len(job.texts)
        for job, idx in picked:
            job.next = len(idx)
            self.jobs.remove(job)
        self.queued_texts -= n
        return picked

    async def _express_run(self, pieces: list[_Piece]) -> None:
        while pieces:
            await self._compute(pieces, self.express, lane="express")
            pieces = self._take_small() if self._express_open else []

    async def _run(self) -> None:
        while True:
            if not self.jobs:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._gather()
            pieces = self._take()
            if not pieces:
                continue
            self._last_texts = sum(len(idx) for _, idx in pieces)
            # the requests this micro-batch completes run first, in a run of their own, and are
            # answered before the rest: a short request does not wait for a long one's texts
            finishing = [p for p in pieces if not p[0].waiting]
            rest = [p for p in pieces if p[0].waiting]
            for run in ([finishing, rest] if finishing and rest else [pieces]):
                self._main_long = any(job.big for job, _ in run)
                self._start_express()  # small requests already queued need not wait for this run
                try:
                    await self._compute(run)
                finally:
                    self._main_long = False

    async def _compute(self, pieces: list[_Piece], executor: ThreadPoolExecutor | None = None,
                       lane: str = "main") -> None:
        """One inference call in an inference thread; each request's share of it delivered."""
        n_texts = sum(len(idx) for _, idx in pieces)
        t0 = time.perf_counter()
        try:
            results = await asyncio.get_running_loop().run_in_executor(executor or self.executor, self._infer, pieces)
        except (KeyboardInterrupt, SystemExit, asyncio.CancelledError):
            raise
        except BaseException as e:  # noqa: BLE001 - a 500 for each waiting request (pyo3 panics included);
            log.exception("micro-batch failed")  # the scheduler itself must outlive it
            results = [e] * len(pieces)
        took = time.perf_counter() - t0
        self.metrics.inference.observe(took)
        self.metrics.batch_size.observe(n_texts)
        self.metrics.batch_requests.observe(len(pieces))
        self.metrics.batch_tokens.observe(sum(job.weights[i] for job, idx in pieces for i in idx))
        log.debug("micro-batch (%s): %d texts of %d requests (%s) in %.3f s", lane, n_texts, len(pieces),
                  ",".join(str(len(idx)) for _, idx in pieces), took)
        for (job, idx), res in zip(pieces, results, strict=True):
            if job.future.done():
                continue
            if isinstance(res, BaseException):
                job.future.set_exception(res)
                continue
            job.vectors[idx], job.tokens[idx] = res
            job.left -= len(idx)
            if not job.left:
                job.future.set_result((job.vectors, job.tokens))

    def _embed(self, texts: list[str], key: tuple[str | None, str]) -> Result:
        prompt, long_text = key
        res = self.embedder.embed_detailed(texts, prompt=prompt, batch_size=self.config.batch_size,
                                           long_text=long_text, max_batch_tokens=self.config.max_batch_tokens)
        return res.vectors, res.tokens

    def _infer(self, pieces: list[_Piece]) -> list[Any]:
        """Runs in the inference thread: one embed_detailed call per (prompt, long_text) in the micro-batch."""
        groups: dict[tuple[str | None, str], list[_Piece]] = {}
        for piece in pieces:
            groups.setdefault((piece[0].prompt, piece[0].long_text), []).append(piece)
        out: dict[int, Any] = {}
        for key, group in groups.items():
            texts = [job.texts[i] for job, idx in group for i in idx]
            try:
                vectors, tokens = self._embed(texts, key)
            except Exception:  # noqa: BLE001 - isolate the request that fails, answer the others
                if len(group) == 1:
                    raise
                for job, idx in group:
                    try:
                        out[id(job)] = self._embed([job.texts[i] for i in idx], key)
                    except Exception as err:  # noqa: BLE001
                        out[id(job)] = err
                continue
            at = 0
            for job, idx in group:
                out[id(job)] = (vectors[at:at + len(idx)], tokens[at:at + len(idx)])
                at += len(idx)
        return [out[id(job)] for job, _ in pieces]
