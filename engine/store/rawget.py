"""Ranged GETs read straight into a caller's buffer, over plain keep-alive HTTP connections.

Why not the object stores' client libraries for these: a restore's reads are thousands of
ranged GETs of megabytes each, and python-swiftclient (through requests and urllib3) and
boto3 copy every body at least twice on the way (socket buffer, chunks, the joined bytes)
and spend a millisecond of Python per request on sessions, hooks and header parsing. Here a
response's body is read with ``http.client``'s ``readinto``, from the socket into the
restore's pack buffer, and the connection is kept for the next request. Everything else
(authentication, listings, PUTs) stays with the libraries; the stores decide what a status
means (``swift.py``, ``s3.py``).
"""

from __future__ import annotations

import http.client
import ssl
from urllib.parse import urlsplit

from .. import threads

#: Idle connections kept per store (a restore keeps ``read_parallelism`` GETs in flight).
MAX_IDLE = 32


class RawGetter:
    """A pool of keep-alive connections for ``get_into`` (thread-safe)."""

    def __init__(self, timeout: float, context: ssl.SSLContext | None = None) -> None:
        self.timeout = timeout
        self.context = context
        self._idle: dict[tuple[str, str], list[http.client.HTTPConnection]] = {}
        self._lock = threads.Lock()

    def _connection(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        with self._lock:
            idle = self._idle.get((scheme, netloc))
            if idle:
                return idle.pop()
        if scheme == "https":
            return http.client.HTTPSConnection(netloc, timeout=self.timeout, context=self.context)
        return http.client.HTTPConnection(netloc, timeout=self.timeout)

    def _keep(self, scheme: str, netloc: str, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault((scheme, netloc), [])
            if len(idle) < MAX_IDLE:
                idle.append(conn)
                return
        conn.close()

    def get_into(
        self, url: str, headers: dict[str, str], out: memoryview
    ) -> tuple[int, int, bytes]:
        """GET ``url``; return (status, bytes read into ``out``, body of an error answer).

        A 200 or 206 body goes into ``out`` (at most ``len(out)`` bytes; a longer body
        closes the connection rather than reading the rest). Any other status reads its
        (small) body and returns it. ``OSError`` and ``http.client.HTTPException`` pass
        through, the connection closed: the caller's retry policy decides.
        """
        parts = urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        conn = self._connection(parts.scheme, parts.netloc)
        try:
            conn.request("GET", target, headers=headers)
            resp = conn.getresponse()
            if resp.status not in (200, 206):
                body = resp.read()
                self._keep(parts.scheme, parts.netloc, conn)
                return resp.status, 0, body
            length = resp.length if resp.length is not None else len(out)
            want = min(length, len(out))
            got = 0
            while got < want:
                n = resp.readinto(out[got:want])
                if not n:
                    break
                got += n
            if got == length and resp.isclosed():  # read to its end: reusable
                self._keep(parts.scheme, parts.netloc, conn)
            else:
                conn.close()
            return resp.status, got, b""
        except BaseException:
            conn.close()
            raise

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for c in conns:
                c.close()
