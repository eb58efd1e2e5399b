"""The ASGI app: routes, authentication, body reading, and the pipeline of one request.

A request goes: read the body (size cap, deadline; an oversized body is drained so the
client can read its 413) -> decode JSON (depth and integer-size errors are 400s) ->
validate against ``schemas`` -> measure tokens in a worker thread -> the scheduler's
micro-batches -> the answer, rendered in a worker thread. Nothing CPU-heavy runs on the
event loop, so ``/health`` answers while a huge text is being embedded.

Deliberately does not: load more than one bundle, reduce dimensions (``dimensions`` must
equal the bundle's dim), or un-normalise vectors of a bundle whose manifest normalises
(``normalize=false`` is a 422 there). Every error is a JSON body, never a traceback.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from fastapi import FastAPI
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from ..embedder import Embedder
from ..errors import InputError
from ..pooling import l2_normalize
from .config import ServerConfig
from .errors import HTTPError, error_response
from .metrics import CONTENT_TYPE, Metrics
from .scheduler import QueueFull, Result, Scheduler
from .schemas import (
    EmbeddingsRequest,
    EmbeddingsResponse,
    EmbedRequest,
    EmbedResponse,
    ErrorOpenAI,
    ErrorTEI,
    Health,
    Info,
    parse,
)

__all__ = ["create_app", "read_body"]

log = logging.getLogger("edge_embed.server")
M = TypeVar("M", bound=BaseModel)
Handler = Callable[[Request], Awaitable[Response]]


# ---------------------------------------------------------------------------- request bodies
async def read_body(request: Request, config: ServerConfig) -> bytes:
    """The whole body, within ``max_body_bytes`` and ``body_timeout``.

    An oversized body is still read (and dropped) up to ``max_drain_bytes`` before the 413,
    because a client that is still sending when the server closes gets a connection reset
    instead of the answer, and retries. A body that does not arrive in time (a slow client,
    or a Content-Length larger than what is sent) is a 408 and the connection is closed.
    """
    limit, drain = config.max_body_bytes, max(config.max_drain_bytes, config.max_body_bytes)
    length = request.headers.get("content-length")
    declared = None
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise HTTPError(400, "Content-Length: not an integer", headers={"Connection": "close"}) from None
        if declared > drain:  # too big to drain: answer at once, the client may see a reset
            raise HTTPError(413, f"body: {declared} bytes, over the limit of {limit} (--max-body-bytes)",
                            headers={"Connection": "close"})

    chunks: list[bytes] = []
    size = 0

    async def receive_all() -> None:
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size <= limit:
                chunks.append(chunk)
            elif size > drain:
                return

    try:
        await asyncio.wait_for(receive_all(), config.body_timeout)
    except asyncio.TimeoutError:
        raise HTTPError(408, f"body: not received within {config.body_timeout:g} s (--body-timeout); "
                             f"got {size} of {declared if declared is not None else 'unknown'} bytes",
                        headers={"Connection": "close"}) from None
    if size > limit:
        shown = declared if declared is not None else f"over {limit}"
        raise HTTPError(413, f"body: {shown} bytes, over the limit of {limit} bytes (--max-body-bytes)",
                        headers={"Connection": "close"} if size > drain else None)
    return b"".join(chunks)


def decode_json(body: bytes) -> Any:
    if not body:
        raise HTTPError(400, "body: empty; send a JSON object")
    try:
        return json.loads(body)
    except RecursionError:
        raise HTTPError(400, "body: JSON nested too deeply; send a flat JSON object") from None
    except json.JSONDecodeError as e:
        raise HTTPError(400, f"body: not valid JSON ({e})") from None
    except UnicodeDecodeError as e:
        raise HTTPError(400, f"body: not valid JSON (not UTF-8: {e.reason} at byte {e.start})") from None
    except ValueError:  # int() refuses numbers of more than sys.get_int_max_str_digits() digits
        raise HTTPError(400, f"body: a number with more than {sys.get_int_max_str_digits()} digits; "
                             "send numbers of sensible size") from None


# ---------------------------------------------------------------------------- the service
class _Service:
    def __init__(self, embedder: Embedder, config: ServerConfig) -> None:
        config.check()
        self.embedder = embedder
        self.config = config
        self.metrics = Metrics()
        self.scheduler: Scheduler | None = None
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
        ok = hmac.compare_digest(hashlib.sha256(token.strip().encode("utf-8", "replace")).digest(), self._key)
        return ok and scheme.lower() == "bearer"

    def route(self, path: str, style: str, handler: Handler, public: bool = False) -> Handler:
        async def endpoint(request: Request) -> Response:
            t0 = time.perf_counter()
            self.metrics.inflight.inc()
            try:
                if not public and not self._authorized(request):
                    raise HTTPError(401, "Authorization: missing or wrong bearer API key", kind="authentication_error",
                                    headers={"WWW-Authenticate": "Bearer"})
                response = await handler(request)
            except HTTPError as e:
                response = error_response(e, style)
            except InputError as e:  # the runtime's verdict on a text (e.g. its text policy)
                response = error_response(HTTPError(422, str(e)), style)
            except ClientDisconnect:
                response = Response(status_code=499)  # nobody reads it; keeps the metrics honest
            except (KeyboardInterrupt, SystemExit, asyncio.CancelledError):
                raise
            except BaseException:  # noqa: BLE001 - a bug (or a pyo3 panic) must not leak a traceback
                log.exception("%s failed", path)
                response = error_response(HTTPError(500, "server: internal error; see the server log",
                                                    kind="server_error"), style)
            finally:
                self.metrics.inflight.dec()
            self.metrics.observe_request(path, response.status_code, time.perf_counter() - t0)
            return response

        endpoint.__name__ = handler.__name__
        endpoint.__doc__ = handler.__doc__
        return endpoint

    async def _parse(self, request: Request, model: type[M]) -> M:
        body = await read_body(request, self.config)
        data = await run_in_threadpool(decode_json, body)
        return parse(model, data, max_inputs=self.config.max_inputs)

    def _measure(self, texts: list[str], prompt: str | None, mode: str) -> tuple[list[int], list[int]]:
        """Tokens each text costs a micro-batch, and which texts are over max_length.

        In window mode a text costs all its tokens (its windows run in one micro-batch).
        """
        encs = self.embedder.tokenize(texts, prompt)
        over = [i for i, e in enumerate(encs) if e.overflowing]
        if mode == "window" and over:
            return self.embedder.token_count(texts, prompt), over
        return [len(e.ids) for e in encs], over

    async def _embed(self, texts: list[str], prompt: str | None, truncate: bool | None, key: str) -> Result:
        emb = self.embedder
        if prompt is not None and prompt not in emb.manifest.prompts:
            known = ", ".join(sorted(emb.manifest.prompts)) or "none"
            raise HTTPError(422, f"prompt_name: {prompt!r} is not in this bundle's prompts (known: {known})",
                            param="prompt_name")
        mode = {False: "error", True: "truncate", None: self.config.long_text}[truncate]
        weights, over = await run_in_threadpool(self._measure, texts, prompt, mode)
        if over and mode == "error":
            raise HTTPError(422, f"{key}[{over[0]}]: over max_length={emb.max_length} tokens ({len(over)} of "
                                 f"{len(texts)} texts are); shorten them or allow truncation", param=key)
        if self.scheduler is None:
            raise HTTPError(503, "server: not started", kind="server_error")
        try:
            vectors, tokens = await self.scheduler.submit(texts, prompt, weights, mode)
        except QueueFull:
            raise HTTPError(503, f"server: queue full ({self.config.queue_size} texts waiting, --queue-size); "
                                 "retry later", kind="server_error",
                            headers={"Retry-After": str(self.config.retry_after)}) from None
        self.metrics.texts.inc(len(texts))
        self.metrics.tokens.inc(int(tokens.sum()))
        self.metrics.truncated.inc(len(over) if mode == "truncate" else 0)
        return vectors, tokens

    # ---- routes
    async def openai_embeddings(self, request: Request) -> Response:
        """OpenAI-compatible embeddings (the official clients, LangChain's OpenAIEmbeddings, ...)."""
        req = await self._parse(request, EmbeddingsRequest)
        if req.dimensions is not None and req.dimensions != self.embedder.dim:
            raise HTTPError(400, f"dimensions: this model returns {self.embedder.dim}-d vectors and cannot "
                                 f"shorten them; send dimensions={self.embedder.dim} or omit it",
                            param="dimensions")
        vectors, tokens = await self._embed(req.input, None, req.truncate, "input")
        b64 = req.encoding_format == "base64"
        n = int(tokens.sum())

        def render() -> JSONResponse:
            items = [{"object": "embedding", "index": i,
                      "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") if b64 else v.tolist()}
                     for i, v in enumerate(vectors)]
            return JSONResponse({"object": "list", "data": items, "model": self.model_name,
                                 "usage": {"prompt_tokens": n, "total_tokens": n}})

        return await run_in_threadpool(render)

    async def tei_embed(self, request: Request) -> Response:
        """Text Embeddings Inference's /embed: a list of vectors."""
        req = await self._parse(request, EmbedRequest)
        if req.normalize is False and self.embedder.manifest.normalize:
            raise HTTPError(422, "normalize: this bundle's manifest normalizes vectors inside the model pipeline, "
                                 "so unnormalized vectors are not available; send normalize=true or omit it",
                            param="normalize")
        vectors, _ = await self._embed(req.inputs, req.prompt_name, req.truncate, "inputs")
        if req.normalize is not False and not self.embedder.manifest.normalize:
            vectors = l2_normalize(vectors)
        return await run_in_threadpool(lambda: JSONResponse(vectors.tolist()))

    async def health(self, request: Request) -> Response:
        """200 while the model worker runs (no API key needed: for probes)."""
        if self.scheduler is None or not self.scheduler.alive:
            raise HTTPError(503, "server: the model worker is not running", kind="server_error")
        return JSONResponse({"status": "ok"})

    async def info(self, request: Request) -> Response:
        """The bundle (no machine paths), versions and limits."""
        import onnxruntime
        import tokenizers

        from .. import __version__

        m = self.embedder.manifest
        limits = asdict(self.config)
        for private in ("api_key", "host", "port"):
            limits.pop(private)
        return JSONResponse(Info(
            model_id=self.model_name, source=_without_paths(m.source), dim=m.dim, max_length=m.max_length,
            pooling=m.pooling, normalize=m.normalize, prompts=m.prompts, quantization=_without_paths(m.quantization),
            format=m.format, digest=m.digest,
            versions={"edge_embed": __version__, "onnxruntime": onnxruntime.__version__,
                      "tokenizers": tokenizers.__version__, "python": sys.version.split()[0]},
            limits=limits, auth=self._key is not None,
        ).model_dump())

    async def metrics_text(self, request: Request) -> Response:
        """Prometheus text exposition."""
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)

    def begin_shutdown(self, grace: float) -> None:
        if self.scheduler is not None:
            self.scheduler.begin_shutdown(grace)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        self.scheduler = Scheduler(self.embedder, self.config, self.metrics)
        if self.config.warmup:
            await asyncio.get_running_loop().run_in_executor(self.scheduler.executor, self.scheduler.warm_up)
        self.scheduler.start()
        try:
            yield
        finally:
            await self.scheduler.stop()


def _without_paths(value: Any) -> Any:
    """Manifest facts less local paths (the build machine's directories): dict entries holding one are dropped."""
    def local(v: Any) -> bool:
        return isinstance(v, str) and (v.startswith(("/", "~", "\\")) or v[1:3] in (":\\", ":/"))

    if isinstance(value, dict):
        return {k: _without_paths(v) for k, v in value.items() if not local(v)}
    if isinstance(value, list):
        return [_without_paths(v) for v in value if not local(v)]
    return value


def _errors(style: str, *statuses: int) -> dict[int | str, dict[str, Any]]:
    model = ErrorTEI if style == "tei" else ErrorOpenAI
    return {s: {"model": model} for s in statuses}


def _body(model: type[BaseModel]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


# ---------------------------------------------------------------------------- the app
def create_app(embedder: Embedder, config: ServerConfig | None = None) -> FastAPI:
    """The ASGI app for one loaded bundle. The scheduler runs in the app's lifespan."""
    from .. import __version__

    svc = _Service(embedder, config or ServerConfig())
    app = FastAPI(title="edge-embed", version=__version__, lifespan=svc.lifespan, docs_url=None, redoc_url=None,
                  description=f"Sentence embeddings from the bundle {svc.model_name!r}.")
    openai_errors = _errors("openai", 400, 401, 408, 413, 422, 503)
    tei_errors = _errors("tei", 400, 401, 408, 413, 422, 503)
    embeddings = svc.route("/v1/embeddings", "openai", svc.openai_embeddings)
    for path in ("/v1/embeddings", "/embeddings"):
        app.add_api_route(path, embeddings, methods=["POST"], response_class=JSONResponse,
                          responses={200: {"model": EmbeddingsResponse}, **openai_errors},
                          openapi_extra=_body(EmbeddingsRequest), include_in_schema=path == "/v1/embeddings")
    app.add_api_route("/embed", svc.route("/embed", "tei", svc.tei_embed), methods=["POST"],
                      responses={200: {"model": EmbedResponse}, **tei_errors}, openapi_extra=_body(EmbedRequest))
    app.add_api_route("/health", svc.route("/health", "tei", svc.health, public=True), methods=["GET"],
                      responses={200: {"model": Health}, **_errors("tei", 503)})
    app.add_api_route("/info", svc.route("/info", "tei", svc.info), methods=["GET"],
                      responses={200: {"model": Info}, **_errors("tei", 401)})
    app.add_api_route("/metrics", svc.route("/metrics", "tei", svc.metrics_text), methods=["GET"],
                      responses={200: {"content": {"text/plain": {}}, "description": "Prometheus metrics"},
                                 **_errors("tei", 401)})

    async def http_error(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        msg = "no such route" if status == 404 else f"method {request.method} not allowed here"
        svc.metrics.observe_request("other", status, 0.0)
        return error_response(HTTPError(status, f"{request.url.path}: {msg}"), "tei")

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.state.service = svc
    return app
