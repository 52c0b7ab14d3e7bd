"""cinderblock: a block-level incremental backup engine with a native hot path.

The package is layered as ``docs/architecture.md`` describes: front doors (CLI, bench) →
service (``BackupEngine``, the embedded default, with its catalog) → data path
(``backup_volume``, ``restore_volume``) and maintenance → repository → store → native.
"""

__version__ = "0.1.0"

from .changes import ChangeSet  # noqa: E402
from .datapath import RestoreResult, backup_volume, restore_volume  # noqa: E402
from .engine import BackupEngine  # noqa: E402
from .repository import BlockMap, Container, Repository  # noqa: E402
from .service.planner import Quotas  # noqa: E402
from .sources import SnapshotInfo, VolumeInfo  # noqa: E402

__all__ = [
    "BackupEngine",
    "BlockMap",
    "ChangeSet",
    "Container",
    "Quotas",
    "Repository",
    "RestoreResult",
    "SnapshotInfo",
    "VolumeInfo",
    "__version__",
    "backup_volume",
    "restore_volume",
]
