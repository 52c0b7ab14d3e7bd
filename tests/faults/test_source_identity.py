"""A source that is replaced or resized while it is backed up fails the backup: never an
``available`` backup made of two files, or of new data, then old, then zeros."""

from __future__ import annotations

import os

from backup_helpers import MIB, PROJECT, create, make_image, new_id


def test_a_volume_path_swapped_mid_backup_fails_it(open_engine, fuse_images, tmp_path):
    eng = open_engine(window_bytes=2 * (64 << 10))
    backing = tmp_path / "backing.img"
    make_image(backing, 2 * MIB, seed=31)
    fs = fuse_images({"vol.img": backing})
    fs.set({"vol.img": {"hold": MIB}})
    link = tmp_path / "vol-link.img"
    os.symlink(fs.path("vol.img"), link)
    vid = new_id()
    eng.register_volume(PROJECT, vid, str(link))
    bid = create(eng, vid)
    assert fs.wait_held("vol.img"), "the backup never reached the held offset"
    other = tmp_path / "other.img"
    make_image(other, 2 * MIB, seed=32)
    tmp_link = tmp_path / "vol-link.new"
    os.symlink(other, tmp_link)
    os.replace(tmp_link, link)  # the volume's path now names another file
    fs.release("vol.img")
    detail = eng.wait(bid, timeout=60)
    assert detail["status"] == "error"
    assert detail["fail_reason"] == (
        f"the source {link} was replaced during the backup; back it up again"
    )
    assert eng.get_volume(PROJECT, vid)["status"] == "available"
    container = eng.repo.container(PROJECT, "backups")
    assert container.blockmap_ids() == []
