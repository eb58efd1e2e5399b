"""Prometheus metrics of one server, through ``prometheus_client``.

Each app has a registry of its own (several apps in one process, as in the tests, do not
share counters). Route labels are limited to the known routes, so a scan of random paths
cannot grow the label set.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE", "ROUTES", "Metrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
ROUTES = ("/v1/embeddings", "/embed", "/health", "/info", "/metrics", "/openapi.json")
_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_TOKENS = (64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("edge_embed_requests", "HTTP requests answered, by route and status code.",
                                ("route", "code"), registry=r)
        self.errors = Counter("edge_embed_request_errors", "HTTP requests answered with a status >= 400.",
                              ("route", "code"), registry=r)
        self.latency = Histogram("edge_embed_request_duration_seconds", "Time from request start to response.",
                                 ("route",), buckets=_LATENCY, registry=r)
        self.texts = Counter("edge_embed_texts", "Texts embedded.", registry=r)
        self.tokens = Counter("edge_embed_tokens", "Tokens fed to the model (after truncation, special tokens "
                                                   "included).", registry=r)
        self.truncated = Counter("edge_embed_truncated_texts", "Texts cut at the bundle's max_length.", registry=r)
        self.batch_size = Histogram("edge_embed_batch_size", "Texts per micro-batch (one inference call).",
                                    buckets=_BATCH, registry=r)
        self.batch_tokens = Histogram("edge_embed_batch_tokens", "Tokens per micro-batch.", buckets=_TOKENS,
                                      registry=r)
        self.batch_requests = Histogram("edge_embed_batch_requests", "Requests sharing one micro-batch.",
                                        buckets=_BATCH, registry=r)
        self.inference = Histogram("edge_embed_inference_seconds", "Wall time of one micro-batch in the model.",
                                   buckets=_LATENCY, registry=r)
        self.inflight = Gauge("edge_embed_inflight_requests", "Requests being handled.", registry=r)
        self.queue_texts = Gauge("edge_embed_queue_depth", "Texts waiting for the model (not yet in a micro-batch).",
                                 registry=r)
        self.queue_requests = Gauge("edge_embed_queue_requests", "Requests waiting for the model.", registry=r)
        self.connections = Gauge("edge_embed_open_connections", "Open HTTP connections.", registry=r)

    def watch_queue(self, texts: Callable[[], float], requests: Callable[[], float]) -> None:
        self.queue_texts.set_function(texts)
        self.queue_requests.set_function(requests)

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        route = route if route in ROUTES else "other"
        self.requests.labels(route, str(status)).inc()
        if status >= 400:
            self.errors.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
