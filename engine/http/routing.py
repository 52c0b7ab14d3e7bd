"""The route table: ``/v3[/{project_id}]/<resource path>`` to a handler, or 404 / 405.

Cinder registers every resource twice, with and without the project segment; so does this
table. A path is first matched without a project (``/v3/backups/detail``); only when no
template matches it is its first segment taken as the project (``/v3/p1/backups``). A path
that a template matches under another method is a 405 with ``Allow``; anything else 404.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .faults import HttpError

__all__ = ["NOT_FOUND", "Match", "Route", "Router"]

#: webob's text for a route that does not exist, which Cinder sends.
NOT_FOUND = "The resource could not be found."

_PARAM = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class Route:
    """``method`` + ``template`` (``backups/{backup_id}/restore``) -> ``handler``."""

    method: str
    template: str
    handler: Callable[..., Any]
    min_version: str | None = None

    def pattern(self) -> re.Pattern[str]:
        regex = _PARAM.sub(lambda m: f"(?P<{m.group(1)}>[^/]+)", self.template)
        return re.compile(f"^{regex}$")


@dataclass(frozen=True)
class Match:
    route: Route
    params: dict[str, str]
    project_id: str | None  # the project segment of the URL, None on a project-less URL


class Router:
    """Resolves ``(method, path below /v3)`` against an ordered route table."""

    def __init__(self, routes: Sequence[Route]) -> None:
        self._routes = [(r, r.pattern()) for r in routes]

    def _match(self, method: str, rest: str) -> tuple[Match | None, set[str]]:
        allowed: set[str] = set()
        for route, pattern in self._routes:
            m = pattern.match(rest)
            if m is None:
                continue
            if route.method == method:
                return Match(route, m.groupdict(), None), allowed
            allowed.add(route.method)
        return None, allowed

    def resolve(self, method: str, rest: str) -> Match:
        """The route for ``rest`` (the path below ``/v3/``, no leading slash)."""
        rest = rest.rstrip("/")
        found, allowed = self._match(method, rest)
        if found is not None:
            return found
        if not allowed and "/" in rest:
            project, _, below = rest.partition("/")
            found, allowed = self._match(method, below)
            if found is not None:
                return Match(found.route, found.params, project)
        if allowed:
            raise HttpError(
                405,
                f"The method {method} is not allowed for this resource.",
                {"Allow": ", ".join(sorted(allowed))},
            )
        raise HttpError(404, NOT_FOUND)
