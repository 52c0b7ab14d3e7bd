"""``cinderblock repo upgrade``: a version-1 repository becomes version 2 (pack files) in place.

Real files in a local repository, backups made by the engine: after the upgrade config.json
says version 2, the loose objects are gone and packs hold every block; each backup restores
bit-exact, verify passes, the next incremental deduplicates against the packed blocks and a
delete removes what only it used. An upgrade cut short before the switch leaves a whole
version-1 repository and is resumed by running it again; one refused while a backup runs
changes nothing. The CLI is run as a user runs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from engine import BackupEngine
from engine.errors import RepositoryError
from engine.repository import Repository
from engine.repository.upgrade import upgrade

BS = 64 << 10
PROJECT = "p"


def make_v1(tmp_path, n_incrementals: int = 2):
    """A version-1 repository with a full backup and incrementals of one changing image."""
    root = tmp_path / "repo"
    Repository.open(str(root), format_version=1)
    eng = BackupEngine.open(str(root), block_size=BS, allow_delete_with_dependents=True)
    image = tmp_path / "vol.img"
    image.write_bytes(os.urandom(40 * BS))
    vid = str(uuid.uuid4())
    eng.register_volume(PROJECT, vid, str(image))
    states = {}
    for i in range(1 + n_incrementals):
        if i:
            with open(image, "r+b") as f:
                f.seek(i * 3 * BS)
                f.write(os.urandom(2 * BS))
        body = {"backup": {"volume_id": vid, "incremental": bool(i)}}
        bid = eng.create_backup(PROJECT, body)["backup"]["id"]
        assert eng.wait(bid, timeout=60)["status"] == "available"
        states[bid] = image.read_bytes()
    eng.close()
    return root, image, vid, states


def objects(root) -> list[str]:
    base = root / "projects" / PROJECT / "backups" / "objects"
    return [os.path.join(d, f) for d, _s, fs in os.walk(base) for f in fs]


def packs(root) -> list[str]:
    base = root / "projects" / PROJECT / "backups" / "packs"
    return [os.path.join(d, f) for d, _s, fs in os.walk(base) for f in fs]


def restores_all(root, tmp_path, states) -> None:
    eng = BackupEngine.open(str(root), block_size=BS, allow_delete_with_dependents=True)
    try:
        for bid, data in states.items():
            out = tmp_path / f"r-{bid}.img"
            eng.restore_backup(PROJECT, bid, str(out))
            assert out.read_bytes() == data, bid
        assert eng.verify(PROJECT, deep=True)["ok"]
    finally:
        eng.close()


def test_an_upgraded_repository_restores_verifies_dedups_and_deletes(tmp_path):
    root, image, vid, states = make_v1(tmp_path)
    n_objects = len(objects(root))
    assert n_objects == 40 + 2 * 2 and not packs(root)
    report = upgrade(Repository.open(str(root), create=False), pack_size=1 << 20)
    assert report.format_before == 1 and report.containers == 1
    assert report.objects_packed == n_objects and report.loose_objects_removed == n_objects
    assert report.pack_lists_written == 3 and report.damaged_objects == []
    config = json.loads((root / "config.json").read_text())
    assert config["version"] == 2 and config["pack_size"] == 1 << 20
    assert objects(root) == [] and 3 <= len(packs(root)) <= 4  # 44 entries of 64 KiB
    restores_all(root, tmp_path, states)
    # The next incremental stores only what changed, into a pack; a delete works on packs.
    eng = BackupEngine.open(str(root), block_size=BS, allow_delete_with_dependents=True)
    try:
        with open(image, "r+b") as f:
            f.seek(30 * BS)
            f.write(os.urandom(BS))
        body = {"backup": {"volume_id": vid, "incremental": True}}
        bid = eng.create_backup(PROJECT, body)["backup"]["id"]
        done = eng.wait(bid, timeout=60)
        assert done["status"] == "available" and done["stats"]["objects_written"] == 1
        states[bid] = image.read_bytes()
        first = next(iter(states))
        eng.delete_backup(PROJECT, first)
        del states[first]
    finally:
        eng.close()
    restores_all(root, tmp_path, states)
    # On a version-2 repository the upgrade has nothing left to do.
    again = upgrade(Repository.open(str(root), create=False))
    assert again.format_before == 2 and again.objects_packed == 0


def test_an_upgrade_cut_short_before_the_switch_is_resumed(tmp_path, monkeypatch):
    import engine.repository.upgrade as up

    root, _image, _vid, states = make_v1(tmp_path)
    n_objects = len(objects(root))

    def cut(*_a, **_k):
        raise OSError("power cut before the switch")

    monkeypatch.setattr(up, "_switch", cut)
    with pytest.raises(OSError, match="power cut"):
        upgrade(Repository.open(str(root), create=False), pack_size=1 << 20)
    # Still version 1, nothing removed: it restores as before.
    assert json.loads((root / "config.json").read_text())["version"] == 1
    assert len(objects(root)) == n_objects
    restores_all(root, tmp_path, states)
    monkeypatch.undo()
    report = upgrade(Repository.open(str(root), create=False), pack_size=1 << 20)
    assert report.objects_already_packed == n_objects and report.objects_packed == 0
    assert report.loose_objects_removed == n_objects
    restores_all(root, tmp_path, states)


def test_an_upgrade_is_refused_while_a_backup_runs(tmp_path):
    root, _image, _vid, states = make_v1(tmp_path, n_incrementals=0)
    repo = Repository.open(str(root), create=False)
    c = repo.container(PROJECT, "backups")
    with c.write_lease(owner="host:1"), pytest.raises(RepositoryError) as info:
        upgrade(repo)
    assert "cannot upgrade while p/backups is in use (a backup is running" in str(info.value)
    assert "nothing was changed" in str(info.value)
    assert json.loads((root / "config.json").read_text())["version"] == 1
    assert not packs(root)
    restores_all(root, tmp_path, states)


def test_the_cli_upgrades_and_reports(tmp_path):
    root, _image, _vid, states = make_v1(tmp_path, n_incrementals=1)
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "--repo", str(root), "--json", "repo", "upgrade"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["format_before"] == 1 and report["format_after"] == 2
    assert report["objects_packed"] == 40 + 2
    restores_all(root, tmp_path, states)
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine",
            "--repo",
            str(root),
            "repo",
            "upgrade",
            "--pack-size",
            "1K",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert bad.returncode != 0
    assert "pack size must be 1048576 to 1073741824 bytes, got 1024" in bad.stderr
