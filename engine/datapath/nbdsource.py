"""An NBD export as a backup source: what a guest sees, holes from ``base:allocation``.

``backup_volume("nbd+unix:///?socket=/run/disk.sock", ...)`` reads a qcow2 image (or any
image) through the ``qemu-nbd`` that serves it, so the backup holds the guest's view, not
the host file's clusters. The export is read through one connection (``engine.nbd``) in the
same windows as any other source and hashed by the same native kernel, so a chain may mix
NBD and file sources. Blocks the export reports as zero (``base:allocation`` bit 1) in
full are zero blocks, never read: the export's allocation does for NBD what
``SEEK_DATA`` does for an image file.
"""

from __future__ import annotations

import numpy as np

from .. import native, threads
from ..nbd import NbdClient, parse_nbd_uri
from .stream import FileObject

ALLOCATION = "base:allocation"
STATE_ZERO = 2  # base:allocation: bit 0 hole, bit 1 reads as zeros


class NbdFile(FileObject):
    """A :class:`FileObject` reading an NBD export (read-only; requests under one lock)."""

    def __init__(self, uri: str, *, contexts: tuple[str, ...] = ()) -> None:
        address = parse_nbd_uri(uri)
        wanted = (ALLOCATION, *[c for c in contexts if c != ALLOCATION])
        self.client = NbdClient(address, contexts=wanted)
        self.obj = self.client
        self.what = "source"
        self.uri = address.uri
        self.label = f"NBD export {address.uri}"
        self.lock = threads.Lock()
        self.size = self.client.size

    def measure(self) -> int:
        return self.client.size

    def read_at(self, offset: int, out: memoryview) -> int:
        n = min(len(out), max(0, self.size - offset))
        self.client.read_into(offset, out[:n])
        return n

    def write_at(self, offset: int, data: memoryview) -> None:
        raise OSError(f"{self.label} is a backup source: it is never written")

    def zero_runs(self, block_size: int) -> np.ndarray:
        """Runs ``(first, count)`` of the blocks the export says read as zeros in full."""
        if ALLOCATION not in self.client.contexts:
            return np.empty((0, 2), np.int64)
        ext = self.client.block_status(ALLOCATION)
        return covered_runs(ext[ext[:, 2] & STATE_ZERO != 0], block_size, self.size)

    def data_runs(self, block_size: int, within: np.ndarray) -> np.ndarray:
        """``within`` without the blocks that read as zeros (they need no read)."""
        return native.runs_difference(within, self.zero_runs(block_size))

    def close(self) -> None:
        self.client.close()


def covered_runs(extents: np.ndarray, bs: int, volume_size: int) -> np.ndarray:
    """Runs of the blocks entirely inside ``extents`` (rows ``(offset, length, ...)`` in
    order, not overlapping); the short last block counts when they reach the end."""
    if not len(extents):
        return np.empty((0, 2), np.int64)
    starts = extents[:, 0]
    ends = starts + extents[:, 1]
    # Coalesce adjacent extents, then round inwards to whole blocks.
    new_run = np.ones(len(starts), np.bool_)
    new_run[1:] = starts[1:] > ends[:-1]
    first = np.flatnonzero(new_run)
    run_start = starts[first]
    run_end = np.maximum.reduceat(ends, first)
    nblocks = -(-volume_size // bs)
    lo = -(-run_start // bs)
    hi = np.where(run_end >= volume_size, nblocks, run_end // bs)
    keep = hi > lo
    return native.runs_normalize(np.stack([lo[keep], hi[keep] - lo[keep]], axis=1))
