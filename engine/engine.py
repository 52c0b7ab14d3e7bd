"""``BackupEngine``'s old home, kept so ``from engine.engine import BackupEngine`` works.

The engine lives in the service layer now: ``engine/service/backups.py``.
"""

from .service.backups import BackupEngine

__all__ = ["BackupEngine"]
