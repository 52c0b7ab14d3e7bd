"""Repository: where backups live. The source of truth; the catalog is only an index of it.

Layout, object, manifest and record formats are specified in ``docs/repository-format.md``.
"""

from .local import LocalRepository
from .manifest import Manifest
from .objects import BlockCodec

__all__ = ["BlockCodec", "LocalRepository", "Manifest"]
