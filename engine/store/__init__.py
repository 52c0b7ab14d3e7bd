"""Stores: bytes by key, nothing more (``blob.py`` is the protocol and its guarantees).

``LocalBlobStore`` keeps a repository in a directory; ``SwiftBlobStore`` and ``S3BlobStore``
(``swift.py``, ``s3.py``) in an object store; ``MemoryBlobStore`` is for tests of the layers
above. ``open_store`` turns what a user typed (a path, ``swift://…``, ``s3://…``: ``url.py``)
into a store.
"""

from __future__ import annotations

import os

from .blob import BlobBatch, BlobInfo, BlobStore, StoreCaps, check_key
from .local import LocalBlobStore
from .memory import MemoryBlobStore
from .url import Location, is_url, open_location, parse_location


def open_store(location: str | os.PathLike[str] | BlobStore) -> BlobStore:
    """The store named by ``location``: a store as it is, a local directory path, or a
    ``swift://`` / ``s3://`` URL (``url.py``; credentials from the environment)."""
    if isinstance(location, BlobStore):
        return location
    return open_location(parse_location(location))


def is_remote(store: BlobStore) -> bool:
    """True for a store that is not a local directory (its catalog is a local cache)."""
    return not isinstance(store, LocalBlobStore)


__all__ = [
    "BlobBatch",
    "BlobInfo",
    "BlobStore",
    "Location",
    "LocalBlobStore",
    "MemoryBlobStore",
    "StoreCaps",
    "check_key",
    "is_remote",
    "is_url",
    "parse_location",
    "open_store",
]
