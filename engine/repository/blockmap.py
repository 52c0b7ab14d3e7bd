"""Block maps: the complete map of one backup's blocks, so a restore never replays a chain.

Stored under ``manifests/<backup id>`` (the file name predates the type's name).

Binary format (docs/repository-format.md), little endian:

    header (80 bytes)
        magic "CBMF" | version u16 | hash_algo u8 | reserved u8 | block_size u32 |
        volume_size u64 | nblocks u64 | ndata u64 | body_len u64 |
        backup_id 16 bytes (UUID) | parent_id 16 bytes (UUID, zeros for a full backup)
    body (body_len bytes), version 2: zstd( nruns u64 ‖ (gap u64, count u64)[nruns] ‖
        digests[ndata][16] ): the runs of data blocks, each as the zero blocks before it
        and its length, then the data digests in block order
    body, version 1: zstd( kinds u8[nblocks] ‖ digests[ndata][16] )
        kind 0 = zero block (never stored), 1 = data block; data digests in block order
    trailer: XXH3-128 (seed 0) of header ‖ body, 16 bytes

Why version 2: a version-1 body holds a byte per block, so a hinted incremental of a
64 TiB volume decompressed, rebuilt and compressed 64 MiB of kinds for 100 changed blocks;
a version-2 body costs its data runs and digests only, whatever the volume's size. Version
1 is still read everywhere and still written where older engines must read it (a
version-1 repository, an exported record) and for ``checksum``.

A reader checks the trailer before decompressing anything and bounds every length by the
file's own size, so a forged header cannot make it allocate more than the manifest implies.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import xxhash
import zstandard

from .. import native, threads
from ..errors import CorruptionError, FormatVersionError
from ..native import BLOCK_SIZE_MAX, BLOCK_SIZE_MIN, DIGEST_SIZE
from .packs import digest_keys, take_rows

MAGIC = b"CBMF"
VERSION = 2  # written by default; VERSIONS are read
VERSIONS = (1, 2)
HASH_XXH3_128_KEYED = 1
HEADER = struct.Struct("<4sHBBIQQQQ16s16s")
TRAILER_SIZE = 16
KIND_ZERO = 0
KIND_DATA = 1
# No real volume needs more blocks than this (64 TiB at 4 KiB); larger is a forged header.
MAX_BLOCKS = 2**34


# A zstd block of RLE type spends 4 bytes on up to 128 KiB: no frame expands beyond this.
MAX_ZSTD_RATIO = 32768
# The kinds are built, compressed and decoded this many blocks at a time.
KINDS_CHUNK = 4 << 20
# Bodies up to this size are compressed in one call (byte for byte the frames of the
# earlier dense encoder); larger ones are streamed, so a 64 TiB map never holds its kinds.
ONE_SHOT_BYTES = 4 << 20


@dataclass(init=False, eq=False)
class BlockMap:
    """A backup's block map: which blocks are zeros, and the digest of every data block.

    Held sparse: the runs ``(first, count)`` of consecutive data blocks, in block order, and
    the digests of the data blocks (``data_digests``, one row per data block, in block
    order). Zero blocks cost nothing, so a 64 TiB volume that is mostly holes takes a few
    bytes per data block, not 17 per block.

    Consumers ask it questions (``data_blocks``, ``data_runs``, ``zero_runs``, ``digest``,
    ``referenced``, ``checksum``, ``window``) instead of indexing arrays. The dense arrays
    ``digests`` (uint8 ``(nblocks, 16)``) and ``zero`` (bool ``(nblocks,)``) of the earlier
    type are still there, built on first use (17 bytes per block: for small maps and
    tests, never on the data path). Zero blocks' rows in ``digests`` carry no meaning.

    Built either dense, ``BlockMap(id, parent, bs, size, digests=…, zero=…)``, or sparse,
    ``BlockMap(id, parent, bs, size, runs=…, data_digests=…)``. Sparse arrays that are
    already contiguous and normal are taken as they are, not copied (a 64 TiB map's are
    megabytes): the caller gives them up and must not change them afterwards.
    """

    backup_id: str
    parent_id: str | None
    block_size: int
    volume_size: int

    def __init__(
        self,
        backup_id: str,
        parent_id: str | None,
        block_size: int,
        volume_size: int,
        digests: np.ndarray | None = None,
        zero: np.ndarray | None = None,
        *,
        runs: np.ndarray | None = None,
        data_digests: np.ndarray | None = None,
        zero_digest: bytes | None = None,
    ) -> None:
        self.backup_id = backup_id
        self.parent_id = parent_id
        self.block_size = block_size
        self.volume_size = volume_size
        self._zero_digest = zero_digest
        self._dense: tuple[np.ndarray, np.ndarray] | None = None
        # The data digests' (high, low) halves sorted by the high half, built on first use
        # by one thread (the windows' threads ask at once).
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None
        self._sorting = threads.Lock()
        if zero is not None:
            if digests is None or runs is not None or data_digests is not None:
                raise TypeError("give digests and zero, or runs and data_digests")
            zero = np.asarray(zero, np.bool_)
            self._nblocks = int(zero.shape[0])
            self._runs = native.mask_to_runs(~zero)
            self._data = np.ascontiguousarray(np.asarray(digests, np.uint8)[~zero])
            self._dense = (np.asarray(digests), zero)
        else:
            if digests is not None or runs is None or data_digests is None:
                raise TypeError("give digests and zero, or runs and data_digests")
            self._nblocks = -(-volume_size // block_size)
            runs = np.ascontiguousarray(np.asarray(runs, np.int64).reshape(-1, 2))
            if not native.runs_are_normal(runs):  # a decoded map's are: no copy then
                runs = runs[runs[:, 1] > 0]
                if (runs[1:, 0] < runs[:-1, 0] + runs[:-1, 1]).any():
                    raise ValueError("runs must be in block order and must not overlap")
                runs = native.runs_normalize(runs)  # joins touching runs
            self._runs = runs
            self._data = np.ascontiguousarray(data_digests, np.uint8).reshape(-1, DIGEST_SIZE)
            if native.runs_count(self._runs) != len(self._data):
                raise ValueError("runs and data_digests disagree on the number of data blocks")
            if self._runs.size and int(self._runs[-1].sum()) > self._nblocks:
                raise ValueError("runs reach past the end of the volume")
        self._ends: np.ndarray | None = None
        # Row in _data of each run's first block.
        self._row = np.zeros(len(self._runs), np.int64)
        if len(self._runs) > 1:
            np.cumsum(self._runs[:-1, 1], out=self._row[1:])

    @classmethod
    def from_pieces(
        cls,
        backup_id: str,
        parent_id: str | None,
        block_size: int,
        volume_size: int,
        pieces: list[tuple[np.ndarray, np.ndarray]],
    ) -> BlockMap:
        """A map from disjoint pieces ``(runs, digests of their blocks)`` in any order."""
        pieces = [p for p in pieces if len(p[1])]
        if not pieces:
            runs, data = np.empty((0, 2), np.int64), np.empty((0, DIGEST_SIZE), np.uint8)
        else:
            # A backup's pieces are its windows' (each in order, none interleaved) and
            # perhaps one inherited piece: in order of their first run they are usually in
            # block order already, which one comparison confirms; else sort every run.
            pieces.sort(key=lambda p: int(p[0][0, 0]))
            runs = np.concatenate([p[0] for p in pieces])
            data = np.concatenate([p[1] for p in pieces])
            if len(runs) > 1 and (runs[1:, 0] < runs[:-1, 0]).any():
                order = np.argsort(runs[:, 0], kind="stable")
                # Put the runs, and their digests with them, in block order.
                row = np.zeros(len(runs), np.int64)
                np.cumsum(runs[:-1, 1], out=row[1:])
                runs = runs[order]
                data = take_rows(
                    data, native.runs_to_indices(np.stack([row[order], runs[:, 1]], 1))
                )
            ends = runs[:-1, 0] + runs[:-1, 1]
            if (runs[1:, 0] < ends).any():
                raise ValueError("pieces overlap")
        return cls(backup_id, parent_id, block_size, volume_size, runs=runs, data_digests=data)

    # ------------------------------------------------------------------ questions

    @property
    def nblocks(self) -> int:
        return self._nblocks

    @property
    def ndata(self) -> int:
        """How many blocks have an object."""
        return len(self._data)

    @property
    def data_digests(self) -> np.ndarray:
        """uint8 ``(ndata, 16)``: the data blocks' digests in block order (read-only)."""
        view = self._data.view()
        view.flags.writeable = False
        return view

    def data_blocks(self) -> np.ndarray:
        """Indices of the blocks that have an object."""
        return native.runs_to_indices(self._runs)

    def data_runs(self) -> np.ndarray:
        """(first, count) runs of consecutive data blocks, in block order."""
        return self._runs.copy()

    def zero_runs(self) -> np.ndarray:
        """(first, count) runs of consecutive zero blocks, in block order."""
        return native.runs_complement(self._runs, self._nblocks)

    def _find(self, i: int) -> int:
        """Row of block ``i`` in ``data_digests``, or -1 for a zero block."""
        if not 0 <= i < self._nblocks:
            raise IndexError(f"block {i} out of range for a map of {self._nblocks} blocks")
        k = int(np.searchsorted(self._runs[:, 0], i, side="right")) - 1
        if k < 0 or i >= self._runs[k, 0] + self._runs[k, 1]:
            return -1
        return int(self._row[k] + i - self._runs[k, 0])

    def is_zero(self, i: int) -> bool:
        return self._find(int(i)) < 0

    def digest(self, i: int) -> bytes | None:
        """Block ``i``'s digest, or None for a zero block (it has no object)."""
        row = self._find(int(i))
        return None if row < 0 else bytes(self._data[row])

    def rows(self, runs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The data blocks inside ``runs``: ``(their runs, their digests)``, in block order."""
        got = native.runs_intersection(self._runs, runs)
        if not got.size:
            return got, np.empty((0, DIGEST_SIZE), np.uint8)
        k = np.searchsorted(self._runs[:, 0], got[:, 0], side="right") - 1
        first_row = self._row[k] + got[:, 0] - self._runs[k, 0]
        return got, take_rows(
            self._data, native.runs_to_indices(np.stack([first_row, got[:, 1]], 1))
        )

    def window(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """Dense ``(digests, zero)`` of blocks ``[lo, hi)`` only (for ``native.diff``).

        The digest rows of zero blocks are zeros. Costs the window, never the volume.
        """
        hi = min(hi, self._nblocks)
        lo = min(lo, hi)
        n = hi - lo
        digests = np.zeros((n, DIGEST_SIZE), np.uint8)
        zero = np.ones(n, np.bool_)
        if n == 0 or not self._runs.size:
            return digests, zero
        ends = self._run_ends()
        a = int(np.searchsorted(ends, lo, side="right"))
        b = int(np.searchsorted(self._runs[:, 0], hi, side="left"))
        for k in range(a, b):
            s = max(int(self._runs[k, 0]), lo)
            e = min(int(ends[k]), hi)
            row = int(self._row[k]) + s - int(self._runs[k, 0])
            digests[s - lo : e - lo] = self._data[row : row + e - s]
            zero[s - lo : e - lo] = False
        return digests, zero

    def _run_ends(self) -> np.ndarray:
        """The runs' ends, built once: ``window`` is asked once per audited span."""
        ends = self._ends
        if ends is None:
            ends = self._ends = self._runs[:, 0] + self._runs[:, 1]
        return ends

    def delta(
        self, first: int, digests: np.ndarray, zero: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """A new window of blocks from ``first`` against this map (``native.window_delta``):
        ``(its data runs, their digests, indices of its blocks to store, how many changed
        inside this map's extent)``. One native pass over the window and this map's runs
        there; nothing dense is built."""
        return native.window_delta(
            first, digests, zero, self._runs, self._row, self._data, self._nblocks
        )

    def contains_digests(self, digests: np.ndarray) -> np.ndarray:
        """Mask: which of ``digests`` (uint8 ``(k, 16)``) are among this map's data digests.

        The first call sorts the digests' high 64-bit halves (16 bytes per data block, no
        Python object per block; a numeric sort, 5× faster than sorting 16-byte keys, which
        a hinted incremental of a large volume waits for); later calls cost a binary search
        each.
        """
        q_hi, q_lo = digest_keys(np.ascontiguousarray(digests, np.uint8).reshape(-1, DIGEST_SIZE))
        hi, lo = self._sorted_halves()
        if not len(hi):
            return np.zeros(len(q_hi), np.bool_)
        at = np.minimum(np.searchsorted(hi, q_hi), len(hi) - 1)
        found = (hi[at] == q_hi) & (lo[at] == q_lo)
        # Equal high halves are not ordered by their low halves: look along the rare run.
        for k in np.flatnonzero(~found & (hi[at] == q_hi)).tolist():
            i = int(at[k])
            while i < len(hi) and hi[i] == q_hi[k] and not found[k]:
                found[k] = lo[i] == q_lo[k]
                i += 1
        return found

    def _sorted_halves(self) -> tuple[np.ndarray, np.ndarray]:
        got = self._sorted
        if got is None:
            with self._sorting:
                got = self._sorted
                if got is None:
                    hi, lo = digest_keys(self._data)
                    order = np.argsort(hi)  # equal high halves: contains_digests scans
                    got = self._sorted = (hi[order], lo[order])
        return got

    def runs_of_digests(self, wanted: set[bytes]) -> np.ndarray:
        """Runs of the data blocks whose digest is one of ``wanted``."""
        if not wanted or not len(self._data):
            return np.empty((0, 2), np.int64)
        keys = np.frombuffer(b"".join(sorted(wanted)), np.uint8).reshape(-1, DIGEST_SIZE)
        void = np.dtype((np.void, DIGEST_SIZE))
        hit = np.isin(self._data.view(void).ravel(), np.ascontiguousarray(keys).view(void).ravel())
        rows = np.flatnonzero(hit)
        k = np.searchsorted(self._row, rows, side="right") - 1
        blocks = self._runs[k, 0] + rows - self._row[k]
        return native.indices_to_runs(blocks)

    def checksum(self) -> bytes:
        """A digest of the whole map: that of its version-1 encoding, whatever version it is
        stored in, so checksums exported before version 2 still match (an import compares
        them). Costs the kinds' compression: for exports and imports, not the data path."""
        return xxhash.xxh3_128_digest(self.encode(1))

    def referenced(self) -> set[bytes]:
        """Digests of every object this manifest needs."""
        rows = self._data
        return {bytes(r) for r in np.unique(rows, axis=0)} if len(rows) else set()

    # ------------------------------------------------------------------ dense views

    def _dense_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if self._dense is None:
            zero = ~native.runs_to_mask(self._runs, self._nblocks)
            digests = np.zeros((self._nblocks, DIGEST_SIZE), np.uint8)
            if self._zero_digest is not None:
                digests[zero] = np.frombuffer(self._zero_digest, np.uint8)
            digests[~zero] = self._data
            self._dense = (digests, zero)
        return self._dense

    @property
    def digests(self) -> np.ndarray:
        """uint8 ``(nblocks, 16)``, one row per block: built on first use (16 B/block)."""
        return self._dense_arrays()[0]

    @property
    def zero(self) -> np.ndarray:
        """bool ``(nblocks,)``: built on first use (with ``digests``)."""
        return self._dense_arrays()[1]

    # ------------------------------------------------------------------ format

    def _kinds(self) -> Iterator[np.ndarray]:
        """kinds u8[nblocks] in chunks of at most KINDS_CHUNK, built from the runs."""
        runs = self._runs
        ends = self._run_ends()
        for lo in range(0, self._nblocks, KINDS_CHUNK):
            hi = min(lo + KINDS_CHUNK, self._nblocks)
            a = int(np.searchsorted(ends, lo, side="right"))
            b = int(np.searchsorted(runs[:, 0], hi, side="left"))
            part = runs[a:b].copy()
            if len(part):
                part_end = np.minimum(ends[a:b], hi) - lo
                part[:, 0] = np.maximum(part[:, 0], lo) - lo
                part[:, 1] = part_end - part[:, 0]
            yield native.runs_to_mask(part, hi - lo).view(np.uint8)

    def encode(self, version: int = VERSION) -> bytes:
        """The stored form: ``version`` 2 (the default) or 1 (readable by older engines)."""
        if version == 2:
            body = self._body_v2()
        elif version == 1:
            body = self._body_v1()
        else:
            raise ValueError(f"block map format version must be 1 or 2, got {version!r}")
        header = HEADER.pack(
            MAGIC,
            version,
            HASH_XXH3_128_KEYED,
            0,
            self.block_size,
            self.volume_size,
            self._nblocks,
            len(self._data),
            len(body),
            uuid.UUID(self.backup_id).bytes,
            uuid.UUID(self.parent_id).bytes if self.parent_id else bytes(16),
        )
        blob = header + body
        return blob + xxhash.xxh3_128_digest(blob)

    def _body_v2(self) -> bytes:
        runs = self._runs
        pairs = np.empty((len(runs), 2), "<u8")
        pairs[:, 1] = runs[:, 1]
        if len(runs):
            pairs[0, 0] = runs[0, 0]
            pairs[1:, 0] = runs[1:, 0] - self._run_ends()[:-1]
        raw = b"".join((len(runs).to_bytes(8, "little"), pairs.tobytes(), self._data.tobytes()))
        return zstandard.ZstdCompressor(level=3).compress(raw)

    def _body_v1(self) -> bytes:
        raw_len = self._nblocks + len(self._data) * DIGEST_SIZE
        if raw_len <= ONE_SHOT_BYTES:
            raw = b"".join(k.tobytes() for k in self._kinds()) + self._data.tobytes()
            return zstandard.ZstdCompressor(level=3).compress(raw)
        # The same frame format, streamed: the kinds are never all in memory at once.
        c = zstandard.ZstdCompressor(level=3).compressobj(size=raw_len)
        parts = [c.compress(chunk) for chunk in self._kinds()]
        parts.append(c.compress(self._data))
        parts.append(c.flush())
        return b"".join(parts)

    @classmethod
    def decode(
        cls, blob: bytes, zero_digest: bytes | None = None, *, what: str = "manifest"
    ) -> BlockMap:
        if len(blob) < HEADER.size + TRAILER_SIZE:
            raise CorruptionError(f"{what} is truncated ({len(blob)} bytes)")
        (magic, version, algo, _r, bs, volume_size, nblocks, ndata, body_len, bid, pid) = (
            HEADER.unpack_from(blob)
        )
        if magic != MAGIC:
            raise CorruptionError(f"{what} has a bad magic number")
        if version not in VERSIONS:
            raise FormatVersionError(f"{what} has unknown format version {version}")
        if xxhash.xxh3_128_digest(memoryview(blob)[:-TRAILER_SIZE]) != blob[-TRAILER_SIZE:]:
            raise CorruptionError(f"{what} fails its checksum (damaged or truncated)")
        if algo != HASH_XXH3_128_KEYED:
            raise FormatVersionError(f"{what} uses unknown hash algorithm {algo}")
        if (
            not BLOCK_SIZE_MIN <= bs <= BLOCK_SIZE_MAX
            or bs & (bs - 1)
            or nblocks != -(-volume_size // bs)
            or nblocks > MAX_BLOCKS
            or ndata > nblocks
            or body_len != len(blob) - HEADER.size - TRAILER_SIZE
        ):
            raise CorruptionError(f"{what} has inconsistent sizes")
        expected = (nblocks if version == 1 else 8) + ndata * DIGEST_SIZE
        if expected > _most_from(body_len):
            # No zstd frame expands that much: the header's sizes are forged.
            raise CorruptionError(f"{what} claims more blocks than its body can hold")
        decode_body = _decode_body_v1 if version == 1 else _decode_body_v2
        runs, data = decode_body(
            memoryview(blob)[HEADER.size : -TRAILER_SIZE], nblocks, ndata, what
        )
        return cls(
            backup_id=str(uuid.UUID(bytes=bid)),
            parent_id=str(uuid.UUID(bytes=pid)) if any(pid) else None,
            block_size=bs,
            volume_size=volume_size,
            runs=runs,
            data_digests=data,
            zero_digest=zero_digest,
        )


def _most_from(body_len: int) -> int:
    """The most bytes a zstd frame of ``body_len`` bytes can decompress to."""
    return body_len * MAX_ZSTD_RATIO + 1024


class _Body:
    """A body's decompressed bytes, read into buffers as they are asked for."""

    def __init__(self, reader, what: str) -> None:
        self.reader = reader
        self.what = what

    def read_into(self, buf: np.ndarray) -> np.ndarray:
        view, got = memoryview(buf.reshape(-1).view(np.uint8)), 0
        while got < len(view):
            n = self.reader.readinto(view[got:])
            if not n:
                raise CorruptionError(f"{self.what} body has the wrong length")
            got += n
        return buf

    def digests(self, ndata: int) -> np.ndarray:
        """The last part of every body: then nothing may follow."""
        data = self.read_into(np.empty(ndata * DIGEST_SIZE, np.uint8))
        if self.reader.read(1):
            raise CorruptionError(f"{self.what} body has the wrong length")
        return data.reshape(ndata, DIGEST_SIZE)


def _decode_body_v2(
    body: memoryview, nblocks: int, ndata: int, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """nruns ‖ (gap, count) runs ‖ digests: memory is the runs and digests, allocated once
    the run count is known to fit both the body and the header."""
    try:
        with zstandard.ZstdDecompressor().stream_reader(body) as reader:
            src = _Body(reader, what)
            nruns = int(src.read_into(np.empty(1, "<u8"))[0])
            if (
                nruns > ndata
                or (nruns == 0) != (ndata == 0)
                or 8 + (nruns + ndata) * DIGEST_SIZE > _most_from(len(body))
            ):
                raise CorruptionError(f"{what} has an impossible number of runs ({nruns})")
            pairs = src.read_into(np.empty((nruns, 2), "<u8"))
            if nruns and int(pairs.max()) > nblocks:
                raise CorruptionError(f"{what} has runs past the end of the volume")
            if nruns and ((pairs[1:, 0] == 0).any() or (pairs[:, 1] == 0).any()):
                raise CorruptionError(f"{what} has runs that are empty or touch")
            # Each value is at most nblocks (< 2**35) and all but the first are >= 1: the
            # sums rise strictly unless they wrapped, which a forged body could make them.
            bounds = np.cumsum(pairs.ravel()).astype(np.int64)
            if nruns and ((np.diff(bounds) <= 0).any() or int(bounds[-1]) > nblocks):
                raise CorruptionError(f"{what} has runs past the end of the volume")
            if int(pairs[:, 1].sum()) != ndata:
                raise CorruptionError(f"{what} block count does not match its digests")
            data = src.digests(ndata)
    except zstandard.ZstdError as e:
        raise CorruptionError(f"{what} body does not decompress: {e}") from None
    runs = bounds.reshape(-1, 2)
    runs[:, 1] -= runs[:, 0]
    return runs, data


def _decode_body_v1(
    body: memoryview, nblocks: int, ndata: int, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """Stream-decompress kinds ‖ digests: the kinds become runs chunk by chunk, so memory is
    a chunk plus the runs and digests, allocated only as output actually appears."""
    runs: list[np.ndarray] = []
    count = 0
    try:
        with zstandard.ZstdDecompressor().stream_reader(body) as reader:
            src = _Body(reader, what)
            # One buffer for every chunk of kinds: decompressed in place, turned into runs.
            kinds = np.empty(min(KINDS_CHUNK, nblocks), np.uint8)
            for lo in range(0, nblocks, KINDS_CHUNK):
                chunk_runs = native.kinds_to_runs(
                    src.read_into(kinds[: min(KINDS_CHUNK, nblocks - lo)])
                )
                if chunk_runs is None:
                    raise CorruptionError(f"{what} has an unknown block kind")
                count += native.runs_count(chunk_runs)
                chunk_runs[:, 0] += lo
                runs.append(chunk_runs)
            if count != ndata:
                raise CorruptionError(f"{what} block count does not match its digests")
            data = src.digests(ndata)
    except zstandard.ZstdError as e:
        raise CorruptionError(f"{what} body does not decompress: {e}") from None
    all_runs = np.concatenate(runs) if runs else np.empty((0, 2), np.int64)
    return native.runs_normalize(all_runs), data


Manifest = BlockMap  # the type's earlier name
