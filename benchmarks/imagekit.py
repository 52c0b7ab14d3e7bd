"""Shared by the end-to-end benchmarks: a real filesystem image, its changes, the baselines.

The image holds a real ext4 filesystem about 70% full of real files (hard links to the
machine's /usr, copied in by ``mkfs.ext4 -d``). Changes are deterministic (fixed seeds) so that
every tool measured in a run sees exactly the same sequence of image states.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable

import numpy as np

MiB = 1 << 20


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    return int(float(t[:-1]) * units[t[-1]]) if t[-1] in units else int(t)


def build_image(path: str, size: int, work: str) -> None:
    """An ext4 image about 70% full of real files from /usr."""
    stage = os.path.join(work, "stage")
    shutil.rmtree(stage, ignore_errors=True)
    os.makedirs(stage)
    budget = int(size * 0.65)
    used = 0
    for top in ("/usr/share", "/usr/lib", "/usr/bin", "/usr/include"):
        for dirpath, _dirs, files in os.walk(top):
            for name in files:
                src = os.path.join(dirpath, name)
                try:
                    st = os.lstat(src)
                except OSError:
                    continue
                cost = -(-max(st.st_size, 1) // 4096) * 4096  # what it occupies in the fs
                if not os.path.isfile(src) or os.path.islink(src) or used + cost > budget:
                    continue
                dst = os.path.join(stage, os.path.relpath(src, "/"))
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                try:
                    os.link(src, dst)
                except OSError:
                    try:
                        shutil.copyfile(src, dst)
                    except OSError:
                        continue
                used += cost
            if used >= budget:
                break
    if os.path.exists(path):
        os.unlink(path)
    with open(path, "wb") as f:
        f.truncate(size)
    # One inode per 8 KiB: /usr holds many small files.
    subprocess.run(["mkfs.ext4", "-q", "-F", "-i", "8192", "-d", stage, path], check=True)
    shutil.rmtree(stage, ignore_errors=True)


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def warm(path: str) -> None:
    """Bring the file into the page cache and flush every dirty page of the machine.

    Called before each timed step so that no tool pays for writeback it did not cause (the
    image changes just made, a copy of the image) and each starts from the same state.
    """
    os.sync()
    plain_read(path)


def plain_read(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    buf = memoryview(bytearray(4 * MiB))
    off = 0
    while n := os.preadv(fd, [buf], off):
        off += n
    os.close(fd)


def cat_to_null(path: str) -> None:
    with open(os.devnull, "wb") as sink:
        subprocess.run(["cat", path], stdout=sink, check=True)


def zstd_compress(path: str, out: str | None = None) -> None:
    with open(out or os.devnull, "wb") as sink:
        subprocess.run(["zstd", "-q", "-T2", "-3", "-c", path], stdout=sink, check=True)


def zstd_decompress(path: str, out: str | None = None) -> None:
    """Decompress to /dev/null, or to ``out`` made durable (what a restore must do)."""
    if out is None:
        with open(os.devnull, "wb") as sink:
            subprocess.run(["zstd", "-q", "-d", "-c", path], stdout=sink, check=True)
        return
    subprocess.run(["zstd", "-q", "-f", "-d", path, "-o", out], check=True)
    fd = os.open(out, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)


def file_level_change(image: str, work: str, total: int, seed: int = 1) -> None:
    """Write new files into the filesystem image with debugfs (no mount needed)."""
    rng = np.random.default_rng(seed)
    for i in range(4):
        src = os.path.join(work, f"new-{seed}-{i}.bin")
        with open(src, "wb") as f:
            f.write(rng.integers(0, 256, total // 4, dtype=np.uint8).tobytes())
        subprocess.run(
            ["debugfs", "-w", "-R", f"write {src} bench-new-{seed}-{i}.bin", image],
            check=True,
            capture_output=True,
        )
        os.unlink(src)


def contiguous_change(image: str, fraction: float, regions: int = 4, seed: int = 3) -> list:
    """Overwrite ``regions`` contiguous runs totalling ``fraction`` of the image; return extents."""
    size = os.path.getsize(image)
    rng = np.random.default_rng(seed)
    each = int(size * fraction / regions) // 4096 * 4096
    starts = sorted(rng.choice(size // each - 1, regions, replace=False) * each)
    fd = os.open(image, os.O_WRONLY)
    for s in starts:
        os.pwrite(fd, rng.integers(0, 256, each, dtype=np.uint8).tobytes(), int(s))
    os.close(fd)
    return [[int(s), each] for s in starts]


def scattered_change(image: str, fraction: float, seed: int = 2) -> list:
    """4 KiB writes at random 4 KiB-aligned places, ``fraction`` of the image; return extents."""
    size = os.path.getsize(image)
    n = int(size * fraction) // 4096
    rng = np.random.default_rng(seed)
    offsets = np.sort(rng.choice(size // 4096, n, replace=False) * 4096)
    fd = os.open(image, os.O_WRONLY)
    for off in offsets.tolist():
        os.pwrite(fd, rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(), off)
    os.close(fd)
    return [[int(o), 4096] for o in offsets.tolist()]


def changed_extents_file(path: str, volume_size: int, extents: list, base_backup_id: str) -> None:
    """Write a changed-extents hint (docs/changed-extents.md, version 2) for ``extents``,
    measured since backup ``base_backup_id``."""
    import json

    extents = sorted(extents)
    with open(path, "w") as f:
        json.dump(
            {
                "format": "cinderblock-changed-extents",
                "version": 2,
                "base_backup_id": base_backup_id,
                "volume_size": volume_size,
                "granularity": 4096,
                "changed": extents,
                "zeroed": [],
            },
            f,
        )


def du(path: str) -> int:
    """Bytes allocated under ``path``."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


@contextlib.contextmanager
def scratch_filesystem(where: str, size: int):
    """A fresh ext4 filesystem on a loop device, mounted under ``where``; yields the mount.

    Every tool's repository goes here, as it would on a dedicated backup disk. Why not the
    work directory's filesystem: on a large, long-used filesystem ext4's inode allocator can
    cost ~0.5 ms of CPU per new file (``find_inode_bit`` scanning recently freed inodes; seen
    on this machine's root filesystem), which says more about that filesystem's history
    than about the tools. The loop device does direct I/O, so nothing is cached twice, and
    the inode tables are initialised up front so no background thread writes during a run.
    Needs root (``losetup``, ``mount``).
    """
    backing = os.path.join(where, "scratch-fs.img")
    mnt = os.path.join(where, "scratch")
    os.makedirs(mnt, exist_ok=True)
    with open(backing, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, size)  # a disk's blocks exist before it is used
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", backing],
        check=True,
    )
    loop = subprocess.run(
        ["losetup", "--direct-io=on", "-f", "--show", backing],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    try:
        subprocess.run(["mount", loop, mnt], check=True)
        try:
            yield mnt
        finally:
            subprocess.run(["umount", mnt], check=False)
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)
        os.unlink(backing)
