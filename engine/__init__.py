"""cinderblock: a block-level incremental backup engine with a native hot path.

The package is layered as ``docs/architecture.md`` describes: requests → planner → runner →
data path → repository, with a SQLite catalog beside the repository. The native kernels live
in :mod:`engine.native`.
"""

__version__ = "0.1.0"

from .changes import ChangeSet  # noqa: E402
from .engine import BackupEngine  # noqa: E402
from .planner import Quotas  # noqa: E402
from .sources import SnapshotInfo, VolumeInfo  # noqa: E402

__all__ = ["BackupEngine", "ChangeSet", "Quotas", "SnapshotInfo", "VolumeInfo", "__version__"]
