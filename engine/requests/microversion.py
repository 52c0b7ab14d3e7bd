"""Block Storage microversions (``OpenStack-API-Version: volume X.Y``).

Every request is evaluated at one negotiated microversion; schemas and views switch on it.
Parsing mirrors Cinder (``api/openstack/api_version_request.py`` and ``wsgi.Request.
set_api_version_request``): no header means 3.0, ``latest`` means the maximum, a malformed
string is a 400 and a well-formed one outside 3.0-3.71 is a 406 (``computeFault``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import total_ordering

from engine.errors import InvalidAPIVersionString, InvalidGlobalAPIVersion

__all__ = [
    "LATEST",
    "MAX_VERSION",
    "MIN_VERSION",
    "Microversion",
    "VersionLike",
    "parse_microversion",
]

# Cinder's grammar: no leading zeros, except a lone "0" minor. "3.00", "03.1" and " 3.1"
# are all malformed.
_VERSION_RE = re.compile(r"^([1-9]\d*)\.([1-9]\d*|0)$")

LATEST = "latest"


@total_ordering
@dataclass(frozen=True)
class Microversion:
    """A ``major.minor`` pair that compares numerically (3.9 < 3.10).

    Comparisons also accept a version string so gates read naturally:
    ``if mv >= "3.43": ...``.
    """

    major: int
    minor: int

    @classmethod
    def from_string(cls, text: str) -> Microversion:
        """Parse ``"X.Y"`` without range checks (for constants and comparisons)."""
        match = _VERSION_RE.match(text) if isinstance(text, str) else None
        if match is None:
            raise InvalidAPIVersionString(str(text))
        return cls(int(match.group(1)), int(match.group(2)))

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"

    def _coerce(self, other: object) -> Microversion | None:
        if isinstance(other, Microversion):
            return other
        if isinstance(other, str):
            return Microversion.from_string(other)
        return None

    def __eq__(self, other: object) -> bool:
        # Equality never raises: a string that is not a version is simply not equal.
        try:
            coerced = self._coerce(other)
        except InvalidAPIVersionString:
            return False
        if coerced is None:
            return NotImplemented
        return (self.major, self.minor) == (coerced.major, coerced.minor)

    def __lt__(self, other: object) -> bool:
        coerced = self._coerce(other)
        if coerced is None:
            return NotImplemented
        return (self.major, self.minor) < (coerced.major, coerced.minor)

    def __hash__(self) -> int:
        return hash((self.major, self.minor))

    def matches(
        self, minimum: VersionLike | None = None, maximum: VersionLike | None = None
    ) -> bool:
        """True if ``minimum <= self <= maximum`` (a missing bound is open)."""
        if minimum is not None and self < minimum:
            return False
        return not (maximum is not None and self > maximum)


VersionLike = Microversion | str

MIN_VERSION = Microversion(3, 0)
MAX_VERSION = Microversion(3, 71)


def parse_microversion(value: VersionLike | None) -> Microversion:
    """Negotiate the microversion of a request from the header's version part.

    ``None`` (no header) gives 3.0 and ``"latest"`` gives 3.71. A value that is not
    ``Major.Minor`` raises :class:`~engine.errors.InvalidAPIVersionString` (400); one outside
    the supported range raises :class:`~engine.errors.InvalidGlobalAPIVersion` (406) with
    Cinder's text, e.g. ``Version 3.72 is not supported by the API. Minimum is 3.0 and
    maximum is 3.71.``
    """
    if value is None:
        return MIN_VERSION
    if isinstance(value, Microversion):
        version = value
    elif value == LATEST:
        return MAX_VERSION
    else:
        version = Microversion.from_string(value)
    if not version.matches(MIN_VERSION, MAX_VERSION):
        raise InvalidGlobalAPIVersion(str(version), str(MIN_VERSION), str(MAX_VERSION))
    return version
