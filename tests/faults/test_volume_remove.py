"""``unregister_volume`` (``cinderblock volume remove``) is refused while a backup of the
volume runs, and says which; once it has ended the volume goes and its backups stay."""

from __future__ import annotations

import pytest
from backup_helpers import MIB, PROJECT, create, make_image, new_id

from engine.errors import InvalidVolume, VolumeNotFound


def test_remove_is_refused_while_a_backup_runs(open_engine, fuse_images, tmp_path):
    eng = open_engine(window_bytes=2 * (64 << 10))
    backing = tmp_path / "backing.img"
    make_image(backing, 4 * MIB, seed=43)
    fs = fuse_images({"vol.img": backing})
    fs.set({"vol.img": {"hold": MIB}})
    vid = new_id()
    eng.register_volume(PROJECT, vid, str(fs.path("vol.img")))
    bid = create(eng, vid)
    assert fs.wait_held("vol.img")
    with pytest.raises(InvalidVolume) as e:
        eng.unregister_volume(PROJECT, vid)
    assert e.value.message == (
        f"Invalid volume: volume {vid} is backing-up (backup {bid} is creating): remove it "
        "once the backup or restore has ended"
    )
    fs.release("vol.img")
    assert eng.wait(bid, timeout=60)["status"] == "available"
    with pytest.raises(VolumeNotFound):
        eng.unregister_volume("project-b", vid)  # another project's volume is not found
    assert eng.unregister_volume(PROJECT, vid) == {
        "id": vid,
        "snapshots_removed": 0,
        "backups_kept": 1,
    }
    with pytest.raises(VolumeNotFound):
        eng.get_volume(PROJECT, vid)
    assert eng.get_backup(PROJECT, bid)["status"] == "available"
