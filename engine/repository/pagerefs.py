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
    donor digests 16 x donors | source u8 per masked page | page digest u64 per masked page |
    checksum u64

``source`` is 0 for a page stored in this object, k for ``donors[k - 1]``. The page digests
(keyed XXH3-64 of each masked page's content) let the next backup tell which pages changed
since this version without reading any data, and let a reader say which object is to blame
when the result fails its digest. The checksum is XXH3-64 (seed 0) of the head before it.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

import numpy as np
import xxhash

from .. import native
from ..errors import CorruptionError

#: At most this many donors per delta (restore fetches base + own + donors per block);
#: past it, the pages of the donors holding the fewest are stored again in the new delta.
MAX_DONORS = 8
DIGEST_SIZE = 16
COUNTS = struct.Struct("<HHI")  # donors, reserved, head length
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
    sources: np.ndarray  # uint8 per masked page: 0 here, k donors[k - 1]
    digests: np.ndarray  # uint64 per masked page
    head_len: int  # bytes of the body before the payload

    def pages(self) -> np.ndarray:
        """The page numbers of the masked pages."""
        return np.flatnonzero(self.mask)

    def own_mask(self) -> np.ndarray:
        """bool per page: stored in this object."""
        own = np.zeros(len(self.mask), np.bool_)
        own[self.pages()[self.sources == 0]] = True
        return own

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
    return fixed_size(npages) + DIGEST_SIZE * ndonors + 9 * nmasked + 8


def head_length(body: bytes | memoryview, npages: int) -> int | None:
    """The head length a body prefix declares (None when too short to say)."""
    at = DIGEST_SIZE + mask_size(npages)
    if len(body) < at + COUNTS.size:
        return None
    return COUNTS.unpack_from(body, at)[2]


def encode_head(
    base: bytes,
    mask: np.ndarray,
    donors: list[bytes],
    sources: np.ndarray,
    digests: np.ndarray,
) -> bytes:
    npages = len(mask)
    nmasked = int(np.count_nonzero(mask))
    if len(sources) != nmasked or len(digests) != nmasked or len(donors) > MAX_DONORS:
        raise ValueError("one source and one digest per masked page, at most MAX_DONORS")
    size = head_size(npages, nmasked, len(donors))
    out = bytearray()
    out += base
    out += native.pack_mask(mask).tobytes()
    out += COUNTS.pack(len(donors), 0, size)
    for d in donors:
        out += d
    out += np.asarray(sources, np.uint8).tobytes()
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
    donors = [
        bytes(body[at + DIGEST_SIZE * k : at + DIGEST_SIZE * (k + 1)]) for k in range(ndonors)
    ]
    at += DIGEST_SIZE * ndonors
    sources = np.frombuffer(body, np.uint8, nmasked, at)
    digests = np.frombuffer(body, "<u8", nmasked, at + nmasked)
    if ndonors:
        used = np.bincount(sources, minlength=ndonors + 1)
        if len(used) != ndonors + 1 or not used[1:].all() or len(set(donors)) != ndonors:
            raise CorruptionError(f"{what} has a damaged delta head")
    elif nmasked and sources.any():
        raise CorruptionError(f"{what} has a damaged delta head")
    return PageRefs(bytes(body[:DIGEST_SIZE]), mask, donors, sources, digests, head_len)


def plan(
    digest_pages: np.ndarray,
    mask: np.ndarray,
    prior: PageRefs | None,
    prior_digest: bytes | None,
    usable=lambda donor: True,
) -> tuple[list[bytes], np.ndarray]:
    """(donors, sources) for a new delta whose pages differing from the base are ``mask``
    (``digest_pages``: the new block's page digests, one per page).

    A masked page whose digest equals the parent version's (``prior``, a referencing delta
    on the same base) is referenced in the object that stores it, when ``usable(holder)``;
    every other page is stored. Past ``MAX_DONORS`` donors, those holding the fewest pages
    are dropped and their pages stored again, so a restore's fan-in stays bounded.
    """
    pages = np.flatnonzero(mask)
    sources = np.zeros(len(pages), np.uint8)
    if prior is None or prior_digest is None or not len(pages):
        return [], sources
    prior_pages = prior.pages()
    if not len(prior_pages):
        return [], sources
    at = np.searchsorted(prior_pages, pages)
    ok = at < len(prior_pages)
    at_ok = np.where(ok, at, 0)
    same = ok & (prior_pages[at_ok] == pages) & (prior.digests[at_ok] == digest_pages[pages])
    if not same.any():
        return [], sources
    names = [prior_digest, *prior.donors]
    holder = prior.sources[at_ok]  # index into names, where ``same``
    counts: dict[int, int] = {}
    for h in holder[same].tolist():
        counts[h] = counts.get(h, 0) + 1
    keep = [h for h in sorted(counts, key=lambda h: (-counts[h], h)) if usable(names[h])]
    keep = sorted(keep[:MAX_DONORS])
    donors = [names[h] for h in keep]
    number = {h: k + 1 for k, h in enumerate(keep)}
    for j in np.flatnonzero(same).tolist():
        sources[j] = number.get(int(holder[j]), 0)
    return donors, sources


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
