"""Plain helpers for the backup-engine behaviour tests: images, mutations, expectations.

Everything here works on real files. Images are raw volume images with three kinds of
block: random data, explicit zeros (allocated but all-zero) and holes (never written). The
expectation helpers model what an engine that keeps every changed block once must report, so
tests can assert exact statistics instead of "something happened".
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import os
import random
import subprocess
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import pytest

from engine.errors import ApiError
from engine.requests.faults import http_status

KIB = 1024
MIB = 1024 * 1024
BS = 64 * KIB
PROJECT = "project-a"
OTHER_PROJECT = "project-b"
MV = "3.43"
TIMEOUT = 60

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


def new_id() -> str:
    return str(uuid.uuid4())


# --------------------------------------------------------------------------- images


def make_image(
    path: str | os.PathLike,
    size: int,
    *,
    bs: int = BS,
    data: Iterable[int] | None = None,
    zeros: Iterable[int] = (),
    seed: int = 0,
) -> bytes:
    """Write a sparse image of ``size`` bytes and return its bytes.

    ``data`` lists the blocks (of ``bs`` bytes) filled with random bytes (default: every
    block), ``zeros`` the blocks written with explicit zero bytes; every other block is a
    hole. Random bytes make every data block unique.
    """
    rng = random.Random(seed)
    nblocks = -(-size // bs)
    data = range(nblocks) if data is None else list(data)
    zeros = list(zeros)
    assert all(0 <= b < nblocks for b in [*data, *zeros]), "block index past the image end"
    with open(path, "wb") as f:
        f.truncate(size)
        for b in sorted(set(data)):
            n = min(bs, size - b * bs)
            f.seek(b * bs)
            f.write(rng.randbytes(n))
        for b in sorted(set(zeros)):
            n = min(bs, size - b * bs)
            f.seek(b * bs)
            f.write(bytes(n))
    return read_bytes(path)


def punch_hole(path: str | os.PathLike, offset: int, length: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        if _libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length):
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


def mutate(
    path: str | os.PathLike,
    changes: Mapping[int, str],
    *,
    bs: int = BS,
    seed: int = 1,
) -> bytes:
    """Change blocks in place and return the new image bytes.

    ``changes`` maps a block index to ``"random"`` (new random bytes for the whole block),
    ``"partial"`` (one random byte run inside the block), ``"zero"`` (written zeros) or
    ``"hole"`` (deallocated). The image size never changes.
    """
    rng = random.Random(seed)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        for b, kind in sorted(changes.items()):
            start = b * bs
            n = min(bs, size - start)
            assert n > 0, f"block {b} is past the end of {path}"
            if kind == "random":
                f.seek(start)
                f.write(rng.randbytes(n))
            elif kind == "partial":
                off = rng.randrange(n)
                run = min(n - off, 17)
                f.seek(start + off)
                old = f.read(run)
                new = bytes((x ^ 0x5A) or 1 for x in old)
                f.seek(start + off)
                f.write(new)
            elif kind == "zero":
                f.seek(start)
                f.write(bytes(n))
            elif kind == "hole":
                f.flush()
                punch_hole(path, start, n)
            else:
                raise ValueError(kind)
    return read_bytes(path)


def read_bytes(path: str | os.PathLike, n: int | None = None) -> bytes:
    with open(path, "rb") as f:
        return f.read() if n is None else f.read(n)


def allocated_bytes(path: str | os.PathLike) -> int:
    return os.stat(path).st_blocks * 512


def blocks_of(data: bytes, bs: int) -> list[bytes]:
    return [data[i : i + bs] for i in range(0, len(data), bs)]


def is_zero(block: bytes) -> bool:
    return not block.strip(b"\0")


def first_difference(a: bytes, b: bytes) -> str:
    """A short description of where two byte strings differ (for assertion messages)."""
    if len(a) != len(b):
        return f"lengths differ: {len(a)} != {len(b)}"
    for i in range(0, len(a), 4096):
        if a[i : i + 4096] != b[i : i + 4096]:
            return f"first difference in the 4 KiB page at byte offset {i}"
    return "equal"


def assert_same_bytes(actual: bytes, expected: bytes, what: str = "restored image") -> None:
    assert actual == expected, f"{what} differs from the expected bytes: " + first_difference(
        actual, expected
    )


# --------------------------------------------------------------------------- expectations


class Model:
    """What a deduplicating block store should report for a sequence of backups.

    ``stored`` holds the contents of every data block stored so far in one container.
    """

    def __init__(self, bs: int) -> None:
        self.bs = bs
        self.stored: set[bytes] = set()

    @staticmethod
    def _key(block: bytes) -> bytes:
        return hashlib.sha256(block).digest()

    def changed(self, parent: bytes | None, new: bytes) -> list[int]:
        """Blocks of ``new`` that differ from ``parent`` (two zero blocks are equal)."""
        nb = blocks_of(new, self.bs)
        if parent is None:
            return [i for i, b in enumerate(nb) if not is_zero(b)]
        pb = blocks_of(parent, self.bs)
        out = []
        for i, b in enumerate(nb):
            p = pb[i] if i < len(pb) else None
            if p is None:
                out.append(i)
            elif is_zero(b) and is_zero(p):
                continue
            elif b != p or is_zero(b) != is_zero(p):
                out.append(i)
        return out

    def backup(self, parent: bytes | None, new: bytes) -> dict[str, int]:
        """Expected ``blocks_changed``/``objects_written``/``blocks_zero``; records stores."""
        nb = blocks_of(new, self.bs)
        changed = self.changed(parent, new)
        fresh = set()
        for i in changed:
            if is_zero(nb[i]):
                continue
            key = self._key(nb[i])
            if key not in self.stored:
                fresh.add(key)
        self.stored |= fresh
        return {
            "blocks_total": len(nb),
            "blocks_changed": len(changed),
            "objects_written": len(fresh),
            "blocks_zero": sum(1 for b in nb if is_zero(b)),
        }


# --------------------------------------------------------------------------- engine calls


def create(eng, volume_id: str, *, project: str = PROJECT, microversion: str = MV, **kw) -> str:
    """Start a backup; return its id. ``kw`` are ``backup`` body fields, except
    ``changes``, ``changed_extents``, ``changes_base`` and ``block_size`` which are engine
    arguments."""
    engine_args = ("changes", "changed_extents", "changes_base", "block_size")
    extra = {k: kw.pop(k) for k in engine_args if k in kw}
    body = {"backup": {"volume_id": volume_id, **kw}}
    answer = eng.create_backup(project, body, microversion=microversion, **extra)
    return answer["backup"]["id"]


def settle_sources(eng, project: str, detail: Mapping[str, Any], timeout: float = 10) -> None:
    """Wait until the backup's volume/snapshot left ``backing-up``.

    ``eng.wait`` may return a moment before the engine restores the source's status (see
    test_statuses.py::test_volume_is_released_before_the_backup_is_available and its
    siblings). Tests about other behaviour use this so that they test their own topic,
    deterministically.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = False
        try:
            if eng.get_volume(project, detail["volume_id"])["status"] == "backing-up":
                busy = True
        except ApiError:
            pass
        if detail.get("snapshot_id"):
            for s in eng.list_snapshots(project):
                if s["id"] == detail["snapshot_id"] and s["status"] == "backing-up":
                    busy = True
        if not busy:
            return
        time.sleep(0.01)


def wait_ok(eng, backup_id: str, *, project: str = PROJECT) -> dict[str, Any]:
    """Wait for a backup, require ``available``, and let its source settle."""
    detail = eng.wait(backup_id, timeout=TIMEOUT)
    assert detail["status"] == "available", (
        f"backup {backup_id} ended {detail['status']!r}: {detail.get('fail_reason')!r}"
    )
    settle_sources(eng, project, detail)
    return detail


def backup(eng, volume_id: str, *, project: str = PROJECT, **kw) -> dict[str, Any]:
    """Create a backup, wait until it is available and return its detail view."""
    bid = create(eng, volume_id, project=project, **kw)
    return wait_ok(eng, bid, project=project)


def wait_failed(eng, backup_id: str, *, project: str = PROJECT) -> dict[str, Any]:
    detail = eng.wait(backup_id, timeout=TIMEOUT)
    assert detail["status"] == "error", f"backup {backup_id} ended {detail['status']!r}"
    settle_sources(eng, project, detail)
    return detail


def restore_new(eng, backup_id: str, path: str | os.PathLike, *, project: str = PROJECT) -> bytes:
    """Restore a backup to a new image file and return the file's bytes."""
    assert not os.path.exists(path)
    eng.restore_backup(project, backup_id, str(path))
    return read_bytes(path)


def parent_of(eng, backup_id: str) -> str | None:
    return eng.catalog.backup(backup_id)["parent_id"]


@contextlib.contextmanager
def api_error(cls, status: int, message: str | None = None):
    """``pytest.raises(cls)`` that also checks the HTTP status and, if given, the exact text."""
    with pytest.raises(cls) as info:
        yield info
    err = info.value
    assert isinstance(err, ApiError)
    assert http_status(err) == status, f"{err!r} has status {http_status(err)}, not {status}"
    if message is not None:
        assert err.message == message


def objects_in(repo_root: str | os.PathLike, project: str, container: str = "backups") -> list:
    """The block objects a container holds: their files (version 1), or ``pack#digest`` of
    each entry its index files name in a pack that exists (version 2)."""
    from engine.repository import Repository

    repo = Repository.open(repo_root, create=False)
    if repo.format_version >= 2:
        c = repo.container(project, container)
        return sorted(f"{info.key}#{d.hex()}" for d, info in c.iter_objects())
    root = os.path.join(repo_root, "projects", project, container, "objects")
    out = []
    for dirpath, _dirs, files in os.walk(root):
        out.extend(os.path.join(dirpath, f) for f in files)
    return sorted(out)


@contextlib.contextmanager
def occupied_workers(eng):
    """Keep every worker of ``eng`` busy so that jobs submitted meanwhile stay queued.

    Yields nothing; the workers are released on exit (also on failure), after which queued
    jobs run. This makes "while a backup runs" states deterministic.
    """
    release = threading.Event()
    started = [threading.Event() for _ in range(eng.workers)]

    def blocker(ev):
        ev.set()
        release.wait(120)

    for ev in started:
        eng.runner.submit(lambda ev=ev: blocker(ev))
    try:
        for ev in started:
            assert ev.wait(30), "a worker of the engine never picked up the blocking job"
        yield
    finally:
        release.set()


def release_lock(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    proc.wait(timeout=30)
