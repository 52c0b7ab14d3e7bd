"""A real threaded WSGI server on a free loopback port, for apps under test.

The standard library's ``wsgiref`` with one thread per connection: enough to put a WSGI
middleware on the wire in a test, never the production server. Its access log goes to the
``tests.wsgi`` logger so that tests capturing logs see it too.
"""

from __future__ import annotations

import logging
import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

_log = logging.getLogger("tests.wsgi")


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Handler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        _log.info("%s " + format, self.address_string(), *args)


class ServedApp:
    """``app`` served on ``127.0.0.1:<free port>`` until :meth:`stop`."""

    def __init__(self, app):
        self.server = make_server("127.0.0.1", 0, app, server_class=_Server, handler_class=_Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=30)
