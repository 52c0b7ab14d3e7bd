"""Where things live in a local repository, and the rules for every name a user can influence.

    <root>/config.json
    <root>/catalog.sqlite                    (the index; rebuilt from the records if lost)
    <root>/projects/<project>/<container>/objects/<d[0:2]>/<digest hex>
    <root>/projects/<project>/<container>/manifests/<backup id>
    <root>/projects/<project>/<container>/records/<backup id>.json
    <root>/projects/<project>/<container>/quarantine/<digest hex>.<ns>   (damaged, set aside)

Project ids and container names become path components, so they are checked here, once, before
any path is built: no separators, no dot-names, no NUL, bounded length. A name that fails is a
400 with a message saying what is allowed.
"""

from __future__ import annotations

import os
import re
import uuid

from ..errors import InvalidInput

PROJECT_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
CONTAINER_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._:@+=-]{0,254}$")
DEFAULT_CONTAINER = "backups"


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


def check_uuid(value: str, what: str) -> str:
    try:
        return str(uuid.UUID(value))
    except (ValueError, AttributeError, TypeError):
        raise InvalidInput(f"{what} {value!r} is not a UUID") from None


class Layout:
    """Path arithmetic for one repository root; every public input is checked first."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)

    @property
    def config(self) -> str:
        return os.path.join(self.root, "config.json")

    @property
    def catalog(self) -> str:
        return os.path.join(self.root, "catalog.sqlite")

    @property
    def projects(self) -> str:
        return os.path.join(self.root, "projects")

    def container(self, project_id: str, container: str) -> str:
        return os.path.join(self.projects, check_project_id(project_id), check_container(container))

    def object(self, project_id: str, container: str, digest: bytes) -> str:
        h = digest.hex()
        return os.path.join(self.container(project_id, container), "objects", h[:2], h)

    def manifest(self, project_id: str, container: str, backup_id: str) -> str:
        return os.path.join(
            self.container(project_id, container),
            "manifests",
            check_uuid(backup_id, "backup id"),
        )

    def record(self, project_id: str, container: str, backup_id: str) -> str:
        return os.path.join(
            self.container(project_id, container),
            "records",
            check_uuid(backup_id, "backup id") + ".json",
        )
