"""A repository on a full filesystem (root only: a small tmpfs holds the repository)."""

from __future__ import annotations

import pytest
from backup_helpers import (
    MIB,
    PROJECT,
    assert_same_bytes,
    backup,
    create,
    make_image,
    new_id,
    objects_in,
    restore_new,
    settle_sources,
)

pytestmark = pytest.mark.root


@pytest.fixture
def small_fs(tmpfs):
    return tmpfs(3)


def _fill(open_engine, small_fs, tmp_path):
    repo = small_fs / "repo"
    eng = open_engine(repo)
    big = tmp_path / "big.img"
    make_image(big, 8 * MIB, seed=1)  # random: does not compress, does not fit
    vid = new_id()
    eng.register_volume(PROJECT, vid, str(big))
    detail = eng.wait(create(eng, vid), timeout=60)
    assert detail["status"] == "error"
    assert detail["fail_reason"].startswith("repository is full")
    return eng, repo, vid, detail


def test_repository_full_fails_the_backup_and_releases_the_volume(open_engine, small_fs, tmp_path):
    eng, _repo, vid, detail = _fill(open_engine, small_fs, tmp_path)
    settle_sources(eng, PROJECT, detail, timeout=3)
    assert eng.get_volume(PROJECT, vid)["status"] == "available"


def test_repository_full_space_comes_back_when_the_failed_backup_is_deleted(
    open_engine, small_fs, tmp_path
):
    """Cinder frees a failed backup's objects when the ``error`` backup is deleted."""
    eng, repo, _vid, detail = _fill(open_engine, small_fs, tmp_path)
    eng.delete_backup(PROJECT, detail["id"])
    assert objects_in(repo, PROJECT) == []
    small = tmp_path / "small.img"
    data = make_image(small, 512 * 1024, seed=2)
    svid = new_id()
    eng.register_volume(PROJECT, svid, str(small))
    ok = backup(eng, svid)
    assert_same_bytes(restore_new(eng, ok["id"], tmp_path / "r.img"), data)
