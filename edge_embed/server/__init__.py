"""HTTP server: an OpenAI-compatible ``/v1/embeddings`` and a TEI-style ``/embed``.

Optional: needs the ``serve`` extra (FastAPI, pydantic, uvicorn, prometheus_client); the
CLI imports this package only for ``edge-embed serve``. Its parts:

- ``app``: routes, authentication, body reading, one request's pipeline
- ``schemas``: request/response models (validation and ``/openapi.json``)
- ``scheduler``: fair token-budget micro-batches across requests, one inference thread
- ``metrics``: Prometheus metrics (``/metrics``)
- ``protocol``: connection guards (header deadline, connection cap, JSON framing errors)
- ``config``, ``run``: the limits, uvicorn's settings and the shutdown sequence

Deliberately does not load more than one bundle or terminate TLS (put a reverse proxy in
front for that, and for per-client rate limits).
"""

from __future__ import annotations

try:  # every package the extra brings, so a missing one is named here and not deep in a submodule
    import fastapi  # noqa: F401
    import prometheus_client  # noqa: F401
    import pydantic  # noqa: F401
    import starlette  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised by the CLI test without the extra
    raise ImportError(
        f"the server needs the 'serve' extra ({e.name} is not installed); pip install 'edge-embed[serve]'"
    ) from e

from .app import create_app
from .config import ServerConfig, config_from_args
from .run import Server, run_serve, uvicorn_config

__all__ = ["Server", "ServerConfig", "config_from_args", "create_app", "run_serve", "uvicorn_config"]
