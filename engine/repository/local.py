"""The local-directory repository: objects, manifests and records under one root.

This is the one storage backend so far; everything above it talks to the methods here, so an
object-store backend can later take its place. Writes follow the commit order of the design:
objects, then the manifest, then the record, each published atomically (``atomic.py``).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import secrets
import time
from collections.abc import Iterator
from typing import Any

from ..errors import CorruptionError, FormatVersionError, RepositoryError
from .atomic import TMP_PREFIX, StagedBatch, write_atomic
from .layout import Layout
from .manifest import Manifest
from .objects import BlockCodec
from .records import decode_record, encode_record

CONFIG_FORMAT = "cinderblock-repository"
CONFIG_VERSION = 1
HASH_NAME = "xxh3-128-keyed"


class LocalRepository:
    def __init__(self, root: str, config: dict[str, Any], *, compression_level: int = 3):
        self.layout = Layout(root)
        self.config = config
        self.seed: int = config["seed"]
        self.codec = BlockCodec(self.seed, compression_level)

    # ------------------------------------------------------------------ open / create

    @classmethod
    def open(cls, root: str, *, create: bool = True, compression_level: int = 3):
        """Open the repository at ``root``, creating it (with a fresh random seed) if absent.

        A config of another format or version is refused: reading data laid out by a newer
        engine could misinterpret it.
        """
        layout = Layout(root)
        if os.path.exists(root) and not os.path.isdir(root):
            raise RepositoryError("repository path is not a directory", path=root)
        if not os.path.exists(layout.config):
            if not create:
                raise RepositoryError("no repository here (config.json missing)", path=root)
            if os.path.isdir(root) and any(
                n not in ("catalog.sqlite", "catalog.sqlite-wal", "catalog.sqlite-shm")
                for n in os.listdir(root)
            ):
                raise RepositoryError(
                    "directory is not empty and holds no repository; refusing to create one "
                    "inside it",
                    path=root,
                )
            config = {
                "format": CONFIG_FORMAT,
                "version": CONFIG_VERSION,
                "hash": HASH_NAME,
                "seed": secrets.randbits(64),
                "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(),
            }
            write_atomic(layout.config, json.dumps(config, indent=1).encode() + b"\n")
        config = cls._read_config(layout.config)
        return cls(root, config, compression_level=compression_level)

    @staticmethod
    def _read_config(path: str) -> dict[str, Any]:
        try:
            with open(path, "rb") as f:
                raw = f.read(1 << 16)
            config = json.loads(raw)
        except (OSError, ValueError, RecursionError) as e:
            raise CorruptionError(
                f"repository config is unreadable: {type(e).__name__}", path=path
            ) from None
        if not isinstance(config, dict) or config.get("format") != CONFIG_FORMAT:
            raise CorruptionError("not a cinderblock repository config", path=path)
        if config.get("version") != CONFIG_VERSION:
            raise FormatVersionError(
                f"repository format version {config.get('version')!r} is not supported "
                f"(this engine reads version {CONFIG_VERSION})",
                path=path,
            )
        seed = config.get("seed")
        if config.get("hash") != HASH_NAME or not isinstance(seed, int) or not 0 <= seed < 2**64:
            raise CorruptionError("repository config has an unknown hash or a bad seed", path=path)
        return config

    @property
    def root(self) -> str:
        return self.layout.root

    # ------------------------------------------------------------------ objects

    def has_object(self, project_id: str, container: str, digest: bytes) -> bool:
        return os.path.exists(self.layout.object(project_id, container, digest))

    def object_batch(self, project_id: str, container: str) -> StagedBatch:
        """A batch for many objects of one container: staged, then published durably at once."""
        path = self.layout.container(project_id, container)
        os.makedirs(path, exist_ok=True)
        return StagedBatch(path, kind="object")

    def get_object(self, project_id: str, container: str, digest: bytes) -> bytes:
        path = self.layout.object(project_id, container, digest)
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise CorruptionError(f"block object {digest.hex()} is missing", path=path) from None

    def iter_container_files(
        self, project_id: str, container: str
    ) -> Iterator[tuple[str, os.stat_result]]:
        """(path, stat) of every object and every temporary leftover in a container."""
        root = self.layout.container(project_id, container)
        for sub in ("manifests", "records"):
            d = os.path.join(root, sub)
            for name in _listdir(d):
                if name.startswith(TMP_PREFIX):
                    yield from _stat(os.path.join(d, name))
        objects = os.path.join(root, "objects")
        for sub in sorted(_listdir(objects)):
            d = os.path.join(objects, sub)
            for name in _listdir(d):
                yield from _stat(os.path.join(d, name))

    def quarantine_object(self, project_id: str, container: str, digest: bytes) -> str:
        """Move a damaged object aside so the next backup stores the block afresh.

        A missing object leaves an empty marker instead. Either way the digest is listed by
        :meth:`quarantined_digests` until a backup stores the block again.
        """
        path = self.layout.object(project_id, container, digest)
        qdir = os.path.join(self.layout.container(project_id, container), "quarantine")
        os.makedirs(qdir, exist_ok=True)
        dest = os.path.join(qdir, f"{digest.hex()}.{time.time_ns()}")
        try:
            os.rename(path, dest)
        except FileNotFoundError:
            with open(dest, "wb"):
                pass
        return dest

    def quarantined_digests(self, project_id: str, container: str) -> set[bytes]:
        """Digests known to be damaged or missing whose object has not been stored again."""
        qdir = os.path.join(self.layout.container(project_id, container), "quarantine")
        found = set()
        for name in _listdir(qdir):
            try:
                digest = bytes.fromhex(name.split(".", 1)[0])
            except ValueError:
                continue
            if not self.has_object(project_id, container, digest):
                found.add(digest)
        return found

    def iter_quarantine(
        self, project_id: str, container: str
    ) -> Iterator[tuple[str, os.stat_result]]:
        qdir = os.path.join(self.layout.container(project_id, container), "quarantine")
        for name in _listdir(qdir):
            try:
                bytes.fromhex(name.split(".", 1)[0])
            except ValueError:
                continue
            yield from _stat(os.path.join(qdir, name))

    def containers(self) -> list[tuple[str, str]]:
        """Every (project, container) pair that exists on disk."""
        out = []
        for project in sorted(_listdir(self.layout.projects)):
            for container in sorted(_listdir(os.path.join(self.layout.projects, project))):
                out.append((project, container))
        return out

    # ------------------------------------------------------------------ manifests

    def put_manifest(self, project_id: str, container: str, manifest: Manifest) -> None:
        write_atomic(
            self.layout.manifest(project_id, container, manifest.backup_id),
            manifest.encode(),
            kind="manifest",
        )

    def get_manifest(self, project_id: str, container: str, backup_id: str, zero_digest: bytes):
        path = self.layout.manifest(project_id, container, backup_id)
        try:
            with open(path, "rb") as f:
                blob = f.read()
        except FileNotFoundError:
            raise CorruptionError("manifest is missing", path=path, backup_id=backup_id) from None
        try:
            m = Manifest.decode(blob, zero_digest)
        except FormatVersionError as e:
            raise FormatVersionError(f"{e.message} (backup {backup_id})", path=path) from None
        except CorruptionError as e:
            raise CorruptionError(e.message, path=path, backup_id=backup_id) from None
        if m.backup_id != backup_id:
            raise CorruptionError(
                "manifest belongs to another backup", path=path, backup_id=backup_id
            )
        return m

    # ------------------------------------------------------------------ records

    def put_record(self, project_id: str, container: str, backup: dict[str, Any]) -> None:
        write_atomic(
            self.layout.record(project_id, container, backup["id"]),
            encode_record(backup),
            kind="record",
        )

    def get_record(self, project_id: str, container: str, backup_id: str) -> dict[str, Any]:
        path = self.layout.record(project_id, container, backup_id)
        with open(path, "rb") as f:
            blob = f.read(1 << 21)
        try:
            return decode_record(blob)
        except CorruptionError as e:
            raise CorruptionError(e.message, path=path, backup_id=backup_id) from None

    def iter_records(self) -> Iterator[tuple[str, dict[str, Any] | Exception]]:
        """(path, record or the error reading it) of every record in the repository."""
        projects = self.layout.projects
        if not os.path.isdir(projects):
            return
        for project in sorted(os.listdir(projects)):
            pdir = os.path.join(projects, project)
            for container in sorted(os.listdir(pdir)) if os.path.isdir(pdir) else []:
                rdir = os.path.join(pdir, container, "records")
                if not os.path.isdir(rdir):
                    continue
                for name in sorted(os.listdir(rdir)):
                    if name.startswith(TMP_PREFIX) or not name.endswith(".json"):
                        continue
                    path = os.path.join(rdir, name)
                    try:
                        with open(path, "rb") as f:
                            yield path, decode_record(f.read(1 << 21))
                    except (OSError, CorruptionError, FormatVersionError) as e:
                        yield path, e

    def remove_backup(self, project_id: str, container: str, backup_id: str) -> None:
        """Unpublish a backup: the record first (so it stops existing), then its manifest."""
        for path in (
            self.layout.record(project_id, container, backup_id),
            self.layout.manifest(project_id, container, backup_id),
        ):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def manifest_ids(self, project_id: str, container: str) -> list[str]:
        mdir = os.path.join(self.layout.container(project_id, container), "manifests")
        return [n for n in _listdir(mdir) if not n.startswith(TMP_PREFIX)]

    def record_ids(self, project_id: str, container: str) -> list[str]:
        rdir = os.path.join(self.layout.container(project_id, container), "records")
        return [
            n[: -len(".json")]
            for n in _listdir(rdir)
            if n.endswith(".json") and not n.startswith(TMP_PREFIX)
        ]


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _stat(path: str) -> Iterator[tuple[str, os.stat_result]]:
    try:
        yield path, os.stat(path)
    except FileNotFoundError:
        return
