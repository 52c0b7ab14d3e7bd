"""Where things live in a repository (store keys), and the rules for every name a user can
influence.

    config.json
    projects/<project>/<container>/objects/<d[0:2]>/<digest hex>     (version 1)
    projects/<project>/<container>/packs/<p[0:2]>/<pack id hex>      (version 2)
    projects/<project>/<container>/index/<index id hex>             (version 2)
    projects/<project>/<container>/refs/<backup id>                 (version 2: new pack lists)
    projects/<project>/<container>/packrefs/<backup id>.<gen>       (version 2: counted ones)
    projects/<project>/<container>/refcounts/<gen>                  (version 2: pack counts)
    projects/<project>/<container>/manifests/<backup id>          (block maps)
    projects/<project>/<container>/records/<backup id>.json
    projects/<project>/<container>/quarantine/<digest hex>.<ns>   (damaged, set aside)
    projects/<project>/<container>/leases/<kind>-<uuid>.json      (running writers, sweeps)

In a local repository the key is the path below the root (where the embedded default also
keeps its ``catalog.sqlite``, which is no part of the repository). Project ids and container
names become key components, so they are checked here, once, before any key is built: no
separators, no dot-names, no NUL, bounded length. A name that fails is a 400 with a message
saying what is allowed.
"""

from __future__ import annotations

import re
import uuid

from ..errors import InvalidInput

PROJECT_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
CONTAINER_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._:@+=-]{0,254}$")
DEFAULT_CONTAINER = "backups"
CONFIG = "config.json"
PROJECTS = "projects"
OBJECTS = "objects"
PACKS = "packs"
INDEX = "index"
REFS = "refs"
PACKREFS = "packrefs"
REFCOUNTS = "refcounts"
MANIFESTS = "manifests"
RECORDS = "records"
QUARANTINE = "quarantine"
LEASES = "leases"


def check_project_id(project_id: object) -> str:
    if not isinstance(project_id, str) or not PROJECT_RE.match(project_id):
        raise InvalidInput(f"project id {project_id!r} must be 1 to 64 letters, digits, '-' or '_'")
    return project_id


def check_container(container: object) -> str:
    if container is None or container == "":
        return DEFAULT_CONTAINER
    if not isinstance(container, str) or not CONTAINER_RE.match(container):
        raise InvalidInput(
            f"container name {container!r} is not allowed: use 1 to 255 letters, digits and "
            "'. _ : @ + = -', not starting with '.' or '-', without '/' or NUL"
        )
    return container


def canonical_uuid(value: object) -> str | None:
    """The canonical text of a UUID (backup, volume, snapshot ids), or None for anything else."""
    if not isinstance(value, str):
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def check_uuid(value: object, what: str) -> str:
    """:func:`canonical_uuid`, or a 400 saying ``what`` is not a UUID."""
    canonical = canonical_uuid(value)
    if canonical is None:
        raise InvalidInput(f"{what} {value!r} is not a UUID")
    return canonical


class ContainerKeys:
    """Key arithmetic for one (project, container); the names are checked once, here."""

    def __init__(self, project_id: str, container: str) -> None:
        self.project_id = check_project_id(project_id)
        self.container = check_container(container)
        self.prefix = f"{PROJECTS}/{self.project_id}/{self.container}/"

    def object(self, digest: bytes) -> str:
        h = digest.hex()
        return f"{self.prefix}{OBJECTS}/{h[:2]}/{h}"

    @property
    def objects(self) -> str:
        return f"{self.prefix}{OBJECTS}/"

    def pack(self, pack_id: bytes) -> str:
        h = pack_id.hex()
        return f"{self.prefix}{PACKS}/{h[:2]}/{h}"

    @property
    def packs(self) -> str:
        return f"{self.prefix}{PACKS}/"

    def index(self, index_id: bytes) -> str:
        return f"{self.prefix}{INDEX}/{index_id.hex()}"

    @property
    def indexes(self) -> str:
        return f"{self.prefix}{INDEX}/"

    def refs(self, backup_id: str) -> str:
        return f"{self.prefix}{REFS}/{check_uuid(backup_id, 'backup id')}"

    def refs_all(self, refs_id: bytes) -> str:
        return f"{self.prefix}{REFS}/all.{refs_id.hex()}"

    @property
    def refs_prefix(self) -> str:
        return f"{self.prefix}{REFS}/"

    def refs_gone(self, backup_id: str) -> str:
        """The tombstone a delete leaves for the next fold of the pack counts."""
        return f"{self.prefix}{REFS}/gone.{check_uuid(backup_id, 'backup id')}"

    def counted_refs(self, backup_id: str, generation: int) -> str:
        """A pack list the counts of ``generation`` folded in (never rewritten)."""
        return f"{self.prefix}{PACKREFS}/{check_uuid(backup_id, 'backup id')}.{generation:016x}"

    @property
    def counted_refs_prefix(self) -> str:
        return f"{self.prefix}{PACKREFS}/"

    def refcounts(self, generation: int) -> str:
        return f"{self.prefix}{REFCOUNTS}/{generation:016x}"

    @property
    def refcounts_prefix(self) -> str:
        return f"{self.prefix}{REFCOUNTS}/"

    def manifest(self, backup_id: str) -> str:
        return f"{self.prefix}{MANIFESTS}/{check_uuid(backup_id, 'backup id')}"

    @property
    def manifests(self) -> str:
        return f"{self.prefix}{MANIFESTS}/"

    def record(self, backup_id: str) -> str:
        return f"{self.prefix}{RECORDS}/{check_uuid(backup_id, 'backup id')}.json"

    @property
    def records(self) -> str:
        return f"{self.prefix}{RECORDS}/"

    def quarantine(
        self, digest: bytes, stamp: int, by: str | None = None, pack_id: bytes | None = None
    ) -> str:
        """``<digest hex>.<ns>``, or ``<digest hex>.<ns>.<by>`` naming who found the damage
        (``verify``, ``restore``); in a version-2 container ``.<by or ->.<pack id hex>``
        also names the pack whose entry is set aside."""
        tail = f".{by}" if by else ""
        if pack_id is not None:
            tail = f".{by or '-'}.{pack_id.hex()}"
        return f"{self.prefix}{QUARANTINE}/{digest.hex()}.{stamp}{tail}"

    @property
    def quarantined(self) -> str:
        return f"{self.prefix}{QUARANTINE}/"

    def lease(self, kind: str, lease_id: str) -> str:
        return f"{self.prefix}{LEASES}/{kind}-{lease_id}.json"

    @property
    def leases(self) -> str:
        return f"{self.prefix}{LEASES}/"


def digest_of_key(key: str) -> bytes | None:
    """The digest an object key names (``None`` for anything that is not one)."""
    name = key.rsplit("/", 1)[-1]
    if len(name) != 32:
        return None
    try:
        return bytes.fromhex(name)
    except ValueError:
        return None
