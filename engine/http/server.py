"""``cinderblock serve``: the application on cheroot, with a graceful stop.

cheroot (CherryPy's HTTP/1.1 server, a standalone, maintained package) was chosen over
waitress because it hands the request body to the application as a stream: the body limit
can refuse a 413 from ``Content-Length`` before a byte of the body is read, where waitress
buffers the whole body first. It is a thread pool server, which suits the engine: handlers
are short (backups and restores run on the engine's own pool) and block on SQLite.

Stop (SIGTERM, SIGINT): the listening socket closes at once, requests in flight finish (up
to ``shutdown_timeout``), and backups or restores still running are left to Cinder's
restart rule: the next ``serve`` (or any engine opened on the repository) finds their
owner gone and sets a backup that was ``creating`` to ``error`` and one that was
``restoring`` back to ``available`` (engine.service.recovery).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .app import AuthFactory, make_app
from .limits import DEFAULT_MAX_BODY

__all__ = ["ServeOptions", "is_loopback", "parse_listen", "serve"]

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:8776"
NOAUTH_WARNING = (
    "cinderblock: WARNING: noauth on {host}, which is not a loopback address: anyone who "
    "can reach {url} is any user of any project, and an admin. Use --auth keystone, or "
    "listen on 127.0.0.1."
)


@dataclass(frozen=True)
class ServeOptions:
    host: str
    port: int
    auth: str = "noauth"
    public_url: str | None = None
    threads: int = 16
    max_body: int = DEFAULT_MAX_BODY
    stop_grace: float = 5.0


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` -> (host, port); port 0 picks a free one."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"--listen {text!r}: give HOST:PORT, e.g. 127.0.0.1:8776")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"--listen {text!r}: the port must be a number") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"--listen {text!r}: the port must be 0 to 65535")
    return host, number


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    engine: Any,
    auth: AuthFactory,
    options: ServeOptions,
    *,
    ready: Callable[[str], None] | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit status (0 after a graceful stop)."""
    from cheroot import wsgi

    app = make_app(engine, auth, public_url=options.public_url, max_body=options.max_body)
    server = wsgi.Server(
        (options.host, options.port),
        app,
        numthreads=options.threads,
        max=options.threads,  # a fixed pool: more connections wait, never more threads
        server_name="cinderblock",
        shutdown_timeout=options.stop_grace,
        request_queue_size=64,
    )
    server.prepare()  # binds: the real port is known from here on
    host, port = server.bind_addr[:2]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}"
    if options.auth == "noauth" and not is_loopback(host):
        print(NOAUTH_WARNING.format(host=host, url=url), file=sys.stderr, flush=True)
        log.warning("noauth on non-loopback address %s", host)
    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        if stopping.is_set():
            return
        stopping.set()
        print(
            f"cinderblock: {signal.Signals(signum).name}: stopping (no new connections)",
            file=sys.stderr,
            flush=True,
        )
        threading.Thread(target=server.stop, name="cb-stop", daemon=True).start()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        if ready is not None:
            ready(url)
        server.serve()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return _finish(engine, options.stop_grace)


def _finish(engine: Any, grace: float) -> int:
    """Let jobs end within ``grace`` seconds; leave the rest to the restart rule."""
    engine.runner.wait_for(lambda: engine.runner.pending() == 0, grace)
    left = engine.runner.pending()
    if left:
        print(
            f"cinderblock: {left} backup or restore job(s) still running; they are left to "
            "the restart rule (a creating backup becomes error, a restoring one available, "
            "at the next start)",
            file=sys.stderr,
            flush=True,
        )
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(0)  # the jobs' threads cannot be stopped from outside; nothing is half-visible
    engine.close()
    return 0
