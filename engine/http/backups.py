"""The backup routes: Cinder's ``/v3[/{project_id}]/backups...`` over ``BackupEngine``.

Each handler is a few lines: the engine validates bodies and query strings (with Cinder's
texts) and builds the bodies; this module adds the HTTP parts -- statuses, ``Location``,
admin checks -- and nothing else.
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidInput
from ..requests.actions import (
    FORCE_DELETE,
    parse_backup_action,
    parse_import_record,
)
from ..requests.restore import parse_restore_backup
from . import policy
from .call import Call
from .wire import Response

__all__ = ["BackupRoutes"]

UPDATE_MIN = "3.9"


class BackupRoutes:
    """Handlers bound to one engine."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def create(self, call: Call) -> Response:
        body = self.engine.create_backup(
            call.project_id,
            call.json_body(),
            microversion=str(call.version),
            user_id=call.context.user_id,
            links=call.links,
        )
        location = body["backup"]["links"][0]["href"]
        return Response(202, body, {"Location": location})

    def _list(self, call: Call, *, detail: bool) -> Response:
        body = self.engine.list_backups(
            call.project_id,
            detail=detail,
            filters=call.request.query,
            microversion=str(call.version),
            links=call.links,
            show_project_attributes=call.context.is_admin,
        )
        return Response(200, body)

    def index(self, call: Call) -> Response:
        return self._list(call, detail=False)

    def detail(self, call: Call) -> Response:
        return self._list(call, detail=True)

    def show(self, call: Call) -> Response:
        view = self.engine.get_backup(
            call.project_id,
            call.params["backup_id"],
            microversion=str(call.version),
            links=call.links,
            show_project_attributes=call.context.is_admin,
        )
        return Response(200, {"backup": view})

    def update(self, call: Call) -> Response:
        body = self.engine.update_backup(
            call.project_id,
            call.params["backup_id"],
            call.json_body(),
            microversion=str(call.version),
            links=call.links,
        )
        return Response(200, body)

    def delete(self, call: Call) -> Response:
        self.engine.delete_backup(call.project_id, call.params["backup_id"])
        return Response(202)

    def restore(self, call: Call) -> Response:
        request = parse_restore_backup(call.json_body())
        if request.volume_id is None:
            raise InvalidInput(
                "this service restores onto existing volumes only: register the target "
                "volume and pass its id as restore.volume_id"
            )
        body = self.engine.restore_backup(
            call.project_id, call.params["backup_id"], request.volume_id, wait=False
        )
        return Response(202, body)

    def action(self, call: Call) -> Response:
        action = parse_backup_action(call.json_body())
        backup_id = call.params["backup_id"]
        if action.name == FORCE_DELETE:
            policy.require_admin(call.context, policy.FORCE_DELETE)
            self.engine.delete_backup(call.project_id, backup_id, force=True)
        else:
            policy.require_admin(call.context, policy.RESET_STATUS)
            self.engine.reset_status(call.project_id, backup_id, action.status)
        return Response(202)

    def export_record(self, call: Call) -> Response:
        policy.require_admin(call.context, policy.EXPORT)
        return Response(200, self.engine.export_record(call.project_id, call.params["backup_id"]))

    def import_record(self, call: Call) -> Response:
        policy.require_admin(call.context, policy.IMPORT)
        request = parse_import_record(call.json_body())
        body = self.engine.import_record(call.project_id, request, links=call.links)
        return Response(201, body)
