"""A small NBD client of the project's own: reading what an NBD export (``qemu-nbd``,
``qemu-storage-daemon``, nbdkit) holds, and its block status (holes from
``base:allocation``, QEMU dirty bitmaps from ``qemu:dirty-bitmap:NAME``).

Our own because PyPI has no libnbd bindings and Debian's ``python3-libnbd`` is importable
only by the system interpreter; the protocol subset a backup needs (fixed newstyle
handshake, STARTTLS, structured replies, meta contexts, READ, BLOCK_STATUS) is small and is
tested against a real ``qemu-nbd`` (docs/change-sources.md). ``qmp`` and ``fleece`` drive a
running QEMU for a disk in use: a point-in-time (fleecing) view of it, exported over NBD.
"""

from .client import NbdClient, NbdError
from .uri import NbdAddress, is_nbd_uri, parse_nbd_uri

__all__ = ["NbdAddress", "NbdClient", "NbdError", "is_nbd_uri", "parse_nbd_uri"]
