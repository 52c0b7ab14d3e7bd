"""Stores: bytes by key, nothing more (``blob.py`` is the protocol and its guarantees).

``LocalBlobStore`` keeps a repository in a directory; ``MemoryBlobStore`` is for tests of
the layers above. ``open_store`` turns what a user typed (a path today; Swift and S3 URLs
later) into a store.
"""

from __future__ import annotations

import os

from .blob import BlobBatch, BlobInfo, BlobStore, StoreCaps, check_key
from .local import LocalBlobStore
from .memory import MemoryBlobStore


def open_store(location: str | os.PathLike[str] | BlobStore) -> BlobStore:
    """The store named by ``location``: a store as it is, or a local directory path."""
    if isinstance(location, BlobStore):
        return location
    return LocalBlobStore(os.fspath(location))


__all__ = [
    "BlobBatch",
    "BlobInfo",
    "BlobStore",
    "LocalBlobStore",
    "MemoryBlobStore",
    "StoreCaps",
    "check_key",
    "open_store",
]
