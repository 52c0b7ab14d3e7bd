"""The request layer: Cinder-shaped API requests in, validated request objects out.

This is the outermost layer of the engine. It parses and validates request bodies and
query strings exactly as OpenStack Cinder does -- same acceptance rules, same error texts
-- so Cinder clients can talk to the engine unchanged, and it builds Cinder's response
shapes from plain dicts. It is pure (no I/O, no engine state) and uses only the standard
library, so every rule can be tested in isolation. Where Cinder crashes with a 500 on an
input, this layer answers a clear 400 instead; each such difference is documented on the
function concerned.
"""

from engine.requests.create import CreateBackupRequest, parse_create_backup
from engine.requests.listing import ListQuery, parse_list_query
from engine.requests.microversion import (
    MAX_VERSION,
    MIN_VERSION,
    Microversion,
    parse_microversion,
)
from engine.requests.restore import RestoreBackupRequest, parse_restore_backup
from engine.requests.update import UpdateBackupRequest, parse_update_backup
from engine.requests.views import (
    Links,
    backup_links,
    create_response,
    detail_view,
    format_timestamp,
    list_response,
    next_page_marker,
    restore_response,
    show_response,
    summary_view,
    update_response,
)

__all__ = [
    "MAX_VERSION",
    "MIN_VERSION",
    "CreateBackupRequest",
    "Links",
    "ListQuery",
    "Microversion",
    "RestoreBackupRequest",
    "UpdateBackupRequest",
    "backup_links",
    "create_response",
    "detail_view",
    "format_timestamp",
    "list_response",
    "next_page_marker",
    "parse_create_backup",
    "parse_list_query",
    "parse_microversion",
    "parse_restore_backup",
    "parse_update_backup",
    "restore_response",
    "show_response",
    "summary_view",
    "update_response",
]
