"""Turning a request body (parsed or raw) into a JSON value.

Parsers accept either an already-decoded value (what a web framework hands over) or the
raw ``str``/``bytes`` text, so tests and the HTTP front end exercise one code path.
"""

from __future__ import annotations

import json
from typing import Any

from engine.errors import BadRequest, MalformedRequestBody

__all__ = ["Body", "decode_body"]

Body = Any  # a JSON value, or str/bytes holding JSON text, or None for "no body"


def decode_body(body: Body, root_key: str) -> Any:
    """Return the JSON value of ``body``.

    * ``str``/``bytes`` are parsed as JSON like Cinder's deserializer: bytes must be UTF-8
      (a BOM is not stripped), ``NaN``/``Infinity`` are accepted (Python's ``json`` does);
      anything unparseable is ``Malformed request body``.
    * ``None`` or an empty text (zero bytes) mean the request had no body; whitespace-only
      text is a present but malformed body, as in Cinder. Cinder answers a missing body with
      a 500 (observed for restore); here it is a 400 naming the element that was expected
      (``Missing required element 'restore' in request body.``), a text Cinder uses
      elsewhere for the same situation.
    * Anything else is taken as an already-decoded JSON value. Note that the JSON text
      ``null`` is a present body whose value is ``None`` -- that is a schema error
      (``None is not of type 'object'``), not a missing body.
    """
    if body is None:
        raise _missing(root_key)
    if isinstance(body, bytes | bytearray | memoryview):
        try:
            body = bytes(body).decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedRequestBody() from None
    if isinstance(body, str):
        if not body:
            raise _missing(root_key)
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            raise MalformedRequestBody() from None
    return body


def _missing(root_key: str) -> BadRequest:
    return BadRequest(f"Missing required element '{root_key}' in request body.")
