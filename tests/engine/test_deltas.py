"""Sub-block deltas on real files: what is stored, depth 1, bit-exact restores of chains,
deletes in any order, dedup onto deltas, a damaged base reported for every block on it.

Blocks are 256 KiB (64 pages, so a referencing delta names at most 32 of them) of random
bytes, which zstd leaves raw: the stored size of every object is exact arithmetic. On pack
files (format 2, the default) deltas are referencing deltas: a page unchanged since the
parent version is referenced in the delta that stores it, never stored again.
"""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
from backup_helpers import PROJECT, assert_same_bytes, backup, make_image, read_bytes, restore_new

from engine import native
from engine.errors import CorruptionError
from engine.repository import pagerefs
from engine.repository.objects import (
    HEADER_SIZE,
    delta_page_limit,
    pages_prefix_size,
    parse_head,
)

BS = 256 << 10
PAGES = BS // 4096
NBLOCKS = 16
SIZE = NBLOCKS * BS
VID = "5f0c1d2e-3a4b-4c5d-8e6f-7a8b9c0d1e2f"
FULL = pages_prefix_size(BS) + BS  # a full block of random bytes, stored raw
LIMIT = delta_page_limit(PAGES, refs=True)  # 32


def refs_size(named: int, stored: int, donors: int = 0) -> int:
    """The size of a referencing delta naming ``named`` pages, ``stored`` of them in it:
    header, base digest, mask, counts, donors (digest and payload offset), a source, a slot
    and a page digest per named page, checksum, then the stored pages."""
    head = HEADER_SIZE + 16 + PAGES // 8 + 8 + 24 * donors + 11 * named + 8
    assert head == HEADER_SIZE + pagerefs.head_size(PAGES, named, donors)
    return head + 4096 * stored


def write_pages(path, pages: dict[int, list[int]], seed: int, bs: int = BS) -> bytes:
    """Overwrite pages (block -> page numbers in it) with random bytes, never past the
    image's end; return the image."""
    rng = random.Random(seed)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        for block, numbers in pages.items():
            for p in numbers:
                at = block * bs + p * 4096
                f.seek(at)
                f.write(rng.randbytes(min(4096, size - at)))
    return read_bytes(path)


def _container(eng):
    return eng.repo.container(PROJECT, "backups")


def _head(eng, digest: bytes):
    c = _container(eng)
    blob = c.get_object(digest)  # the object itself, whether its own blob or a pack entry
    return parse_head(blob), len(blob)


def _digest(eng, image: bytes, block: int) -> bytes:
    return native.digest(image[block * BS : (block + 1) * BS], _container(eng).seed)


@pytest.fixture
def vol(open_engine, tmp_path):
    eng = open_engine(block_size=BS, allow_delete_with_dependents=True)
    path = tmp_path / "vol.img"
    make_image(path, SIZE, bs=BS, seed=5)
    eng.register_volume(PROJECT, VID, str(path), name="deltas")
    return eng, path


def _chain(eng, path):
    """Full, then three incrementals exercising deltas, accumulation and a new base."""
    images, ids, stats = [read_bytes(path)], [], []
    ids.append(backup(eng, VID, name="full")["id"])
    stats.append(eng.catalog.backup(ids[-1])["stats"])
    changes = [
        {**{b: [b * 3 % PAGES] for b in range(8)}, 8: [1, 2, 3]},  # 9 deltas
        {0: [40], 1: list(range(10, 10 + LIMIT))},  # accumulate; too many
        {1: [63]},  # a delta on block 1's new base
    ]
    for k, change in enumerate(changes):
        images.append(write_pages(path, change, seed=k))
        ids.append(backup(eng, VID, incremental=True, name=f"i{k}")["id"])
        stats.append(eng.catalog.backup(ids[-1])["stats"])
    return images, ids, stats


def test_scattered_pages_become_deltas_on_one_full_base_and_restore_bit_exact(vol, tmp_path):
    eng, path = vol
    images, ids, stats = _chain(eng, path)
    assert stats[0]["delta_blocks"] == 0 and stats[0]["bytes_stored"] == NBLOCKS * FULL
    # Eight blocks with one changed page, one with three: nine deltas, nothing else.
    assert stats[1]["delta_blocks"] == 9 and stats[1]["objects_written"] == 9
    assert stats[1]["bytes_stored"] == 8 * refs_size(1, 1) + refs_size(3, 3)
    base0 = _digest(eng, images[0], 0)
    head, size = _head(eng, _digest(eng, images[1], 0))
    assert head.base == base0 and size == refs_size(1, 1)
    # Block 0 changes again: its delta is against the same full base (depth 1) and names
    # both pages, but stores only the new one: the other is referenced in the first delta.
    # Block 1 passes the limit: stored whole, it is the new base.
    assert stats[2]["delta_blocks"] == 1 and stats[2]["objects_written"] == 2
    first0 = _digest(eng, images[1], 0)
    blob = _container(eng).get_object(_digest(eng, images[2], 0))
    refs = _container(eng).codec.refs(blob, _digest(eng, images[2], 0))
    assert refs.base == base0 and refs.donors == [first0] and len(blob) == refs_size(2, 1, 1)
    assert refs.pages().tolist() == [0, 40] and refs.sources.tolist() == [1, 0]
    head, size = _head(eng, _digest(eng, images[2], 1))
    assert head.base is None and size == FULL
    assert stats[2]["bytes_stored"] == refs_size(2, 1, 1) + FULL
    head, size = _head(eng, _digest(eng, images[3], 1))
    assert head.base == _digest(eng, images[2], 1) and size == refs_size(1, 1)
    for k, (bid, image) in enumerate(zip(ids, images, strict=True)):
        assert_same_bytes(restore_new(eng, bid, tmp_path / f"r{k}.img"), image, f"backup {k}")
    report = eng.verify(PROJECT, deep=True)
    assert report["ok"], report


@pytest.mark.parametrize("order", [(0, 1, 2, 3), (3, 2, 1, 0), (1, 0, 3, 2), (2, 0, 3, 1)])
def test_deleting_backups_in_any_order_keeps_every_other_restorable(vol, tmp_path, order):
    eng, path = vol
    images, ids, _stats = _chain(eng, path)
    alive = set(range(4))
    for gone in order:
        eng.delete_backup(PROJECT, ids[gone])
        alive.discard(gone)
        for k in sorted(alive):
            target = tmp_path / f"after-{gone}-{k}.img"
            assert_same_bytes(restore_new(eng, ids[k], target), images[k], f"backup {k}")
            os.unlink(target)
        assert eng.verify(PROJECT, deep=True)["ok"]
    # Once nothing is left, nothing is kept: the sweep of the last delete removed it all.
    assert list(_container(eng).iter_objects()) == []


def test_a_backup_reusing_a_delta_by_dedup_keeps_its_base_alive(vol, tmp_path):
    """A full backup of an unchanged volume stores nothing: its blocks are the deltas of the
    incremental before it. Deleting the backups that stored the base and the deltas must
    not take the base away from it."""
    eng, path = vol
    first = backup(eng, VID, name="full")["id"]
    image = write_pages(path, {b: [7] for b in range(NBLOCKS)}, seed=9)
    incr = backup(eng, VID, incremental=True, name="incr")
    assert incr["stats"]["delta_blocks"] == NBLOCKS
    again = backup(eng, VID, name="full again")
    assert again["stats"]["objects_written"] == 0 and again["stats"]["bytes_stored"] == 0
    eng.delete_backup(PROJECT, incr["id"])
    eng.delete_backup(PROJECT, first)
    kept = {d for d, _info in _container(eng).iter_objects()}
    assert len(kept) == 2 * NBLOCKS  # the deltas and every base they stand on
    assert_same_bytes(restore_new(eng, again["id"], tmp_path / "again.img"), image)
    assert eng.verify(PROJECT, deep=True)["ok"]


@pytest.fixture
def shared_base(open_engine, tmp_path):
    """Six blocks with one content (one base object), each then changed in another page."""
    eng = open_engine(block_size=BS)
    path = tmp_path / "vol.img"
    make_image(path, SIZE, bs=BS, seed=6)
    block = random.Random(1).randbytes(BS)
    with open(path, "r+b") as f:
        for b in range(6):
            f.seek(b * BS)
            f.write(block)
    eng.register_volume(PROJECT, VID, str(path), name="shared")
    full = backup(eng, VID, name="full")["id"]
    image = write_pages(path, {b: [b] for b in range(6)}, seed=3)
    incr = backup(eng, VID, incremental=True, name="incr")
    assert incr["stats"]["delta_blocks"] == 6
    c = _container(eng)
    base = native.digest(block, c.seed)
    base_file = os.path.join(eng.repo.local_root, c.object_key(base))
    deltas = [_digest(eng, image, b) for b in range(6)]
    return eng, path, full, incr["id"], image, base, base_file, deltas


@pytest.mark.repo_format(1)  # truncates the base's own file: a version-1 object
def test_a_damaged_base_is_reported_for_every_block_on_it(shared_base, tmp_path):
    eng, path, full, incr, image, base, base_file, deltas = shared_base
    with open(base_file, "r+b") as f:
        f.truncate(os.path.getsize(base_file) - 1000)
    with pytest.raises(CorruptionError) as info:
        eng.restore_backup(PROJECT, incr, str(tmp_path / "x.img"))
    assert info.value.message == (
        f"block object {deltas[0].hex()} is a delta on block object {base.hex()}, which has "
        "inconsistent lengths (truncated or damaged)"
    )
    assert info.value.block == 0 and info.value.backup_id == incr
    body = eng.restore_backup(PROJECT, incr, str(tmp_path / "y.img"), allow_damaged=True)
    assert body["restore"]["lost_blocks"] == list(range(6))
    restored = read_bytes(tmp_path / "y.img")
    assert restored[6 * BS :] == image[6 * BS :] and restored[: 6 * BS] == bytes(6 * BS)
    report = {b["id"]: b for b in eng.verify(PROJECT)["backups"]}
    assert report[incr]["damaged_blocks"] == list(range(6))
    assert report[full]["damaged_blocks"] == list(range(6))
    assert report[incr]["errors"][0].startswith(f"block 0 (object {deltas[0].hex()}): ")
    # The next incremental stores the six blocks afresh, whole: it restores bit-exact.
    heal = backup(eng, VID, incremental=True, name="heal")
    assert heal["stats"]["objects_written"] == 6 and heal["stats"]["delta_blocks"] == 0
    assert_same_bytes(restore_new(eng, heal["id"], tmp_path / "heal.img"), image)


@pytest.mark.parametrize("fmt", [1, 2])
def test_deep_verify_finds_a_flipped_base_for_each_dependent(fmt, request, monkeypatch):
    monkeypatch.setenv("CINDERBLOCK_REPO_FORMAT", str(fmt))
    eng, _path, full, incr, _image, base, base_file, _deltas = request.getfixturevalue(
        "shared_base"
    )
    c = _container(eng)
    assert c.format_version == fmt
    if fmt == 1:
        at = os.path.getsize(base_file) - 50
    else:  # the base is an entry of a pack: flip a byte 50 before the entry's end
        loc = c.known().locate(base)
        base_file = os.path.join(eng.repo.local_root, c.keys.pack(loc.pack_id))
        at = loc.offset + loc.length - 50
    with open(base_file, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x40]))
    assert eng.verify(PROJECT)["ok"]  # quick: the header and size are fine
    report = {b["id"]: b for b in eng.verify(PROJECT, deep=True)["backups"]}
    assert report[incr]["damaged_blocks"] == list(range(6))
    assert report[full]["damaged_blocks"] == list(range(6))
    assert all(f"its base block object {base.hex()}: " in e for e in report[incr]["errors"])


def test_a_chain_of_30_scattered_incrementals(open_engine, tmp_path):
    """Thirty incrementals of a few scattered pages each: every one restores bit-exact and
    stores exactly the pages written that day (each page once; the pages unchanged since
    the parent are referenced where they are stored, from at most MAX_DONORS donors, else
    stored again, the half giving fewest), or a new base when the pages since the base pass
    the limit; the chain
    never reads more than one base per block and never a donor of a donor."""
    eng = open_engine(block_size=BS)
    path = tmp_path / "vol.img"
    make_image(path, SIZE, bs=BS, seed=8)
    eng.register_volume(PROJECT, VID, str(path), name="thirty")
    ids = [backup(eng, VID, name="full")["id"]]
    images = [read_bytes(path)]
    rng = random.Random(30)
    # The model, per block: page -> the day whose delta stores it (since the base), and
    # the names of the block's last delta: [that day, its donors' days...].
    holder: dict[int, dict[int, int]] = {b: {} for b in range(NBLOCKS)}
    names: dict[int, list[int]] = {b: [] for b in range(NBLOCKS)}
    capped = 0
    for day in range(30):
        change: dict[int, list[int]] = {}
        for _ in range(6 if day < 20 else 12):  # 4 KiB writes, anywhere; more at the end
            change.setdefault(rng.randrange(NBLOCKS), []).append(rng.randrange(PAGES))
        images.append(write_pages(path, change, seed=100 + day))
        detail = backup(eng, VID, incremental=True, name=f"day {day}")
        ids.append(detail["id"])
        expect_bytes, expect_deltas = 0, 0
        for b, pages in change.items():
            new, old = set(pages), holder[b]
            if len(set(old) | new) > LIMIT:
                holder[b], names[b] = {}, []
                expect_bytes += FULL
                continue
            kept = {p: h for p, h in old.items() if p not in new}
            counts: dict[int, int] = {}
            for h in kept.values():
                counts[h] = counts.get(h, 0) + 1
            order = {h: k for k, h in enumerate(names[b])}
            keep = sorted(counts, key=lambda h: (counts[h], order[h]))
            if len(keep) > pagerefs.MAX_DONORS:  # the half giving the fewest pages goes
                keep, capped = keep[len(keep) // 2 :], capped + 1
            stored = new | {p for p, h in kept.items() if h not in keep}
            holder[b] = {
                **{p: h for p, h in kept.items() if h in keep},
                **dict.fromkeys(stored, day),
            }
            names[b] = [day, *sorted(keep, key=order.get)]
            expect_deltas += 1
            expect_bytes += refs_size(len(holder[b]), len(stored), len(keep))
        assert detail["stats"]["delta_blocks"] == expect_deltas, day
        assert detail["stats"]["bytes_stored"] == expect_bytes, day
    assert capped  # the donor cap was reached, and pages stored again
    for k in (1, 15, 30):
        assert_same_bytes(restore_new(eng, ids[k], tmp_path / f"d{k}.img"), images[k], f"day {k}")
    c = _container(eng)
    for digest, _info in c.iter_objects():
        head, _size = _head(eng, digest)
        if head.base is not None:
            assert _head(eng, head.base)[0].base is None  # depth at most 1
            refs = c.codec.refs(c.get_object(digest), digest)
            assert len(refs.donors) <= pagerefs.MAX_DONORS
            for k, donor in enumerate(refs.donors, 1):  # a donor stores what it gives
                taken = refs.pages()[refs.sources == k]
                donor_refs = c.codec.refs(c.get_object(donor), donor)
                assert donor_refs.base == refs.base
                assert donor_refs.own_mask()[taken].all()
    assert eng.verify(PROJECT, deep=True)["ok"]


def test_every_block_size_and_a_short_last_block(open_engine, tmp_path):
    # Last blocks of 15 and 171 pages (the last one short), so each may hold a delta.
    for bs, size in ((64 << 10, 5 * (64 << 10) + 60000), (1 << 20, 3 * (1 << 20) + 700_017)):
        eng = open_engine(tmp_path / f"repo-{bs}", block_size=bs)
        path = tmp_path / f"vol-{bs}.img"
        make_image(path, size, bs=bs, seed=bs)
        vid = f"5f0c1d2e-3a4b-4c5d-8e6f-{bs:012d}"
        eng.register_volume(PROJECT, vid, str(path), name=f"v{bs}")
        full = read_bytes(path)
        first = backup(eng, vid, name="full")["id"]
        last_page = (size - 1) % bs // 4096
        nb = -(-size // bs)
        image = write_pages(path, {0: [1], nb - 1: [last_page]}, seed=1, bs=bs)
        detail = backup(eng, vid, incremental=True, name="incr")
        assert detail["stats"]["delta_blocks"] == 2
        assert_same_bytes(restore_new(eng, detail["id"], tmp_path / f"r{bs}.img"), image)
        assert_same_bytes(restore_new(eng, first, tmp_path / f"f{bs}.img"), full)
        assert eng.verify(PROJECT, deep=True)["ok"]


def test_a_wrong_key_is_blamed_on_the_key_for_deltas_too(vol, open_engine, tmp_path):
    """A changed seed (a config of older engines, without its checksum): every delta fails
    with its base, deep verify blames the key and sets nothing aside; with the right key
    back, everything restores."""
    import json

    from engine.verify import WrongKeyError

    eng, path = vol
    images, ids, _stats = _chain(eng, path)
    root = eng.repo.local_root
    eng.close()
    config_path = os.path.join(root, "config.json")
    with open(config_path) as f:
        good = json.load(f)
    legacy = {k: v for k, v in good.items() if k != "checksum"}
    with open(config_path, "w") as f:
        json.dump({**legacy, "seed": (good["seed"] + 1) % 2**64}, f)
    wrong = open_engine(root, block_size=BS)
    with pytest.raises(WrongKeyError, match="nothing was quarantined"):
        wrong.verify(PROJECT, ids[1], deep=True)
    quarantine = os.path.join(root, "projects", PROJECT, "backups", "quarantine")
    assert not os.path.exists(quarantine) or os.listdir(quarantine) == []
    wrong.close()
    with open(config_path, "w") as f:
        json.dump(good, f)
    right = open_engine(root, block_size=BS)
    assert right.verify(PROJECT, deep=True)["ok"]
    assert_same_bytes(restore_new(right, ids[1], tmp_path / "r.img"), images[1])


@pytest.fixture
def donor_chain(open_engine, tmp_path):
    """Four blocks; each incremental writes one new page in each: day 1 pages 1, day 2
    pages 2, day 3 pages 3. Day 3's deltas take page 1 from day 1's and page 2 from day 2's."""
    eng = open_engine(block_size=BS, allow_delete_with_dependents=True)
    path = tmp_path / "vol.img"
    make_image(path, 4 * BS, bs=BS, seed=12)
    eng.register_volume(PROJECT, VID, str(path), name="donors")
    ids, images = [backup(eng, VID, name="full")["id"]], [read_bytes(path)]
    for day in (1, 2, 3):
        images.append(write_pages(path, {b: [day] for b in range(4)}, seed=day))
        detail = backup(eng, VID, incremental=True, name=f"day {day}")
        assert detail["stats"]["delta_blocks"] == 4
        assert detail["stats"]["bytes_stored"] == 4 * refs_size(day, 1, day - 1)
        ids.append(detail["id"])
    return eng, path, ids, images


def _donors_of(eng, image: bytes, block: int) -> list[bytes]:
    c = _container(eng)
    digest = _digest(eng, image, block)
    return c.codec.refs(c.get_object(digest), digest).donors


def test_deleting_the_backups_that_stored_the_pages_keeps_the_donors(donor_chain, tmp_path):
    eng, _path, ids, images = donor_chain
    donors = _donors_of(eng, images[3], 0)
    assert sorted(donors) == sorted([_digest(eng, images[1], 0), _digest(eng, images[2], 0)])
    eng.delete_backup(PROJECT, ids[1])
    eng.delete_backup(PROJECT, ids[2])
    eng.delete_backup(PROJECT, ids[0])
    report = eng.gc(grace_seconds=60)
    assert not report["containers_skipped"], report
    kept = {d for d, _info in _container(eng).iter_objects()}
    for b in range(4):  # the base, the two donors and the delta of every block stay
        assert {_digest(eng, images[k], b) for k in range(4)} <= kept
    assert len(kept) == 16
    assert_same_bytes(restore_new(eng, ids[3], tmp_path / "d3.img"), images[3])
    assert eng.verify(PROJECT, deep=True)["ok"]
    eng.delete_backup(PROJECT, ids[3])
    assert list(_container(eng).iter_objects()) == []  # the donors went with the last one


def test_a_restore_parses_each_referencing_head_once_and_no_donor_head(
    donor_chain, tmp_path, monkeypatch
):
    """A restore run reads its deltas' heads to gather their donors; the decode takes the
    parsed head from there instead of parsing it again, and a donor is only sliced."""
    from engine.repository import pagerefs

    eng, _path, ids, images = donor_chain
    parsed = []
    real = pagerefs.parse_head

    def counting(body, npages, what):
        refs = real(body, npages, what)
        parsed.append(refs.base)
        return refs

    monkeypatch.setattr(pagerefs, "parse_head", counting)
    assert_same_bytes(restore_new(eng, ids[3], tmp_path / "d3.img"), images[3])
    assert len(parsed) == 4  # day 3's four deltas, once each (their donors: never)
    bases = [_head(eng, _digest(eng, images[3], b))[0].base for b in range(4)]
    assert sorted(parsed) == sorted(bases)


def test_a_damaged_donor_is_reported_for_every_block_that_takes_pages_from_it(
    donor_chain, tmp_path
):
    eng, path, ids, images = donor_chain
    c = _container(eng)
    # Day 1's delta of block 0 gives page 1 to days 2 and 3: flip a byte of that page.
    donor = _digest(eng, images[1], 0)
    loc = c.known().locate(donor)
    pack = os.path.join(eng.repo.local_root, c.keys.pack(loc.pack_id))
    with open(pack, "r+b") as f:
        at = loc.offset + loc.length - 100
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x08]))
    delta3 = _digest(eng, images[3], 0)
    with pytest.raises(CorruptionError) as info:
        eng.restore_backup(PROJECT, ids[3], str(tmp_path / "x.img"))
    assert info.value.message == (
        f"block object {delta3.hex()} takes pages from block object {donor.hex()}, which does "
        "not match its digest"
    )
    assert info.value.block == 0
    report = {b["id"]: b for b in eng.verify(PROJECT, deep=True)["backups"]}
    assert report[ids[0]]["ok"]
    for k in (1, 2, 3):  # the donor itself, and each delta taking its page
        assert report[ids[k]]["damaged_blocks"] == [0], (k, report[ids[k]])
    assert report[ids[2]]["errors"][0].endswith(
        f"its donor block object {donor.hex()}: {report[ids[1]]['errors'][0].split(': ', 1)[1]}"
    )
    # The next incremental stores block 0 afresh: everything it needs is intact.
    heal = backup(eng, VID, incremental=True, name="heal")
    assert heal["stats"]["objects_written"] == 1
    assert_same_bytes(restore_new(eng, heal["id"], tmp_path / "heal.img"), images[3])


def test_deltas_of_format_2_written_before_are_read_and_built_on(
    open_engine, tmp_path, monkeypatch
):
    """A container holding version-2 deltas (codec 2/3, what the engine wrote before
    referencing deltas): they restore bit-exact, and the next version of such a block is a
    referencing delta that stores every page it names (a version-2 delta has no page
    digests to reference against), the one after it references again."""
    from engine.repository.objects import BlockCodec

    eng = open_engine(block_size=BS)
    path = tmp_path / "vol.img"
    make_image(path, 2 * BS, bs=BS, seed=21)
    eng.register_volume(PROJECT, VID, str(path), name="old deltas")
    ids, images = [backup(eng, VID, name="full")["id"]], [read_bytes(path)]

    def old_encode(self, block, digest, base, mask, page_digests, plan):
        return self.encode_delta(block, digest, base, mask)

    with monkeypatch.context() as m:
        m.setattr(BlockCodec, "encode_refs", old_encode)
        images.append(write_pages(path, {0: [1], 1: [2]}, seed=1))
        ids.append(backup(eng, VID, incremental=True, name="v2 deltas")["id"])
    c = _container(eng)
    assert parse_head(c.get_object(_digest(eng, images[1], 0))).version == 2
    for day, pages in ((2, {0: [5]}), (3, {0: [9]})):
        images.append(write_pages(path, pages, seed=day))
        detail = backup(eng, VID, incremental=True, name=f"day {day}")
        ids.append(detail["id"])
        c, digest = _container(eng), _digest(eng, images[day], 0)  # a view with this backup
        refs = c.codec.refs(c.get_object(digest), digest)
        if day == 2:  # on a version-2 parent: both named pages stored
            assert refs.donors == [] and np.flatnonzero(refs.own_mask()).tolist() == [1, 5]
            assert detail["stats"]["bytes_stored"] == refs_size(2, 2)
        else:  # on a referencing parent: pages 1 and 5 taken from it
            assert refs.donors == [_digest(eng, images[2], 0)]
            assert np.flatnonzero(refs.own_mask()).tolist() == [9]
    for k, (bid, image) in enumerate(zip(ids, images, strict=True)):
        assert_same_bytes(restore_new(eng, bid, tmp_path / f"r{k}.img"), image, f"backup {k}")
    assert eng.verify(PROJECT, deep=True)["ok"]
