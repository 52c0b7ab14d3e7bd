"""NBD URIs (the NBD project's URI spec, as ``nbdinfo`` and libnbd read them).

``nbd://HOST[:PORT][/EXPORT]`` (TCP, port 10809 by default),
``nbd+unix:///[EXPORT]?socket=PATH`` (a Unix socket), and their TLS forms ``nbds://…`` and
``nbds+unix://…``, which take ``tls-certificates=DIR`` (libnbd's name: a directory holding
``ca-cert.pem``, and ``client-cert.pem`` + ``client-key.pem`` when the server checks its
clients, as qemu-nbd's ``--tls-creds`` directory does) and optionally ``tls-hostname=NAME``
(the name the server's certificate must carry; by default the TCP host). Other transports
are refused with a message saying what is accepted: the engine never guesses at a location.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import parse_qs, quote, unquote, urlsplit

from ..errors import InvalidInput

DEFAULT_PORT = 10809
SCHEMES = ("nbd://", "nbd+unix://", "nbds://", "nbds+unix://")
_USAGE = (
    "use nbd://HOST[:PORT][/EXPORT] or nbd+unix:///[EXPORT]?socket=PATH, or over TLS "
    "nbds://HOST[:PORT][/EXPORT]?tls-certificates=DIR or "
    "nbds+unix:///[EXPORT]?socket=PATH&tls-certificates=DIR"
)
_TLS_KEYS = ("tls-certificates", "tls-hostname")


@dataclass(frozen=True)
class NbdAddress:
    """Where an export is: a Unix socket path, or a TCP host and port; and its name. With
    ``tls``, the connection is upgraded to TLS (``NBD_OPT_STARTTLS``) and the server's
    certificate checked against ``tls_dir/ca-cert.pem`` (and ``tls_hostname``)."""

    export: str
    socket: str | None = None
    host: str | None = None
    port: int = DEFAULT_PORT
    tls: bool = False
    tls_dir: str | None = None
    tls_hostname: str | None = None

    @property
    def uri(self) -> str:
        """The canonical URI (what the catalog keeps and compares)."""
        name = quote(self.export, safe="")
        s = "s" if self.tls else ""
        query = []
        if self.socket is not None:
            query.append(f"socket={quote(self.socket, safe='/')}")
        if self.tls_dir is not None:
            query.append(f"tls-certificates={quote(self.tls_dir, safe='/')}")
        if self.tls_hostname is not None:
            query.append(f"tls-hostname={quote(self.tls_hostname, safe='')}")
        tail = ("?" + "&".join(query)) if query else ""
        if self.socket is not None:
            return f"nbd{s}+unix:///{name}{tail}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"nbd{s}://{host}:{self.port}/{name}{tail}"


def is_nbd_uri(value: object) -> bool:
    """Whether ``value`` is meant as an NBD URI (a string with an ``nbd`` scheme)."""
    return isinstance(value, str) and value.lower().startswith(("nbd:", "nbd+", "nbds"))


def _one(query: dict[str, list[str]], key: str, value: str) -> str | None:
    got = query.pop(key, [])
    if len(got) > 1 or (got and not got[0]):
        raise InvalidInput(f"NBD URI {value!r}: {key} must be given once, not empty")
    return got[0] if got else None


def _tls(query: dict[str, list[str]], value: str, tls: bool) -> dict:
    if not tls:
        for key in _TLS_KEYS:
            if key in query:
                raise InvalidInput(
                    f"NBD URI {value!r}: {key} needs TLS: use nbds:// or nbds+unix://"
                )
        return {}
    cert_dir = _one(query, "tls-certificates", value)
    hostname = _one(query, "tls-hostname", value)
    if cert_dir is None:
        raise InvalidInput(
            f"NBD URI {value!r} needs tls-certificates=DIR: the directory holding the CA "
            "certificate (ca-cert.pem) that signed the server's certificate"
        )
    if not os.path.isabs(cert_dir):
        raise InvalidInput(f"NBD URI {value!r}: tls-certificates must be an absolute path")
    return {"tls": True, "tls_dir": os.path.normpath(cert_dir), "tls_hostname": hostname}


def parse_nbd_uri(value: str) -> NbdAddress:
    """The address ``value`` names (InvalidInput with the accepted forms otherwise)."""
    if not isinstance(value, str) or "\0" in value or len(value) > 4096:
        raise InvalidInput(f"NBD URI must be text without NUL bytes: {_USAGE}")
    parts = urlsplit(value)
    scheme = parts.scheme.lower()
    tls = scheme in ("nbds", "nbds+unix")
    if parts.fragment:
        raise InvalidInput(f"NBD URI {value!r} must not have a #fragment: {_USAGE}")
    export = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
    query = parse_qs(parts.query, keep_blank_values=True)
    if scheme in ("nbd+unix", "nbds+unix"):
        if parts.netloc:
            raise InvalidInput(f"{scheme} URI {value!r} must have no host: {_USAGE}")
        sockets = query.pop("socket", [])
        if len(sockets) != 1 or not sockets[0]:
            raise InvalidInput(f"{scheme} URI {value!r} needs exactly one socket=PATH: {_USAGE}")
        extra = _tls(query, value, tls)
        if query:
            raise InvalidInput(f"NBD URI {value!r}: unknown parameter {sorted(query)[0]!r}")
        sock = sockets[0]
        if not os.path.isabs(sock):
            raise InvalidInput(f"{scheme} URI {value!r}: socket must be an absolute path")
        return NbdAddress(export, socket=os.path.normpath(sock), **extra)
    if scheme in ("nbd", "nbds"):
        extra = _tls(query, value, tls)
        if query:
            raise InvalidInput(f"NBD URI {value!r}: unknown parameter {sorted(query)[0]!r}")
        if parts.username or parts.password:
            raise InvalidInput(f"NBD URI {value!r} must not hold credentials: {_USAGE}")
        try:
            port = parts.port or DEFAULT_PORT
        except ValueError:
            raise InvalidInput(f"NBD URI {value!r} has a bad port: {_USAGE}") from None
        if not parts.hostname:
            raise InvalidInput(f"NBD URI {value!r} needs a host: {_USAGE}")
        return NbdAddress(export, host=parts.hostname, port=port, **extra)
    raise InvalidInput(f"{value!r} is not an NBD URI: {_USAGE}")


QEMU_SCHEME = "qemu-nbd://"
_QEMU_USAGE = "use qemu-nbd:///ABSOLUTE/PATH/IMAGE.qcow2"


def is_qemu_image_uri(value: object) -> bool:
    """Whether ``value`` names a qcow2 image the engine serves itself (``qemu-nbd:///…``)."""
    return isinstance(value, str) and value.lower().startswith("qemu-nbd:")


def parse_qemu_image_uri(value: str) -> str:
    """The image path of a ``qemu-nbd:///PATH`` location (InvalidInput otherwise)."""
    if not isinstance(value, str) or "\0" in value or len(value) > 4096:
        raise InvalidInput(f"qemu-nbd location must be text without NUL bytes: {_QEMU_USAGE}")
    parts = urlsplit(value)
    if parts.scheme.lower() != "qemu-nbd" or parts.netloc or parts.query or parts.fragment:
        raise InvalidInput(f"{value!r} is not a qemu-nbd image location: {_QEMU_USAGE}")
    path = unquote(parts.path)
    if not os.path.isabs(path):
        raise InvalidInput(f"{value!r}: the image path must be absolute: {_QEMU_USAGE}")
    return os.path.normpath(path)


LIVE_SCHEME = "qsd://"
_LIVE_USAGE = "use qsd:///NODE?qmp=QMP_SOCKET[&nbd=NBD_SOCKET]"
_NODE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


@dataclass(frozen=True)
class LiveAddress:
    """An image in use by a running QEMU (``qemu-storage-daemon`` or a VM): the block node
    that holds it (its qcow2 format node, where its dirty bitmaps live), the QMP monitor
    the engine may use, and optionally the Unix socket of the NBD server QEMU already runs."""

    node: str
    qmp: str
    nbd: str | None = None

    @property
    def uri(self) -> str:
        from urllib.parse import quote

        out = f"qsd:///{self.node}?qmp={quote(self.qmp, safe='/')}"
        return out + (f"&nbd={quote(self.nbd, safe='/')}" if self.nbd else "")


def is_live_uri(value: object) -> bool:
    """Whether ``value`` names an image in use by a running QEMU (``qsd:///NODE?qmp=…``)."""
    return isinstance(value, str) and value.lower().startswith("qsd:")


def parse_live_uri(value: str) -> LiveAddress:
    """The address a ``qsd:///NODE?qmp=PATH[&nbd=PATH]`` location names (InvalidInput
    otherwise)."""
    if not isinstance(value, str) or "\0" in value or len(value) > 4096:
        raise InvalidInput(f"qsd location must be text without NUL bytes: {_LIVE_USAGE}")
    parts = urlsplit(value)
    if parts.scheme.lower() != "qsd" or parts.netloc or parts.fragment:
        raise InvalidInput(f"{value!r} is not a qsd location: {_LIVE_USAGE}")
    node = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
    if not node or len(node) > 31 or not set(node) <= _NODE_CHARS or not node[0].isalpha():
        raise InvalidInput(
            f"{value!r}: NODE must be the QEMU node-name of the image's format node (a "
            f"letter, then letters, digits, '-', '_' or '.', at most 31): {_LIVE_USAGE}"
        )
    query = parse_qs(parts.query, keep_blank_values=True)
    qmp = query.pop("qmp", [])
    nbd = query.pop("nbd", [])
    if query:
        raise InvalidInput(f"qsd location {value!r}: unknown parameter {sorted(query)[0]!r}")
    if len(qmp) != 1 or not qmp[0] or len(nbd) > 1 or (nbd and not nbd[0]):
        raise InvalidInput(f"qsd location {value!r} needs exactly one qmp=PATH: {_LIVE_USAGE}")
    paths = [qmp[0], *nbd]
    if not all(os.path.isabs(p) for p in paths):
        raise InvalidInput(f"qsd location {value!r}: socket paths must be absolute")
    return LiveAddress(node, os.path.normpath(qmp[0]), os.path.normpath(nbd[0]) if nbd else None)


def is_export_location(value: object) -> bool:
    """An NBD URI, a qemu-nbd image or a qsd location: a volume read over NBD, not a file."""
    return is_nbd_uri(value) or is_qemu_image_uri(value) or is_live_uri(value)
