"""The public data-path API: backup_volume / restore_volume, with no catalog under them.

Run against a real local repository (real files, syncfs, link) and, for the layers above the
store, against the in-memory store too.
"""

from __future__ import annotations

import io
import os
import re
import threading

import numpy as np
import pytest

from engine import BlockMap, ChangeSet, Repository, backup_volume, native, restore_volume
from engine.datapath import SourceChanged
from engine.errors import Cancelled, CorruptionError, InvalidInput
from engine.repository.leases import SWEEP, WRITE, live_leases
from engine.store import MemoryBlobStore

BS = 64 << 10


def image(path, nblocks: int, seed: int = 1) -> bytes:
    rng = np.random.default_rng(seed)
    data = bytearray(rng.integers(0, 256, nblocks * BS, dtype=np.uint8).tobytes())
    for i in range(0, nblocks, 5):  # some zero blocks
        data[i * BS : (i + 1) * BS] = bytes(BS)
    path.write_bytes(data)
    return bytes(data)


def write_blocks(path, blocks: dict[int, bytes]) -> bytes:
    with open(path, "r+b") as f:
        for i, content in blocks.items():
            f.seek(i * BS)
            f.write(content)
    return path.read_bytes()


class _NoSeek(io.RawIOBase):
    """A stream with neither a descriptor nor seek(): nothing the data path can read."""

    def fileno(self):
        raise io.UnsupportedOperation("fileno")

    seek = None


@pytest.fixture(params=["local", "memory"])
def container(request, tmp_path):
    where = tmp_path / "repo" if request.param == "local" else MemoryBlobStore()
    return Repository.open(where).container("proj", "backups")


def test_full_and_incremental_round_trip_from_a_path(container, tmp_path):
    src = tmp_path / "vol.img"
    data = image(src, 40)
    full, stats = backup_volume(str(src), container, block_size=BS)
    assert isinstance(full, BlockMap) and full.volume_size == len(data)
    assert stats.blocks_total == 40 and stats.blocks_zero == 8
    assert stats.objects_written == 32
    assert container.blockmap_ids() == [full.backup_id]
    data2 = write_blocks(src, {3: b"\x01" * BS, 17: b"\x02" * BS})
    inc, stats2 = backup_volume(src, container, parent=full, block_size=BS)
    assert inc.parent_id == full.backup_id
    assert (stats2.blocks_changed, stats2.objects_written) == (2, 2)
    out = tmp_path / "out.img"
    result = restore_volume(container, container.get_blockmap(full.backup_id), str(out))
    assert result.created and out.read_bytes() == data
    out.unlink()
    restore_volume(container, inc, out)
    assert out.read_bytes() == data2
    # Nothing of the backups' leases is left behind.
    assert live_leases(container.store, container.keys, WRITE) == []


def test_fd_and_file_object_sources_and_targets(container, tmp_path):
    src = tmp_path / "vol.img"
    data = image(src, 12, seed=3)
    with open(src, "rb") as f:
        f.seek(123)
        bm, _ = backup_volume(f.fileno(), container, block_size=BS)
        assert f.tell() == 123  # a borrowed fd keeps its offset
    with open(src, "rb") as f:
        bm2, stats = backup_volume(f, container, block_size=BS)
    assert stats.objects_written == 0  # same content: all deduplicated
    assert bm2.encode()[80:-16] == bm.encode()[80:-16]  # same blocks, other ids
    target = tmp_path / "target.img"
    target.write_bytes(b"\xff" * len(data))
    with open(target, "r+b") as f:
        restore_volume(container, bm, f.fileno())
    assert target.read_bytes() == data
    target.write_bytes(b"\xee" * len(data))
    with open(target, "r+b") as f:
        restore_volume(container, bm, f)
    assert target.read_bytes() == data


def test_change_set_bound_to_the_parent_is_used_else_refused(container, tmp_path):
    src = tmp_path / "vol.img"
    image(src, 20, seed=5)
    full, _ = backup_volume(src, container, block_size=BS)
    data2 = write_blocks(src, {2: b"\x07" * BS})
    hint = ChangeSet(full.backup_id, 20 * BS, BS, ((2 * BS, 10),))
    inc, stats = backup_volume(src, container, parent=full, changes=hint, block_size=BS)
    assert stats.changed_extents_used and stats.blocks_read == 1
    assert "changes_refused" not in stats.as_dict()
    other = ChangeSet(inc.backup_id, 20 * BS, BS, ((2 * BS, 10),))
    again, stats = backup_volume(src, container, parent=full, changes=other, block_size=BS)
    assert not stats.changed_extents_used
    assert stats.changes_refused == (
        f"change set is relative to backup {inc.backup_id} but the parent is {full.backup_id}"
    )
    assert stats.blocks_read == 20  # the whole volume was read
    out = tmp_path / "out.img"
    restore_volume(container, again, out)
    assert out.read_bytes() == data2


def test_a_source_that_shrinks_during_the_backup_fails_it_and_commits_nothing(tmp_path):
    container = Repository.open(tmp_path / "repo").container("proj", "backups")
    src = tmp_path / "vol.img"
    image(src, 64, seed=7)
    shrunk = threading.Event()

    def progress(fraction: float) -> None:
        if not shrunk.is_set():
            os.truncate(src, 10 * BS)
            shrunk.set()

    with pytest.raises(OSError) as info:
        backup_volume(src, container, block_size=BS, progress=progress, window_bytes=BS * 4)
    assert shrunk.is_set()
    # The reader meets the new end of file first (issue 10 #1: past it, SEEK_DATA's ENXIO is a
    # short read, not a hole); a shrink it does not meet is SourceChanged at the end (below).
    match = re.fullmatch(
        r"\[Errno 5\] short read: fd \d+ ended at byte offset (\d+), before its size",
        str(info.value),
    )
    assert match, str(info.value)
    assert 10 * BS <= int(match[1]) < 64 * BS
    assert container.blockmap_ids() == []
    assert live_leases(container.store, container.keys, WRITE) == []


def test_a_replaced_source_path_fails_the_backup(tmp_path):
    container = Repository.open(tmp_path / "repo").container("proj", "backups")
    src = tmp_path / "vol.img"
    data = image(src, 16, seed=8)
    swapped = threading.Event()

    def progress(fraction: float) -> None:
        if not swapped.is_set():
            other = tmp_path / "other.img"
            other.write_bytes(data)
            os.replace(other, src)
            swapped.set()

    with pytest.raises(SourceChanged) as info:
        backup_volume(str(src), container, block_size=BS, progress=progress, window_bytes=BS)
    assert str(info.value) == (f"the source {src} was replaced during the backup; back it up again")
    assert container.blockmap_ids() == []


def test_cancel_stops_the_backup_and_leaves_nothing_visible(tmp_path):
    repo = tmp_path / "repo"
    container = Repository.open(repo).container("proj", "backups")
    src = tmp_path / "vol.img"
    image(src, 64, seed=9)
    cancel = threading.Event()
    with pytest.raises(Cancelled, match="the backup was cancelled"):
        backup_volume(
            src,
            container,
            block_size=BS,
            cancel=cancel,
            progress=lambda f: cancel.set(),
            window_bytes=BS * 2,
            workers=1,
        )
    assert container.blockmap_ids() == []
    assert not [p for p in repo.rglob(".tmp.*")]  # staged objects were removed
    assert live_leases(container.store, container.keys, WRITE) == []


def test_cancelled_or_failed_restore_to_a_new_file_leaves_nothing(tmp_path):
    container = Repository.open(tmp_path / "repo").container("proj", "backups")
    src = tmp_path / "vol.img"
    image(src, 32, seed=10)
    bm, _ = backup_volume(src, container, block_size=BS)
    out = tmp_path / "new.img"
    cancel = threading.Event()
    with pytest.raises(Cancelled, match="the restore was cancelled"):
        restore_volume(
            container, bm, out, cancel=cancel, progress=lambda f: cancel.set(), workers=1
        )
    assert sorted(os.listdir(tmp_path)) == ["repo", "vol.img"]
    # A damaged object: the restore fails, and again nothing appears at the target.
    victim = bytes(bm.digests[bm.data_blocks()[0]])
    path = container.store.path_of(container.object_key(victim))
    with open(path, "r+b") as f:
        f.seek(40)
        f.write(b"\x00\x01\x02")
    with pytest.raises(CorruptionError):
        restore_volume(container, bm, out)
    assert sorted(os.listdir(tmp_path)) == ["repo", "vol.img"]


def test_bad_input_is_refused_with_what_to_do(tmp_path):
    container = Repository.open(tmp_path / "repo").container("proj", "backups")
    src = tmp_path / "vol.img"
    image(src, 4)
    cases = [
        (
            lambda: backup_volume(src, "not a container"),
            "container must be an engine.repository.Container",
        ),
        (
            lambda: backup_volume(3.5, container),
            "source must be a path, an open fd or a file object, not float",
        ),
        (
            lambda: backup_volume("", container),
            "source path must be non-empty and hold no NUL byte",
        ),
        (
            lambda: backup_volume(str(tmp_path), container),
            f"source {tmp_path} is not a regular file or a block device: name a volume's image "
            "file or block device",
        ),
        (
            lambda: backup_volume(src, container, changes="x"),
            "changes must be an engine.changes.ChangeSet or an engine.changesources.ChangeSource",
        ),
        (lambda: backup_volume(src, container, workers=0), "workers must be a positive int, got 0"),
        (lambda: backup_volume(src, container, backup_id="full"), "backup_id 'full' is not a UUID"),
        (lambda: backup_volume(src, container, backup_id=""), "backup_id '' is not a UUID"),
        (
            lambda: backup_volume(_NoSeek(), container),
            "source is a file object without a file descriptor or seek(); pass a path, an "
            "fd, or a seekable file object",
        ),
    ]
    for call, text in cases:
        with pytest.raises(InvalidInput) as info:
            call()
        assert info.value.message == f"Invalid input received: {text}"
    bm, _ = backup_volume(src, container, block_size=BS)
    with pytest.raises(InvalidInput, match="differs from the parent's 65536"):
        backup_volume(src, container, parent=bm, block_size=2 * BS)
    small = tmp_path / "small.img"
    small.write_bytes(b"x" * 100)
    with pytest.raises(InvalidInput) as info:
        restore_volume(container, bm, small)
    assert info.value.message == (
        f"Invalid input received: target {small} holds 100 bytes, less than the volume's {4 * BS}"
    )
    assert small.read_bytes() == b"x" * 100
    with pytest.raises(InvalidInput, match="its directory does not exist"):
        restore_volume(container, bm, tmp_path / "no" / "such.img")


def test_a_backup_holds_a_write_lease_and_waits_for_a_running_sweep(tmp_path):
    container = Repository.open(tmp_path / "repo").container("proj", "backups")
    src = tmp_path / "vol.img"
    image(src, 8)
    seen = []
    backup_volume(
        src,
        container,
        block_size=BS,
        progress=lambda f: seen.append(len(live_leases(container.store, container.keys, WRITE))),
    )
    assert seen and set(seen) == {1}
    lease, why = container.sweep_lease()
    assert why is None
    done = threading.Event()

    def run() -> None:
        backup_volume(src, container, block_size=BS)
        done.set()

    t = threading.Thread(target=run)
    t.start()
    assert not done.wait(0.5)  # held behind the sweep, having published nothing
    assert len(live_leases(container.store, container.keys, WRITE)) == 1
    lease.release()
    t.join(30)
    assert done.is_set()
    assert live_leases(container.store, container.keys, SWEEP) == []


def test_run_bytes_bounds_each_write_of_a_restore_and_is_validated(tmp_path, monkeypatch):
    container = Repository.open(tmp_path / "repo").container("proj", "backups")
    src = tmp_path / "vol.img"
    data = np.random.default_rng(7).integers(0, 256, 48 * BS, dtype=np.uint8).tobytes()
    src.write_bytes(data)  # 3 MiB, no zero block: one run of consecutive data blocks
    bm, _ = backup_volume(src, container, block_size=BS)
    sizes: list[int] = []
    real = native.write_nonzero_pages  # a new target: written by the sparse writer

    def spy(fd, buf, offset, **kw):
        sizes.append(len(buf))
        return real(fd, buf, offset, **kw)

    monkeypatch.setattr(native, "write_nonzero_pages", spy)
    for run_bytes, expected in ((None, [3 << 20]), (1 << 20, [1 << 20] * 3)):
        sizes.clear()
        out = tmp_path / f"out-{run_bytes}.img"
        kw = {} if run_bytes is None else {"run_bytes": run_bytes}
        restore_volume(container, bm, out, **kw)
        assert out.read_bytes() == data
        assert sizes == expected
    for bad in (0, (1 << 20) - 1, (256 << 20) + 1, True, 2.0):
        with pytest.raises(InvalidInput) as info:
            restore_volume(container, bm, tmp_path / "never.img", run_bytes=bad)
        assert info.value.message == (
            "Invalid input received: run_bytes must be an int from 1048576 to 268435456, "
            f"got {bad!r}"
        )
    assert not (tmp_path / "never.img").exists()


def test_a_new_target_leaves_the_zero_runs_inside_data_blocks_as_holes(tmp_path):
    """A sparse source restores to a target allocating what the source allocates, except the
    zero runs shorter than SPARSE_MIN_HOLE between data, which are written (one write, not
    several); over an existing target the zero pages are written."""
    from engine.datapath import restore as restore_mod

    assert restore_mod.SPARSE_MIN_HOLE == 128 << 10
    container = Repository.open(tmp_path / "repo").container("proj", "backups")
    bs = 1 << 20
    src = tmp_path / "vol.img"
    rng = np.random.default_rng(3)
    # Page runs per data block: a gap of 16 pages (64 KiB, written as zeros), then gaps of
    # 32 pages (128 KiB) and more (left as holes), and the block's zero tail.
    runs = ((0, 2), (18, 1), (51, 2), (200, 1))
    with open(src, "wb") as f:
        f.truncate(6 * bs)
        for block in (0, 1, 3, 5):  # block 2 and 4 are zero blocks
            for first, count in runs:
                f.seek(block * bs + first * 4096)
                f.write(rng.integers(1, 256, count * 4096, dtype=np.uint8).tobytes())
    data = src.read_bytes()
    bm, _ = backup_volume(src, container, block_size=bs)
    new = tmp_path / "new.img"
    result = restore_volume(container, bm, new)
    assert new.read_bytes() == data
    # 6 pages of data a block plus the 16-page gap: not the 4 MiB of the data blocks.
    gaps = 4 * 16 * 8  # in 512-byte sectors
    assert os.stat(new).st_blocks == os.stat(src).st_blocks + gaps <= (4 * 22 + 1) * 8
    assert result.bytes_written == 4 * bs  # the data blocks' bytes, holes or not
    fresh = tmp_path / "fresh.img"  # a new volume: exists, reads as zeros
    with open(fresh, "wb") as f:
        f.truncate(6 * bs)
    restore_volume(container, bm, fresh, target_is_new=True)
    assert fresh.read_bytes() == data
    assert os.stat(fresh).st_blocks == os.stat(src).st_blocks + gaps
    old = tmp_path / "old.img"  # an existing volume holding other bytes everywhere
    old.write_bytes(rng.integers(1, 256, 6 * bs, dtype=np.uint8).tobytes())
    restore_volume(container, bm, old)
    assert old.read_bytes() == data


def test_each_window_of_a_parallel_backup_lies_side_by_side_in_its_pack(container, tmp_path):
    """Three threads compress windows at once; the entries of each window are still
    consecutive in one pack, in block order (``PackBatch.group``), so a restore reads a
    window with one ranged read. Staged one by one, they interleaved block by block."""
    src = tmp_path / "vol.img"
    rng = np.random.default_rng(7)
    # Compressible (4 bits of entropy a byte), no zero or repeated block: every one stored.
    src.write_bytes(rng.integers(0, 16, 96 * BS, dtype=np.uint8).tobytes())
    window = 8
    bm, _ = backup_volume(src, container, block_size=BS, workers=2, window_bytes=window * BS)
    locs = [container.locate(bytes(d)) for d in bm.data_digests]
    assert len(locs) == 96 and None not in locs
    for w in range(0, 96, window):
        run = locs[w : w + window]
        assert len({loc.pack_id for loc in run}) == 1, w
        for a, b in zip(run, run[1:], strict=False):
            assert b.offset == a.offset + a.length, (w, a, b)
