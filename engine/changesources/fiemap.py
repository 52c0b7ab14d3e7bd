"""``FS_IOC_FIEMAP`` from Python: a file's extents as numpy arrays (no object per extent).

``struct fiemap`` is ``=QQIIII`` (start, length, flags, mapped, count, reserved) followed by
``count`` ``struct fiemap_extent`` of ``=QQQQQIIII`` (logical, physical, length, 2 reserved,
flags, 3 reserved). ``FIEMAP_FLAG_SYNC`` flushes the file first: without it a reflinked
file's pending writes still show the old, shared physical address, and a change is missed.
"""

from __future__ import annotations

import fcntl
import struct

import numpy as np

FS_IOC_FIEMAP = 0xC020660B
FLAG_SYNC = 0x1
EXTENT_LAST = 0x1
EXTENT_UNKNOWN = 0x2
EXTENT_DELALLOC = 0x4
EXTENT_ENCODED = 0x8
EXTENT_DATA_ENCRYPTED = 0x80
EXTENT_NOT_ALIGNED = 0x100
EXTENT_DATA_INLINE = 0x200
EXTENT_DATA_TAIL = 0x400
EXTENT_UNWRITTEN = 0x800
EXTENT_SHARED = 0x2000

_HEADER = struct.Struct("=QQIIII")
EXTENT = np.dtype(
    [
        ("logical", "<u8"),
        ("physical", "<u8"),
        ("length", "<u8"),
        ("r1", "<u8"),
        ("r2", "<u8"),
        ("flags", "<u4"),
        ("r3", "<u4"),
        ("r4", "<u4"),
        ("r5", "<u4"),
    ]
)
assert EXTENT.itemsize == 56
BATCH = 8192


def fiemap(fd: int, *, sync: bool = True) -> np.ndarray:
    """Every extent of the open file ``fd`` (structured array of ``EXTENT``), in order."""
    out = []
    start = 0
    flags = FLAG_SYNC if sync else 0
    while True:
        buf = bytearray(_HEADER.size + BATCH * EXTENT.itemsize)
        _HEADER.pack_into(buf, 0, start, (1 << 64) - 1 - start, flags, 0, BATCH, 0)
        fcntl.ioctl(fd, FS_IOC_FIEMAP, buf, True)
        mapped = _HEADER.unpack_from(buf, 0)[3]
        if not mapped:
            break
        ext = np.frombuffer(bytes(buf), EXTENT, count=mapped, offset=_HEADER.size).copy()
        out.append(ext)
        last = ext[-1]
        if last["flags"] & EXTENT_LAST:
            break
        start = int(last["logical"] + last["length"])
        flags = 0  # flushed once is enough
    return np.concatenate(out) if out else np.empty(0, EXTENT)
