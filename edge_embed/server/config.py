"""ServerConfig: the limits and knobs of one server, set by ``edge-embed serve`` flags.

Deliberately holds no machine-specific state (paths, sockets): ``/info`` shows it as is,
less the API key and the bind address.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

__all__ = ["LONG_TEXT_MODES", "ServerConfig", "config_from_args"]

LONG_TEXT_MODES = ("truncate", "error", "window")


@dataclass(frozen=True)
class ServerConfig:
    """Limits and knobs of one server; the CLI's ``serve`` flags (and EDGE_EMBED_* env vars) set them."""

    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = None
    max_batch_tokens: int = 2048  # padded tokens (rows x longest text) per micro-batch: bounds its time
    max_inputs: int = 2048  # texts per request: OpenAI's own limit (LangChain sends up to 1000)
    max_body_bytes: int = 8 * 1024 * 1024
    max_drain_bytes: int = 64 * 1024 * 1024  # an oversized body is read up to here so the client sees its 413
    queue_size: int = 8192  # texts waiting for the model; beyond it: 503 + Retry-After
    batch_size: int = 32  # texts per micro-batch (one ONNX Runtime run); requests are split to fit
    retry_after: int = 1  # seconds, sent with 503
    graceful_timeout: float = 30.0  # seconds to finish in-flight requests after SIGTERM; the rest get 503
    warmup: bool = True  # run the largest batch shape once at startup (see Scheduler.warm_up)
    batch_wait_ms: float = 2.0  # see Scheduler._gather; 0 turns it off
    express_tokens: int = 256  # padded tokens: a request this small runs beside a long one's run; 0 turns it off
    header_timeout: float = 10.0  # seconds from connection (or first byte) to a complete request head
    body_timeout: float = 30.0  # seconds to receive a whole request body
    keep_alive_timeout: float = 5.0  # idle seconds before a keep-alive connection is closed
    max_connections: int = 512  # open connections; beyond it new ones get 503 and are closed
    long_text: str = "truncate"  # texts over max_length: "truncate", "error" or "window" (Embedder's long_text)

    def check(self) -> None:
        for name in ("max_batch_tokens", "max_inputs", "max_body_bytes", "max_drain_bytes", "queue_size",
                     "batch_size", "max_connections"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"--{name.replace('_', '-')}: expected a positive integer, got {value!r}")
        for name in ("header_timeout", "body_timeout", "keep_alive_timeout", "graceful_timeout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value <= 3600:
                raise InputError(f"--{name.replace('_', '-')}: expected seconds in (0, 3600], got {value!r}")
        if not isinstance(self.express_tokens, int) or isinstance(self.express_tokens, bool) or self.express_tokens < 0:
            raise InputError(f"--express-tokens: expected 0 (off) or a positive integer, got {self.express_tokens!r}")
        if not 0 <= self.batch_wait_ms <= 1000:
            raise InputError(f"--batch-wait-ms: expected 0-1000, got {self.batch_wait_ms!r}")
        if not 0 <= self.port <= 65535:
            raise InputError(f"--port: expected 0-65535, got {self.port!r}")
        if self.api_key is not None and not self.api_key.strip():
            raise InputError("--api-key: empty (or $EDGE_EMBED_API_KEY is set to ''), which would turn "
                             "authentication off; pass a non-empty key or leave it unset")
        if self.long_text not in LONG_TEXT_MODES:
            raise InputError(f"--long-text: expected one of {', '.join(LONG_TEXT_MODES)}, got {self.long_text!r}")


def _read_key_file(path: str) -> str:
    try:
        key = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise InputError(f"--api-key-file: cannot read {path} ({reason})") from None
    key = key.strip("\r\n")  # the file's trailing newline is not part of the key
    if not key.strip():
        raise InputError(f"--api-key-file: {path} is empty; put the key on its first line")
    if "\n" in key:
        raise InputError(f"--api-key-file: {path} has more than one line; put only the key in it")
    return key


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """ServerConfig from the parsed ``edge-embed serve`` flags (env var defaults applied by the CLI)."""
    api_key = args.api_key
    key_file = getattr(args, "api_key_file", None)
    if key_file is not None:
        if api_key is not None:
            raise InputError("--api-key-file: also got --api-key (or $EDGE_EMBED_API_KEY); pass one of them")
        api_key = _read_key_file(key_file)
    extra = {name: getattr(args, name) for name in ("header_timeout", "body_timeout", "keep_alive_timeout",
                                                      "max_connections", "graceful_timeout", "long_text",
                                                      "express_tokens")
             if getattr(args, name, None) is not None}
    config = ServerConfig(
        host=args.host, port=args.port, api_key=api_key,
        max_batch_tokens=args.max_batch_tokens, max_inputs=args.max_inputs, max_body_bytes=args.max_body_bytes,
        queue_size=args.queue_size, batch_size=args.batch_size, warmup=args.warmup,
        batch_wait_ms=args.batch_wait_ms, **extra,
    )
    config.check()
    return config
