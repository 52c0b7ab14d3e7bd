"""The data path: reading, change filtering, compression and storage of blocks, and back.

``api.py`` is its public face (``backup_volume``, ``restore_volume``: what drivers, the
service's jobs, the CLI and the benchmarks call). ``backup.py`` turns a volume into objects
and a block map; ``restore.py`` turns a block map back into bytes on a target; ``fanout.py``
shares their work among threads. None of them knows about statuses, catalogs or requests.
"""

from .api import RestoreResult, SourceChanged, backup_volume, restore_volume
from .backup import BackupStats

__all__ = ["BackupStats", "RestoreResult", "SourceChanged", "backup_volume", "restore_volume"]
