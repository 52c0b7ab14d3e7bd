"""``cinderblock bench``: measure each phase of a backup on the user's own device or image.

Phases, each over the same bytes (the first ``limit`` bytes of the source):

    read (buffered)     preadv into one reusable buffer, through the page cache
    read (O_DIRECT)     the same, bypassing the page cache: what the device itself delivers
    read + hash         engine.native.scan_file (keyed XXH3-128 and zero test, all threads)
    compress            zstd at the configured level on the engine's blocks, all workers
    backup (e2e)        a full backup into a scratch repository, deleted afterwards; of a
                        source larger than ``limit``, of its first ``limit`` bytes, read
                        through a read-only loop device limited to them (root only)
    backup to STORE     with ``store`` (``--repo swift://…`` or ``s3://…``): the same full
    incr. to STORE      backup into a scratch repository under a fresh prefix of that
                        container or bucket, then an incremental of the unchanged source;
                        for each the requests the store layer made, the objects written and
                        objects per TiB. The scratch prefix is removed afterwards.

For each: MB/s, CPU seconds per GB, and which phase bounds the backup: the slowest of the
phases a backup of this source goes through (the page-cache read for an image file, the
``O_DIRECT`` read for a block device, hashing and compression). The source is opened
read-only; nothing is ever written to it.

Every phase that reads starts cold: the source's pages are first dropped from the page cache
(``POSIX_FADV_DONTNEED``, which only forgets clean cached copies). Otherwise the first phase
would pay for the device and every later one would read memory, and the "bottleneck" would
only say which phase ran first. The compress phase alone reads what ``read + hash`` has just
cached, so that it measures compression rather than the device.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import stat
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import zstandard

from . import native, oscalls

ALIGN = 4096


@dataclass
class Phase:
    name: str
    nbytes: int
    seconds: float
    cpu_seconds: float
    note: str = ""
    used: bool = True  # a backup of this source goes through this phase
    requests: int | None = None  # HTTP requests the store layer made (object stores)
    objects: int | None = None  # stored objects (blobs) the backup added to the store
    block_objects: int | None = None  # block objects it wrote (entries of packs in format 2)

    @property
    def objects_per_tib(self) -> float | None:
        """Objects written per TiB of source read: what the store's object count grows by."""
        if self.objects is None or self.nbytes <= 0:
            return None
        return self.objects * (1 << 40) / self.nbytes

    @property
    def measured(self) -> bool:
        return self.seconds > 0 and self.nbytes > 0

    @property
    def mb_per_s(self) -> float | None:
        """None when the phase was not measured (skipped, unsupported): never infinity."""
        return self.nbytes / self.seconds / 1e6 if self.measured else None

    @property
    def cpu_per_gb(self) -> float | None:
        return self.cpu_seconds / (self.nbytes / 1e9) if self.measured else None

    def as_dict(self) -> dict:
        """The JSON form: strictly valid JSON (no NaN or Infinity)."""
        return {
            "name": self.name,
            "nbytes": self.nbytes,
            "seconds": self.seconds,
            "cpu_seconds": self.cpu_seconds,
            "mb_per_s": self.mb_per_s,
            "cpu_per_gb": self.cpu_per_gb,
            "used_by_backup": self.used,
            "note": self.note,
            "requests": self.requests,
            "objects": self.objects,
            "block_objects": self.block_objects,
            "objects_per_tib": self.objects_per_tib,
        }


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _measure(name: str, nbytes: int, fn: Callable[[], object], note: str = "") -> Phase:
    c0, t0 = _cpu(), time.perf_counter()
    fn()
    return Phase(name, nbytes, time.perf_counter() - t0, _cpu() - c0, note)


def drop_cached(path: str, limit: int) -> None:
    """Forget the page cache's clean copies of the first ``limit`` bytes of ``path``.

    Read-only: nothing is written to the source (dirty pages, which a read-only benchmark
    never makes, would simply stay)."""
    fd = oscalls.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.posix_fadvise(fd, 0, limit, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _read_all(path: str, limit: int, direct: bool, window: int) -> None:
    flags = os.O_RDONLY | os.O_CLOEXEC | (os.O_DIRECT if direct else 0)
    fd = oscalls.open(path, flags)
    try:
        raw = np.empty(window + ALIGN, np.uint8)
        skew = (-raw.ctypes.data) % ALIGN
        buf = memoryview(raw[skew : skew + window])
        off = 0
        while off < limit:
            n = os.preadv(fd, [buf[: min(window, limit - off)]], off)
            if n <= 0:
                break
            off += n
    finally:
        os.close(fd)


def _compress_sample(path: str, limit: int, block_size: int, level: int, workers: int) -> int:
    """Compress the blocks of the first ``limit`` bytes as the engine does; return bytes out."""
    local = threading.local()

    def one(offset: int) -> int:
        c = getattr(local, "c", None) or zstandard.ZstdCompressor(level=level)
        local.c = c
        with open(path, "rb", buffering=0) as f:
            f.seek(offset)
            data = f.read(min(block_size, limit - offset))
        return len(c.compress(data))

    with ThreadPoolExecutor(workers) as pool:
        return sum(pool.map(one, range(0, limit, block_size)))


def run_bench(
    source: str,
    *,
    limit: int = 4 << 30,
    block_size: int = 1 << 20,
    level: int = 3,
    workers: int = 2,
    scratch: str | None = None,
    store: str | None = None,
) -> list[Phase]:
    """The phases of the module docstring; ``store``: a ``swift://``/``s3://`` URL whose
    container or bucket must exist (a scratch prefix of it is written, then removed)."""
    if store is not None:
        store = _check_store_url(store)
    size = native.volume_size(source)
    n = min(size, limit)
    n -= n % ALIGN
    if n <= 0:
        raise ValueError(f"{source} is smaller than {ALIGN} bytes: nothing to measure")
    window = native.DEFAULT_WINDOW_BYTES
    # The data path reads a block device with O_DIRECT and an image file through the page
    # cache: only that read is a phase of this source's backups.
    device = stat.S_ISBLK(os.stat(source).st_mode)
    drop_cached(source, n)
    phases = [_measure("read (buffered)", n, lambda: _read_all(source, n, False, window))]
    try:
        drop_cached(source, n)
        phases.append(_measure("read (O_DIRECT)", n, lambda: _read_all(source, n, True, window)))
    except OSError as e:
        phases.append(Phase("read (O_DIRECT)", n, 0.0, 0.0, f"unsupported here: {e.strerror}"))
    unused = phases[0] if device else phases[1]
    unused.used = False
    kind = "a block device" if device else "an image file"
    unused.note = (unused.note + "; " if unused.note else "") + f"not used for {kind}"
    nblocks = n // block_size
    drop_cached(source, n)
    phases.append(
        _measure(
            "read + hash",
            nblocks * block_size,
            lambda: native.scan_file(source, block_size, 1, 0, nblocks, threads=workers),
        )
    )
    out = {"bytes": 0}
    p = _measure(
        f"compress (zstd -{level})",
        n,
        lambda: out.update(bytes=_compress_sample(source, n, block_size, level, workers)),
    )
    p.note = f"ratio {n / max(1, out['bytes']):.2f}"
    phases.append(p)
    if size <= limit:
        drop_cached(source, size)
        phases.append(_backup_phase(source, size, block_size, level, workers, scratch))
        if store is not None:
            drop_cached(source, size)
            phases += _store_phases(source, size, block_size, level, workers, scratch, store)
        return phases
    try:
        with _first_bytes(source, n) as part:
            drop_cached(source, n)
            drop_cached(part, n)
            p = _backup_phase(part, n, block_size, level, workers, scratch)
            p.note = f"first {n} bytes (read-only loop device); {p.note}"
            phases.append(p)
            if store is not None:
                drop_cached(part, n)
                for p in _store_phases(part, n, block_size, level, workers, scratch, store):
                    p.note = f"first {n} bytes; {p.note}"
                    phases.append(p)
    except _NoLoopDevice as e:
        phases.append(Phase("backup (e2e)", 0, 0.0, 0.0, f"skipped: {e}"))
    return phases


def _check_store_url(store: object) -> str:
    from .store import is_url, parse_location

    if not is_url(store):
        raise ValueError(
            f"bench measures an object store given as swift://CONTAINER[/PREFIX] or "
            f"s3://BUCKET[/PREFIX], not {store!r}"
        )
    parse_location(store)  # ValueError saying what is accepted
    return str(store)


def _scratch_url(store: str) -> str:
    """A fresh prefix of the store's container or bucket: the bench's own repository."""
    from .store import parse_location

    loc = parse_location(store)
    prefix = f"{loc.prefix}/" if loc.prefix else ""
    return f"{loc.scheme}://{loc.name}/{prefix}cinderblock-bench-{uuid.uuid4().hex[:12]}"


def _store_phases(source, size, block_size, level, workers, scratch, store) -> list[Phase]:
    """A full backup, then an incremental of the unchanged source, into a scratch
    repository on the object store; requests counted at the store layer (retries too)."""
    from .engine import BackupEngine
    from .store import open_store

    url = _scratch_url(store)
    blobs = open_store(url)
    blobs.ensure_ready(create=False)  # a mistyped container is an error, never created
    where = store.split("://", 1)[0]
    root = tempfile.mkdtemp(prefix="cinderblock-bench-", dir=scratch)
    phases = []
    try:
        eng = BackupEngine.open(
            blobs,
            workers=workers,
            block_size=block_size,
            compression_level=level,
            catalog_path=os.path.join(root, "catalog.sqlite"),
        )
        try:
            vid = str(uuid.uuid4())
            eng.register_volume("bench", vid, source, attached=False)
            for name, incremental in ((f"backup to {where}", False), (f"incr. to {where}", True)):
                holder: dict = {}
                stored_before = sum(1 for _k in blobs.keys(""))
                before = blobs.requests

                def backup(incremental=incremental, holder=holder) -> None:
                    body = {"backup": {"volume_id": vid, "incremental": incremental}}
                    bid = eng.create_backup("bench", body)["backup"]["id"]
                    holder["done"] = eng.wait(bid)

                p = _measure(name, size, backup)
                p.requests = blobs.requests - before  # the backup's own requests only
                stored_after = sum(1 for _k in blobs.keys(""))
                done = holder["done"]
                if done["status"] != "available":
                    p.note = f"failed: {done['fail_reason']}"
                else:
                    stats = done["stats"]
                    p.objects = stored_after - stored_before
                    p.block_objects = stats["objects_written"]
                    p.note = (
                        f"stored {stats['bytes_stored'] / 1e6:.1f} MB; {p.requests} requests, "
                        f"{p.objects} objects ({p.objects_per_tib:.0f} per TiB) holding "
                        f"{p.block_objects} block objects"
                    )
                phases.append(p)
        finally:
            eng.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
        try:
            blobs.delete_many(list(blobs.keys("")))
        except Exception as e:  # noqa: BLE001 - the measurement stands; say what is left
            phases.append(Phase("cleanup", 0, 0.0, 0.0, f"could not remove {url}: {e}"))
    return phases


class _NoLoopDevice(Exception):
    pass


@contextlib.contextmanager
def _first_bytes(source: str, n: int) -> Iterator[str]:
    """A read-only loop device over the first ``n`` bytes of ``source``; detached after.

    The data path backs up whole sources; a loop device limited with ``--sizelimit`` is a
    real block device holding exactly the measured bytes, and cannot write to the source.
    """
    losetup = shutil.which("losetup")
    why = None
    if os.geteuid() != 0:
        why = "needs root"
    elif losetup is None:
        why = "needs losetup (util-linux)"
    if why is None:
        proc = subprocess.run(
            [losetup, "--find", "--show", "--read-only", "--sizelimit", str(n), source],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if proc.returncode != 0:
            why = f"losetup failed: {proc.stderr.strip()}"
    if why is not None:
        raise _NoLoopDevice(
            f"the source is larger than --limit; measuring its first {n} bytes end to end "
            f"{why} (or pass a --limit of at least its size)"
        )
    device = proc.stdout.strip()
    try:
        yield device
    finally:
        subprocess.run([losetup, "-d", device], capture_output=True, timeout=60, check=False)


def _backup_phase(source, size, block_size, level, workers, scratch) -> Phase:
    from .engine import BackupEngine

    root = tempfile.mkdtemp(prefix="cinderblock-bench-", dir=scratch)
    try:
        eng = BackupEngine.open(
            os.path.join(root, "repo"),
            workers=workers,
            block_size=block_size,
            compression_level=level,
        )
        try:
            vid = str(uuid.uuid4())
            eng.register_volume("bench", vid, source, attached=False)
            holder: dict = {}

            def backup() -> None:
                bid = eng.create_backup("bench", {"backup": {"volume_id": vid}})["backup"]["id"]
                holder["done"] = eng.wait(bid)

            p = _measure("backup (e2e)", size, backup)
            done = holder["done"]
            if done["status"] != "available":
                p.note = f"failed: {done['fail_reason']}"
            else:
                stored = done["stats"]["bytes_stored"]
                p.note = f"stored {stored / 1e6:.1f} MB"
            return p
        finally:
            eng.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def bottleneck(phases: list[Phase]) -> str:
    """The slowest of the phases a backup of this source is made of (its kind of read,
    hashing, compression); the end-to-end backup is their sum, not a phase."""
    parts = [p for p in phases if p.measured and p.used and not p.name.startswith("backup")]
    if not parts:
        return "unknown"
    return min(parts, key=lambda p: p.nbytes / p.seconds).name


def as_json(source: str, phases: list[Phase], store: str | None = None) -> dict:
    body = {
        "source": source,
        "phases": [p.as_dict() for p in phases],
        "bottleneck": bottleneck(phases),
    }
    if store is not None:
        body["store"] = store  # a URL never holds a credential (engine/store/url.py)
    return body


def format_table(source: str, phases: list[Phase]) -> str:
    lines = [
        f"cinderblock bench {source} (read-only: nothing is written to it; each phase but"
        " compress starts with the source dropped from the page cache)",
        f"{'phase':<22}{'MB/s':>10}{'CPU s/GB':>10}  note",
    ]
    for p in phases:
        speed = f"{p.mb_per_s:10.0f}" if p.mb_per_s is not None else f"{'-':>10}"
        cpu = f"{p.cpu_per_gb:10.2f}" if p.cpu_per_gb is not None else f"{'-':>10}"
        lines.append(f"{p.name:<22}{speed}{cpu}  {p.note}")
    lines.append(f"bottleneck: {bottleneck(phases)}")
    return "\n".join(lines)
