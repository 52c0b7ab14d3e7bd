"""Source volumes that fail to read: a FUSE file with real EIO, or one that ends early.

The volume is a file on a FUSE filesystem (``fuse_server.py`` in a child process, mounted
with ``direct_io`` so every read reaches it). The backup must end ``error`` naming the byte
offset that failed (or saying the read was short), and nothing of it may become visible: no
record, no manifest, not available, not even after the catalog is rebuilt.
"""

from __future__ import annotations

import pytest
from backup_helpers import (
    BS,
    MIB,
    PROJECT,
    assert_same_bytes,
    backup,
    create,
    make_image,
    mutate,
    new_id,
    restore_new,
    settle_sources,
)
from fault_helpers import drop_catalog, gc_aged, manifest_path, object_files, record_path, tmp_files

pytestmark = pytest.mark.root

SIZE = 2 * MIB
BAD = 21 * BS + 4096  # inside block 21, not on a block boundary
SHORT = 13 * BS + 1000


@pytest.fixture
def eng(open_engine):
    """Small read windows: blocks before the fault are stored before the read fails."""
    return open_engine(window_bytes=2 * BS)


@pytest.fixture
def fuse_volume(eng, tmp_path, fuse_images):
    backing = tmp_path / "backing.img"
    data = make_image(backing, SIZE, seed=7)
    fs = fuse_images({"vol.img": backing})
    vid = new_id()
    eng.register_volume(PROJECT, vid, str(fs.path("vol.img")), name="fuse")
    assert eng.get_volume(PROJECT, vid)["size"] == SIZE
    return fs, vid, backing, data


def assert_invisible(eng, repo_root, bid: str, detail: dict) -> None:
    assert detail["status"] == "error"
    assert not record_path(repo_root, bid).exists()
    assert not manifest_path(repo_root, bid).exists()
    assert tmp_files(repo_root) == []
    available = [b["id"] for b in eng.list_backups(PROJECT)["backups"] if b["status"] != "error"]
    assert bid not in available
    settle_sources(eng, PROJECT, detail, timeout=5)
    assert eng.get_volume(PROJECT, detail["volume_id"])["status"] == "available"


def test_eio_fails_a_full_backup_with_the_offset(eng, repo_root, fuse_volume, open_engine):
    fs, vid, _backing, _data = fuse_volume
    fs.set({"vol.img": {"eio": [BAD, BAD + 512]}})
    bid = create(eng, vid)
    detail = eng.wait(bid, timeout=60)
    reason = detail["fail_reason"] or ""
    assert detail["status"] == "error", reason
    assert f"byte offset {BAD}" in reason, reason
    assert "Input/output error" in reason, reason
    assert_invisible(eng, repo_root, bid, detail)

    # Whatever the blocks read before the error left behind is garbage, not data of any
    # backup (the engine may also have removed it already).
    left = object_files(repo_root)
    assert len(left) <= BAD // BS
    report = gc_aged(eng)
    assert report["objects_removed"] == len(left)
    assert object_files(repo_root) == {}

    # The catalog rebuilt from the repository does not know the backup either.
    eng.close()
    drop_catalog(repo_root)
    eng = open_engine()
    assert eng.list_backups(PROJECT)["backups"] == []


def test_eio_fails_an_incremental_and_the_chain_stays_intact(eng, repo_root, fuse_volume, tmp_path):
    fs, vid, backing, data = fuse_volume
    full = backup(eng, vid, name="full")
    new = mutate(backing, {2: "random", 30: "random"}, seed=8)
    fs.set({"vol.img": {"eio": [BAD, BAD + 1]}})
    bid = create(eng, vid, incremental=True)
    detail = eng.wait(bid, timeout=60)
    assert detail["status"] == "error"
    assert f"byte offset {BAD}" in (detail["fail_reason"] or ""), detail["fail_reason"]
    assert_invisible(eng, repo_root, bid, detail)
    assert_same_bytes(restore_new(eng, full["id"], tmp_path / "full.img"), data)

    # Once the device reads again, the next incremental continues from the full backup.
    fs.set({})
    inc = backup(eng, vid, incremental=True)
    assert eng.catalog.backup(inc["id"])["parent_id"] == full["id"]
    assert inc["stats"]["blocks_changed"] == 2
    assert_same_bytes(restore_new(eng, inc["id"], tmp_path / "inc.img"), new)


def test_short_file_fails_with_a_short_read(eng, repo_root, fuse_volume):
    fs, vid, _backing, _data = fuse_volume
    fs.set({"vol.img": {"short_at": SHORT}})
    bid = create(eng, vid)
    detail = eng.wait(bid, timeout=60)
    reason = detail["fail_reason"] or ""
    assert detail["status"] == "error", reason
    assert "short read" in reason, reason
    assert f"byte offset {SHORT}" in reason, reason
    assert_invisible(eng, repo_root, bid, detail)


def test_eio_in_the_first_block(eng, repo_root, fuse_volume):
    fs, vid, _backing, _data = fuse_volume
    fs.set({"vol.img": {"eio": [0, SIZE]}})
    bid = create(eng, vid)
    detail = eng.wait(bid, timeout=60)
    assert "byte offset 0 " in (detail["fail_reason"] or ""), detail["fail_reason"]
    assert_invisible(eng, repo_root, bid, detail)
    assert object_files(repo_root) == {}
