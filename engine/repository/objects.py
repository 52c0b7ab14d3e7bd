"""Block objects: one stored block, self-describing and checked on every read.

An object is a 32-byte header, a body prefix, then the payload (format and the reasons for
it: docs/repository-format.md):

    magic "CBOB" | version u8 | codec u8 | reserved u16 | raw_len u32 | stored_len u32 |
    digest 16 bytes                                                   (little endian)

The digest is the block's keyed XXH3-128, which is also the object's name. Version 2 has
two kinds of object:

* a **full block** (codec 0 raw, 1 zstd): the keyed XXH3-64 of each 4 KiB page and a
  checksum of those, then the block. The page digests let a later backup find which pages
  of a changed block differ from this one with a ranged read of the object's first bytes,
  never its data;
* a **delta** (codec 2 raw pages, 3 zstd pages): the digest of a full *base* block, a
  bitmap of the pages that differ from it, then those pages. Depth is at most 1: a base is
  always a full block.

Version 3 is a **referencing delta** (codec 4 raw, 5 zstd; ``pagerefs.py``): like a delta,
it names every page that differs from its base, but stores only the pages new since its
parent version and references the others in the earlier deltas that store them (one hop).

Version 1 objects (a full block without page digests) are still read. A reader checks the
header, bounds every length before allocating, decompresses with the declared size as a
hard limit, and re-hashes the result: a flipped bit anywhere ends in CorruptionError.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import xxhash
import zstandard

from .. import native, threads
from ..errors import CorruptionError
from ..native import BLOCK_SIZE_MAX, PAGE_SIZE
from ..native import digest as block_digest
from . import pagerefs
from .pagerefs import PageRefs

MAGIC = b"CBOB"
VERSION = 2  # written for full blocks and deltas; 1 is still read
VERSION_REFS = 3  # referencing deltas
READ_VERSIONS = (1, 2, 3)
CODEC_RAW = 0
CODEC_ZSTD = 1
CODEC_DELTA_RAW = 2
CODEC_DELTA_ZSTD = 3
CODEC_REFS_RAW = 4
CODEC_REFS_ZSTD = 5
REFS_CODECS = (CODEC_REFS_RAW, CODEC_REFS_ZSTD)
DELTA_CODECS = (CODEC_DELTA_RAW, CODEC_DELTA_ZSTD, *REFS_CODECS)
#: The codecs each object version may carry.
VERSION_CODECS = {
    1: (CODEC_RAW, CODEC_ZSTD),
    2: (CODEC_RAW, CODEC_ZSTD, CODEC_DELTA_RAW, CODEC_DELTA_ZSTD),
    3: REFS_CODECS,
}
HEADER = struct.Struct("<4sBBHII16s")
HEADER_SIZE = HEADER.size  # 32
DIGEST_SIZE = 16
PAGE_DIGEST_SIZE = 8
PAGES_CHECK_SIZE = 8
#: Enough of any object to learn its kind and, for a delta, its base (verify, gc).
HEAD_SIZE = HEADER_SIZE + DIGEST_SIZE

#: A changed block is stored as a delta while at most this fraction of its pages differ
#: from its base; past it the full block is stored and becomes the new base. Why 1/8 and
#: not 1/2: a delta holds every page changed since its base, so it grows with each backup
#: until the next full block, and a restore decodes base and delta. Capped at 1/8, a
#: restore of deltas decodes at most 1/8 more than one of full blocks, and on a steady
#: scattered workload the bytes stored per day stay near the least any threshold gives
#: (measured on a chain of 30 daily 1% incrementals: 1/16 stored 5% less; see
#: docs/performance.md).
DELTA_MAX_FRACTION = 1 / 8

#: The same limit for referencing deltas (version 3). A referencing delta stores each
#: changed page once, so it no longer grows with every backup: what a higher threshold
#: costs is restore work (base plus up to this fraction of pages, from at most
#: ``pagerefs.MAX_DONORS`` donors) and a delta head of 9 bytes per named page. Measured on
#: the chain of 30 daily scattered incrementals: docs/performance.md.
REFS_MAX_FRACTION = 1 / 2


def delta_page_limit(npages: int, *, refs: bool = False) -> int:
    """The most changed pages a delta of a block of ``npages`` pages may hold (``refs``:
    a referencing delta)."""
    return int(npages * (REFS_MAX_FRACTION if refs else DELTA_MAX_FRACTION))


# Store raw unless zstd saves at least this fraction: decompressing a block that barely
# shrank costs restore time for no space.
MIN_SAVING = 1 / 32


class ObjectHead(NamedTuple):
    """What the first bytes of an object say (``parse_head``)."""

    version: int
    codec: int
    raw_len: int
    stored_len: int
    digest: bytes
    base: bytes | None  # a delta's base block; None for a full block

    @property
    def is_delta(self) -> bool:
        return self.base is not None


class BaseCorruptionError(CorruptionError):
    """A delta's base object is damaged or missing: every block on that base is lost.

    ``base`` is the base's digest, so that the reader can set the base aside (and the delta
    with it: the next backup then stores that block afresh).
    """

    def __init__(self, message: str, *, base: bytes) -> None:
        super().__init__(message)
        self.base = base


class DonorCorruptionError(BaseCorruptionError):
    """A referencing delta's donor (an object it takes pages from) is damaged or missing;
    ``base`` names the donor, which is set aside like a damaged base."""


def page_count(raw_len: int) -> int:
    return -(-raw_len // PAGE_SIZE)


def pages_prefix_size(raw_len: int) -> int:
    """Bytes from the object's start through its page digests and their checksum: one
    ranged read of a full block's object gives a backup everything it needs of a base."""
    return HEADER_SIZE + PAGE_DIGEST_SIZE * page_count(raw_len) + PAGES_CHECK_SIZE


def mask_size(raw_len: int) -> int:
    return -(-page_count(raw_len) // 8)


def masked_bytes(raw_len: int, mask: np.ndarray) -> int:
    """Bytes of the pages ``mask`` selects in a block of ``raw_len`` (the last page may be
    short)."""
    n = int(np.count_nonzero(mask)) * PAGE_SIZE
    if len(mask) and mask[-1] and raw_len % PAGE_SIZE:
        n -= PAGE_SIZE - raw_len % PAGE_SIZE
    return n


def parse_head(blob: bytes) -> ObjectHead | None:
    """The head of a well-formed object start (at least ``HEAD_SIZE`` bytes for a delta),
    else None (verify and gc read only this much)."""
    if len(blob) < HEADER_SIZE:
        return None
    magic, version, codec, reserved, raw_len, stored_len, digest = HEADER.unpack_from(blob)
    if magic != MAGIC or version not in READ_VERSIONS or reserved:
        return None
    if codec not in VERSION_CODECS[version]:
        return None
    base = None
    if codec in DELTA_CODECS:
        if len(blob) < HEAD_SIZE:
            return None
        base = bytes(blob[HEADER_SIZE:HEAD_SIZE])
    return ObjectHead(version, codec, raw_len, stored_len, digest, base)


def parse_header(blob: bytes) -> tuple[int, int, int, bytes] | None:
    """(codec, raw_len, stored_len, digest) of a well-formed header, else None (for verify)."""
    head = parse_head(blob)
    return None if head is None else (head.codec, head.raw_len, head.stored_len, head.digest)


class BlockCodec:
    """Encode and decode block objects; thread-safe (one zstd context per thread)."""

    def __init__(
        self,
        seed: int,
        level: int = 3,
        *,
        window_log: int | None = None,
        long_distance: bool = False,
    ) -> None:
        self.seed = seed
        self._local = threads.local()
        self._generation = 0
        self.configure(level=level, window_log=window_log, long_distance=long_distance)

    def configure(
        self, *, level: int, window_log: int | None = None, long_distance: bool = False
    ) -> None:
        """Set the zstd parameters of new objects (benchmarks compare them; every setting
        writes objects any reader decodes). ``window_log`` None: zstd's own for the level
        and the block's size; ``long_distance``: zstd's long-distance matching."""
        if window_log is not None and not 10 <= window_log <= 27:
            raise ValueError(f"window_log must be from 10 to 27, got {window_log}")
        self.level = level
        self.window_log = window_log
        self.long_distance = long_distance
        self._generation += 1  # each thread builds its compressor again

    def _compressor(self) -> zstandard.ZstdCompressor:
        c = getattr(self._local, "c", None)
        if c is None or self._local.generation != self._generation:
            if self.window_log is None and not self.long_distance:
                c = zstandard.ZstdCompressor(level=self.level)
            else:
                params = zstandard.ZstdCompressionParameters.from_level(
                    self.level,
                    window_log=self.window_log or 0,
                    enable_ldm=self.long_distance,
                )
                c = zstandard.ZstdCompressor(compression_params=params)
            self._local.c, self._local.generation = c, self._generation
        return c

    def _decompressor(self) -> zstandard.ZstdDecompressor:
        d = getattr(self._local, "d", None)
        if d is None:
            d = self._local.d = zstandard.ZstdDecompressor()
        return d

    def _pack(self, data: bytes | memoryview) -> tuple[bool, bytes | memoryview]:
        """(compressed?, payload): zstd unless it saves less than ``MIN_SAVING``."""
        packed = self._compressor().compress(data)
        if len(packed) <= len(data) * (1 - MIN_SAVING):
            return True, packed
        return False, data

    @staticmethod
    def pages_check(page_digests: bytes) -> bytes:
        """The checksum of a full block's page digests: plain XXH3-64 (seed 0). It detects
        damage; keyed, a wrong repository key would look like damage to every object."""
        return xxhash.xxh3_64_digest(page_digests)

    # ------------------------------------------------------------------ writing

    def encode(self, block: bytes | memoryview, digest: bytes) -> bytes:
        """The whole object of a full block."""
        head, payload = self.encode_parts(block, digest)
        return head + payload

    def encode_parts(
        self, block: bytes | memoryview, digest: bytes
    ) -> tuple[bytes, bytes | memoryview]:
        """A full block's object as (header and page digests, payload), for a gathered write
        without joining them.

        A raw payload is ``block`` itself, so the caller must write it before the block's
        buffer is reused.
        """
        raw_len = len(block)
        pages = native.page_digests(block, self.seed).astype("<u8").tobytes()
        zstd, payload = self._pack(block)
        body = pages + self.pages_check(pages)
        header = HEADER.pack(
            MAGIC,
            VERSION,
            CODEC_ZSTD if zstd else CODEC_RAW,
            0,
            raw_len,
            len(body) + len(payload),
            digest,
        )
        return header + body, payload

    def encode_delta(
        self, block: bytes | memoryview, digest: bytes, base: bytes, mask: np.ndarray
    ) -> bytes:
        """The object of ``block`` as the pages ``mask`` selects over the full block ``base``
        (the digest of a full block of the same length)."""
        raw_len = len(block)
        if len(base) != DIGEST_SIZE:
            raise ValueError("base must be a 16-byte digest")
        bits = native.pack_mask(mask).tobytes()
        zstd, payload = self._pack(native.gather_pages(block, mask))
        body = base + bits
        header = HEADER.pack(
            MAGIC,
            VERSION,
            CODEC_DELTA_ZSTD if zstd else CODEC_DELTA_RAW,
            0,
            raw_len,
            len(body) + len(payload),
            digest,
        )
        return header + body + payload

    def encode_refs(
        self,
        block: bytes | memoryview,
        digest: bytes,
        base: bytes,
        mask: np.ndarray,
        page_digests: np.ndarray,
        plan: pagerefs.Plan,
    ) -> bytes:
        """A referencing delta (version 3) of ``block`` over the full block ``base``:
        ``mask`` the pages that differ from it, ``page_digests`` the block's (one per page),
        ``plan`` where each masked page comes from (``pagerefs.plan``)."""
        if len(base) != DIGEST_SIZE:
            raise ValueError("base must be a 16-byte digest")
        pages = np.flatnonzero(mask)
        head = pagerefs.encode_head(
            base, mask, plan.donors, plan.sources, plan.slots, page_digests[pages]
        )
        own = np.zeros(len(mask), np.bool_)
        own[pages[np.asarray(plan.sources) == 0]] = True
        zstd, payload = self._pack(native.gather_pages(block, own))
        header = HEADER.pack(
            MAGIC,
            VERSION_REFS,
            CODEC_REFS_ZSTD if zstd else CODEC_REFS_RAW,
            0,
            len(block),
            len(head) + len(payload),
            digest,
        )
        return header + head + payload

    # ------------------------------------------------------------------ reading

    def refs(self, blob: bytes, digest: bytes, *, what: str = "block object") -> PageRefs | None:
        """The checked head of a referencing delta from its object's first bytes (enough of
        them: ``pagerefs.head_length``), None for any other kind of object."""
        if len(blob) < HEADER_SIZE:
            raise CorruptionError(f"{what} is truncated ({len(blob)} bytes)")
        magic, version, codec, reserved, raw_len, _stored, stored = HEADER.unpack_from(blob)
        if magic != MAGIC or reserved or stored != digest or raw_len > BLOCK_SIZE_MAX:
            raise CorruptionError(f"{what} has a damaged header")
        if version != VERSION_REFS or codec not in REFS_CODECS:
            return None
        return pagerefs.parse_head(memoryview(blob)[HEADER_SIZE:], page_count(raw_len), what)

    def _head(self, blob: bytes, digest: bytes, what: str) -> ObjectHead:
        """Check the header and every length against the blob's size."""
        if len(blob) < HEADER_SIZE:
            raise CorruptionError(f"{what} is truncated ({len(blob)} bytes)")
        magic, version, codec, reserved, raw_len, stored_len, stored_digest = HEADER.unpack_from(
            blob
        )
        if magic != MAGIC:
            raise CorruptionError(f"{what} has a bad magic number")
        if version not in READ_VERSIONS:
            raise CorruptionError(f"{what} has unknown format version {version}")
        if reserved:
            raise CorruptionError(f"{what} has a damaged header (reserved bits set)")
        if stored_digest != digest:
            raise CorruptionError(f"{what} carries the wrong digest")
        if raw_len > BLOCK_SIZE_MAX or stored_len != len(blob) - HEADER_SIZE:
            raise CorruptionError(f"{what} has inconsistent lengths (truncated or damaged)")
        if codec not in VERSION_CODECS[version]:
            raise CorruptionError(f"{what} has unknown codec {codec}")
        base = None
        if codec in DELTA_CODECS:
            if stored_len < DIGEST_SIZE + mask_size(raw_len):
                raise CorruptionError(f"{what} has inconsistent lengths (truncated or damaged)")
            base = bytes(blob[HEADER_SIZE:HEAD_SIZE])
        elif version >= 2 and stored_len < pages_prefix_size(raw_len) - HEADER_SIZE:
            raise CorruptionError(f"{what} has inconsistent lengths (truncated or damaged)")
        return ObjectHead(version, codec, raw_len, stored_len, digest, base)

    def head(self, blob: bytes, digest: bytes, *, what: str = "block object") -> ObjectHead:
        """The checked head of a whole object (CorruptionError names ``what``)."""
        return self._head(blob, digest, what)

    def page_digests(
        self, prefix: bytes, digest: bytes, raw_len: int, *, what: str = "block object"
    ) -> np.ndarray | None:
        """The page digests of the full block ``digest`` from its object's first
        ``pages_prefix_size(raw_len)`` bytes; None when the object cannot be a base for a
        block of ``raw_len`` bytes (another length, a version-1 object, a delta).

        CorruptionError when the digests fail their checksum: a delta built on them could
        silently miss a changed page.
        """
        if len(prefix) < HEADER_SIZE:
            raise CorruptionError(f"{what} is truncated ({len(prefix)} bytes)")
        magic, version, codec, reserved, blen, stored_len, stored_digest = HEADER.unpack_from(
            prefix
        )
        if magic != MAGIC or reserved or stored_digest != digest:
            raise CorruptionError(f"{what} has a damaged header")
        if version != VERSION or codec not in (CODEC_RAW, CODEC_ZSTD) or blen != raw_len:
            return None
        end = pages_prefix_size(raw_len)
        if len(prefix) < end or stored_len < end - HEADER_SIZE:
            raise CorruptionError(f"{what} has inconsistent lengths (truncated or damaged)")
        pages = bytes(prefix[HEADER_SIZE : end - PAGES_CHECK_SIZE])
        if self.pages_check(pages) != bytes(prefix[end - PAGES_CHECK_SIZE : end]):
            raise CorruptionError(f"{what} has damaged page digests")
        return np.frombuffer(pages, "<u8").astype(np.uint64)

    def decode(
        self,
        blob: bytes,
        digest: bytes,
        *,
        what: str = "block object",
        base: Callable[[bytes], bytes] | None = None,
    ) -> bytes:
        """The block's bytes, after checking every field; CorruptionError names ``what``.

        Memory is bounded by the header's raw length (at most 16 MiB), whatever size a
        damaged or forged zstd frame claims. ``base`` fetches a delta's base object.
        """
        head = self._head(blob, digest, what)
        out = bytearray(head.raw_len)
        self.decode_into(blob, digest, memoryview(out), what=what, base=base)
        return bytes(out)

    def decode_into(
        self,
        blob: bytes,
        digest: bytes,
        out: memoryview,
        *,
        what: str = "block object",
        base: Callable[[bytes], bytes] | None = None,
        parsed: Callable[[], PageRefs | None] | None = None,
    ) -> int:
        """Decode straight into ``out`` (a restore's aligned write buffer); return the length.

        Same checks as :meth:`decode`, without allocating a block-sized object per block:
        on a restore that allocation and its page faults cost as much as a third of the
        decompression itself. A delta is applied in one pass: its base is decoded into
        ``out``, the changed pages overlaid, and the full-content digest checked once; only
        when that fails is the base re-hashed alone, to say which of the two is damaged
        (``BaseCorruptionError`` for the base). ``parsed()``, asked only for a referencing
        delta: the head of this very ``blob`` if the caller has parsed it already (a restore
        run reads every such head to gather its donors), else None; it is not parsed twice.
        """
        head = self._head(blob, digest, what)
        if head.raw_len > len(out):
            raise CorruptionError(f"{what} is larger than its block")
        target = out[: head.raw_len]
        body = memoryview(blob)[HEADER_SIZE:]
        refs = None
        if head.base is None:
            self._full_into(head, body, target, what)
        elif head.codec in REFS_CODECS:
            given = parsed() if parsed is not None else None
            refs = self._refs_into(head, body, target, what, base, given)
        else:
            self._delta_into(head, body, target, what, base)
        if block_digest(target, self.seed) != digest:
            if refs is not None:
                self._blame_pages(head, refs, target, what)
            if head.base is not None and not self._base_intact(head, base):
                raise BaseCorruptionError(
                    f"{what} is a delta on block object {head.base.hex()}, which does not "
                    "match its digest",
                    base=head.base,
                )
            raise CorruptionError(f"{what} does not match its digest")
        return head.raw_len

    def _base_intact(self, head: ObjectHead, fetch: Callable[[bytes], bytes] | None) -> bool:
        """Whether a delta's base decodes to its own digest (asked only after the delta's
        result failed, to say which object is damaged)."""
        assert head.base is not None and fetch is not None
        out = bytearray(head.raw_len)
        try:
            blob = fetch(head.base)
            base_head = self._head(blob, head.base, "base")
            self._full_into(base_head, memoryview(blob)[HEADER_SIZE:], memoryview(out), "base")
        except CorruptionError:
            return False
        return block_digest(out, self.seed) == head.base

    def _full_into(self, head: ObjectHead, body: memoryview, target: memoryview, what: str) -> None:
        if head.version >= 2:
            end = pages_prefix_size(head.raw_len) - HEADER_SIZE
            if (
                self.pages_check(body[: end - PAGES_CHECK_SIZE])
                != body[end - PAGES_CHECK_SIZE : end]
            ):
                raise CorruptionError(f"{what} has damaged page digests")
            body = body[end:]
        self._payload_into(head.codec in (CODEC_ZSTD,), body, target, what)

    def _payload_into(self, zstd: bool, payload: memoryview, target: memoryview, what: str) -> None:
        size = len(target)
        if not zstd:
            if len(payload) != size:
                raise CorruptionError(f"{what} has inconsistent lengths (truncated or damaged)")
            target[:] = payload
            return
        n = 0
        try:
            with self._decompressor().stream_reader(payload) as reader:
                while n < size:
                    got = reader.readinto(target[n:])
                    if not got:
                        break
                    n += got
                extra = reader.read(1)
        except zstandard.ZstdError as e:
            raise CorruptionError(f"{what} does not decompress: {e}") from None
        if n != size or extra:
            raise CorruptionError(f"{what} does not match its digest")

    def _base_into(
        self,
        head: ObjectHead,
        target: memoryview,
        what: str,
        fetch: Callable[[bytes], bytes] | None,
    ) -> None:
        """Decode a delta's full base into ``target`` (BaseCorruptionError when it fails)."""
        base = head.base
        assert base is not None
        if fetch is None:
            raise CorruptionError(f"{what} is a delta and its base was not given")
        base_what = f"block object {base.hex()}"
        try:
            base_blob = fetch(base)
            base_head = self._head(base_blob, base, base_what)
            if base_head.base is not None:
                raise CorruptionError(f"{base_what} is a delta itself, not a full block")
            if base_head.raw_len != head.raw_len:
                raise CorruptionError(f"{base_what} has another length than its delta")
            self._full_into(base_head, memoryview(base_blob)[HEADER_SIZE:], target, base_what)
        except CorruptionError as e:
            raise BaseCorruptionError(
                f"{what} is a delta on {base_what}{_which(e.message, base_what)}", base=base
            ) from None

    def _refs_into(
        self,
        head: ObjectHead,
        body: memoryview,
        target: memoryview,
        what: str,
        fetch: Callable[[bytes], bytes] | None,
        refs: PageRefs | None = None,
    ) -> PageRefs:
        """A referencing delta in one pass: the base, the pages stored here, then each
        donor's pages (every donor's object is read once, whatever it gives)."""
        if refs is None:
            refs = pagerefs.parse_head(body, page_count(head.raw_len), what)
        if refs.base != head.base:
            raise CorruptionError(f"{what} has a damaged delta head")
        self._base_into(head, target, what, fetch)
        assert fetch is not None
        numbers, sources, slots = refs.pages(), refs.sources, refs.slots
        payload = self._stored(head, refs, body, what)
        if not native.place_pages(target, numbers, sources, slots, 0, payload, in_order=True):
            raise CorruptionError(f"{what} has inconsistent lengths (truncated or damaged)")
        if refs.donors:
            # Raw donors that pass their checks are placed natively, all at once; the
            # others (compressed, absent, damaged) one by one below, which says what is wrong.
            blobs = []
            for donor in refs.donors:
                try:
                    blobs.append(fetch(donor))
                except CorruptionError:
                    blobs.append(None)
            left = native.overlay_donors(
                target, numbers, sources, slots, blobs, refs.donors, refs.offsets
            )
            if left:
                ends = native.slot_ends(sources, slots, len(refs.donors) + 1).tolist()
                for k in left:
                    self._donor_into(
                        head,
                        refs.donors[k - 1],
                        refs.offsets[k - 1],
                        ends[k],
                        refs,
                        numbers,
                        k,
                        target,
                        what,
                        fetch,
                    )
        return refs

    def _stored(self, head: ObjectHead, refs: PageRefs, body: memoryview, what: str) -> memoryview:
        """The pages a referencing delta stores itself (source 0), back to back: the payload
        itself when raw, else decompressed (bounded by the pages' size)."""
        sources = refs.sources
        size = (len(sources) - int(np.count_nonzero(sources))) * PAGE_SIZE
        if len(sources) and refs.mask[-1] and not sources[-1] and head.raw_len % PAGE_SIZE:
            size -= PAGE_SIZE - head.raw_len % PAGE_SIZE  # the block's short last page
        payload = body[refs.head_len :]
        if head.codec == CODEC_REFS_RAW:
            if len(payload) != size:
                raise CorruptionError(f"{what} has inconsistent lengths (truncated or damaged)")
            return payload
        pages = memoryview(bytearray(size))
        self._payload_into(True, payload, pages, what)
        return pages

    def _donor_into(
        self,
        head: ObjectHead,
        donor: bytes,
        offset: int,
        last: int,
        refs: PageRefs,
        numbers: np.ndarray,
        k: int,
        target: memoryview,
        what: str,
        fetch: Callable[[bytes], bytes],
    ) -> None:
        """Overlay the pages the delta takes from its ``k``-th donor ``donor``, whose
        stored pages start at ``offset`` of its object; ``last``: one past the highest of
        their slots there (only that many of its pages are decompressed).

        Only the donor's header is checked here (its digest, kind, lengths): the pages
        taken are checked by the result's digest, and, when that fails, by their page
        digests, which say whether the donor is to blame (``_blame_pages``)."""
        donor_what = f"block object {donor.hex()}"
        try:
            blob = fetch(donor)
            dhead = self._head(blob, donor, donor_what)
            if dhead.codec not in REFS_CODECS or dhead.raw_len != head.raw_len:
                raise CorruptionError(f"{donor_what} is not a delta of the same block")
            if not HEADER_SIZE < offset <= len(blob):
                raise CorruptionError(
                    f"{donor_what} has inconsistent lengths (truncated or damaged)"
                )
            need = min(last * PAGE_SIZE, head.raw_len)
            if dhead.codec == CODEC_REFS_RAW:
                payload = memoryview(blob)[offset:]
                if len(payload) < need - PAGE_SIZE:
                    raise CorruptionError(
                        f"{donor_what} has inconsistent lengths (truncated or damaged)"
                    )
            else:
                payload = memoryview(bytearray(need))
                n = self._prefix_into(memoryview(blob)[offset:], payload, donor_what)
                payload = payload[:n]
        except CorruptionError as e:
            raise DonorCorruptionError(
                f"{what} takes pages from {donor_what}{_which(e.message, donor_what)}", base=donor
            ) from None
        if not native.place_pages(target, numbers, refs.sources, refs.slots, k, payload):
            raise DonorCorruptionError(
                f"{what} takes pages from {donor_what}, which has inconsistent lengths "
                "(truncated or damaged)",
                base=donor,
            )

    def _prefix_into(self, payload: memoryview, out: memoryview, what: str) -> int:
        """Decompress at most ``len(out)`` bytes of a zstd frame's start; return how many."""
        n = 0
        try:
            with self._decompressor().stream_reader(payload) as reader:
                while n < len(out):
                    got = reader.readinto(out[n:])
                    if not got:
                        break
                    n += got
        except zstandard.ZstdError as e:
            raise CorruptionError(f"{what} does not decompress: {e}") from None
        return n

    def _blame_pages(self, head: ObjectHead, refs: PageRefs, target: memoryview, what: str) -> None:
        """After a referencing delta failed its digest: when only pages taken from donors
        fail their page digests, the first such donor is to blame (DonorCorruptionError);
        otherwise the caller goes on (this object, else its base)."""
        numbers = refs.pages()
        if not len(numbers):
            return
        got = native.page_digests(target, self.seed)[numbers]
        bad = np.flatnonzero(got != refs.digests)
        if not len(bad) or (refs.sources[bad] == 0).any():
            return  # its own pages (or the key) are wrong, or else the base: the caller says
        donor = refs.donors[int(refs.sources[bad].min()) - 1]
        raise DonorCorruptionError(
            f"{what} takes pages from block object {donor.hex()}, which does not match its digest",
            base=donor,
        )

    def _delta_into(
        self,
        head: ObjectHead,
        body: memoryview,
        target: memoryview,
        what: str,
        fetch: Callable[[bytes], bytes] | None,
    ) -> None:
        base = head.base
        assert base is not None
        if fetch is None:
            raise CorruptionError(f"{what} is a delta and its base was not given")
        npages = page_count(head.raw_len)
        bits = np.frombuffer(body, np.uint8, mask_size(head.raw_len), DIGEST_SIZE)
        if npages % 8 and bits[-1] >> (npages % 8):
            raise CorruptionError(f"{what} has a damaged page mask")
        mask = native.unpack_mask(bits, npages)
        self._base_into(head, target, what, fetch)
        payload = body[DIGEST_SIZE + mask_size(head.raw_len) :]
        size = masked_bytes(head.raw_len, mask)
        if head.codec == CODEC_DELTA_ZSTD:
            pages = self._pages_buffer(size)
            self._payload_into(True, payload, pages, what)
            payload = pages
        elif len(payload) != size:
            raise CorruptionError(f"{what} has inconsistent lengths (truncated or damaged)")
        # Raw pages are overlaid straight from the object's bytes (no copy in between).
        native.scatter_pages(target, payload, mask)

    def _pages_buffer(self, size: int) -> memoryview:
        """This thread's buffer for a compressed delta's pages (reused: no zeroed
        allocation per delta)."""
        buf = getattr(self._local, "pages", None)
        if buf is None or len(buf) < size:
            buf = self._local.pages = memoryview(np.empty(max(size, 1 << 16), np.uint8))
        return buf[:size]


def _which(message: str, subject: str) -> str:
    """``message`` about ``subject`` as a clause: ", which is ..." (else ": message")."""
    if message.startswith(subject + " "):
        return f", which {message[len(subject) + 1 :]}"
    return f": {message}"
