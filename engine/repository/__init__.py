"""Repository: where backups live, over any store. The source of truth; a catalog is only an
index of it.

Layout (keys), block map, object, record and lease formats are specified in
``docs/repository-format.md``. ``Repository`` holds the config; ``Container`` is what the data
path and maintenance work with.
"""

from .blockmap import BlockMap, Manifest
from .container import Container
from .objects import BlockCodec
from .repository import Repository

LocalRepository = Repository  # the name from before the storage seam

__all__ = ["BlockCodec", "BlockMap", "Container", "LocalRepository", "Manifest", "Repository"]
