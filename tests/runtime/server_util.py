"""Helpers of the server tests: a live server in a thread, a gated embedder, polling."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import httpx

from edge_embed import Embedder
from edge_embed.server import Server, ServerConfig, create_app, uvicorn_config

# one pooled client: building an httpx.Client per call (TLS context included) dominates otherwise
HTTP = httpx.Client(timeout=60, limits=httpx.Limits(max_connections=64, max_keepalive_connections=64))


# ------------------------------------------------------------------ helpers
class LiveServer:
    """create_app(...) served by uvicorn in a thread on a free loopback port."""

    def __init__(self, embedder: Any, config: ServerConfig) -> None:
        self.app = create_app(embedder, config)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(512)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = Server(uvicorn_config(self.app, config, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.01)

    @property
    def scheduler(self) -> Any:
        return self.app.state.service.scheduler

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


class Gated:
    """An Embedder whose embed_detailed waits for a gate: makes queueing deterministic."""

    def __init__(self, emb: Embedder) -> None:
        self._emb = emb
        self.gate = threading.Event()
        self.calls: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._emb, name)

    def embed_detailed(self, texts: list[str], **kw: Any) -> Any:
        self.calls.append(len(texts))
        if not self.gate.wait(30):
            raise RuntimeError("gate never opened")
        return self._emb.embed_detailed(texts, **kw)


def wait_for(cond: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


