"""Cinder-shaped response bodies for backups, as pure functions over plain dicts.

Views take a *backup record*: a plain ``dict`` (catalog row or engine state) with these keys,
any of which may be absent (absent reads as ``None``):

==========================  =====================================================
``id``                      backup id (required by every view)
``status``                  ``creating``, ``available``, ``error``, ``deleting``,
                            ``error_deleting``, ``restoring``, ``deleted``
``size``                    int GiB (the source volume's size)
``object_count``            int or None (None is shown as 0, as Cinder does)
``availability_zone``       str or None
``container``               str or None
``created_at``              :class:`datetime.datetime` (naive UTC or aware), or an
``updated_at``              already-formatted string, or None
``data_timestamp``
``display_name``            shown as ``name``
``display_description``     shown as ``description``
``fail_reason``             str or None (shown truncated to 255 characters)
``volume_id``               str
``parent_id``               str or None (drives ``is_incremental``)
``num_dependent_backups``   int or None (drives ``has_dependent_backups``)
``snapshot_id``             str or None
``metadata``                dict of str -> str, or None (shown as ``{}``)
``project_id``, ``user_id`` str (admin-only attributes, see ``detail_view``)
``encryption_key_id``       str or None (3.64+, hidden when null or the fixed key)
``progress``, ``stats``     engine extras, passed through verbatim when present
==========================  =====================================================

Links: ``self`` is ``<base_url>/v3/<project_id>/backups/<id>`` and ``bookmark`` the same
without ``/v3``. ``base_url`` is the endpoint root (scheme, host, port, any path prefix,
no version); pass ``project_id=None`` for a request that came in on a project-less URL,
whose links then omit that segment, as Cinder's do.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from engine.requests.microversion import Microversion, VersionLike, parse_microversion

__all__ = [
    "Links",
    "backup_links",
    "create_response",
    "detail_view",
    "format_timestamp",
    "list_response",
    "next_page_marker",
    "restore_response",
    "show_response",
    "summary_view",
    "update_response",
]

BACKUP_PROJECT = Microversion(3, 18)
BACKUP_METADATA = Microversion(3, 43)
BACKUP_PROJECT_USER_ID = Microversion(3, 56)
ENCRYPTION_KEY_ID_IN_DETAILS = Microversion(3, 64)

FIXED_KEY_ID = "00000000-0000-0000-0000-000000000000"
FAIL_REASON_MAX = 255
# Engine fields beyond Cinder's view: ``parent_id`` (the backup an incremental continues;
# Cinder keeps it in its database only, drivers and operators need it), progress and stats.
ENGINE_EXTRAS = ("parent_id", "progress", "stats")

Backup = Mapping[str, Any]


@dataclass(frozen=True)
class Links:
    """Where a response's links point: the endpoint root and the project segment, if any.

    ``project_id`` is ``None`` for a request that came in on a project-less URL
    (``/v3/backups``): Cinder's links then omit the segment too.
    """

    base_url: str
    project_id: str | None


def format_timestamp(value: Any) -> Any:
    """ISO 8601 with microseconds and no timezone suffix, as Cinder's JSON encoder writes.

    Aware datetimes are converted to UTC first; strings and ``None`` pass through.
    """
    if isinstance(value, _dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(_dt.timezone.utc).replace(tzinfo=None)
        return value.strftime("%Y-%m-%dT%H:%M:%S.%f")
    return value


def _url(base_url: str, *segments: str | None) -> str:
    # A None segment is an absent project id (project-less request URL).
    return "/".join([base_url.rstrip("/"), *(seg for seg in segments if seg is not None)])


def backup_links(backup_id: str, *, base_url: str, project_id: str | None) -> list[dict[str, str]]:
    """The ``self`` and ``bookmark`` links of one backup."""
    return [
        {"rel": "self", "href": _url(base_url, "v3", project_id, "backups", str(backup_id))},
        {"rel": "bookmark", "href": _url(base_url, project_id, "backups", str(backup_id))},
    ]


def summary_view(backup: Backup, *, base_url: str, project_id: str | None) -> dict[str, Any]:
    """``{"id", "name", "links"}``: the body of create, update, import and plain listings."""
    return {
        "id": backup["id"],
        "name": backup.get("display_name"),
        "links": backup_links(backup["id"], base_url=base_url, project_id=project_id),
    }


def detail_view(
    backup: Backup,
    *,
    base_url: str,
    project_id: str | None,
    microversion: VersionLike = "3.0",
    show_project_attributes: bool = False,
) -> dict[str, Any]:
    """Every field of Cinder's detail view that ``microversion`` exposes.

    ``show_project_attributes`` is the outcome of the ``backup:backup_project_attribute``
    policy (admins by default): it adds ``os-backup-project-attr:project_id`` (3.18+) and
    ``user_id`` (3.56+). Engine extras ``progress``/``stats`` are appended when present.
    """
    version = parse_microversion(microversion)
    fail_reason = backup.get("fail_reason")
    if isinstance(fail_reason, str):
        fail_reason = fail_reason[:FAIL_REASON_MAX]
    view: dict[str, Any] = {
        "id": backup["id"],
        "status": backup.get("status"),
        "size": backup.get("size"),
        "object_count": backup.get("object_count") or 0,
        "availability_zone": backup.get("availability_zone"),
        "container": backup.get("container"),
        "created_at": format_timestamp(backup.get("created_at")),
        "updated_at": format_timestamp(backup.get("updated_at")),
        "name": backup.get("display_name"),
        "description": backup.get("display_description"),
        "fail_reason": fail_reason,
        "volume_id": backup.get("volume_id"),
        "links": backup_links(backup["id"], base_url=base_url, project_id=project_id),
        "is_incremental": bool(backup.get("parent_id")),
        "has_dependent_backups": bool(backup.get("num_dependent_backups")),
        "snapshot_id": backup.get("snapshot_id"),
        "data_timestamp": format_timestamp(backup.get("data_timestamp")),
    }
    if version >= BACKUP_METADATA:
        view["metadata"] = dict(backup.get("metadata") or {})
    if version >= ENCRYPTION_KEY_ID_IN_DETAILS:
        key_id = backup.get("encryption_key_id")
        if key_id and key_id != FIXED_KEY_ID:
            view["encryption_key_id"] = key_id
    if show_project_attributes and version >= BACKUP_PROJECT:
        view["os-backup-project-attr:project_id"] = backup.get("project_id")
    if show_project_attributes and version >= BACKUP_PROJECT_USER_ID:
        view["user_id"] = backup.get("user_id")
    for extra in ENGINE_EXTRAS:
        if extra in backup:
            view[extra] = backup[extra]
    return view


def create_response(
    backup: Backup, *, base_url: str, project_id: str | None, microversion: VersionLike = "3.0"
) -> dict[str, Any]:
    """The 202 body of create: the summary view, plus ``metadata`` from 3.43.

    Real Cinder returns only ``id``/``name``/``links`` at every microversion; the published
    API reference (our seed) promises ``metadata`` from 3.43, and adding a field is harmless
    to clients that ignore it, so the promise is honoured.
    """
    body = summary_view(backup, base_url=base_url, project_id=project_id)
    if parse_microversion(microversion) >= BACKUP_METADATA:
        body["metadata"] = dict(backup.get("metadata") or {})
    return {"backup": body}


def update_response(backup: Backup, *, base_url: str, project_id: str | None) -> dict[str, Any]:
    """The 200 body of update: the summary view (no metadata, as in Cinder)."""
    return {"backup": summary_view(backup, base_url=base_url, project_id=project_id)}


def show_response(
    backup: Backup,
    *,
    base_url: str,
    project_id: str | None,
    microversion: VersionLike = "3.0",
    show_project_attributes: bool = False,
) -> dict[str, Any]:
    """The 200 body of ``GET /backups/{id}``."""
    return {
        "backup": detail_view(
            backup,
            base_url=base_url,
            project_id=project_id,
            microversion=microversion,
            show_project_attributes=show_project_attributes,
        )
    }


def restore_response(*, backup_id: str, volume_id: str, volume_name: str | None) -> dict[str, Any]:
    """The 202 body of restore; ``volume_name`` is the target's name at request time."""
    return {"restore": {"backup_id": backup_id, "volume_id": volume_id, "volume_name": volume_name}}


def next_page_marker(backups: Sequence[Backup], limit: int) -> str | None:
    """Cinder's rule for a ``next`` link: the page is non-empty and as long as ``limit``.

    It may produce a link to an empty last page; that is what Cinder clients expect.
    """
    if backups and limit <= len(backups):
        return str(backups[-1]["id"])
    return None


def list_response(
    backups: Sequence[Backup],
    *,
    detail: bool,
    base_url: str,
    project_id: str | None,
    limit: int,
    microversion: VersionLike = "3.0",
    next_marker: str | None = None,
    count: int | None = None,
    query: Mapping[str, str] | None = None,
    show_project_attributes: bool = False,
) -> dict[str, Any]:
    """The body of ``GET /backups`` (``detail=False``) or ``GET /backups/detail``.

    ``backups_links`` appears when ``next_marker`` is given (use :func:`next_page_marker`
    for Cinder's rule). Its href repeats the request's ``query`` with ``marker`` replaced
    (moved last, as webob does) and always points at ``/backups``, also for detail
    listings, as Cinder's does. ``count`` is added when not ``None`` (``with_count``).
    ``limit`` is informative only: it is used when ``query`` is not given.
    """
    version = parse_microversion(microversion)
    if detail:
        items = [
            detail_view(
                backup,
                base_url=base_url,
                project_id=project_id,
                microversion=version,
                show_project_attributes=show_project_attributes,
            )
            for backup in backups
        ]
    else:
        items = [summary_view(b, base_url=base_url, project_id=project_id) for b in backups]
    body: dict[str, Any] = {"backups": items}
    if next_marker is not None:
        params = dict(query) if query is not None else {"limit": str(limit)}
        params.pop("marker", None)
        params["marker"] = next_marker
        href = f"{_url(base_url, 'v3', project_id, 'backups')}?{urlencode(params)}"
        body["backups_links"] = [{"rel": "next", "href": href}]
    if count is not None:
        body["count"] = count
    return body
