"""HTTPError and the two JSON error shapes: OpenAI's ``{"error": {...}}`` and TEI's.

Deliberately does not render tracebacks or exception reprs: a message is written for the
client (*where: what; what to do*), and anything unexpected becomes a bare 500 whose
details go to the server log only.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import JSONResponse

__all__ = ["HTTPError", "error_body", "error_response", "short"]

# TEI's error_type names, by status
_TEI_TYPES = {400: "Validation", 401: "Unauthorized", 404: "NotFound", 405: "Validation", 408: "Validation",
              413: "Validation", 422: "Validation", 500: "Backend", 503: "Overloaded"}


class HTTPError(Exception):
    """An answer other than 200, raised anywhere below a route and turned into JSON."""

    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error",
                 param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param
        self.headers = headers or {}


def short(value: Any, limit: int = 60) -> str:
    """A value's repr for an error message, cut so a huge input cannot make a huge answer."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def error_body(err: HTTPError, style: str) -> dict[str, Any]:
    if style == "tei":
        return {"error": err.message, "error_type": _TEI_TYPES.get(err.status, "Backend")}
    # the shape OpenAI clients parse: error.message / type / param / code
    return {"error": {"message": err.message, "type": err.kind, "param": err.param, "code": err.status}}


def error_response(err: HTTPError, style: str) -> JSONResponse:
    return JSONResponse(error_body(err, style), status_code=err.status, headers=err.headers)


def raw_error(status: int, reason: str, message: str, headers: dict[str, str] | None = None) -> bytes:
    """A whole HTTP/1.1 error response as bytes (TEI shape), for answers written below the ASGI app."""
    body = json.dumps(error_body(HTTPError(status, message), "tei")).encode()
    head = [f"HTTP/1.1 {status} {reason}", "content-type: application/json", f"content-length: {len(body)}",
            "connection: close", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body
