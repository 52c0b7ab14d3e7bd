"""Block maps held sparse (data runs + data digests): the same maps, bytes and restores as the
dense per-block arrays they replace, and memory that does not grow with the volume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import xxhash
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import BlockMap, ChangeSet, Repository, backup_volume, native, restore_volume
from engine.repository import blockmap as bmmod

BS = 4096
SEED = 7
ZERO = native.zero_digest(BS, SEED)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def dense_encode(m_id, parent_id, bs, volume_size, digests, zero) -> bytes:
    """The dense encoder this type had before it was held sparse (reference, version 1)."""
    kinds = np.where(zero, bmmod.KIND_ZERO, bmmod.KIND_DATA).astype(np.uint8)
    data = np.ascontiguousarray(digests[~zero])
    body = zstandard.ZstdCompressor(level=3).compress(kinds.tobytes() + data.tobytes())
    header = bmmod.HEADER.pack(
        bmmod.MAGIC,
        1,
        bmmod.HASH_XXH3_128_KEYED,
        0,
        bs,
        volume_size,
        len(zero),
        len(data),
        len(body),
        uuid.UUID(m_id).bytes,
        uuid.UUID(parent_id).bytes if parent_id else bytes(16),
    )
    blob = header + body
    return blob + xxhash.xxh3_128_digest(blob)


@st.composite
def dense_maps(draw):
    nblocks = draw(st.integers(0, 300))
    tail = draw(st.integers(0, BS - 1)) if nblocks else 0
    volume_size = nblocks * BS - tail
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    zero = rng.random(nblocks) < draw(st.floats(0, 1))
    # Runs of data as well as isolated blocks.
    if nblocks and draw(st.booleans()):
        a, b = sorted(rng.integers(0, nblocks, 2).tolist())
        zero[a:b] = False
    digests = rng.integers(0, 256, (nblocks, 16), dtype=np.uint8)
    digests[zero] = np.frombuffer(ZERO, np.uint8)
    return volume_size, digests, zero


@settings(max_examples=150, deadline=None)
@given(dense_maps(), st.booleans())
def test_sparse_map_encodes_and_answers_as_the_dense_one(m, with_parent):
    volume_size, digests, zero = m
    bid, pid = str(uuid.uuid4()), str(uuid.uuid4()) if with_parent else None
    reference = dense_encode(bid, pid, BS, volume_size, digests, zero)
    dense = BlockMap(bid, pid, BS, volume_size, digests=digests, zero=zero)
    sparse = BlockMap(
        bid,
        pid,
        BS,
        volume_size,
        runs=native.mask_to_runs(~zero),
        data_digests=digests[~zero],
    )
    assert dense.encode(1) == reference
    assert sparse.encode(1) == reference
    back = BlockMap.decode(reference, ZERO)
    assert back.encode(1) == reference
    assert back.checksum() == xxhash.xxh3_128_digest(reference)
    # Version 2 holds the same map; its checksum is still that of version 1.
    v2 = BlockMap.decode(sparse.encode(), ZERO)
    assert sparse.encode()[4:6] == b"\x02\x00" and v2.encode() == sparse.encode()
    assert v2.encode(1) == reference and v2.checksum() == back.checksum()
    for bm in (sparse, back, v2):
        assert bm.nblocks == len(zero) and bm.ndata == int((~zero).sum())
        assert (bm.data_blocks() == np.flatnonzero(~zero)).all()
        assert (bm.data_runs() == native.mask_to_runs(~zero)).all()
        assert (bm.zero_runs() == native.mask_to_runs(zero)).all()
        assert bm.referenced() == {bytes(r) for r in digests[~zero]}
        for i in range(len(zero)):
            assert bm.is_zero(i) == bool(zero[i])
            assert bm.digest(i) == (None if zero[i] else bytes(digests[i]))
        lo = len(zero) // 3
        wd, wz = bm.window(lo, lo + 9)
        assert (wz == zero[lo : lo + 9]).all()
        assert (wd[~wz] == digests[lo : lo + 9][~wz]).all()
    # The dense arrays, built on demand, are the decoder's of old.
    assert (back.zero == zero).all() and (back.digests == digests).all()


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 80), st.integers(0, 2**32 - 1))
def test_run_algebra_matches_masks(n, seed):
    rng = np.random.default_rng(seed)
    a, b = rng.random(n) < rng.random(), rng.random(n) < rng.random()
    ra, rb = native.mask_to_runs(a), native.mask_to_runs(b)
    for got, want in (
        (native.runs_union(ra, rb), a | b),
        (native.runs_intersection(ra, rb), a & b),
        (native.runs_difference(ra, rb), a & ~b),
        (native.runs_complement(ra, n), ~a),
    ):
        assert np.array_equal(got, native.mask_to_runs(want))
    assert np.array_equal(native.runs_to_indices(ra), np.flatnonzero(a))
    twice = np.concatenate([np.flatnonzero(a)[::-1], np.flatnonzero(a)])  # any order, repeats
    assert np.array_equal(native.indices_to_runs(twice), ra)
    singles = np.stack([np.flatnonzero(a), np.ones(int(a.sum()), np.int64)], 1)
    assert np.array_equal(native.runs_normalize(singles[::-1]), ra)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 80), st.integers(0, 2**32 - 1))
def test_run_algebra_takes_runs_in_any_order_overlapping_touching_or_empty(n, seed):
    """The native merge wants normalized runs; anything else is normalized first."""
    rng = np.random.default_rng(seed)

    def messy() -> tuple[np.ndarray, np.ndarray]:
        k = int(rng.integers(0, 8))
        first = rng.integers(0, n, k)
        count = np.minimum(rng.integers(0, 6, k), n - first)
        mask = np.zeros(n, np.bool_)
        for f, c in zip(first.tolist(), count.tolist(), strict=True):
            mask[f : f + c] = True
        return np.stack([first, count], 1).astype(np.int64).reshape(-1, 2), mask

    (ra, a), (rb, b) = messy(), messy()
    assert np.array_equal(native.runs_union(ra, rb), native.mask_to_runs(a | b))
    assert np.array_equal(native.runs_intersection(ra, rb), native.mask_to_runs(a & b))
    assert np.array_equal(native.runs_difference(ra, rb), native.mask_to_runs(a & ~b))
    # Normalizing (the native merge of sorted runs) gives the mask's runs; indices are the
    # runs' blocks in run order, repeats and all.
    assert np.array_equal(native.runs_normalize(ra), native.mask_to_runs(a))
    assert native.runs_are_normal(ra) == np.array_equal(ra, native.runs_normalize(ra))
    assert native.runs_are_normal(native.runs_normalize(ra))
    expected = [f + j for f, c in ra.tolist() for j in range(c)]
    assert native.runs_to_indices(ra).tolist() == expected


def test_kinds_become_runs_and_a_kind_past_1_is_refused():
    kinds = np.zeros(40, np.uint8)
    kinds[3:20] = 1
    kinds[33] = 1
    assert native.kinds_to_runs(kinds).tolist() == [[3, 17], [33, 1]]
    for at in (0, 8, 15, 39):  # in a word of ones or alone among zeros
        bad = kinds.copy()
        bad[at] = 2
        assert native.kinds_to_runs(bad) is None


def _old_masks(cs: ChangeSet, bs: int):
    """ChangeSet.masks as it was computed on masks (reference)."""
    n = -(-cs.volume_size // bs)

    def arr(extents):
        return np.array(list(extents), dtype=np.int64).reshape(-1, 2)

    touched_changed = native.extents_to_blocks(arr(cs.changed), bs, n)
    touched_zeroed = native.extents_to_blocks(arr(cs.zeroed), bs, n)
    covered = np.zeros(n, np.bool_)
    for off, length in cs.zeroed:
        for b in range(-(-off // bs), n):
            end = min((b + 1) * bs, cs.volume_size)
            if b * bs >= off + length:
                break
            covered[b] |= all(
                any(o <= x < o + ln for o, ln in cs.zeroed) for x in range(b * bs, end)
            )
    zeroed = covered & ~touched_changed
    return (touched_changed | touched_zeroed) & ~zeroed, zeroed


extent = st.tuples(st.integers(0, 40 * 256), st.integers(0, 3 * 256))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(extent, max_size=6), st.lists(extent, max_size=6), st.integers(1, 40 * 256))
def test_change_set_runs_match_the_mask_computation(changed, zeroed, size):
    bs = 256 * 16  # 4 KiB blocks, extents in units of 16 bytes
    size *= 16
    clip = [(o * 16, min(ln * 16, size - o * 16)) for o, ln in changed if o * 16 <= size]
    zclip = [(o * 16, min(ln * 16, size - o * 16)) for o, ln in zeroed if o * 16 <= size]
    cs = ChangeSet(str(uuid.uuid4()), size, 16, changed=clip, zeroed=zclip)
    read, zero = cs.runs(bs)
    old_read, old_zero = _old_masks(cs, bs)
    assert np.array_equal(read, native.mask_to_runs(old_read))
    assert np.array_equal(zero, native.mask_to_runs(old_zero))


# ------------------------------------------------------------------------- end to end


def _write_sparse(path, nblocks: int, tail: int, rng, density: float) -> None:
    with open(path, "wb") as f:
        f.truncate(nblocks * BS - tail)
        for i in np.flatnonzero(rng.random(nblocks) < density).tolist():
            n = BS if i < nblocks - 1 else BS - tail
            os.pwrite(f.fileno(), rng.integers(0, 256, n, dtype=np.uint8).tobytes(), i * BS)


def _expected(path, bm_id, parent_id, seed) -> bytes:
    data = Path(path).read_bytes()
    digests, zero = native.hash_blocks(data, BS, seed)
    return dense_encode(bm_id, parent_id, BS, len(data), digests, zero)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.integers(1, 120),
    st.integers(0, BS - 1),
    st.floats(0, 1),
    st.integers(0, 2**32 - 1),
    st.booleans(),
)
def test_backups_of_sparse_volumes_give_the_dense_maps_and_exact_restores(
    tmp_path, nblocks, tail, density, seed, zero_some
):
    rng = np.random.default_rng(seed)
    where = tmp_path / uuid.uuid4().hex
    where.mkdir()
    container = Repository.open(where / "repo").container("p", "c")
    src = where / "vol.img"
    _write_sparse(src, nblocks, tail, rng, density)
    full, stats = backup_volume(str(src), container, block_size=BS)
    assert full.encode(1) == _expected(src, full.backup_id, None, container.seed)
    assert stats.blocks_zero == nblocks - full.ndata
    # Change some blocks (new data, or zeros written over data), with a hint.
    size = os.path.getsize(src)
    before = src.read_bytes()
    changed, zeroed = [], []
    with open(src, "r+b") as f:
        for i in rng.choice(nblocks, min(nblocks, 5), replace=False).tolist():
            length = min(BS, size - i * BS)
            if zero_some and rng.random() < 0.4:
                os.pwrite(f.fileno(), bytes(length), i * BS)
                zeroed.append((i * BS, length))
            else:
                os.pwrite(
                    f.fileno(), rng.integers(0, 256, length, dtype=np.uint8).tobytes(), i * BS
                )
                changed.append((i * BS, length))
    cs = ChangeSet(full.backup_id, size, BS, changed=changed, zeroed=zeroed)
    parent = container.get_blockmap(full.backup_id)
    inc, istats = backup_volume(str(src), container, parent=parent, changes=cs, block_size=BS)
    assert istats.changed_extents_used
    assert inc.encode(1) == _expected(src, inc.backup_id, full.backup_id, container.seed)
    after = src.read_bytes()
    d0, z0 = native.hash_blocks(before, BS, container.seed)
    d1, z1 = native.hash_blocks(after, BS, container.seed)
    assert istats.blocks_changed == native.mask_count(native.diff(d1, z1, d0, z0))
    # Without a hint, the same map.
    plain, _ = backup_volume(str(src), container, parent=parent, block_size=BS)
    assert plain.encode(1) == _expected(src, plain.backup_id, full.backup_id, container.seed)
    for bm, content in ((full, before), (inc, after)):
        out = where / f"out-{bm.backup_id}.img"
        restore_volume(container, container.get_blockmap(bm.backup_id), str(out))
        assert out.read_bytes() == content
        # In place over an existing, different file too (zero blocks written as zeros).
        out.write_bytes(bytes(rng.integers(1, 256, len(content), dtype=np.uint8)))
        restore_volume(container, container.get_blockmap(bm.backup_id), str(out))
        assert out.read_bytes() == content


@pytest.mark.parametrize("version", [1, 2])
def test_a_map_of_a_huge_sparse_volume_round_trips(version):
    """64 Ki data blocks on 64 Mi blocks: streamed kinds (version 1) or runs (version 2),
    decoded back to the same runs."""
    nblocks = 64 << 20
    runs = np.stack([np.arange(0, nblocks, 1024), np.ones(nblocks // 1024, np.int64)], 1)
    data = np.random.default_rng(1).integers(0, 256, (len(runs), 16), dtype=np.uint8)
    bm = BlockMap(str(uuid.uuid4()), None, 1 << 20, nblocks << 20, runs=runs, data_digests=data)
    blob = bm.encode(version)
    back = BlockMap.decode(blob)
    assert back.nblocks == nblocks and np.array_equal(back.data_runs(), runs)
    assert np.array_equal(back.data_digests, data)
    assert back.digest(1024 * 7) == bytes(data[7]) and back.digest(1) is None
    assert back.encode(version) == blob
    assert back.checksum() == xxhash.xxh3_128_digest(bm.encode(1))
    if version == 2:
        # Runs of the same shape compress to nearly nothing: what is left is the digests.
        assert len(blob) < len(data) * 16 + 4096


MEMORY_CHILD = r"""
import json, os, sys
from engine import Repository, backup_volume
img, repo = sys.argv[1], sys.argv[2]
bs = 64 << 10
with open(img, "wb") as f:
    f.truncate(4 << 40)
    for off in range(0, 4 << 40, 16 << 30):
        os.pwrite(f.fileno(), str(off).encode() * 100, off)
container = Repository.open(repo).container("p", "c")
bm, stats = backup_volume(img, container, block_size=bs)
back = container.get_blockmap(bm.backup_id)
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
os.unlink(img)
print(json.dumps({"hwm_mb": hwm / 1024, "nblocks": back.nblocks, "ndata": back.ndata}))
"""


def test_full_backup_of_a_4_tib_sparse_volume_stays_small(tmp_path):
    """64 Mi blocks of 64 KiB (dense arrays would be over 1 GiB): peak RSS well under that."""
    img = tmp_path / "huge.img"
    try:
        with open(img, "wb") as f:
            f.truncate(4 << 40)
    except OSError:
        pytest.skip("this filesystem does not take a 4 TiB sparse file")
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_CHILD, str(img), str(tmp_path / "repo")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": ROOT},
        check=True,
    )
    got = json.loads(out.stdout)
    assert (got["nblocks"], got["ndata"]) == (64 << 20, 256)
    assert got["hwm_mb"] < 300, got


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.integers(0, 2**32 - 1), st.sampled_from([4096, 8192, 65536]))
def test_data_runs_match_the_data_mask_inside_any_runs(tmp_path, seed, bs):
    rng = np.random.default_rng(seed)
    path = tmp_path / f"{seed}-{bs}.img"
    size = int(rng.integers(0, 200)) * 4096 + int(rng.integers(0, 4096))
    with open(path, "wb") as f:
        f.truncate(size)
        for _ in range(int(rng.integers(0, 40)) if size else 0):
            n = int(rng.integers(1, 3 * bs))
            os.pwrite(f.fileno(), b"x" * n, int(rng.integers(0, size)))
    mask = native.data_blocks(path, bs)
    assert np.array_equal(native.data_runs(path, bs), native.mask_to_runs(mask))
    within = rng.random(len(mask)) < rng.random()
    got = native.data_runs(path, bs, within=native.mask_to_runs(within))
    assert np.array_equal(got, native.mask_to_runs(mask & within))


def _forged(nblocks: int, ndata: int, raw: bytes, version: int = 1) -> bytes:
    """A block map with a valid checksum around any body: what only the decoder can refuse."""
    body = zstandard.ZstdCompressor().compress(raw)
    header = bmmod.HEADER.pack(
        bmmod.MAGIC,
        version,
        bmmod.HASH_XXH3_128_KEYED,
        0,
        1 << 20,
        nblocks << 20,
        nblocks,
        ndata,
        len(body),
        uuid.uuid4().bytes,
        bytes(16),
    )
    return header + body + xxhash.xxh3_128_digest(header + body)


@pytest.mark.parametrize(
    "kinds, ndata, digests, message",
    [
        (b"\x01\x02\x00", 2, 32, "manifest has an unknown block kind"),
        (b"\x01\x01\x00", 1, 16, "manifest block count does not match its digests"),
        (b"\x01\x01\x00", 2, 16, "manifest body has the wrong length"),
        (b"\x01\x01\x00", 2, 48, "manifest body has the wrong length"),
        (b"\x01", 1, 0, "manifest body has the wrong length"),
    ],
)
def test_a_forged_body_is_refused_with_what_is_wrong(kinds, ndata, digests, message):
    blob = _forged(3, ndata, kinds + bytes(range(digests)))
    with pytest.raises(bmmod.CorruptionError) as e:
        BlockMap.decode(blob)
    assert str(e.value) == message


def _v2(nruns: int, pairs: list[int], digests: int) -> bytes:
    return np.array([nruns, *pairs], "<u8").tobytes() + bytes(range(digests))


@pytest.mark.parametrize(
    "nblocks, ndata, raw, message",
    [
        (3, 2, _v2(3, [0, 1, 1, 1, 0, 0], 32), "manifest has an impossible number of runs (3)"),
        (3, 1, _v2(0, [], 16), "manifest has an impossible number of runs (0)"),
        (3, 0, _v2(1, [0, 1], 0), "manifest has an impossible number of runs (1)"),
        (3, 2, _v2(2 << 40, [], 0), f"manifest has an impossible number of runs ({2 << 40})"),
        (3, 2, _v2(2, [0, 1, 0, 1], 32), "manifest has runs that are empty or touch"),
        (3, 1, _v2(1, [0, 0], 16), "manifest has runs that are empty or touch"),
        (3, 1, _v2(1, [4, 1], 16), "manifest has runs past the end of the volume"),
        (3, 2, _v2(2, [1, 1, 1, 1], 32), "manifest has runs past the end of the volume"),
        (
            2**34,
            2,
            _v2(2, [2**34, 2**34, 2**63 - 1, 1], 32),
            "manifest has runs past the end of the volume",
        ),
        (3, 2, _v2(1, [0, 1], 32), "manifest block count does not match its digests"),
        (3, 2, _v2(1, [0, 2], 16), "manifest body has the wrong length"),
        (3, 2, _v2(1, [0, 2], 48), "manifest body has the wrong length"),
        (3, 2, _v2(1, [0], 0), "manifest body has the wrong length"),
        (3, 2, b"\x01", "manifest body has the wrong length"),
    ],
)
def test_a_forged_version_2_body_is_refused_with_what_is_wrong(nblocks, ndata, raw, message):
    blob = _forged(nblocks, ndata, raw, version=2)
    with pytest.raises(bmmod.CorruptionError) as e:
        BlockMap.decode(blob)
    assert str(e.value) == message


def test_a_map_of_several_kinds_chunks_decodes_through_one_buffer(monkeypatch):
    monkeypatch.setattr(bmmod, "KINDS_CHUNK", 8)
    monkeypatch.setattr(bmmod, "ONE_SHOT_BYTES", 16)
    zero = np.ones(30, np.bool_)
    zero[[0, 7, 8, 9, 15, 16, 29]] = False
    digests = np.zeros((30, 16), np.uint8)
    digests[~zero] = np.arange(7 * 16, dtype=np.uint8).reshape(7, 16)
    bm = BlockMap(str(uuid.uuid4()), None, 1 << 20, 30 << 20, digests=digests, zero=zero)
    back = BlockMap.decode(bm.encode())
    assert back.data_runs().tolist() == [[0, 1], [7, 3], [15, 2], [29, 1]]
    assert np.array_equal(back.data_digests, digests[~zero])
