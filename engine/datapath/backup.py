"""Back up one volume: read windows, keep the blocks that changed, store each once.

Flow per window (``engine.native.BlockReader.read``): the kernel has already hashed and
zero-flagged every block; ``diff`` against the parent's manifest picks the changed ones; zero
blocks cost nothing further; a changed data block whose object the container already holds is
deduplicated; the rest are compressed and staged by the same thread, straight from the
window's buffer (zstd, the reads and the file writes release the GIL). A few such threads
share the windows, so every core reads, hashes and compresses. Memory is one window buffer
per thread, never a function of the volume size.

With a ``changed`` mask (from changed extents), only those blocks are read; every other block
is inherited from the parent's manifest.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .. import native
from ..errors import Cancelled
from ..repository import BlockMap, Container
from .fanout import fan_out


@dataclass
class BackupStats:
    bytes_read: int = 0
    bytes_stored: int = 0
    blocks_total: int = 0
    blocks_read: int = 0
    blocks_changed: int = 0
    blocks_zero: int = 0
    objects_written: int = 0
    changed_extents_used: bool = False  # a change set limited what was read
    changes_refused: str | None = None  # why a change set given was not used

    def as_dict(self) -> dict[str, int | bool | str]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class BackupJob:
    project_id: str
    container: str
    backup_id: str
    source_path: str | int
    volume_size: int
    block_size: int
    parent: BlockMap | None = None
    changed: np.ndarray | None = None  # blocks to read; None reads every block
    zeroed: np.ndarray | None = None  # blocks known to be zeros: never read
    workers: int = 2
    window_bytes: int = native.DEFAULT_WINDOW_BYTES
    progress: Callable[[float], None] = field(default=lambda fraction: None)
    cancel: threading.Event | None = None  # set: stop at the next window (Cancelled)


class _Store:
    """Compress and stage blocks, publishing them durably in batches.

    ``store`` runs on the pipeline's worker threads: each compresses and stages the blocks
    of the window it has just read (zstd and the file writes release the GIL). Staged bytes
    are published (one ``syncfs``, then a ``link`` per object) every ``PUBLISH_BYTES``, so
    unpublished work stays bounded whatever the volume size.

    Publication runs on a thread of its own, so no core waits for the disk: one batch
    publishes while the next one stages; a batch that fills before its predecessor is
    durable waits for it, so at most two batches are ever unpublished.
    """

    PUBLISH_BYTES = 256 << 20

    def __init__(
        self, container: Container, known: set[bytes], job: BackupJob, stats: BackupStats
    ) -> None:
        self.container = container
        self.known = known
        self.job = job
        self.stats = stats
        self.batch = container.batch()
        self.publisher = ThreadPoolExecutor(1, thread_name_prefix="cb-publish")
        self.publishing: Future | None = None
        self._publish_lock = threading.Lock()
        self._seen_lock = threading.Lock()
        self.seen: set[bytes] = set()

    def store(self, digest: bytes, data: memoryview) -> None:
        """Compress and stage one block unless this backup or the container has it."""
        with self._seen_lock:
            if digest in self.seen:
                return
            self.seen.add(digest)
        if digest in self.known:
            return
        parts = self.container.codec.encode_parts(data, digest)
        self.batch.stage(self.container.object_key(digest), parts)
        if self.batch.pending_bytes >= self.PUBLISH_BYTES:
            with self._publish_lock:
                if self.batch.pending_bytes >= self.PUBLISH_BYTES:
                    self._wait_published()
                    self.publishing = self.publisher.submit(self._publish)

    def _publish(self) -> None:
        for _key, size in self.batch.commit():
            self.stats.bytes_stored += size
            self.stats.objects_written += 1

    def _wait_published(self) -> None:
        """Wait for the batch being published; its failure fails the backup."""
        if self.publishing is not None:
            fut, self.publishing = self.publishing, None
            fut.result()

    def finish(self) -> None:
        """Publish everything still staged; the backup's objects are then all durable."""
        try:
            self._wait_published()
        finally:
            self.publisher.shutdown(wait=True)
        self._publish()

    def abort(self) -> None:
        # A batch being published finishes (its objects are durable and useful to a rerun);
        # whatever is still only staged is removed.
        with contextlib.suppress(Exception):
            self._wait_published()
        self.publisher.shutdown(wait=True)
        self.batch.discard()


def run_backup(container: Container, job: BackupJob) -> tuple[BlockMap, BackupStats]:
    """Store the volume's changed blocks and return its complete manifest (not yet written).

    Which blocks are read, cheapest knowledge first: a changed-extents hint limits reading to
    the hinted blocks (the rest is inherited from the parent); blocks the hint says are
    zeros are zero blocks, never read; the sparse map of a regular file removes holes (they
    are zero blocks, never read); everything else is read, hashed and compared with the
    parent.
    """
    bs = job.block_size
    nblocks = -(-job.volume_size // bs)
    stats = BackupStats(blocks_total=nblocks)
    digests = np.empty((nblocks, native.DIGEST_SIZE), np.uint8)
    digests[:] = np.frombuffer(native.zero_digest(bs, container.seed), np.uint8)
    zero = np.ones(nblocks, np.bool_)
    parent = job.parent
    # Blocks whose object was found damaged or missing (verify, restore) must not be
    # inherited: they are read and stored again, which heals every backup sharing them.
    # The container's objects, listed once for the whole job: dedup never asks per block.
    known = container.known()
    damaged = container.quarantined(known) if parent else set()
    if job.changed is not None and parent is not None:
        # Inherit everything, then read what the hint says changed.
        common = min(nblocks, parent.nblocks)
        digests[:common] = parent.digests[:common]
        zero[:common] = parent.zero[:common]
        to_read = job.changed.copy()
        for d in damaged:
            hit = np.all(parent.digests[:common] == np.frombuffer(d, np.uint8), axis=1)
            to_read[:common] |= hit & ~parent.zero[:common]
    else:
        to_read = np.ones(nblocks, np.bool_)
    if job.zeroed is not None:
        # The source says these blocks are zeros now (zeroed extents covering them whole):
        # they are zero blocks without a read, and nothing of the parent's is inherited.
        zero[job.zeroed] = True
        to_read &= ~job.zeroed
    if os.path.isfile(job.source_path):
        holes = to_read & ~native.data_blocks(job.source_path, bs)
        zero[holes] = True
        to_read &= ~holes
    total = max(1, native.mask_count(to_read))

    store = _Store(container, known, job, stats)
    try:
        with _open_reader(job, container.seed, native.mask_to_runs(to_read)) as reader:
            done = _pipeline(reader, job, total, parent, digests, zero, store, damaged)
            stats.bytes_read = reader.bytes_read
        store.finish()
    except BaseException:
        store.abort()
        raise
    stats.blocks_read = int(done)
    stats.blocks_zero = int(np.count_nonzero(zero))
    if parent is not None:
        stats.blocks_changed = native.mask_count(
            native.diff(digests, zero, parent.digests, parent.zero)
        )
    else:
        stats.blocks_changed = nblocks - stats.blocks_zero
    manifest = BlockMap(
        backup_id=job.backup_id,
        parent_id=None if parent is None else parent.backup_id,
        block_size=bs,
        volume_size=job.volume_size,
        digests=digests,
        zero=zero,
    )
    return manifest, stats


def _open_reader(job: BackupJob, seed: int, runs: np.ndarray) -> native.BlockReader:
    """The volume's reader: ``O_DIRECT`` for block devices, the page cache for image files.

    A nightly backup of a block device reads all of it once; through the page cache that
    would evict everything the host had cached (the running guests' data included) for
    bytes nobody reads again. Direct reads also skip a copy per byte. Image files keep the
    page cache: their holes are skipped anyway, and an image being backed up is often still
    cached from its last use. A device that refuses ``O_DIRECT`` is read buffered.
    """

    def reader(direct: bool) -> native.BlockReader:
        return native.BlockReader(
            job.source_path,
            job.block_size,
            seed,
            direct=direct,
            runs=runs,
            window_bytes=job.window_bytes,
        )

    if _is_block_device(job.source_path):
        try:
            return reader(True)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
    return reader(False)


def _is_block_device(source: str | int) -> bool:
    try:
        return stat.S_ISBLK(os.stat(source).st_mode)
    except (OSError, ValueError):
        return False


def _pipeline(
    reader: native.BlockReader,
    job: BackupJob,
    total: int,
    parent: BlockMap | None,
    digests: np.ndarray,
    zero: np.ndarray,
    store: _Store,
    damaged: set[bytes],
) -> int:
    """Run the windows on ``job.workers + 1`` threads; return the number of blocks read.

    Each thread takes the next window, reads and hashes it (native, GIL released), then
    compresses and stages its changed blocks itself. A window's bytes are compressed on the
    core that just read them, while they are still in its cache, and are never copied or
    queued between threads; memory is one window buffer per thread. Windows are handed out
    in order, so the source is still read front to back. One thread more than ``workers``
    keeps every core compressing while some thread waits for the source, the disk or the
    GIL (measured on 2 cores: 2.6 s instead of 2.75 s for a 2 GiB full backup).
    """

    def window(span: tuple[int, int]) -> int:
        if job.cancel is not None and job.cancel.is_set():
            raise Cancelled("the backup was cancelled")
        w = reader.read(*span)
        for i in _blocks_to_store(w, parent, digests, zero, damaged):
            store.store(bytes(w.digests[i]), w.block(i))
        return w.count

    return fan_out(
        reader.spans(),
        job.workers + 1,
        window,
        name="cb-backup",
        progress=lambda done: job.progress(done / total),
    )


def _blocks_to_store(w, parent, digests, zero, damaged: set[bytes]) -> list[int]:
    """Record a window's digests; return the indices of its blocks that must be stored."""
    lo, hi = w.first_block, w.first_block + w.count
    digests[lo:hi] = w.digests
    zero[lo:hi] = w.zero
    if parent is not None:
        p_hi = min(hi, parent.nblocks)
        p_lo = min(lo, p_hi)
        changed = native.diff(w.digests, w.zero, parent.digests[p_lo:p_hi], parent.zero[p_lo:p_hi])
    else:
        changed = ~w.zero
    store = changed & ~w.zero
    if damaged:
        for i in np.flatnonzero(~store & ~w.zero).tolist():
            store[i] = bytes(w.digests[i]) in damaged
    return np.flatnonzero(store).tolist()
