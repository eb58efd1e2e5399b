"""HTTP server: an OpenAI-compatible ``/v1/embeddings`` and a TEI-style ``/embed``.

Optional: needs the ``serve`` extra (starlette + uvicorn); the CLI imports this module
only for ``edge-embed serve``. Texts from concurrent requests are coalesced by one
background worker into a single ``Embedder.embed_detailed`` call per micro-batch (up to a
token budget), run in one worker thread so the event loop keeps accepting requests; each
request gets exactly its own vectors back, in order. There is no fixed batching delay: a
lone request runs at once, and only under steady load does the worker wait a moment
(``batch_wait_ms``) for the clients it just answered to send their next request.

Deliberately does not: load more than one bundle, reduce dimensions (``dimensions`` must
equal the bundle's dim), accept token-id arrays (they are another model's token ids), or
un-normalise vectors of a bundle whose manifest normalises (``normalize=false`` is a 422
there). Every error is a JSON body with a 4xx/5xx status, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import hashlib
import hmac
import json
import logging
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .embedder import Embedder
from .errors import InputError
from .pooling import l2_normalize

try:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route
except ImportError as e:  # pragma: no cover - exercised by the CLI test without the extra
    raise ImportError(
        f"the server needs the 'serve' extra ({e.name} is not installed); pip install 'edge-embed[serve]'"
    ) from e

__all__ = ["ServerConfig", "config_from_args", "create_app", "run_serve"]

log = logging.getLogger("edge_embed.server")


@dataclass(frozen=True)
class ServerConfig:
    """Limits and knobs of one server; the CLI's ``serve`` flags (and EDGE_EMBED_* env vars) set them."""

    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = None
    max_batch_tokens: int = 8192  # tokens coalesced into one inference call (a request is never split)
    max_inputs: int = 2048  # texts per request: OpenAI's own limit (LangChain sends up to 1000)
    max_body_bytes: int = 8 * 1024 * 1024
    queue_size: int = 8192  # texts waiting for the model; beyond it: 503 + Retry-After
    batch_size: int = 32  # rows per ONNX Runtime run inside a micro-batch
    retry_after: int = 1  # seconds, sent with 503
    graceful_timeout: float = 30.0  # seconds to finish in-flight requests after SIGTERM
    warmup: bool = True  # run the largest batch shape once at startup (see Batcher.warm_up)
    batch_wait_ms: float = 2.0  # see Batcher._gather; 0 turns it off

    def check(self) -> None:
        for name in ("max_batch_tokens", "max_inputs", "max_body_bytes", "queue_size", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"--{name.replace('_', '-')}: expected a positive integer, got {value!r}")
        if not 0 <= self.batch_wait_ms <= 1000:
            raise InputError(f"--batch-wait-ms: expected 0-1000, got {self.batch_wait_ms!r}")
        if not 0 <= self.port <= 65535:
            raise InputError(f"--port: expected 0-65535, got {self.port!r}")
        if self.api_key is not None and not self.api_key:
            raise InputError("--api-key: empty; pass a non-empty key or leave it unset")


# ---------------------------------------------------------------------------- errors
class HTTPError(Exception):
    """An answer other than 200, raised anywhere below a route and turned into JSON."""

    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error",
                 param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param
        self.headers = headers or {}


# TEI's error_type names, by status
_TEI_TYPES = {400: "Validation", 401: "Unauthorized", 404: "NotFound", 405: "Validation", 413: "Validation",
              422: "Validation", 500: "Backend", 503: "Overloaded"}


def _error_response(err: HTTPError, style: str) -> JSONResponse:
    if style == "tei":
        body: dict[str, Any] = {"error": err.message, "error_type": _TEI_TYPES.get(err.status, "Backend")}
    else:  # the shape OpenAI clients parse: error.message / type / param / code
        body = {"error": {"message": err.message, "type": err.kind, "param": err.param, "code": err.status}}
    return JSONResponse(body, status_code=err.status, headers=err.headers)


# ---------------------------------------------------------------------------- metrics
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_ROUTES = ("/v1/embeddings", "/embed", "/health", "/info", "/metrics")


class _Histogram:
    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)  # last: +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        i = 0
        while i < len(self.buckets) and value > self.buckets[i]:
            i += 1
        self.counts[i] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        out, cum = [], 0
        for bound, n in zip((*self.buckets, float("inf")), self.counts, strict=True):
            cum += n
            le = "+Inf" if bound == float("inf") else f"{bound:g}"
            out.append(f'{name}_bucket{{{labels}{sep}le="{le}"}} {cum}')
        lab = f"{{{labels}}}" if labels else ""
        out.append(f"{name}_sum{lab} {self.sum:.6f}")
        out.append(f"{name}_count{lab} {self.count}")
        return out


class Metrics:
    """Counters kept in plain Python (all updates happen on the event loop thread) and
    written in the Prometheus text exposition format, so no client library is needed."""

    def __init__(self) -> None:
        self.requests: collections.Counter[tuple[str, int]] = collections.Counter()
        self.errors: collections.Counter[tuple[str, int]] = collections.Counter()
        self.latency = {r: _Histogram(_LATENCY_BUCKETS) for r in _ROUTES}
        self.texts = 0
        self.tokens = 0
        self.truncated = 0
        self.batches = _Histogram(_BATCH_BUCKETS)
        self.batch_tokens = _Histogram((64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536))
        self.inference = _Histogram(_LATENCY_BUCKETS)
        self.inflight = 0

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        route = route if route in self.latency else "other"
        self.requests[(route, status)] += 1
        if status >= 400:
            self.errors[(route, status)] += 1
        if route in self.latency:
            self.latency[route].observe(seconds)

    def render(self, queue_texts: int, queue_requests: int) -> str:
        out: list[str] = []

        def head(name: str, kind: str, help_: str) -> None:
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {kind}")

        head("edge_embed_requests_total", "counter", "HTTP requests answered, by route and status code.")
        for (route, status), n in sorted(self.requests.items()):
            out.append(f'edge_embed_requests_total{{route="{route}",code="{status}"}} {n}')
        head("edge_embed_request_errors_total", "counter", "HTTP requests answered with a status >= 400.")
        for (route, status), n in sorted(self.errors.items()):
            out.append(f'edge_embed_request_errors_total{{route="{route}",code="{status}"}} {n}')
        head("edge_embed_request_duration_seconds", "histogram", "Time from request start to response, by route.")
        for route, h in self.latency.items():
            if h.count:
                out.extend(h.lines("edge_embed_request_duration_seconds", f'route="{route}"'))
        head("edge_embed_texts_total", "counter", "Texts embedded.")
        out.append(f"edge_embed_texts_total {self.texts}")
        head("edge_embed_tokens_total", "counter",
             "Tokens fed to the model (after truncation, special tokens included).")
        out.append(f"edge_embed_tokens_total {self.tokens}")
        head("edge_embed_truncated_texts_total", "counter", "Texts cut at the bundle's max_length.")
        out.append(f"edge_embed_truncated_texts_total {self.truncated}")
        head("edge_embed_batch_size", "histogram", "Texts per micro-batch (one inference call).")
        out.extend(self.batches.lines("edge_embed_batch_size"))
        head("edge_embed_batch_tokens", "histogram", "Tokens per micro-batch.")
        out.extend(self.batch_tokens.lines("edge_embed_batch_tokens"))
        head("edge_embed_inference_seconds", "histogram", "Wall time of one micro-batch in the model.")
        out.extend(self.inference.lines("edge_embed_inference_seconds"))
        head("edge_embed_queue_depth", "gauge", "Texts waiting for the model (not yet in a micro-batch).")
        out.append(f"edge_embed_queue_depth {queue_texts}")
        head("edge_embed_queue_requests", "gauge", "Requests waiting for the model.")
        out.append(f"edge_embed_queue_requests {queue_requests}")
        head("edge_embed_inflight_requests", "gauge", "Requests being handled.")
        out.append(f"edge_embed_inflight_requests {self.inflight}")
        return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------- batching
@dataclass
class _Job:
    texts: list[str]
    prompt: str | None
    weight: int  # tokens this job adds to a micro-batch
    future: asyncio.Future[tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]]


class QueueFull(Exception):
    pass


class Batcher:
    """One background task coalescing queued jobs into micro-batches.

    There is no artificial wait: while the model runs one micro-batch, new requests queue
    up, and the next micro-batch takes everything queued (up to ``max_batch_tokens``). A
    lone request is therefore answered at once, and under load batches grow by themselves.
    """

    def __init__(self, embedder: Embedder, config: ServerConfig, metrics: Metrics) -> None:
        self.embedder = embedder
        self.config = config
        self.metrics = metrics
        self.jobs: collections.deque[_Job] = collections.deque()
        self.queued_texts = 0
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edge-embed-infer")
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._last_texts = 0

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    def warm_up(self) -> None:
        """Run one full-size batch (batch_size x max_length tokens) before serving.

        ONNX Runtime's CPU arena grows to the largest shape it has seen and keeps it; doing
        the largest shape first makes the server's memory flat from the first request on
        instead of creeping up as longer batches happen to arrive.
        """
        long_text = "edge " * (2 * self.embedder.max_length)
        self.embedder.embed_detailed([long_text] * self.config.batch_size, batch_size=self.config.batch_size)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="edge-embed-batcher")

    async def stop(self) -> None:
        """Finish what is queued, then stop the task and the thread."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True)

    async def submit(self, texts: list[str], prompt: str | None,
                     weight: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        if self._closing or not self.alive:
            raise HTTPError(503, "server: shutting down; retry on another instance", kind="server_error",
                            headers={"Retry-After": str(self.config.retry_after)})
        if self.queued_texts + len(texts) > self.config.queue_size:
            raise QueueFull()
        fut: asyncio.Future[tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]] = (
            asyncio.get_running_loop().create_future()
        )
        self.jobs.append(_Job(texts, prompt, weight, fut))
        self.queued_texts += len(texts)
        self._wake.set()
        return await fut

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

    def _take(self) -> list[_Job]:
        batch: list[_Job] = []
        budget = self.config.max_batch_tokens
        used = 0
        while self.jobs:
            job = self.jobs[0]
            if batch and used + job.weight > budget:
                break
            self.jobs.popleft()
            self.queued_texts -= len(job.texts)
            if job.future.done():  # the client went away while queued
                continue
            batch.append(job)
            used += job.weight
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.jobs:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._gather()
            batch = self._take()
            if not batch:
                continue
            self._last_texts = sum(len(j.texts) for j in batch)
            t0 = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self._infer, batch)
            except Exception as e:  # noqa: BLE001 - reported to each waiting request as a 500
                log.exception("micro-batch failed")
                results = [e] * len(batch)
            self.metrics.inference.observe(time.perf_counter() - t0)
            n_texts = sum(len(j.texts) for j in batch)
            self.metrics.batches.observe(n_texts)
            self.metrics.batch_tokens.observe(sum(j.weight for j in batch))
            for job, res in zip(batch, results, strict=True):
                if job.future.done():
                    continue
                if isinstance(res, BaseException):
                    job.future.set_exception(res)
                else:
                    job.future.set_result(res)

    def _infer(self, batch: list[_Job]) -> list[Any]:
        """Runs in the worker thread: one embed_detailed call per prompt in the batch."""
        groups: dict[str | None, list[_Job]] = {}
        for job in batch:
            groups.setdefault(job.prompt, []).append(job)
        out: dict[int, Any] = {}
        for prompt, jobs in groups.items():
            texts = [t for j in jobs for t in j.texts]
            try:
                res = self.embedder.embed_detailed(texts, prompt=prompt, batch_size=self.config.batch_size)
            except Exception:  # noqa: BLE001 - isolate the job that fails, answer the others
                if len(jobs) == 1:
                    raise
                for j in jobs:
                    try:
                        r = self.embedder.embed_detailed(j.texts, prompt=prompt, batch_size=self.config.batch_size)
                        out[id(j)] = (r.vectors, r.tokens)
                    except Exception as e:  # noqa: BLE001
                        out[id(j)] = e
                continue
            start = 0
            for j in jobs:
                end = start + len(j.texts)
                out[id(j)] = (res.vectors[start:end], res.tokens[start:end])
                start = end
        return [out[id(j)] for j in batch]


# ---------------------------------------------------------------------------- request parsing
async def _read_json(request: Request, limit: int) -> Any:
    length = request.headers.get("content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise HTTPError(400, "Content-Length: not an integer") from None
        if declared > limit:
            raise HTTPError(413, f"body: {declared} bytes, over the limit of {limit} (--max-body-bytes)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPError(413, f"body: over the limit of {limit} bytes (--max-body-bytes)")
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body:
        raise HTTPError(400, "body: empty; send a JSON object")
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HTTPError(400, f"body: not valid JSON ({e})") from None


def _field_bool(data: dict[str, Any], key: str, default: bool) -> bool:
    value = data.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise HTTPError(422, f"{key}: expected true or false, got {value!r}", param=key)
    return value


def _texts(value: Any, key: str, max_inputs: int) -> list[str]:
    """A string or a non-empty list of non-empty strings; token-id arrays are a 400."""
    if isinstance(value, str):
        items: list[Any] = [value]
    elif isinstance(value, list):
        items = value
    elif value is None:
        raise HTTPError(422, f"{key}: missing; send a string or a list of strings", param=key)
    else:
        raise HTTPError(422, f"{key}: expected a string or a list of strings, got {type(value).__name__}", param=key)
    if not items:
        raise HTTPError(422, f"{key}: empty list; send at least one text", param=key)
    if len(items) > max_inputs:
        raise HTTPError(413, f"{key}: {len(items)} texts, over the limit of {max_inputs} per request "
                             "(--max-inputs); split the request", param=key)
    if all(isinstance(x, int) and not isinstance(x, bool) for x in items) or all(
        isinstance(x, list) for x in items
    ):
        raise HTTPError(400, f"{key}: token-id arrays are not supported (they are another model's token ids); "
                             "send text (LangChain's OpenAIEmbeddings: set check_embedding_ctx_length=False)",
                        param=key)
    for i, t in enumerate(items):
        if not isinstance(t, str):
            raise HTTPError(422, f"{key}[{i}]: expected a string, got {type(t).__name__}", param=key)
        if not t.strip():
            raise HTTPError(422, f"{key}[{i}]: empty text; send at least one non-blank character", param=key)
    return items


# ---------------------------------------------------------------------------- the app
class _Service:
    def __init__(self, embedder: Embedder, config: ServerConfig) -> None:
        config.check()
        self.embedder = embedder
        self.config = config
        self.metrics = Metrics()
        self.batcher: Batcher | None = None
        self.model_name = embedder.manifest.name or Path(str(embedder.path)).name
        # digests, so the comparison takes the same time whatever the length of the guess
        self._key = hashlib.sha256(config.api_key.encode("utf-8")).digest() if config.api_key else None

    # ---- plumbing shared by every route
    def _authorized(self, request: Request) -> bool:
        if self._key is None:
            return True
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        # compare even on a wrong scheme, so timing does not tell the two failures apart
        ok = hmac.compare_digest(hashlib.sha256(token.strip().encode("utf-8")).digest(), self._key)
        return ok and scheme.lower() == "bearer"

    def route(self, path: str, style: str, handler: Callable[[Request], Awaitable[Response]],
              public: bool = False) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            t0 = time.perf_counter()
            self.metrics.inflight += 1
            try:
                if not public and not self._authorized(request):
                    raise HTTPError(401, "Authorization: missing or wrong bearer API key", kind="authentication_error",
                                    headers={"WWW-Authenticate": "Bearer"})
                response = await handler(request)
            except HTTPError as e:
                response = _error_response(e, style)
            except Exception:  # noqa: BLE001 - a bug must not leak a traceback to the client
                log.exception("%s failed", path)
                response = _error_response(HTTPError(500, "server: internal error; see the server log",
                                                     kind="server_error"), style)
            finally:
                self.metrics.inflight -= 1
            self.metrics.observe_request(path, response.status_code, time.perf_counter() - t0)
            return response

        return endpoint

    async def _embed(self, texts: list[str], prompt: str | None, truncate: bool,
                     style: str) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        emb = self.embedder
        if prompt is not None and prompt not in emb.manifest.prompts:
            known = ", ".join(sorted(emb.manifest.prompts)) or "none"
            raise HTTPError(422, f"prompt_name: {prompt!r} is not in this bundle's prompts (known: {known})",
                            param="prompt_name")
        # untruncated counts: the no-truncation check, and the job's weight in a micro-batch
        counts = emb.token_count(texts, prompt)
        if not truncate:
            over = [i for i, c in enumerate(counts) if c > emb.max_length]
            if over:
                i = over[0]
                key = "inputs" if style == "tei" else "input"
                raise HTTPError(422, f"{key}[{i}]: {counts[i]} tokens, over max_length={emb.max_length} "
                                     f"({len(over)} of {len(texts)} texts are); shorten them or allow truncation",
                                param=key)
        weight = sum(min(c, emb.max_length) for c in counts)
        if self.batcher is None:
            raise HTTPError(503, "server: not started", kind="server_error")
        try:
            vectors, tokens = await self.batcher.submit(texts, prompt, weight)
        except QueueFull:
            raise HTTPError(503, f"server: queue full ({self.config.queue_size} texts waiting, --queue-size); "
                                 "retry later", kind="server_error",
                            headers={"Retry-After": str(self.config.retry_after)}) from None
        self.metrics.texts += len(texts)
        self.metrics.tokens += int(tokens.sum())
        self.metrics.truncated += sum(1 for c in counts if c > emb.max_length)
        return vectors, tokens

    async def _object(self, request: Request) -> dict[str, Any]:
        data = await _read_json(request, self.config.max_body_bytes)
        if not isinstance(data, dict):
            raise HTTPError(400, f"body: expected a JSON object, got {type(data).__name__}")
        return data

    # ---- routes
    async def openai_embeddings(self, request: Request) -> Response:
        data = await self._object(request)
        texts = _texts(data.get("input"), "input", self.config.max_inputs)
        fmt = data.get("encoding_format") or "float"
        if fmt not in ("float", "base64"):
            raise HTTPError(422, f"encoding_format: expected 'float' or 'base64', got {fmt!r}", param="encoding_format")
        dims = data.get("dimensions")
        if dims is not None and dims != self.embedder.dim:
            raise HTTPError(400, f"dimensions: this model returns {self.embedder.dim}-d vectors and cannot "
                                 f"shorten them; send dimensions={self.embedder.dim} or omit it",
                            param="dimensions")
        model = data.get("model")
        if model is not None and not isinstance(model, str):
            raise HTTPError(422, f"model: expected a string, got {type(model).__name__}", param="model")
        truncate = _field_bool(data, "truncate", True)  # an extension; OpenAI has no such field
        vectors, tokens = await self._embed(texts, None, truncate, "openai")
        items: list[dict[str, Any]] = []
        for i, v in enumerate(vectors):
            emb: Any = (base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") if fmt == "base64"
                        else v.tolist())
            items.append({"object": "embedding", "index": i, "embedding": emb})
        n = int(tokens.sum())
        return JSONResponse({"object": "list", "data": items, "model": self.model_name,
                             "usage": {"prompt_tokens": n, "total_tokens": n}})

    async def tei_embed(self, request: Request) -> Response:
        data = await self._object(request)
        texts = _texts(data.get("inputs"), "inputs", self.config.max_inputs)
        normalize = _field_bool(data, "normalize", True)
        truncate = _field_bool(data, "truncate", True)
        direction = data.get("truncation_direction", "right")
        if direction not in ("right", "Right", None):
            raise HTTPError(422, f"truncation_direction: only 'right' is supported, got {direction!r}",
                            param="truncation_direction")
        prompt = data.get("prompt_name")
        if prompt is not None and not isinstance(prompt, str):
            raise HTTPError(422, f"prompt_name: expected a string, got {type(prompt).__name__}", param="prompt_name")
        if not normalize and self.embedder.manifest.normalize:
            raise HTTPError(422, "normalize: this bundle's manifest normalizes vectors inside the model pipeline, "
                                 "so unnormalized vectors are not available; send normalize=true or omit it",
                            param="normalize")
        vectors, _ = await self._embed(texts, prompt, truncate, "tei")
        if normalize and not self.embedder.manifest.normalize:
            vectors = l2_normalize(vectors)
        return JSONResponse(vectors.tolist())

    async def health(self, request: Request) -> Response:
        if self.batcher is None or not self.batcher.alive:
            raise HTTPError(503, "server: the model worker is not running", kind="server_error")
        return JSONResponse({"status": "ok"})

    async def info(self, request: Request) -> Response:
        import onnxruntime
        import tokenizers

        from . import __version__

        m = self.embedder.manifest
        limits = asdict(self.config)
        limits.pop("api_key")
        limits.pop("host")
        limits.pop("port")
        return JSONResponse({
            "model_id": self.model_name,
            "source": m.source,
            "dim": m.dim,
            "max_length": m.max_length,
            "pooling": m.pooling,
            "normalize": m.normalize,
            "prompts": m.prompts,
            "quantization": m.quantization,
            "format": m.format,
            "versions": {"edge_embed": __version__, "onnxruntime": onnxruntime.__version__,
                         "tokenizers": tokenizers.__version__, "python": sys.version.split()[0]},
            "limits": limits,
            "auth": self._key is not None,
        })

    async def metrics_text(self, request: Request) -> Response:
        b = self.batcher
        text = self.metrics.render(b.queued_texts if b else 0, len(b.jobs) if b else 0)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.batcher = Batcher(self.embedder, self.config, self.metrics)
        if self.config.warmup:
            await asyncio.get_running_loop().run_in_executor(self.batcher._executor, self.batcher.warm_up)
        self.batcher.start()
        try:
            yield
        finally:
            await self.batcher.stop()


def create_app(embedder: Embedder, config: ServerConfig | None = None) -> Starlette:
    """The ASGI app for one loaded bundle. The micro-batch worker runs in the app's lifespan."""
    svc = _Service(embedder, config or ServerConfig())
    routes = [
        Route("/v1/embeddings", svc.route("/v1/embeddings", "openai", svc.openai_embeddings), methods=["POST"]),
        Route("/embeddings", svc.route("/v1/embeddings", "openai", svc.openai_embeddings), methods=["POST"]),
        Route("/embed", svc.route("/embed", "tei", svc.tei_embed), methods=["POST"]),
        Route("/health", svc.route("/health", "tei", svc.health, public=True), methods=["GET"]),
        Route("/info", svc.route("/info", "tei", svc.info), methods=["GET"]),
        Route("/metrics", svc.route("/metrics", "tei", svc.metrics_text), methods=["GET"]),
    ]

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        msg = "no such route" if status == 404 else f"method {request.method} not allowed here"
        svc.metrics.observe_request("other", status, 0.0)
        return _error_response(HTTPError(status, f"{request.url.path}: {msg}"), "tei")

    app = Starlette(routes=routes, lifespan=svc.lifespan, exception_handlers={404: not_found, 405: not_found})
    app.state.service = svc
    return app


# ---------------------------------------------------------------------------- running
def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """ServerConfig from the parsed ``edge-embed serve`` flags (env var defaults applied by the CLI)."""
    config = ServerConfig(
        host=args.host, port=args.port, api_key=args.api_key or None,
        max_batch_tokens=args.max_batch_tokens, max_inputs=args.max_inputs, max_body_bytes=args.max_body_bytes,
        queue_size=args.queue_size, batch_size=args.batch_size, warmup=args.warmup,
        batch_wait_ms=args.batch_wait_ms,
    )
    config.check()
    return config


def _bind(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(2048)
    except OSError as e:
        raise InputError(f"--host/--port: cannot listen on {host}:{port} ({e.strerror or e})") from None
    sock.set_inheritable(True)
    return sock


def run_serve(args: argparse.Namespace) -> int:
    """Load the bundle, bind, serve until SIGINT/SIGTERM (in-flight requests finish first)."""
    import uvicorn

    config = config_from_args(args)
    model = args.model
    if not model:
        raise InputError("serve: no bundle; pass -m BUNDLE or set EDGE_EMBED_MODEL")
    level = args.log_level
    logging.basicConfig(level=level.upper(), format="%(levelname)s %(name)s: %(message)s")
    embedder = Embedder.load(model, threads=args.threads, model_format=args.model_format)
    app = create_app(embedder, config)
    sock = _bind(config.host, config.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    name = embedder.manifest.name or model
    print(f"edge-embed: serving {name} on http://{shown}:{port}", file=sys.stderr, flush=True)
    if config.host not in ("127.0.0.1", "localhost", "::1") and config.api_key is None:
        log.warning("listening on %s without --api-key: anyone who can reach it can use it", config.host)
    server = uvicorn.Server(uvicorn.Config(
        app, log_level=level, access_log=False, timeout_graceful_shutdown=int(config.graceful_timeout),
        lifespan="on", server_header=False,
    ))
    server.run(sockets=[sock])
    return 0
