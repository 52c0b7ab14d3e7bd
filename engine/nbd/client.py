"""The NBD protocol subset a backup needs, written from the NBD protocol specification.

One connection, fixed-newstyle handshake (``NBD_OPT_GO``; ``NBD_OPT_STARTTLS`` first for
``nbds`` URIs: the rest goes over TLS), structured replies, and the meta
contexts asked for (``base:allocation``, ``qemu:dirty-bitmap:NAME``). Requests are made one
at a time under a lock: ``qemu-nbd`` serves one client by default (``-e 1``), so the backup's
threads share this connection, and its reads go straight into the caller's buffer
(``recv_into``, the GIL released while the socket waits). Block status comes back as numpy
arrays of ``(offset, length, flags)``: no Python object per extent.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
import threading
from collections.abc import Sequence

import numpy as np

from ..errors import CinderblockError
from .uri import NbdAddress

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3E889045565A9
SIMPLE_REPLY = 0x67446698
STRUCTURED_REPLY = 0x668E33EF
REQUEST_MAGIC = 0x25609513

FLAG_FIXED_NEWSTYLE = 1
FLAG_NO_ZEROES = 2

OPT_STARTTLS = 5
OPT_GO = 7
OPT_STRUCTURED_REPLY = 8
OPT_LIST_META_CONTEXT = 9
OPT_SET_META_CONTEXT = 10
OPT_ABORT = 2

REP_ACK = 1
REP_INFO = 3
REP_META_CONTEXT = 4
REP_ERR = 1 << 31
INFO_EXPORT = 0
INFO_BLOCK_SIZE = 3

CMD_READ = 0
CMD_DISC = 2
CMD_BLOCK_STATUS = 7
CMD_FLAG_DF = 1 << 2

REPLY_FLAG_DONE = 1
REPLY_NONE = 0
REPLY_OFFSET_DATA = 1
REPLY_OFFSET_HOLE = 2
REPLY_BLOCK_STATUS = 5
REPLY_ERROR_BIT = 1 << 15

TFLAG_SEND_DF = 1 << 7

#: The largest read or block-status request sent (qemu-nbd takes 32 MiB reads).
MAX_REQUEST = 32 << 20
BLOCK_STATUS_SPAN = 1 << 30

_ERRORS = {1: "EPERM", 5: "EIO", 12: "ENOMEM", 22: "EINVAL", 28: "ENOSPC", 75: "EOVERFLOW"}
_REP_ERRORS = {
    1: "unsupported",
    2: "refused by policy",
    3: "invalid",
    4: "unsupported on this platform",
    5: "TLS required",
    6: "unknown export",
    7: "shutting down",
    8: "block size required",
    9: "too big",
}


class NbdError(CinderblockError):
    """The NBD server refused, failed or broke the protocol; the message says which."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NbdClient:
    """A connected, negotiated NBD export: ``size``, ``read_into``, ``block_status``.

    ``contexts`` are the meta contexts to ask for; ``self.contexts`` maps those the server
    granted to their ids (a context the server does not know, a dirty bitmap the export
    was not started with, is simply absent).
    """

    def __init__(
        self, address: NbdAddress, *, contexts: Sequence[str] = (), timeout: float = 60.0
    ) -> None:
        self.address = address
        self.label = address.uri
        self._lock = threading.Lock()
        self._cookie = 0
        self._client_cert = False
        self.contexts: dict[str, int] = {}
        if address.socket is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            target: object = address.socket
        else:
            info = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)[0]
            sock = socket.socket(info[0], socket.SOCK_STREAM)
            target = info[4]
        sock.settimeout(timeout)
        try:
            sock.connect(target)
        except OSError as e:
            sock.close()
            raise NbdError(
                f"cannot connect to the NBD export {self.label}: {e.strerror or e}; "
                "is the server (qemu-nbd) running?"
            ) from None
        if sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        try:
            self._handshake(list(contexts))
        except BaseException:
            sock.close()
            raise

    # ------------------------------------------------------------------ handshake

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray(n)
        self._recv_into(memoryview(buf))
        return bytes(buf)

    def _recv_into(self, view: memoryview) -> None:
        got = 0
        n = len(view)
        while got < n:
            try:
                k = self.sock.recv_into(view[got:], n - got)
            except TimeoutError:
                raise NbdError(f"the NBD export {self.label} did not answer in time") from None
            if k == 0:
                raise NbdError(f"the NBD export {self.label} closed the connection")
            got += k

    def _send_option(self, option: int, data: bytes = b"") -> None:
        self.sock.sendall(struct.pack(">QII", IHAVEOPT, option, len(data)) + data)

    def _option_reply(self, option: int) -> tuple[int, bytes]:
        magic, opt, rtype, length = struct.unpack(">QIII", self._recv_exact(20))
        if magic != REPLY_MAGIC or opt != option:
            raise NbdError(f"the NBD export {self.label} broke the handshake (option reply)")
        if length > 64 << 20:
            raise NbdError(f"the NBD export {self.label} sent an oversized option reply")
        return rtype, self._recv_exact(length)

    def _rep_error(self, rtype: int, data: bytes, what: str) -> NbdError:
        kind = _REP_ERRORS.get(rtype & ~REP_ERR, f"error {rtype & ~REP_ERR}")
        text = data.decode("utf-8", "replace")[:200]
        hint = ""
        if kind == "TLS required":
            hint = "; the server wants TLS: use nbds:// or nbds+unix:// with tls-certificates=DIR"
        elif what.startswith("TLS"):
            hint = "; the server was started without TLS: use nbd:// or nbd+unix://"
        return NbdError(
            f"the NBD export {self.label} refused {what}: {kind}"
            + (f" ({text})" if text else "")
            + hint
        )

    def _start_tls(self) -> None:
        """``NBD_OPT_STARTTLS``, then the TLS handshake on the same socket: the rest of the
        negotiation and every request go over TLS. The server's certificate must chain to
        ``ca-cert.pem`` of the address's ``tls_dir`` and carry its host name (or
        ``tls_hostname``); ``client-cert.pem`` + ``client-key.pem`` there, when present,
        are offered to a server that checks its clients."""
        self._send_option(OPT_STARTTLS)
        rtype, data = self._option_reply(OPT_STARTTLS)
        if rtype != REP_ACK:
            raise self._rep_error(rtype, data, "TLS (NBD_OPT_STARTTLS)")
        cert_dir = self.address.tls_dir or ""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ca = os.path.join(cert_dir, "ca-cert.pem")
        try:
            ctx.load_verify_locations(ca)
            cert = os.path.join(cert_dir, "client-cert.pem")
            key = os.path.join(cert_dir, "client-key.pem")
            if os.path.exists(cert) and os.path.exists(key):
                ctx.load_cert_chain(cert, key)
                self._client_cert = True
        except (OSError, ssl.SSLError) as e:
            raise NbdError(
                f"cannot load the TLS certificates of {self.label} from {cert_dir}: "
                f"{getattr(e, 'strerror', None) or e}; it must hold ca-cert.pem (and "
                "client-cert.pem with client-key.pem if the server checks its clients)"
            ) from None
        hostname = self.address.tls_hostname or self.address.host
        if hostname is None:
            ctx.check_hostname = False  # a Unix socket: the CA alone vouches for the server
        try:
            self.sock = ctx.wrap_socket(self.sock, server_hostname=hostname)
        except ssl.SSLCertVerificationError as e:
            raise NbdError(
                f"the TLS certificate of the NBD export {self.label} is not trusted "
                f"({e.verify_message}): {ca} must be the CA that signed the server's "
                "certificate" + (f", issued for {hostname!r}" if hostname else "")
            ) from None
        except (ssl.SSLError, OSError) as e:
            raise NbdError(
                f"the TLS handshake with the NBD export {self.label} failed: {e}"
            ) from None

    def _handshake(self, contexts: list[str]) -> None:
        magic, opt_magic, flags = struct.unpack(">QQH", self._recv_exact(18))
        if magic != NBDMAGIC or opt_magic != IHAVEOPT:
            raise NbdError(f"{self.label} is not a newstyle NBD server")
        if not flags & FLAG_FIXED_NEWSTYLE:
            raise NbdError(f"{self.label} does not speak the fixed newstyle NBD handshake")
        self.sock.sendall(struct.pack(">I", FLAG_FIXED_NEWSTYLE | (flags & FLAG_NO_ZEROES)))
        if self.address.tls:
            self._start_tls()
            try:
                self._negotiate(contexts)
            except NbdError as e:
                if not e.message.endswith("closed the connection") or self._client_cert:
                    raise
                raise NbdError(
                    f"the NBD export {self.label} closed the TLS connection: if it checks its "
                    f"clients (verify-peer), {self.address.tls_dir} must also hold "
                    "client-cert.pem and client-key.pem, signed by a CA it trusts"
                ) from None
        else:
            self._negotiate(contexts)

    def _negotiate(self, contexts: list[str]) -> None:
        """Options after the greeting (and TLS): structured replies, meta contexts, GO."""
        name = self.address.export.encode()
        self._send_option(OPT_STRUCTURED_REPLY)
        rtype, data = self._option_reply(OPT_STRUCTURED_REPLY)
        if rtype != REP_ACK:
            raise self._rep_error(rtype, data, "structured replies")
        if contexts:
            body = struct.pack(">I", len(name)) + name + struct.pack(">I", len(contexts))
            for c in contexts:
                raw = c.encode()
                body += struct.pack(">I", len(raw)) + raw
            self._send_option(OPT_SET_META_CONTEXT, body)
            while True:
                rtype, data = self._option_reply(OPT_SET_META_CONTEXT)
                if rtype == REP_ACK:
                    break
                if rtype == REP_META_CONTEXT:
                    (cid,) = struct.unpack(">I", data[:4])
                    self.contexts[data[4:].decode("utf-8", "replace")] = cid
                elif rtype & REP_ERR:
                    raise self._rep_error(rtype, data, "meta contexts")
        body = struct.pack(">I", len(name)) + name + struct.pack(">HH", 1, INFO_BLOCK_SIZE)
        self._send_option(OPT_GO, body)
        size = tflags = None
        while True:
            rtype, data = self._option_reply(OPT_GO)
            if rtype == REP_ACK:
                break
            if rtype == REP_INFO and len(data) >= 2:
                (info,) = struct.unpack(">H", data[:2])
                if info == INFO_EXPORT and len(data) >= 12:
                    size, tflags = struct.unpack(">QH", data[2:12])
            elif rtype & REP_ERR:
                raise self._rep_error(rtype, data, f"export {self.address.export!r}")
        if size is None or tflags is None:
            raise NbdError(f"the NBD export {self.label} did not say its size")
        self.size: int = size
        self.flags: int = tflags

    # ------------------------------------------------------------------ transmission

    def _request(self, cmd: int, offset: int, length: int, flags: int = 0) -> int:
        self._cookie += 1
        self.sock.sendall(
            struct.pack(">IHHQQI", REQUEST_MAGIC, flags, cmd, self._cookie, offset, length)
        )
        return self._cookie

    def _chunk_header(self, cookie: int) -> tuple[int, int, int, int]:
        """``(magic, flags, type, length)`` of the next reply (simple replies: flags DONE)."""
        head = self._recv_exact(4)
        (magic,) = struct.unpack(">I", head)
        if magic == SIMPLE_REPLY:
            error, got = struct.unpack(">IQ", self._recv_exact(12))
            if got != cookie:
                raise NbdError(f"the NBD export {self.label} answered out of order")
            return magic, REPLY_FLAG_DONE, error, 0
        if magic != STRUCTURED_REPLY:
            raise NbdError(f"the NBD export {self.label} sent a bad reply magic")
        flags, rtype, got, length = struct.unpack(">HHQI", self._recv_exact(16))
        if got != cookie:
            raise NbdError(f"the NBD export {self.label} answered out of order")
        return magic, flags, rtype, length

    def _raise_chunk_error(self, rtype: int, payload: bytes, what: str) -> None:
        (err,) = struct.unpack(">I", payload[:4])
        (mlen,) = struct.unpack(">H", payload[4:6]) if len(payload) >= 6 else (0,)
        msg = payload[6 : 6 + mlen].decode("utf-8", "replace")
        name = _ERRORS.get(err, f"errno {err}")
        raise NbdError(
            f"the NBD export {self.label} failed {what}: {name}" + (f" ({msg})" if msg else "")
        )

    def read_into(self, offset: int, out: memoryview) -> None:
        """Fill ``out`` with the export's bytes from ``offset`` (requests of 32 MiB at most)."""
        pos = 0
        while pos < len(out):
            n = min(MAX_REQUEST, len(out) - pos)
            self._read_one(offset + pos, out[pos : pos + n])
            pos += n

    def _read_one(self, offset: int, out: memoryview) -> None:
        if offset < 0 or offset + len(out) > self.size:
            raise NbdError(f"read of {len(out)} bytes at {offset} is outside {self.label}")
        with self._lock:
            flags = CMD_FLAG_DF if self.flags & TFLAG_SEND_DF else 0
            cookie = self._request(CMD_READ, offset, len(out), flags)
            covered = 0
            while True:
                magic, cflags, rtype, length = self._chunk_header(cookie)
                if magic == SIMPLE_REPLY:
                    if rtype:
                        name = _ERRORS.get(rtype, f"errno {rtype}")
                        raise NbdError(f"the NBD export {self.label} failed a read: {name}")
                    self._recv_into(out)
                    return
                if rtype == REPLY_OFFSET_DATA:
                    (at,) = struct.unpack(">Q", self._recv_exact(8))
                    k, n = at - offset, length - 8
                    if k < 0 or k + n > len(out):
                        raise NbdError(f"the NBD export {self.label} sent data outside a read")
                    self._recv_into(out[k : k + n])
                    covered += n
                elif rtype == REPLY_OFFSET_HOLE:
                    at, n = struct.unpack(">QI", self._recv_exact(12))
                    k = at - offset
                    if k < 0 or k + n > len(out):
                        raise NbdError(f"the NBD export {self.label} sent a hole outside a read")
                    out[k : k + n] = bytes(n)
                    covered += n
                elif rtype & REPLY_ERROR_BIT:
                    self._raise_chunk_error(rtype, self._recv_exact(length), "a read")
                else:
                    self._recv_exact(length)  # NONE, or a type a read does not use
                if cflags & REPLY_FLAG_DONE:
                    break
            if covered != len(out):
                raise NbdError(f"the NBD export {self.label} answered a read incompletely")

    def block_status(self, context: str, offset: int = 0, length: int | None = None) -> np.ndarray:
        """Extents ``(offset, length, flags)`` (int64, shape (n, 3)) of ``context`` over
        ``[offset, offset + length)``, in order, covering it whole."""
        if context not in self.contexts:
            raise NbdError(f"the NBD export {self.label} does not offer {context!r}")
        cid = self.contexts[context]
        end = self.size if length is None else offset + length
        pieces: list[np.ndarray] = []
        pos = offset
        while pos < end:
            span = min(BLOCK_STATUS_SPAN, end - pos)
            got = self._block_status_one(cid, pos, span)
            if not got.size:
                raise NbdError(f"the NBD export {self.label} answered block status with nothing")
            lengths = got[:, 0]
            offs = pos + np.concatenate(([0], np.cumsum(lengths)[:-1]))
            part = np.stack([offs, lengths, got[:, 1]], axis=1)
            stop = offs[-1] + lengths[-1]
            if stop > end:  # the last extent may reach beyond the span asked for
                part[-1, 1] = end - part[-1, 0]
                stop = end
            pieces.append(part)
            pos = int(stop)
        if not pieces:
            return np.empty((0, 3), np.int64)
        return np.concatenate(pieces).astype(np.int64)

    def _block_status_one(self, cid: int, offset: int, length: int) -> np.ndarray:
        with self._lock:
            cookie = self._request(CMD_BLOCK_STATUS, offset, length)
            found = np.empty((0, 2), np.int64)
            while True:
                magic, cflags, rtype, size = self._chunk_header(cookie)
                if magic == SIMPLE_REPLY:
                    raise NbdError(
                        f"the NBD export {self.label} failed block status: "
                        + _ERRORS.get(rtype, f"errno {rtype}")
                    )
                payload = self._recv_exact(size)
                if rtype == REPLY_BLOCK_STATUS:
                    (got_id,) = struct.unpack(">I", payload[:4])
                    if got_id == cid:
                        arr = np.frombuffer(payload, ">u4", offset=4).astype(np.int64)
                        found = arr.reshape(-1, 2)
                elif rtype & REPLY_ERROR_BIT:
                    self._raise_chunk_error(rtype, payload, "block status")
                if cflags & REPLY_FLAG_DONE:
                    break
            return found

    def close(self) -> None:
        """Say goodbye (``NBD_CMD_DISC``) and close the socket."""
        sock, self.sock = getattr(self, "sock", None), None
        if sock is None:
            return
        try:
            with self._lock:
                sock.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_DISC, 0, 0, 0))
        except OSError:
            pass
        finally:
            sock.close()

    def __enter__(self) -> NbdClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
