"""Running the app: binding, uvicorn's settings, and the shutdown sequence.

SIGINT/SIGTERM: uvicorn stops accepting, lets in-flight requests finish for up to
``graceful_timeout`` seconds and then cancels them; just before that cap the scheduler
answers every request that is not done with 503 + Retry-After, so a client sees a
retryable answer instead of a 500 or a reset.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from types import FrameType
from typing import Any

import uvicorn

from ..embedder import Embedder
from ..errors import InputError
from .app import create_app
from .config import ServerConfig, config_from_args
from .protocol import guarded_protocol

__all__ = ["Server", "run_serve", "uvicorn_config"]

log = logging.getLogger("edge_embed.server")


def uvicorn_config(app: Any, config: ServerConfig, log_level: str = "info") -> uvicorn.Config:
    """uvicorn's settings for this app: the guarded h11 protocol, keep-alive and shutdown limits."""
    return uvicorn.Config(
        app, log_level=log_level, access_log=False, lifespan="on", server_header=False,
        http=guarded_protocol(config), timeout_keep_alive=max(1, round(config.keep_alive_timeout)),
        timeout_graceful_shutdown=max(1, round(config.graceful_timeout)),
    )


class Server(uvicorn.Server):
    """uvicorn.Server that tells the app's scheduler when shutdown starts (see the module doc)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        service = getattr(getattr(config.app, "state", None), "service", None)
        self._service = service
        if service is not None:
            service.metrics.connections.set_function(lambda: len(self.server_state.connections))

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._service is not None and not self.should_exit:
            self._service.begin_shutdown(float(self.config.timeout_graceful_shutdown or 30))
        super().handle_exit(sig, frame)


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
    config = config_from_args(args)
    model = args.model
    if not model:
        raise InputError("serve: no bundle; pass -m BUNDLE or set EDGE_EMBED_MODEL")
    level = args.log_level
    logging.basicConfig(level=level.upper(), format="%(levelname)s %(name)s: %(message)s")
    embedder = Embedder.load(model, threads=args.threads, model_format=args.model_format,
                             verify=getattr(args, "verify", True), digest=getattr(args, "digest", None))
    app = create_app(embedder, config)
    sock = _bind(config.host, config.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    name = embedder.manifest.name or model
    print(f"edge-embed: serving {name} on http://{shown}:{port}", file=sys.stderr, flush=True)
    if config.host not in ("127.0.0.1", "localhost", "::1") and config.api_key is None:
        log.warning("listening on %s without --api-key: anyone who can reach it can use it", config.host)
    Server(uvicorn_config(app, config, level)).run(sockets=[sock])
    return 0
