"""Back up one volume: read windows, keep the blocks that changed, store each once.

Flow per window (``engine.native.BlockReader``): the kernel has already hashed and
zero-flagged every block; ``diff`` against the parent's manifest picks the changed ones; zero
blocks cost nothing further; a changed data block whose object the container already holds is
deduplicated; the rest are compressed and written by a small thread pool (zstd and the file
writes release the GIL) while the reader moves on. In-flight blocks are bounded, so memory
depends on the window and queue sizes, never on the volume size.

With a ``changed`` mask (from changed extents), only those blocks are read; every other block
is inherited from the parent's manifest.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .. import native
from ..repository import LocalRepository, Manifest


@dataclass
class BackupStats:
    bytes_read: int = 0
    bytes_stored: int = 0
    blocks_total: int = 0
    blocks_read: int = 0
    blocks_changed: int = 0
    blocks_zero: int = 0
    objects_written: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class BackupJob:
    project_id: str
    container: str
    backup_id: str
    source_path: str | int
    volume_size: int
    block_size: int
    parent: Manifest | None = None
    changed: np.ndarray | None = None  # blocks to read; None reads every block
    workers: int = 2
    window_bytes: int = native.DEFAULT_WINDOW_BYTES
    progress: Callable[[float], None] = field(default=lambda fraction: None)


class _Writer:
    """Compress and stage blocks on a pool, publishing them durably in batches.

    Blocks in flight are bounded (the submitting reader waits for a slot), and staged bytes
    are published (one ``syncfs``, then a ``link`` per object) every ``PUBLISH_BYTES``, so
    memory and unpublished work both stay bounded whatever the volume size.
    """

    PUBLISH_BYTES = 256 << 20

    def __init__(self, repo: LocalRepository, job: BackupJob, stats: BackupStats) -> None:
        self.repo = repo
        self.job = job
        self.stats = stats
        self.batch = repo.object_batch(job.project_id, job.container)
        self.pool = ThreadPoolExecutor(job.workers, thread_name_prefix="cb-store")
        self.slots = threading.BoundedSemaphore(job.workers * 4)
        self.seen: set[bytes] = set()
        self.error: BaseException | None = None

    def submit(self, digest: bytes, data: bytes) -> None:
        if digest in self.seen:
            return
        self.seen.add(digest)
        if self.repo.has_object(self.job.project_id, self.job.container, digest):
            return
        if self.error is not None:
            raise self.error
        self.slots.acquire()
        fut = self.pool.submit(self._stage, digest, data)
        fut.add_done_callback(self._done)
        if self.batch.pending_bytes >= self.PUBLISH_BYTES:
            self._publish()

    def _stage(self, digest: bytes, data: bytes) -> None:
        blob = self.repo.codec.encode(data, digest)
        self.batch.stage(
            self.repo.layout.object(self.job.project_id, self.job.container, digest), blob
        )

    def _done(self, fut: Future) -> None:
        self.slots.release()
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None and self.error is None:
            self.error = exc

    def _publish(self) -> None:
        for _path, size in self.batch.publish():
            self.stats.bytes_stored += size
            self.stats.objects_written += 1

    def finish(self) -> None:
        self.pool.shutdown(wait=True)
        if self.error is not None:
            raise self.error
        self._publish()

    def abort(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.batch.discard()


def run_backup(repo: LocalRepository, job: BackupJob) -> tuple[Manifest, BackupStats]:
    """Store the volume's changed blocks and return its complete manifest (not yet written).

    Which blocks are read, cheapest knowledge first: a changed-extents hint limits reading to
    the hinted blocks (the rest is inherited from the parent); the sparse map of a regular
    file removes holes (they are zero blocks, never read); everything else is read, hashed
    and compared with the parent.
    """
    bs = job.block_size
    nblocks = -(-job.volume_size // bs)
    stats = BackupStats(blocks_total=nblocks)
    digests = np.empty((nblocks, native.DIGEST_SIZE), np.uint8)
    digests[:] = np.frombuffer(native.zero_digest(bs, repo.seed), np.uint8)
    zero = np.ones(nblocks, np.bool_)
    parent = job.parent
    # Blocks whose object was found damaged or missing (verify, restore) must not be
    # inherited: they are read and stored again, which heals every backup sharing them.
    damaged = repo.quarantined_digests(job.project_id, job.container) if parent else set()
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
    if os.path.isfile(job.source_path):
        holes = to_read & ~native.data_blocks(job.source_path, bs)
        zero[holes] = True
        to_read &= ~holes
    total = max(1, native.mask_count(to_read))

    writer = _Writer(repo, job, stats)
    done = 0
    try:
        with native.BlockReader(
            job.source_path,
            bs,
            repo.seed,
            runs=native.mask_to_runs(to_read),
            window_bytes=job.window_bytes,
            prefetch=job.workers,
        ) as reader:
            for w in reader:
                _take_window(w, parent, digests, zero, writer, damaged)
                done += w.count
                job.progress(done / total)
            stats.bytes_read = reader.bytes_read
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    stats.blocks_read = int(done)
    stats.blocks_zero = int(np.count_nonzero(zero))
    if parent is not None:
        stats.blocks_changed = native.mask_count(
            native.diff(digests, zero, parent.digests, parent.zero)
        )
    else:
        stats.blocks_changed = nblocks - stats.blocks_zero
    manifest = Manifest(
        backup_id=job.backup_id,
        parent_id=None if parent is None else parent.backup_id,
        block_size=bs,
        volume_size=job.volume_size,
        digests=digests,
        zero=zero,
    )
    return manifest, stats


def _take_window(w, parent, digests, zero, writer: _Writer, damaged: set[bytes]) -> None:
    """Record a window's digests and hand its changed data blocks to the writer."""
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
    for i in np.flatnonzero(store).tolist():
        writer.submit(bytes(w.digests[i]), bytes(w.block(i)))
