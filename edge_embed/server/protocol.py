"""Connection guards below the ASGI app: uvicorn's h11 protocol with read timeouts and a cap.

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) but has no deadline for
a request head: a client that connects and sends nothing, or a header line every few
seconds, holds its connection forever, and enough of them exhaust the file descriptors.
This protocol gives every request head ``header_timeout`` seconds (from the connection or
from the first byte of a keep-alive request) and then answers 408 and closes; it refuses
connections over ``max_connections`` with a 503; and it writes uvicorn's framing errors
(malformed requests, oversized heads) as JSON instead of plain text. The body's deadline is
the app's (see ``app.read_body``), since only the app reads the body.

Deliberately does not limit rates per client address (that is a reverse proxy's job) or
reimplement HTTP: parsing stays h11's, as in uvicorn.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .config import ServerConfig
from .errors import HTTPError, error_body, raw_error

__all__ = ["guarded_protocol"]


def guarded_protocol(limits: ServerConfig) -> type[H11Protocol]:
    """An H11Protocol class bound to these limits, for ``uvicorn.Config(http=...)``."""

    class GuardedH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > limits.max_connections:
                transport.write(raw_error(
                    503, "Service Unavailable",
                    f"server: {limits.max_connections} connections open (--max-connections); retry later",
                    {"retry-after": str(limits.retry_after)}))
                transport.close()
                return
            self._arm_head_timer()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.transport.is_closing():
                return
            # IDLE: the request head is not complete yet (a new connection or the next keep-alive request)
            if self.conn.their_state is h11.IDLE and data:
                self._arm_head_timer()
            else:
                self._disarm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_head_timer()
            super().connection_lost(exc)

        def _arm_head_timer(self) -> None:
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(limits.header_timeout, self._head_timeout)

        def _disarm_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timeout(self) -> None:
            self._head_timer = None
            if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
                return
            if self.cycle is not None and not self.cycle.response_complete:
                return  # a response is being written: the keep-alive timer takes over after it
            self.transport.write(raw_error(
                408, "Request Timeout",
                f"request: headers not received within {limits.header_timeout:g} s (--header-timeout)"))
            self.transport.close()

        def send_400_response(self, msg: str) -> None:
            body = json.dumps(error_body(HTTPError(400, f"request: malformed HTTP ({msg.rstrip('.')})"),
                                         "tei")).encode()
            headers: list[tuple[bytes, bytes]] = [(b"content-type", b"application/json"),
                                                  (b"connection", b"close")]
            try:
                out: Any = self.conn.send(h11.Response(status_code=400, headers=headers, reason=b"Bad Request"))
                self.transport.write(out)
                self.transport.write(self.conn.send(h11.Data(data=body)) or b"")
                self.transport.write(self.conn.send(h11.EndOfMessage()) or b"")
            except h11.LocalProtocolError:  # h11 cannot answer in its state: write the bytes ourselves
                self.transport.write(raw_error(400, "Bad Request", f"request: malformed HTTP ({msg.rstrip('.')})"))
            self.transport.close()

    return GuardedH11Protocol
