"""A QMP client of the project's own: commands to a running QEMU (``qemu-storage-daemon``
or a VM) over its monitor's Unix socket.

QMP is line-delimited JSON (QEMU's "QEMU Machine Protocol"): a greeting, then
``qmp_capabilities``, then one ``{"execute", "arguments", "id"}`` per command, answered by
``{"return"}`` or ``{"error": {"class", "desc"}}`` with the same id; asynchronous
``{"event"}`` lines may come in between and are kept in :attr:`QmpClient.events`. The
engine uses it to take a point-in-time view of an image in use (``engine.nbd.fleece``) and
to rotate that image's dirty bitmaps, so it needs a monitor of its own: a QMP chardev
serves one client at a time.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

from .client import NbdError

MAX_LINE = 64 << 20  # query-named-block-nodes of a big graph is large, never this large


class QmpError(NbdError):
    """QEMU refused a command; ``qmp_class`` is its error class (``GenericError``, …)."""

    def __init__(self, message: str, qmp_class: str = "") -> None:
        super().__init__(message)
        self.qmp_class = qmp_class


class QmpClient:
    """One negotiated QMP connection; :meth:`execute` runs a command and returns its value."""

    def __init__(self, path: str, *, timeout: float = 30.0) -> None:
        self.path = path
        self.events: list[dict[str, Any]] = []
        self._id = 0
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError as e:
            sock.close()
            raise NbdError(
                f"cannot connect to the QMP socket {path}: {e.strerror or e}; is the QEMU "
                "(qemu-storage-daemon) running with a monitor there for the engine "
                "(--chardev socket,id=ID,path=PATH,server=on,wait=off --monitor chardev=ID)?"
            ) from None
        self.sock = sock
        self._buf = b""
        try:
            try:
                greeting = self._message()
            except NbdError as e:
                if "in time" not in e.message:
                    raise
                raise NbdError(
                    f"QEMU sent no QMP greeting on {path}: another client holds that monitor "
                    "(a QMP chardev serves one at a time); give the engine a monitor of its own"
                ) from None
            if "QMP" not in greeting:
                raise NbdError(f"{path} is not a QMP monitor (no greeting)")
            self.version = greeting["QMP"].get("version", {}).get("qemu", {})
            self.execute("qmp_capabilities")
        except BaseException:
            sock.close()
            raise

    def _message(self) -> dict[str, Any]:
        while b"\n" not in self._buf:
            try:
                chunk = self.sock.recv(1 << 16)
            except TimeoutError:
                raise NbdError(f"QEMU did not answer on {self.path} in time") from None
            except OSError as e:
                raise NbdError(
                    f"QEMU's QMP connection {self.path} broke: {e.strerror or e}"
                ) from None
            if not chunk:
                raise NbdError(f"QEMU closed the QMP connection {self.path}")
            self._buf += chunk
            if len(self._buf) > MAX_LINE:
                raise NbdError(f"QEMU sent an oversized QMP message on {self.path}")
        line, _, self._buf = self._buf.partition(b"\n")
        try:
            msg = json.loads(line)
        except ValueError:
            raise NbdError(f"QEMU sent a malformed QMP message on {self.path}") from None
        if not isinstance(msg, dict):
            raise NbdError(f"QEMU sent a malformed QMP message on {self.path}")
        return msg

    def execute(self, command: str, **arguments: Any) -> Any:
        """Run ``command``; its ``return`` value, or :class:`QmpError` with QEMU's words."""
        self._id += 1
        ident = f"cb-{self._id}"
        req: dict[str, Any] = {"execute": command, "id": ident}
        if arguments:
            req["arguments"] = arguments
        try:
            self.sock.sendall(json.dumps(req).encode() + b"\n")
        except OSError as e:
            raise NbdError(f"QEMU's QMP connection {self.path} broke: {e.strerror or e}") from None
        while True:
            msg = self._message()
            if "event" in msg:
                self.events.append(msg)
                continue
            if msg.get("id") != ident:
                continue  # an answer to a command another client of old sent: not ours
            if "error" in msg:
                err = msg["error"]
                raise QmpError(
                    f"QEMU refused {command}: {err.get('desc', err)}", str(err.get("class", ""))
                )
            return msg.get("return")

    def wait_until(self, check, what: str, timeout: float = 30.0) -> None:
        """Poll ``check()`` (commands allowed) until true; NbdError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise NbdError(f"QEMU did not {what} within {timeout:.0f} s")
            time.sleep(0.02)

    def close(self) -> None:
        sock, self.sock = getattr(self, "sock", None), None
        if sock is not None:
            sock.close()

    def __enter__(self) -> QmpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
