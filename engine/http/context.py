"""Who is asking: the identity an auth middleware hands to the application.

Both auth modes (Cinder's ``noauth`` and Keystone's ``auth_token``) end in the same object,
stored in the WSGI environ under :data:`CONTEXT_KEY`. The token is kept out of ``repr`` so
that a context printed in a log or an error never shows a secret.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: The WSGI environ key under which an auth middleware stores the :class:`RequestContext`.
CONTEXT_KEY = "cinderblock.context"


@dataclass(frozen=True)
class RequestContext:
    """The authenticated caller of one request."""

    user_id: str
    project_id: str
    roles: tuple[str, ...] = ()
    is_admin: bool = False
    auth_token: str | None = field(default=None, repr=False, compare=False)

    def may_act_for(self, project_id: str) -> bool:
        """Whether a URL naming ``project_id`` is this caller's own project.

        Admins are not exempt: like Cinder, the project in the path must be the token's
        project; an admin sees other projects through ``all_tenants``, not through URLs.
        """
        return project_id == self.project_id
