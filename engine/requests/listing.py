"""``GET /backups`` and ``GET /backups/detail``: pagination, sorting and filter parameters.

Checks run in Cinder's order (``BackupsController._get_backups`` and the helpers in
``api/common.py``, ``backup/api.py`` ``API.get_all`` and ``db/api.py``), because with two
bad parameters the client sees whichever error Cinder raises first:

1. ``limit``, ``marker``, ``offset`` (``get_pagination_params``);
2. ``sort`` versus ``sort_key``/``sort_dir`` (``get_sort_params``);
3. ``with_count`` (3.45+);
4. ``name`` sort key -> ``display_name`` (3.37+);
5. filters: from 3.31 checked against the allowed list for non-admins (``all_tenants`` is
   silently dropped), before 3.31 unknown filters are silently dropped for non-admins;
   ``name`` -> ``display_name``;
6. ``all_tenants`` must spell a boolean (it only reaches this check for admins);
7. sort directions, then sort keys (the database layer's checks).

The marker is not looked up here (an unknown marker is a 404 from the catalog).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from engine.errors import BadRequest, InvalidInput, InvalidParameterValue
from engine.requests.microversion import Microversion, VersionLike, parse_microversion
from engine.requests.parameter_types import bool_from_string, is_valid_boolstr

__all__ = [
    "BACKUP_COLUMNS",
    "DEFAULT_MAX_LIMIT",
    "ListQuery",
    "USER_FILTERS",
    "parse_list_query",
]

DEFAULT_MAX_LIMIT = 1000  # Cinder's osapi_max_limit
DB_MAX_INT = 0x7FFFFFFF

RESOURCE_FILTER = Microversion(3, 31)
LIKE_FILTER = Microversion(3, 34)
BACKUP_SORT_NAME = Microversion(3, 37)
SUPPORT_COUNT_INFO = Microversion(3, 45)

#: Filters a non-admin may use (Cinder's default ``resource_filters.json`` backup entry).
USER_FILTERS: tuple[str, ...] = ("name", "status", "volume_id")

#: Columns of Cinder's ``backups`` table: the valid sort keys, and the filter keys an admin
#: can use without getting an empty list.
BACKUP_COLUMNS: frozenset[str] = frozenset(
    {
        "id", "created_at", "updated_at", "deleted_at", "deleted", "user_id", "project_id",
        "volume_id", "host", "availability_zone", "display_name", "display_description",
        "container", "parent_id", "status", "fail_reason", "service_metadata", "service",
        "size", "object_count", "temp_volume_id", "temp_snapshot_id",
        "num_dependent_backups", "snapshot_id", "data_timestamp", "restore_volume_id",
        "encryption_key_id",
    }
)  # fmt: skip

_DEFAULT_SORT_KEYS = ("created_at", "id")
_DEFAULT_SORT_DIR = "desc"
_LIKE_CONVERSIONS = {"name~": "display_name~", "description~": "display_description~"}


@dataclass(frozen=True)
class ListQuery:
    """A validated listing request.

    ``sort_keys``/``sort_dirs`` are complete: the defaults ``created_at`` and ``id`` are
    appended (with the first requested direction) unless already present, so ordering is
    total and pages are stable. ``filters`` use column names (``display_name``); keys ending
    in ``~`` are "like" filters. ``all_tenants`` is already resolved against ``is_admin``.
    ``limit`` 0 is allowed and means an empty page.
    """

    limit: int = DEFAULT_MAX_LIMIT
    marker: str | None = None
    offset: int = 0
    sort_keys: tuple[str, ...] = _DEFAULT_SORT_KEYS
    sort_dirs: tuple[str, ...] = (_DEFAULT_SORT_DIR, _DEFAULT_SORT_DIR)
    filters: dict[str, str] = field(default_factory=dict, hash=False)
    all_tenants: bool = False
    with_count: bool = False

    @property
    def sort(self) -> tuple[tuple[str, str], ...]:
        """``(key, direction)`` pairs, most significant first."""
        return tuple(zip(self.sort_keys, self.sort_dirs, strict=True))

    @property
    def matches_nothing(self) -> bool:
        """True when a filter names no column: Cinder then returns an empty list, no error.

        Only admins can get here (other callers' unknown filters are rejected or dropped).
        """
        return any(key.rstrip("~") not in BACKUP_COLUMNS for key in self.filters)


def _limit(params: dict[str, str], max_limit: int) -> int:
    try:
        limit = int(params.pop("limit", max_limit))
    except (TypeError, ValueError):
        raise BadRequest("limit param must be an integer") from None
    if limit < 0:
        raise BadRequest("limit param must be positive")
    return min(limit, max_limit)


def _offset(params: dict[str, str]) -> int:
    # Cinder validates offset with oslo's strutils.validate_integer(offset, 'offset', 0,
    # DB_MAX_INT), so out-of-range values get that helper's range texts; the reference's
    # summary ("otherwise offset must be an integer") only covers non-integers exactly.
    try:
        offset = int(str(params.pop("offset", 0)))
    except (ValueError, UnicodeEncodeError):
        raise BadRequest("offset must be an integer") from None
    if offset < 0:
        raise BadRequest("offset must be >= 0")
    if offset > DB_MAX_INT:
        raise BadRequest(f"offset must be <= {DB_MAX_INT}")
    return offset


def _sort_params(params: dict[str, str]) -> tuple[list[str], list[str]]:
    if "sort" in params and ("sort_key" in params or "sort_dir" in params):
        raise BadRequest(
            "The 'sort_key' and 'sort_dir' parameters are deprecated and cannot be used "
            "with the 'sort' parameter."
        )
    keys: list[str] = []
    dirs: list[str] = []
    if "sort" in params:
        for item in params.pop("sort").strip().split(","):
            key, _sep, direction = item.partition(":")
            keys.append(key.strip())
            dirs.append((direction or _DEFAULT_SORT_DIR).strip())
    else:
        keys.append(params.pop("sort_key", "created_at").strip())
        dirs.append(params.pop("sort_dir", _DEFAULT_SORT_DIR).strip())
    return keys, dirs


def _with_count(params: dict[str, str], version: Microversion) -> bool:
    if version < SUPPORT_COUNT_INFO or "with_count" not in params:
        return False  # before 3.45 it stays in params and is handled as a filter
    value = params.pop("with_count")
    if not is_valid_boolstr(value):
        raise InvalidParameterValue(f"Value '{value}' for 'with_count' is not a boolean.")
    return bool_from_string(value)


def _reject_invalid_filters(filters: dict[str, str], version: Microversion, is_admin: bool) -> None:
    for key in filters:
        if not key.isascii():
            raise BadRequest("Filter keys can only contain ASCII characters.")
    if is_admin:
        return
    like = version >= LIKE_FILTER
    invalid = [
        key for key in filters if not (key in USER_FILTERS or (like and f"{key}~" in USER_FILTERS))
    ]
    if "all_tenants" in invalid:
        # cinderclient always sends it, so a non-admin is not punished for it (bug 1917574).
        invalid.remove("all_tenants")
        filters.pop("all_tenants")
    if invalid:
        raise BadRequest(f"Invalid filters {','.join(invalid)} are found in query options.")


def _filters(params: dict[str, str], version: Microversion, is_admin: bool) -> dict[str, str]:
    filters = dict(params)
    if version >= RESOURCE_FILTER:
        _reject_invalid_filters(filters, version, is_admin)
        for key in list(filters):
            if key in _LIKE_CONVERSIONS:
                filters[_LIKE_CONVERSIONS[key]] = filters.pop(key)
    elif not is_admin:
        filters = {key: value for key, value in filters.items() if key in USER_FILTERS}
    if "name" in filters:
        filters["display_name"] = filters.pop("name")
    return filters


def _complete_sort(keys: list[str], dirs: list[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    for direction in dirs:
        if direction not in ("asc", "desc"):
            raise InvalidInput("Unknown sort direction, must be 'desc' or 'asc'.")
    default_dir = dirs[0] if dirs else _DEFAULT_SORT_DIR
    keys, dirs = list(keys), list(dirs)
    for key in _DEFAULT_SORT_KEYS:
        if key not in keys:
            keys.append(key)
            dirs.append(default_dir)
    for key in keys:
        if key not in BACKUP_COLUMNS:
            raise InvalidInput("Invalid sort key")
    return tuple(keys), tuple(dirs)


def parse_list_query(
    params: Mapping[str, str],
    microversion: VersionLike = "3.0",
    *,
    is_admin: bool = False,
    max_limit: int = DEFAULT_MAX_LIMIT,
) -> ListQuery:
    """Validate the query string of a backup listing and return what to fetch.

    ``params`` is the query string as a mapping (last value wins for repeated keys). Errors
    carry Cinder's texts, e.g. ``limit param must be an integer``, ``Invalid filters foo are
    found in query options.``, ``Invalid input received: Invalid sort key``.

    Deliberate difference: before 3.37, ``sort=name`` makes Cinder's database layer fail
    with a 500 (``name`` is a Python property of its model, not a column); here it is the
    ordinary 400 ``Invalid input received: Invalid sort key``.
    """
    version = parse_microversion(microversion)
    remaining = dict(params)

    limit = _limit(remaining, max_limit)
    marker = remaining.pop("marker", None)
    offset = _offset(remaining)
    sort_keys, sort_dirs = _sort_params(remaining)
    with_count = _with_count(remaining, version)
    if version >= BACKUP_SORT_NAME and "name" in sort_keys:
        sort_keys[sort_keys.index("name")] = "display_name"  # first occurrence, as Cinder
    filters = _filters(remaining, version, is_admin)

    all_tenants_value = filters.pop("all_tenants", "0")
    if not is_valid_boolstr(all_tenants_value):
        raise InvalidParameterValue(f"all_tenants must be a boolean, got '{all_tenants_value}'.")
    all_tenants = is_admin and bool_from_string(all_tenants_value, strict=False)

    keys, dirs = _complete_sort(sort_keys, sort_dirs)
    return ListQuery(
        limit=limit,
        marker=marker,
        offset=offset,
        sort_keys=keys,
        sort_dirs=dirs,
        filters=filters,
        all_tenants=all_tenants,
        with_count=with_count,
    )
