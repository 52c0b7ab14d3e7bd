"""The page-digest section of a pack and the batched base lookups built on it, on real
files: what a sealed pack carries, one GET per pack for a window of bases, the fall back to
an entry's own digests for packs without a section (or a damaged record), and the
vectorised index lookup agreeing with the scalar one."""

from __future__ import annotations

import numpy as np

from engine import native
from engine.repository import Repository
from engine.repository.objects import pages_prefix_size
from engine.repository.packs import PACK_TRAILER, PACK_TRAILER_SIZE
from engine.repository.pagesection import RECORD_SIZE, parse, section_offset
from engine.store import LocalBlobStore

BS = 64 << 10
NPAGES = BS // 4096


class Counting(LocalBlobStore):
    def __init__(self, root) -> None:
        super().__init__(root)
        self.gets = 0

    def get(self, key, offset=0, length=None):
        self.gets += 1
        return super().get(key, offset, length)


def _blocks(n: int, seed: int = 1) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, BS, np.uint8).tobytes() for _ in range(n)]


def _store(container, blocks):
    batch = container.batch()
    digests = []
    for b in blocks:
        d = native.digest(b, container.seed)
        batch.stage(d, container.codec.encode_parts(b, d))
        digests.append(d)
    batch.commit()
    return digests


def test_a_sealed_pack_carries_the_page_digests_of_its_full_blocks(tmp_path):
    store = Counting(tmp_path / "repo")
    c = Repository.open(store).container("p", "backups")
    blocks = _blocks(12)
    digests = _store(c, blocks)
    (key,) = list(store.keys(c.keys.packs))
    blob = (tmp_path / "repo" / key).read_bytes()
    trailer = blob[-PACK_TRAILER_SIZE:]
    index_at = PACK_TRAILER.unpack(trailer)[5]
    records = parse(blob[section_offset(trailer) : index_at])
    assert index_at - section_offset(trailer) == 12 * (RECORD_SIZE + 8 * NPAGES + 8)
    for d, b in zip(digests, blocks, strict=True):
        prefix = c.codec.encode(b, d)[: pages_prefix_size(BS)]
        assert records[d] == prefix[32:]  # byte for byte the entry's digests and checksum
    # The window's bases: one GET of the pack's tail, whatever their number.
    c2 = Repository.open(store).container("p", "backups")
    c2.known()
    store.gets = 0
    found = c2.delta_bases(digests, BS)
    assert store.gets == 1
    for d, f, b in zip(digests, found, blocks, strict=True):
        assert f.base == d and f.prior is None
        assert (f.pages == native.page_digests(b, c.seed)).all()


def test_without_a_section_or_with_a_damaged_record_the_entries_are_read(tmp_path):
    store = Counting(tmp_path / "repo")
    c = Repository.open(store).container("p", "backups")
    blocks = _blocks(6, seed=2)
    digests = _store(c, blocks)
    (key,) = list(store.keys(c.keys.packs))
    path = tmp_path / "repo" / key
    blob = bytearray(path.read_bytes())
    trailer = bytes(blob[-PACK_TRAILER_SIZE:])
    at = section_offset(trailer) + RECORD_SIZE + 5  # a page digest in the first record
    blob[at] ^= 1
    path.write_bytes(bytes(blob))
    c2 = Repository.open(store).container("p", "backups")
    c2.known()
    store.gets = 0
    found = c2.delta_bases(digests, BS)
    assert store.gets == 2  # the tail; then the one block whose record fails its checksum
    for f, b in zip(found, blocks, strict=True):
        assert (f.pages == native.page_digests(b, c.seed)).all()
    # A pack without a section (the trailer's offset 0): every base from its entry, in
    # coalesced ranged reads (these entries lie next to each other).
    blob[at] ^= 1
    magic, version, r1, count, _off, index_at, check = PACK_TRAILER.unpack(trailer)
    blob[-PACK_TRAILER_SIZE:] = PACK_TRAILER.pack(magic, version, r1, count, 0, index_at, check)
    path.write_bytes(bytes(blob))
    c3 = Repository.open(store).container("p", "backups")
    c3.known()
    store.gets = 0
    found = c3.delta_bases(digests, BS)
    assert store.gets == 1 + 1
    assert all(
        (f.pages == native.page_digests(b, c.seed)).all()
        for f, b in zip(found, blocks, strict=True)
    )


def test_locate_many_agrees_with_locate(tmp_path):
    c = Repository.open(LocalBlobStore(tmp_path / "repo")).container("p", "backups")
    digests = _store(c, _blocks(40, seed=3))
    view = c.known()
    unknown = [bytes(16), b"\xff" * 16]
    asked = digests[::3] + unknown + digests[1::3]
    assert view.locate_many(asked) == [view.locate(d) for d in asked]
    assert view.locate_many([]) == []


def test_spans_many_agrees_with_locate_for_loaded_added_and_dropped_entries(tmp_path):
    c = Repository.open(LocalBlobStore(tmp_path / "repo")).container("p", "backups")
    digests = _store(c, _blocks(40, seed=3))
    view = c.known()
    added = _store(c, _blocks(5, seed=4))  # this process's own pack, after the view loaded
    view = c.known()
    assert all(d in view for d in added)
    view.drop(digests[7])  # quarantined since loading
    asked = digests[::2] + [bytes(16)] + added + [digests[7]]

    def span(d):
        loc = view.locate(d)
        return None if loc is None else (loc.pack_id, loc.offset, loc.length)

    got = view.spans_many(asked)
    assert got == [span(d) for d in asked]
    assert got[len(digests[::2])] is None and got[-1] is None
    assert all(s is not None for s in got[len(digests[::2]) + 1 : -1])
    assert view.spans_many([]) == []
