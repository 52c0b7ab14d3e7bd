"""Paths a caller controls, and projects that must not see each other.

Container names and project ids become directory names; volume, snapshot and restore paths
are opened by the engine. Each hostile form must be a 400 saying what is wrong, and must not
create, read or overwrite anything outside the repository or the allowed directories. Two
projects sharing one repository never see, touch or deduplicate against each other's data.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from backup_helpers import (
    MIB,
    OTHER_PROJECT,
    PROJECT,
    api_error,
    assert_same_bytes,
    backup,
    create,
    make_image,
    new_id,
    read_bytes,
    restore_new,
)
from fault_helpers import block_objects, gc_aged, object_files

from engine.errors import (
    BackupNotFound,
    BadRequest,
    InvalidBackup,
    InvalidInput,
    VolumeNotFound,
)

# These tests reach into the files of version 1's layout (one file per block object);
# the same faults on pack files are tests/faults/test_pack_faults.py.
pytestmark = pytest.mark.repo_format(1)


def tree(root) -> set[str]:
    """Every path below ``root`` (files and directories)."""
    return {str(p.relative_to(root)) for p in Path(root).rglob("*")}


CONTAINER_RULE = (
    "is not allowed: use 1 to 255 letters, digits and '. _ : @ + = -', not starting with "
    "'.' or '-', without '/' or NUL"
)


# --------------------------------------------------------------------------- containers


@pytest.mark.parametrize(
    "name",
    ["../x", "../../../../tmp/escape", "a/b", "/abs", ".hidden", ".", "..", "a\0b", "-x", "a/"],
)
def test_hostile_container_name(eng, volume, tmp_path, name):
    vid, _path, _data = volume(MIB)
    before = tree(tmp_path)
    with api_error(InvalidInput, 400) as info:
        create(eng, vid, container=name)
    assert info.value.message == f"Invalid input received: container name {name!r} {CONTAINER_RULE}"
    after = tree(tmp_path) - {"repo/catalog.sqlite-wal", "repo/catalog.sqlite-shm"}
    assert after <= before, f"created: {sorted(after - before)}"
    assert eng.list_backups(PROJECT)["backups"] == []
    assert eng.get_volume(PROJECT, vid)["status"] == "available"


def test_container_name_of_256_characters(eng, volume, tmp_path):
    vid, _path, _data = volume(MIB)
    before = tree(tmp_path)
    with api_error(BadRequest, 400) as info:
        create(eng, vid, container="c" * 256)
    assert "container" in info.value.message and "too long" in info.value.message
    assert tree(tmp_path) - before <= {"repo/catalog.sqlite-wal", "repo/catalog.sqlite-shm"}
    # 255 characters is the limit, and fine.
    ok = backup(eng, vid, container="c" * 255)
    assert (tmp_path / "repo" / "projects" / PROJECT / ("c" * 255) / "records").is_dir()
    assert ok["container"] == "c" * 255


@pytest.mark.parametrize("name", ["a..b", "x:y@z+=w", "_under", "A.B-C"])
def test_odd_but_allowed_container_names_stay_inside(eng, volume, tmp_path, name):
    vid, _path, data = volume(MIB)
    done = backup(eng, vid, container=name)
    container = tmp_path / "repo" / "projects" / PROJECT / name
    assert container.is_dir() and container.resolve().parent == container.parent.resolve()
    assert_same_bytes(restore_new(eng, done["id"], tmp_path / "r.img"), data)


@pytest.mark.parametrize("project", ["../p", "p/q", "", ".", "x" * 65, "p\0", "ü"])
def test_hostile_project_id(eng, tmp_path, project):
    path = tmp_path / "v.img"
    make_image(path, MIB)
    before = tree(tmp_path)
    with api_error(InvalidInput, 400) as info:
        eng.register_volume(project, new_id(), str(path))
    assert info.value.message == (
        f"Invalid input received: project id {project!r} must be 1 to 64 letters, digits, "
        "'-' or '_'"
    )
    with api_error(InvalidInput, 400):
        eng.list_backups(project)
    assert tree(tmp_path) - before <= {"repo/catalog.sqlite-wal", "repo/catalog.sqlite-shm"}


# --------------------------------------------------------------------------- allowed paths


@pytest.fixture
def confined(open_engine, tmp_path):
    """An engine confined to ``allowed/``, a volume in there, and files outside it."""
    allowed = tmp_path / "allowed"
    outside = tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    eng = open_engine(tmp_path / "repo", allowed_paths=[allowed])
    inside = allowed / "vol.img"
    data = make_image(inside, MIB, seed=1)
    vid = new_id()
    eng.register_volume(PROJECT, vid, str(inside))
    victim = outside / "victim.img"
    victim_data = make_image(victim, MIB, seed=2)
    (allowed / "link-to-victim").symlink_to(victim)
    (allowed / "link-to-outside-dir").symlink_to(outside)
    (allowed / "dangling-out").symlink_to(outside / "does-not-exist.img")
    return eng, allowed, outside, vid, data, victim, victim_data


def _escapes(allowed: Path, outside: Path, victim: Path) -> list[str]:
    return [
        str(victim),  # absolute, elsewhere
        str(allowed / ".." / "outside" / victim.name),  # ../ escape
        f"../outside/{victim.name}",  # relative to the allowed directory
        str(allowed / "link-to-victim"),  # symlink to a file outside
        str(allowed / "link-to-outside-dir" / victim.name),  # symlinked directory
        "/etc/passwd",
    ]


def test_volume_and_snapshot_paths_outside_are_refused(confined):
    eng, allowed, outside, vid, _data, victim, _vd = confined
    for p in _escapes(allowed, outside, victim):
        with api_error(InvalidInput, 400) as info:
            eng.register_volume(PROJECT, new_id(), p)
        assert info.value.message == (
            f"Invalid input received: volume path {p!r} is outside the allowed directories"
        )
        with api_error(InvalidInput, 400) as info:
            eng.register_snapshot(PROJECT, new_id(), vid, p)
        assert info.value.message == (
            f"Invalid input received: snapshot path {p!r} is outside the allowed directories"
        )
    assert [v["id"] for v in eng.list_volumes(PROJECT)] == [vid]
    assert eng.list_snapshots(PROJECT) == []


def test_restore_targets_outside_are_refused(confined, tmp_path):
    eng, allowed, outside, vid, data, victim, victim_data = confined
    done = backup(eng, vid)
    targets = [*_escapes(allowed, outside, victim), str(allowed / "dangling-out")]
    targets.append(str(outside / "new.img"))
    before = tree(outside)
    for t in targets:
        with api_error(InvalidInput, 400) as info:
            eng.restore_backup(PROJECT, done["id"], t)
        assert info.value.message == (
            f"Invalid input received: restore target {t!r} is outside the allowed directories"
        )
    assert tree(outside) == before
    assert read_bytes(victim) == victim_data
    # Inside (also relative, and through a symlink that stays inside): fine.
    (allowed / "link-inside").symlink_to(allowed / "restored.img")
    eng.restore_backup(PROJECT, done["id"], "restored.img")
    assert_same_bytes(read_bytes(allowed / "restored.img"), data)
    eng.restore_backup(PROJECT, done["id"], str(allowed / "link-inside"))
    assert_same_bytes(read_bytes(allowed / "restored.img"), data)


@pytest.mark.parametrize(
    "bad, text",
    [
        ("vol\0.img", "must not contain NUL bytes"),
        ("n" * 256 + ".img", "is too long"),
        ("/".join(["d" * 200] * 21), "is too long"),
    ],
    ids=["nul", "long-component", "long-path"],
)
def test_malformed_paths(confined, bad, text):
    eng, allowed, _outside, vid, _data, _victim, _vd = confined
    done = backup(eng, vid)
    path = str(allowed / bad) if not bad.startswith("d") else bad
    before = tree(allowed)
    with api_error(InvalidInput, 400) as info:
        eng.register_volume(PROJECT, new_id(), path)
    assert text in info.value.message
    with api_error(InvalidInput, 400) as info:
        eng.register_snapshot(PROJECT, new_id(), vid, path)
    assert text in info.value.message
    with api_error(InvalidInput, 400) as info:
        eng.restore_backup(PROJECT, done["id"], path)
    assert text in info.value.message
    assert tree(allowed) == before


def test_restore_target_inside_the_repository(eng, volume, tmp_path, repo_root):
    vid, _path, _data = volume(MIB)
    done = backup(eng, vid)
    an_object = next(iter(block_objects(eng, done["id"]).values()))
    link = tmp_path / "sneaky"
    link.symlink_to(repo_root / "projects")
    targets = [
        repo_root / "new.img",
        repo_root / "catalog.sqlite",
        repo_root / "config.json",
        an_object,
        link / "x.img",
        tmp_path / "elsewhere" / ".." / "repo" / "y.img",
    ]
    (tmp_path / "elsewhere").mkdir()
    before = {p: p.read_bytes() for p in Path(repo_root).rglob("*") if p.is_file()}
    for t in targets:
        with api_error(InvalidInput, 400) as info:
            eng.restore_backup(PROJECT, done["id"], str(t))
        assert "inside the repository" in info.value.message, info.value.message
    after = {p: p.read_bytes() for p in Path(repo_root).rglob("*") if p.is_file()}
    for p in (repo_root / "new.img", repo_root / "projects" / "x.img", repo_root / "y.img"):
        assert not p.exists()
    # The repository's own data is untouched (the catalog may have logged the attempts).
    for p, content in before.items():
        if p.name.startswith("catalog.sqlite"):
            continue
        assert after[p] == content, p


# --------------------------------------------------------------------------- two projects


@pytest.fixture
def a_backup(eng, volume):
    vid, path, data = volume(MIB, name="a-volume")
    detail = backup(eng, vid, name="a-backup")
    return vid, path, data, detail["id"]


def not_found(bid):
    return api_error(BackupNotFound, 404, f"Backup {bid} could not be found.")


def test_project_b_cannot_touch_project_a_backups(eng, a_backup, tmp_path):
    vid, path, data, bid = a_backup
    target = tmp_path / "stolen.img"
    with not_found(bid):
        eng.get_backup(OTHER_PROJECT, bid)
    with not_found(bid):
        eng.summary(OTHER_PROJECT, bid)
    with not_found(bid):
        eng.restore_backup(OTHER_PROJECT, bid, str(target))
    with not_found(bid):
        eng.restore_backup(OTHER_PROJECT, bid, str(target), allow_damaged=True)
    assert not target.exists()
    with not_found(bid):
        eng.delete_backup(OTHER_PROJECT, bid)
    with not_found(bid):
        eng.delete_backup(OTHER_PROJECT, bid, force=True)
    with not_found(bid):
        eng.update_backup(OTHER_PROJECT, bid, {"backup": {"name": "mine"}})
    with not_found(bid):
        eng.verify(OTHER_PROJECT, bid)
    with not_found(bid):
        eng.verify(OTHER_PROJECT, bid, deep=True)
    with not_found(bid):
        eng.list_backups(OTHER_PROJECT, marker=bid)
    assert eng.list_backups(OTHER_PROJECT)["backups"] == []
    assert eng.list_backups(OTHER_PROJECT, filters={"volume_id": vid})["backups"] == []
    assert eng.verify(OTHER_PROJECT)["backups"] == []
    # Project A's backup is exactly as it was.
    mine = eng.get_backup(PROJECT, bid)
    assert mine["status"] == "available" and mine["name"] == "a-backup"
    assert_same_bytes(restore_new(eng, bid, tmp_path / "mine.img"), data)


def test_project_b_cannot_use_project_a_volume(eng, a_backup, tmp_path):
    vid, path, data, bid = a_backup
    other = tmp_path / "b.img"
    make_image(other, MIB, seed=9)
    with api_error(InvalidInput, 400) as info:
        eng.register_volume(OTHER_PROJECT, vid, str(other))
    assert info.value.message == (
        f"Invalid input received: volume id {vid} cannot be registered: choose another id"
    )  # issue 10 #13: nothing about who holds the id
    assert eng.get_volume(PROJECT, vid)["path"] == str(path)
    with api_error(VolumeNotFound, 404, f"Volume {vid} could not be found."):
        eng.get_volume(OTHER_PROJECT, vid)
    with api_error(VolumeNotFound, 404, f"Volume {vid} could not be found."):
        create(eng, vid, project=OTHER_PROJECT)
    # Nor restore onto it by id (B's own backup, A's volume as the target).
    bvid = new_id()
    eng.register_volume(OTHER_PROJECT, bvid, str(other))
    bb = backup(eng, bvid, project=OTHER_PROJECT)
    with api_error(VolumeNotFound, 404):
        eng.restore_backup(OTHER_PROJECT, bb["id"], vid)
    assert read_bytes(path) == data
    assert eng.get_volume(PROJECT, vid)["status"] == "available"


def test_projects_never_share_objects(eng, tmp_path, repo_root):
    data = None
    ids = {}
    for n, project in enumerate((PROJECT, OTHER_PROJECT)):
        path = tmp_path / f"same-{n}.img"
        d = make_image(path, MIB, data=[0, 1, 2, 3, 5, 8, 13], seed=42)  # identical content
        data = data or d
        assert d == data
        vid = new_id()
        eng.register_volume(project, vid, str(path))
        ids[project] = vid
        # No backup of the project's own: an incremental is refused, never chained to the
        # other project's identical backup.
        with api_error(InvalidBackup, 400):
            create(eng, vid, project=project, incremental=True)
    done = {p: backup(eng, ids[p], project=p) for p in (PROJECT, OTHER_PROJECT)}
    for p in (PROJECT, OTHER_PROJECT):
        assert done[p]["stats"]["objects_written"] == 7, f"{p} deduplicated across projects"
    a_objects = object_files(repo_root, PROJECT)
    b_objects = object_files(repo_root, OTHER_PROJECT)
    assert len(a_objects) == len(b_objects) == 7
    assert set(a_objects) == set(b_objects)  # same content, same names ...
    for name in a_objects:  # ... but separate files
        pa = repo_root / "projects" / PROJECT / "backups" / "objects" / name[:2] / name
        pb = repo_root / "projects" / OTHER_PROJECT / "backups" / "objects" / name[:2] / name
        assert not os.path.samefile(pa, pb)
    # Deleting B's backup (and sweeping) leaves A's objects and backup intact.
    eng.delete_backup(OTHER_PROJECT, done[OTHER_PROJECT]["id"])
    gc_aged(eng)
    assert object_files(repo_root, OTHER_PROJECT) == {}
    assert object_files(repo_root, PROJECT) == a_objects
    assert_same_bytes(restore_new(eng, done[PROJECT]["id"], tmp_path / "a.img"), data)
