"""The request and response of one WSGI call, as small plain objects.

The WSGI environ is read in one place (:class:`Request`) and answers are built in one place
(:class:`Response`), so the routes never touch ``environ`` or ``start_response``. Bodies are
JSON: Cinder's API speaks nothing else.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

__all__ = ["JSON", "Request", "Response", "StartResponse", "WSGIApp"]

JSON = "application/json"
StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

_REASONS = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No Content",
    300: "Multiple Choices",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    413: "Request Entity Too Large",
    415: "Unsupported Media Type",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class Request:
    """What a route needs of the environ: method, path, query, headers and the body."""

    def __init__(self, environ: dict[str, Any]) -> None:
        self.environ = environ
        self.method: str = environ.get("REQUEST_METHOD", "GET").upper()
        self.path: str = environ.get("PATH_INFO", "") or "/"
        # Last value wins for a repeated key, as Cinder's handlers read ``req.params``.
        self.query: dict[str, str] = dict(
            parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        )

    def header(self, name: str, default: str | None = None) -> str | None:
        """A request header by its HTTP name (``Content-Type``, ``X-Auth-Token``)."""
        key = name.upper().replace("-", "_")
        if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            return self.environ.get(key) or default
        return self.environ.get("HTTP_" + key, default)

    @property
    def content_type(self) -> str:
        """The media type of the body, without parameters, lower-cased (``""`` if none)."""
        return (self.header("Content-Type") or "").split(";", 1)[0].strip().lower()

    def body(self) -> bytes:
        """The whole body (the size limit was enforced before: engine.http.limits)."""
        stream = self.environ.get("wsgi.input")
        if stream is None:
            return b""
        length = self.environ.get("CONTENT_LENGTH")
        if length:
            return stream.read(int(length))
        if "chunked" in (self.header("Transfer-Encoding") or "").lower():
            return stream.read()
        return b""

    def base_url(self) -> str:
        """``scheme://host[:port]`` (plus any mount prefix) this request came in on."""
        scheme = self.environ.get("wsgi.url_scheme", "http")
        host = self.environ.get("HTTP_HOST")
        if not host:
            host = self.environ.get("SERVER_NAME", "localhost")
            port = self.environ.get("SERVER_PORT")
            if port and port != ("443" if scheme == "https" else "80"):
                host = f"{host}:{port}"
        return f"{scheme}://{host}{self.environ.get('SCRIPT_NAME', '')}"


@dataclass
class Response:
    """A status, headers and an optional JSON body."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self) -> tuple[str, list[tuple[str, str]], bytes]:
        data = b"" if self.body is None else json.dumps(self.body).encode()
        headers = dict(self.headers)
        if self.body is not None:
            headers.setdefault("Content-Type", JSON)
        headers["Content-Length"] = str(len(data))
        status = f"{self.status} {_REASONS.get(self.status, 'Unknown')}"
        return status, list(headers.items()), data

    def __call__(self, start_response: StartResponse) -> list[bytes]:
        status, headers, data = self.encode()
        start_response(status, headers)
        return [data]


def add_headers(start_response: StartResponse, extra: Mapping[str, str]) -> StartResponse:
    """A ``start_response`` that adds ``extra`` headers to whatever the app answers."""

    def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        names = {k.lower() for k, _ in headers}
        headers = list(headers) + [(k, v) for k, v in extra.items() if k.lower() not in names]
        if exc_info is not None:
            return start_response(status, headers, exc_info)
        return start_response(status, headers)

    return start
