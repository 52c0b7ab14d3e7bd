"""Trust, but verify: a change source that omits a changed region is caught by the audit at
the rate docs/change-sources.md documents, and a caught backup is still right."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine import ChangeSet, Repository, backup_volume, restore_volume
from engine.datapath.audit import catch_probability, default_sample, sample_blocks
from engine.store import MemoryBlobStore

BS = 64 << 10
NBLOCKS = 200


def test_default_sample_sizes():
    assert default_sample(0) == 0
    assert default_sample(10) == 10  # fewer than 16: all of them
    assert default_sample(2048) == 16  # 0.1% is 3: at least 16
    assert default_sample(16384) == 17  # 16 GiB of 1 MiB blocks
    assert default_sample(10**6) == 256  # 0.1% is 1000: at most 256


def test_sampling_catches_at_the_documented_rate():
    # 1000 blocks called unchanged, 50 of them (one region) changed: n = 32 finds it with
    # 1 - C(950, 32) / C(1000, 32) = 0.81.
    runs = np.array([[0, 400], [500, 600]], np.int64)  # 1000 blocks in two runs
    missed = (600, 650)  # inside the second run
    p = catch_probability(1000, 50, 32)
    assert p == pytest.approx(1 - math.comb(950, 32) / math.comb(1000, 32))
    assert p == pytest.approx(0.8123, abs=1e-3)
    rng = np.random.default_rng(1234)
    trials = 4000
    caught = 0
    for _ in range(trials):
        s = sample_blocks(runs, 32, rng)
        assert len(np.unique(s)) == 32 and np.all((s < 400) | ((s >= 500) & (s < 1100)))
        caught += bool(np.any((s >= missed[0]) & (s < missed[1])))
    sigma = math.sqrt(trials * p * (1 - p))
    assert abs(caught - trials * p) < 4 * sigma


def _volume(path, seed=3):
    rng = np.random.default_rng(seed)
    data = bytearray(rng.integers(0, 256, NBLOCKS * BS, dtype=np.uint8).tobytes())
    path.write_bytes(data)
    return data


def test_a_lying_source_is_caught_and_the_backup_reads_everything(tmp_path):
    src = tmp_path / "vol.img"
    data = _volume(src)
    container = Repository.open(tmp_path / "repo").container("proj", "c")
    full, _ = backup_volume(str(src), container, block_size=BS)
    # 20 blocks change (a region the tracker lost) and 2 more it did see.
    data[100 * BS : 120 * BS] = bytes([7]) * (20 * BS)
    data[3 * BS : 5 * BS] = bytes([9]) * (2 * BS)
    src.write_bytes(data)
    lie = ChangeSet(full.backup_id, len(data), BS, [(3 * BS, 2 * BS)])
    inc, stats = backup_volume(
        str(src), container, parent=full, changes=lie, block_size=BS, audit_blocks=16, audit_seed=7
    )
    assert stats.changes_audit["sampled"] == 16
    assert stats.changes_audit["mismatched"] >= 1
    assert stats.changed_extents_used is False
    assert stats.changes_refused == (
        f"audit: {stats.changes_audit['mismatched']} of 16 sampled blocks the change source "
        "called unchanged differ from the parent"
    )
    assert stats.blocks_read == NBLOCKS
    assert stats.blocks_changed == 22
    out = tmp_path / "out.img"
    restore_volume(container, inc, str(out))
    assert out.read_bytes() == bytes(data)


def test_catch_rate_of_real_backups_with_fixed_seeds(tmp_path):
    """40 hinted backups (seeds 0..39) of a volume whose hint misses 20 of the 198 blocks it
    calls unchanged, 16 sampled: caught at 1 - C(178, 16) / C(198, 16) = 0.831."""
    src = tmp_path / "vol.img"
    data = _volume(src, seed=4)
    container = Repository.open(MemoryBlobStore()).container("proj", "c")
    full, _ = backup_volume(str(src), container, block_size=BS)
    data[50 * BS : 70 * BS] = bytes([1]) * (20 * BS)
    data[0:BS] = bytes([2]) * BS
    data[199 * BS :] = bytes([3]) * BS
    src.write_bytes(data)
    lie = ChangeSet(full.backup_id, len(data), BS, [(0, BS), (199 * BS, BS)])
    p = catch_probability(198, 20, 16)
    assert p == pytest.approx(0.8307, abs=1e-3)
    caught = 0
    trials = 40
    for seed in range(trials):
        _inc, stats = backup_volume(
            str(src),
            container,
            parent=full,
            changes=lie,
            block_size=BS,
            audit_blocks=16,
            audit_seed=seed,
        )
        hit = stats.changes_audit["mismatched"] > 0
        caught += hit
        assert stats.changed_extents_used is (not hit)
        assert stats.blocks_read == (NBLOCKS if hit else 2)
    sigma = math.sqrt(trials * p * (1 - p))
    assert abs(caught - trials * p) < 3 * sigma, caught


def test_audit_off_and_bad_values(tmp_path):
    src = tmp_path / "vol.img"
    data = _volume(src)
    container = Repository.open(MemoryBlobStore()).container("proj", "c")
    full, _ = backup_volume(str(src), container, block_size=BS)
    ok = ChangeSet(full.backup_id, len(data), BS, [])
    _inc, stats = backup_volume(
        str(src), container, parent=full, changes=ok, block_size=BS, audit_blocks=0
    )
    assert stats.changes_audit is None and stats.blocks_read == 0 and stats.bytes_read == 0
    _inc, stats = backup_volume(str(src), container, parent=full, changes=ok, block_size=BS)
    assert stats.changes_audit == {"sampled": 16, "mismatched": 0, "bytes_read": 16 * BS}
    assert stats.bytes_read == 0  # the audit's reads are counted apart
    from engine.errors import InvalidInput

    with pytest.raises(
        InvalidInput, match=r"audit_blocks must be a non-negative int \(0: off\), got -1"
    ):
        backup_volume(str(src), container, parent=full, changes=ok, block_size=BS, audit_blocks=-1)
