"""Block map format versions in a repository: version 2 (runs) where every reader knows it,
version 1 (a byte per block) where older engines must read what is written, and both read
everywhere, so a repository of either age keeps restoring and keeps being a parent."""

from __future__ import annotations

import os
import uuid

import numpy as np
import pytest

from engine import BlockMap, Repository, backup_volume, restore_volume
from engine.repository import blockmap as bmmod

BS = 64 << 10


def stored_version(container, backup_id: str) -> int:
    blob = container.store.get(container.keys.manifest(backup_id))
    return int.from_bytes(blob[4:6], "little")


def sparse_image(path, nblocks: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        f.truncate(nblocks * BS)
        for i in rng.choice(nblocks, nblocks // 4, replace=False).tolist():
            os.pwrite(f.fileno(), rng.bytes(BS), i * BS)
    return open(path, "rb").read()


@pytest.mark.parametrize("repo_format, expected", [(2, 2), (1, 1)])
def test_a_repository_writes_the_block_map_version_its_readers_know(
    tmp_path, repo_format, expected
):
    container = Repository.open(str(tmp_path / "repo"), format_version=repo_format).container(
        "p", "c"
    )
    src = tmp_path / "vol.img"
    data = sparse_image(src, 64, 1)
    full, _ = backup_volume(str(src), container, block_size=BS)
    assert stored_version(container, full.backup_id) == expected
    back = container.get_blockmap(full.backup_id)
    assert np.array_equal(back.data_runs(), full.data_runs())
    assert np.array_equal(back.data_digests, full.data_digests)
    restore_volume(container, back, str(tmp_path / "out.img"))
    assert (tmp_path / "out.img").read_bytes() == data


def test_a_version_1_block_map_in_a_version_2_repository_is_read_and_is_a_parent(tmp_path):
    """What an engine before version 2 left behind: read as before, restored, and diffed
    against by an incremental, whose own map is version 2."""
    container = Repository.open(str(tmp_path / "repo")).container("p", "c")
    src = tmp_path / "vol.img"
    before = sparse_image(src, 64, 2)
    full, _ = backup_volume(str(src), container, block_size=BS)
    key = container.keys.manifest(full.backup_id)
    container.store.put(key, full.encode(1))  # as an older engine wrote it
    assert stored_version(container, full.backup_id) == 1
    parent = container.get_blockmap(full.backup_id)
    with open(src, "r+b") as f:
        os.pwrite(f.fileno(), os.urandom(BS), 5 * BS)
    after = src.read_bytes()
    inc, stats = backup_volume(str(src), container, parent=parent, block_size=BS)
    assert stats.blocks_changed == 1
    assert stored_version(container, inc.backup_id) == 2
    for bm, content in ((full, before), (inc, after)):
        out = tmp_path / f"{bm.backup_id}.img"
        restore_volume(container, container.get_blockmap(bm.backup_id), str(out))
        assert out.read_bytes() == content


def test_an_unknown_block_map_version_is_refused_by_name(tmp_path):
    container = Repository.open(str(tmp_path / "repo")).container("p", "c")
    bm = BlockMap(
        str(uuid.uuid4()), None, BS, 4 * BS, runs=[[1, 2]], data_digests=np.zeros((2, 16), np.uint8)
    )
    blob = bytearray(bm.encode())
    blob[4:6] = (3).to_bytes(2, "little")
    container.store.put(container.keys.manifest(bm.backup_id), bytes(blob))
    with pytest.raises(bmmod.FormatVersionError) as e:
        container.get_blockmap(bm.backup_id)
    assert e.value.message == f"manifest has unknown format version 3 (backup {bm.backup_id})"
    with pytest.raises(ValueError, match="block map format version must be 1 or 2, got 3"):
        bm.encode(3)
