"""Who may do what: Cinder's default policies for backups (reference section 2.6).

Reading, creating, updating, deleting and restoring are for any member of the project
(the project is the caller's own: a URL naming another one is refused before any route
runs). Import, export, reset-status and force-delete are for admins only, with Cinder's
policy names in the 403 text. Admins are not exempt from project scoping: this service
has no cross-project listing (``all_tenants`` is dropped), so no door shows one project's
backups to another.
"""

from __future__ import annotations

from ..errors import PolicyNotAuthorized
from .context import RequestContext

__all__ = ["EXPORT", "FORCE_DELETE", "IMPORT", "RESET_STATUS", "require_admin"]

RESET_STATUS = "volume_extension:backup_admin_actions:reset_status"
FORCE_DELETE = "volume_extension:backup_admin_actions:force_delete"
EXPORT = "backup:export-import"
IMPORT = "backup:backup-import"


def require_admin(context: RequestContext, action: str) -> None:
    """403 ``Policy doesn't allow <action> to be performed.`` unless the caller is admin."""
    if not context.is_admin:
        raise PolicyNotAuthorized(action)
