"""Referencing deltas (block object version 3): each changed page is stored once.

A delta of format 2 (codec 2/3) holds every page changed since its base, so a block that
changes a little every day re-stores all of those pages every day until a new full base:
stored bytes grow faster than what was written. A referencing delta (codec 4 raw, 5 zstd)
*names* every page that differs from its full base, as before, but stores only the pages
that are new since its parent version; a page that is unchanged since then is referenced
in the object that stores it (a *donor*: an earlier referencing delta of the same block on
the same base). References go one hop: a donor always stores the page itself, never
refers on, so a restore still reads the base and overlays pages in one pass, gathering
them from at most ``MAX_DONORS`` donor objects.

The head (after the 32-byte object header; all little endian; layout and rules in
docs/repository-format.md):

    base digest 16 | page mask ceil(npages/8) | donors u16 | reserved u16 | head length u32 |
    per donor: digest 16 | payload offset u32 | reserved u32 |
    source u8 per masked page | slot u16 per masked page | page digest u64 per masked page |
    checksum u64

``source`` is 0 for a page stored in this object, k for ``donors[k - 1]``; ``slot`` is the
page's place among the pages its holder stores (for this object's own pages, their rank),
and a donor's payload offset is where its stored pages start in its object (its header plus
its head). So a reader takes a page from a donor with the donor's 32-byte header checked and
one slice, never parsing the donor's head. The page digests (keyed XXH3-64 of each masked
page's content) let the next backup tell which pages changed since this version without
reading any data, and let a reader say which object is to blame when the result fails its
digest. The checksum is XXH3-64 (seed 0) of the head before it.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

import numpy as np
import xxhash

from .. import native
from ..errors import CorruptionError

#: At most this many donors per delta (restore fetches base + own + donors per block);
#: past it, the pages of the half of the donors giving the fewest are stored again.
MAX_DONORS = 8
DIGEST_SIZE = 16
COUNTS = struct.Struct("<HHI")  # donors, reserved, head length
DONOR = struct.Struct("<16sII")  # digest, payload offset, reserved
PER_PAGE = 1 + 2 + 8  # source, slot, page digest
#: Index entry flags (packs.ENTRY ``flags``) of referencing deltas: it stores pages a later
#: delta may reference (so a delete must not drop its pack without a full sweep), and it
#: references donors (gc reads its head to keep them).
FLAG_PAGES = 1
FLAG_DONORS = 2


class PageRefs(NamedTuple):
    """A referencing delta's head, parsed and checked."""

    base: bytes
    mask: np.ndarray  # bool per page: differs from the base
    donors: list[bytes]
    offsets: list[int]  # per donor: where its stored pages start in its object
    sources: np.ndarray  # uint8 per masked page: 0 here, k donors[k - 1]
    slots: np.ndarray  # uint16 per masked page: its place among its holder's stored pages
    digests: np.ndarray  # uint64 per masked page
    head_len: int  # bytes of the body before the payload

    @property
    def payload_offset(self) -> int:
        """Where this object's stored pages start (after its 32-byte header and head)."""
        return 32 + self.head_len

    def pages(self) -> np.ndarray:
        """The page numbers of the masked pages."""
        return np.flatnonzero(self.mask)

    def own_mask(self) -> np.ndarray:
        """bool per page: stored in this object."""
        own = np.zeros(len(self.mask), np.bool_)
        own[self.pages()[self.sources == 0]] = True
        return own

    def own_pages(self) -> np.ndarray:
        """The numbers of the pages stored in this object, in payload order."""
        return self.pages()[self.sources == 0]

    def holders(self, digest: bytes) -> list[bytes]:
        """Per masked page, the digest of the object that stores it (``digest``: this
        object's own)."""
        names = [digest, *self.donors]
        return [names[s] for s in self.sources.tolist()]


def mask_size(npages: int) -> int:
    return -(-npages // 8)


def fixed_size(npages: int) -> int:
    """Bytes of the head before the donor digests: enough to learn its full length."""
    return DIGEST_SIZE + mask_size(npages) + COUNTS.size


def head_size(npages: int, nmasked: int, ndonors: int) -> int:
    return fixed_size(npages) + DONOR.size * ndonors + PER_PAGE * nmasked + 8


def head_length(body: bytes | memoryview, npages: int) -> int | None:
    """The head length a body prefix declares (None when too short to say)."""
    at = DIGEST_SIZE + mask_size(npages)
    if len(body) < at + COUNTS.size:
        return None
    return COUNTS.unpack_from(body, at)[2]


def encode_head(
    base: bytes,
    mask: np.ndarray,
    donors: list[tuple[bytes, int]],
    sources: np.ndarray,
    slots: np.ndarray,
    digests: np.ndarray,
) -> bytes:
    """The head; ``donors`` are (digest, payload offset); ``slots`` give the place of each
    referenced page among its donor's stored pages (those of pages stored here are set to
    their rank)."""
    npages = len(mask)
    nmasked = int(np.count_nonzero(mask))
    if len(sources) != nmasked or len(digests) != nmasked or len(donors) > MAX_DONORS:
        raise ValueError("one source and one digest per masked page, at most MAX_DONORS")
    sources = np.asarray(sources, np.uint8)
    slots = np.array(slots, np.uint16)
    own = sources == 0
    slots[own] = np.arange(int(own.sum()), dtype=np.uint16)
    size = head_size(npages, nmasked, len(donors))
    out = bytearray()
    out += base
    out += native.pack_mask(mask).tobytes()
    out += COUNTS.pack(len(donors), 0, size)
    for d, offset in donors:
        out += DONOR.pack(d, offset, 0)
    out += sources.tobytes()
    out += slots.astype("<u2").tobytes()
    out += np.asarray(digests, "<u8").tobytes()
    out += xxhash.xxh3_64_digest(bytes(out))
    assert len(out) == size
    return bytes(out)


def parse_head(body: bytes | memoryview, npages: int, what: str) -> PageRefs:
    """The checked head at the start of ``body`` (everything after the object header).

    On a restore this runs once per donor of every block, so it stays a handful of numpy
    calls on views of ``body`` (no copies of its arrays)."""
    fixed = fixed_size(npages)
    if len(body) < fixed:
        raise CorruptionError(f"{what} has inconsistent lengths (truncated or damaged)")
    ndonors, reserved, head_len = COUNTS.unpack_from(body, fixed - COUNTS.size)
    bits = np.frombuffer(body, np.uint8, mask_size(npages), DIGEST_SIZE)
    if npages % 8 and bits[-1] >> (npages % 8):
        raise CorruptionError(f"{what} has a damaged page mask")
    mask = np.unpackbits(bits, count=npages, bitorder="little").view(np.bool_)
    nmasked = int(np.count_nonzero(mask))
    if (
        reserved
        or ndonors > MAX_DONORS
        or head_len != head_size(npages, nmasked, ndonors)
        or len(body) < head_len
    ):
        raise CorruptionError(f"{what} has a damaged delta head")
    if xxhash.xxh3_64_digest(body[: head_len - 8]) != bytes(body[head_len - 8 : head_len]):
        raise CorruptionError(f"{what} has a damaged delta head")
    at = fixed
    donors, offsets = [], []
    for k in range(ndonors):
        d, offset, reserved = DONOR.unpack_from(body, at + DONOR.size * k)
        if reserved:
            raise CorruptionError(f"{what} has a damaged delta head")
        donors.append(d)
        offsets.append(offset)
    at += DONOR.size * ndonors
    sources = np.frombuffer(body, np.uint8, nmasked, at)
    slots = np.frombuffer(body, "<u2", nmasked, at + nmasked)
    digests = np.frombuffer(body, "<u8", nmasked, at + 3 * nmasked)
    if ndonors:
        used = np.bincount(sources, minlength=ndonors + 1)
        if len(used) != ndonors + 1 or not used[1:].all() or len(set(donors)) != ndonors:
            raise CorruptionError(f"{what} has a damaged delta head")
    elif nmasked and sources.any():
        raise CorruptionError(f"{what} has a damaged delta head")
    return PageRefs(
        bytes(body[:DIGEST_SIZE]), mask, donors, offsets, sources, slots, digests, head_len
    )


class Plan(NamedTuple):
    """Where each page a new delta names comes from (``plan``)."""

    donors: list[tuple[bytes, int]]  # (digest, payload offset)
    sources: np.ndarray  # per masked page: 0 stored here, k donors[k - 1]
    slots: np.ndarray  # per masked page: its slot in its donor (unused for pages stored here)


def plan(
    digest_pages: np.ndarray,
    mask: np.ndarray,
    prior: PageRefs | None,
    prior_digest: bytes | None,
    usable=lambda donor: True,
) -> Plan:
    """Donors, sources and slots for a new delta whose pages differing from the base are
    ``mask`` (``digest_pages``: the new block's page digests, one per page).

    A masked page whose digest equals the parent version's (``prior``, a referencing delta
    on the same base) is referenced in the object that stores it, when ``usable(holder)``;
    every other page is stored. Past ``MAX_DONORS`` donors, the half of them giving the
    fewest pages is dropped and their pages stored again, so a restore's fan-in stays
    bounded.
    """
    pages = np.flatnonzero(mask)
    sources = np.zeros(len(pages), np.uint8)
    slots = np.zeros(len(pages), np.uint16)
    nothing = Plan([], sources, slots)
    if prior is None or prior_digest is None or not len(pages):
        return nothing
    prior_pages = prior.pages()
    if not len(prior_pages):
        return nothing
    at = np.searchsorted(prior_pages, pages)
    ok = at < len(prior_pages)
    at_ok = np.where(ok, at, 0)
    same = ok & (prior_pages[at_ok] == pages) & (prior.digests[at_ok] == digest_pages[pages])
    if not same.any():
        return nothing
    names = [(prior_digest, prior.payload_offset), *zip(prior.donors, prior.offsets, strict=True)]
    holder = prior.sources[at_ok]  # index into names, where ``same``
    counts: dict[int, int] = {}
    for h in holder[same].tolist():
        counts[h] = counts.get(h, 0) + 1
    keep = [h for h in sorted(counts, key=lambda h: (counts[h], h)) if usable(names[h][0])]
    if len(keep) > MAX_DONORS:
        # Size-tiered: the half giving the fewest pages is stored again, here. This object
        # becomes a donor of many pages, and the next merge is MAX_DONORS / 2 backups away
        # (a simulation of uniform 4 KiB writes: 2.0x the written pages a day by day 30
        # against 2.6x for dropping only the one smallest donor each time, with fewer
        # donors on average).
        keep = keep[len(keep) // 2 :]
    keep = sorted(keep)
    number = {h: k + 1 for k, h in enumerate(keep)}
    for j in np.flatnonzero(same).tolist():
        k = number.get(int(holder[j]), 0)
        sources[j] = k
        if k:
            slots[j] = prior.slots[at_ok[j]]
    return Plan([names[h] for h in keep], sources, slots)


def entry_flags(start: bytes | memoryview) -> int:
    """The index flags of an object from its first bytes (``FLAG_PAGES``, ``FLAG_DONORS``
    for a referencing delta, 0 for anything else)."""
    if len(start) < 16 or bytes(start[:4]) != b"CBOB" or start[4] != 3:
        return 0
    npages = -(-int.from_bytes(bytes(start[8:12]), "little") // 4096)
    at = 32 + fixed_size(npages) - COUNTS.size
    if len(start) < at + 2:
        return FLAG_PAGES | FLAG_DONORS  # cannot tell: keep whatever it names
    ndonors = int.from_bytes(bytes(start[at : at + 2]), "little")
    return FLAG_PAGES | (FLAG_DONORS if ndonors else 0)
