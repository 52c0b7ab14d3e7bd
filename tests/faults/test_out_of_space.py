"""The repository runs out of space: a real ext4 filesystem on a loop device (root only).

The repository (objects, manifests, records *and* the SQLite catalog, as the engine lays it
out) lives on a 16 MiB ext4 image; the source volume is bigger than the free space and made
of random bytes, so it neither compresses nor fits. The backup must end ``error`` with a
``fail_reason`` saying the repository is full, leave no partial files, and the repository
must work again once space is freed.
"""

from __future__ import annotations

import os

import pytest
from backup_helpers import (
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
from fault_helpers import gc_aged, object_files, tmp_files

pytestmark = pytest.mark.root

FS_MIB = 16
BIG_MIB = 24


@pytest.fixture
def small_repo(make_fs):
    _dev, mnt = make_fs("ext4", FS_MIB, "-q", "-m", "0", "-E", "nodiscard")
    return mnt / "repo"


def _free(path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_backup_larger_than_the_free_space(open_engine, small_repo, tmp_path):
    eng = open_engine(small_repo)
    # An earlier backup that fits.
    small = tmp_path / "small.img"
    small_data = make_image(small, MIB, seed=1)
    svid = new_id()
    eng.register_volume(PROJECT, svid, str(small))
    first = backup(eng, svid, name="first")
    kept = object_files(small_repo)
    free_before = _free(small_repo)

    big = tmp_path / "big.img"
    make_image(big, BIG_MIB * MIB, seed=2)
    assert os.path.getsize(big) > _free(small_repo)
    bvid = new_id()
    eng.register_volume(PROJECT, bvid, str(big))
    failed = eng.wait(create(eng, bvid, name="too-big"), timeout=120)
    assert failed["status"] == "error"
    assert "repository is full" in (failed["fail_reason"] or ""), failed["fail_reason"]
    settle_sources(eng, PROJECT, failed, timeout=5)
    assert eng.get_volume(PROJECT, bvid)["status"] == "available"

    # No partial file anywhere, and nothing of the failed backup is visible.
    assert tmp_files(small_repo) == []
    records = small_repo / "projects" / PROJECT / "backups" / "records"
    assert sorted(p.name for p in records.iterdir()) == [f"{first['id']}.json"]
    assert eng.get_backup(PROJECT, first["id"])["status"] == "available"

    # Free the space: whatever the failed backup left is garbage (an engine that stages
    # objects may have removed them already; one that publishes early leaves them to gc).
    left = object_files(small_repo)
    assert set(kept) <= set(left)
    report = gc_aged(eng)
    assert report["objects_removed"] == len(left) - len(kept)
    assert report["containers_skipped"] == []
    assert object_files(small_repo) == kept
    # The space is back (give or take the catalog's growth).
    assert _free(small_repo) >= free_before - MIB
    eng.delete_backup(PROJECT, failed["id"])

    # The repository works again: an incremental and a new full backup succeed.
    small_data2 = mutate(small, {3: "random"}, seed=3)
    inc = backup(eng, svid, incremental=True, name="inc")
    assert inc["stats"]["objects_written"] == 1
    medium = tmp_path / "medium.img"
    medium_data = make_image(medium, 4 * MIB, seed=4)
    mvid = new_id()
    eng.register_volume(PROJECT, mvid, str(medium))
    full = backup(eng, mvid, name="medium")

    for n, (bid, data) in enumerate(
        [(first["id"], small_data), (inc["id"], small_data2), (full["id"], medium_data)]
    ):
        assert_same_bytes(restore_new(eng, bid, tmp_path / f"r{n}.img"), data)
    assert eng.verify(PROJECT, deep=True)["ok"]


def test_full_repository_and_a_restart(open_engine, small_repo, tmp_path):
    """A failed out-of-space backup survives a restart of the engine as ``error`` (the
    catalog, on the same full filesystem, recorded the outcome)."""
    eng = open_engine(small_repo)
    big = tmp_path / "big.img"
    make_image(big, BIG_MIB * MIB, seed=5)
    vid = new_id()
    eng.register_volume(PROJECT, vid, str(big))
    bid = create(eng, vid)
    failed = eng.wait(bid, timeout=120)
    assert failed["status"] == "error"
    settle_sources(eng, PROJECT, failed, timeout=5)
    eng.close()
    eng = open_engine(small_repo)
    again = eng.get_backup(PROJECT, bid)
    assert again["status"] == "error"
    assert "repository is full" in (again["fail_reason"] or "")
    assert eng.get_volume(PROJECT, vid)["status"] == "available"
