"""Repository locations: the one parser of what a user types where a repository is named.

    /path/to/repo  or  ./relative        a local directory (LocalBlobStore)
    swift://CONTAINER[/PREFIX]           a Swift container (SwiftBlobStore)
    s3://BUCKET[/PREFIX]                 an S3 bucket (S3BlobStore)

The same text is accepted by ``Repository.open``, ``BackupEngine.open``, the CLI's
``--repo`` and ``$CINDERBLOCK_REPO``. A URL never holds credentials: they come from each
ecosystem's environment (``engine/store/swift.py``, ``engine/store/s3.py``), so a location
can be logged, stored in a record or printed in ``--json`` output as it is. A URL with a
user or password part (``swift://user:key@...``) is refused for exactly that reason.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

SCHEMES = ("swift", "s3")
_URL_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", re.S)
USAGE = "use a directory path, swift://CONTAINER[/PREFIX] or s3://BUCKET[/PREFIX]"


@dataclass(frozen=True)
class Location:
    scheme: str  # "file", "swift" or "s3"
    name: str  # the directory path, container or bucket
    prefix: str = ""  # key prefix inside the container/bucket (no leading/trailing '/')

    @property
    def remote(self) -> bool:
        return self.scheme != "file"

    def __str__(self) -> str:
        if not self.remote:
            return self.name
        return f"{self.scheme}://{self.name}" + (f"/{self.prefix}" if self.prefix else "")


def is_url(location: object) -> bool:
    return isinstance(location, str) and _URL_RE.match(location) is not None


def parse_location(location: str | os.PathLike[str]) -> Location:
    """Parse a repository location; ``ValueError`` saying what is accepted otherwise."""
    if isinstance(location, os.PathLike):
        location = os.fspath(location)
    if not isinstance(location, str) or not location or "\0" in location:
        raise ValueError(f"repository location {location!r} is not valid: {USAGE}")
    m = _URL_RE.match(location)
    if m is None:
        return Location("file", location)
    scheme, rest = m.group(1).lower(), m.group(2)
    if scheme not in SCHEMES:
        raise ValueError(f"repository URL scheme {scheme!r} is not supported: {USAGE}")
    name, _, prefix = rest.partition("/")
    if "@" in name or "?" in rest or "#" in rest:
        raise ValueError(
            f"repository URL must not hold credentials, a query or a fragment ({USAGE}); "
            "credentials come from the environment (OS_*/ST_* for Swift, AWS_* for S3)"
        )
    if not name:
        raise ValueError(f"repository URL {location!r} names no container or bucket: {USAGE}")
    prefix = prefix.strip("/")
    if prefix and any(p in ("", ".", "..") for p in prefix.split("/")):
        raise ValueError(f"repository URL prefix {prefix!r} has an empty or dot component")
    return Location(scheme, name, prefix)


def open_location(location: Location):
    """The store of a parsed location (credentials from the environment)."""
    if location.scheme == "swift":
        from .swift import SwiftBlobStore

        return SwiftBlobStore(location.name, location.prefix)
    if location.scheme == "s3":
        from .s3 import S3BlobStore

        return S3BlobStore(location.name, location.prefix)
    from .local import LocalBlobStore

    return LocalBlobStore(location.name)
