"""A damaged repository: flipped, truncated and missing objects, damaged manifests and
records, and format versions this engine does not know.

The setup: a volume whose block 3 content also sits at blocks 7 and 12 (one object, three
blocks), a full backup F and an incremental I that inherits the damaged blocks. Two objects
are damaged: the shared one (blocks 3, 7, 12) and the one of block 9, so exactly the blocks
``[3, 7, 9, 12]`` are lost in both backups. Then:

* a restore stops with ``CorruptionError`` naming the backup and a damaged block;
* ``allow_damaged`` restores everything else bit-exact, zeros the lost blocks and lists them;
* ``verify`` reports exactly those blocks (quick sees what the header and size betray; deep
  and a 100 % sample also see a flipped payload byte);
* once found, the next backup of the volume stores the blocks again (also when a changed-
  extents hint does not cover them), and the *old* backups restore bit-exact again;
* the CLI's ``verify`` exits non-zero on damage and 0 when clean; ``gc --dry-run`` removes
  nothing.
"""

from __future__ import annotations

import json
import logging
import os
from types import SimpleNamespace

import pytest
from backup_helpers import (
    BS,
    MIB,
    PROJECT,
    assert_same_bytes,
    backup,
    make_image,
    mutate,
    new_id,
    read_bytes,
    restore_new,
)
from fault_helpers import (
    age,
    age_repository,
    block_objects,
    blocks_sharing,
    cli,
    container_dir,
    drop_catalog,
    flip_byte,
    manifest_path,
    record_path,
    repo_files,
    set_bytes,
    truncate,
    zeros_at,
)

from engine import BackupEngine
from engine.errors import CorruptionError, FormatVersionError
from engine.gc import MIN_GRACE_SECONDS
from engine.repository.objects import HEADER_SIZE

# These tests reach into the files of version 1's layout (one file per block object);
# the same faults on pack files are tests/faults/test_pack_faults.py.
pytestmark = pytest.mark.repo_format(1)

SHARED, UNIQUE = 3, 9
LOST = [3, 7, 9, 12]
OBJECT_DAMAGE = ["flip-payload", "truncated", "missing", "header-digest", "unknown-version"]
QUICK_SEES = {k for k in OBJECT_DAMAGE if k != "flip-payload"}


def damage_object(path, kind: str) -> None:
    if kind == "flip-payload":
        flip_byte(path, HEADER_SIZE + 100)
    elif kind == "truncated":
        truncate(path, HEADER_SIZE + 1000)
    elif kind == "missing":
        os.unlink(path)
    elif kind == "header-digest":
        flip_byte(path, 16 + 5)
    elif kind == "unknown-version":
        set_bytes(path, 4, b"\x03")  # version 2 is the current one
    else:
        raise ValueError(kind)


@pytest.fixture
def chain(eng, tmp_path, repo_root):
    """Volume, full backup F, incremental I (see the module docstring)."""
    path = tmp_path / "vol.img"
    make_image(path, 2 * MIB, data=[i for i in range(32) if i not in (20, 21)], zeros=[25])
    with open(path, "r+b") as f:
        f.seek(SHARED * BS)
        shared = f.read(BS)
        for i in (7, 12):
            f.seek(i * BS)
            f.write(shared)
    data_f = read_bytes(path)
    vid = new_id()
    eng.register_volume(PROJECT, vid, str(path), name="damaged")
    full = backup(eng, vid, name="alpha")
    data_i = mutate(path, {1: "random", 30: "partial"}, seed=3)
    inc = backup(eng, vid, incremental=True, name="beta")
    objects = block_objects(eng, full["id"])
    assert blocks_sharing(objects, SHARED) == [3, 7, 12]
    assert blocks_sharing(objects, UNIQUE) == [9]
    assert block_objects(eng, inc["id"])[SHARED] == objects[SHARED]
    return SimpleNamespace(
        eng=eng,
        repo=repo_root,
        vid=vid,
        path=path,
        f=full["id"],
        i=inc["id"],
        data_f=data_f,
        data_i=data_i,
        damaged=[objects[SHARED], objects[UNIQUE]],
    )


def damage(chain, kind: str) -> None:
    for p in chain.damaged:
        damage_object(p, kind)


# --------------------------------------------------------------------------- restore


@pytest.mark.parametrize("kind", OBJECT_DAMAGE)
def test_restore_stops_naming_backup_and_block(chain, kind, tmp_path):
    damage(chain, kind)
    target = tmp_path / "stopped.img"
    with pytest.raises(CorruptionError) as info:
        chain.eng.restore_backup(PROJECT, chain.f, str(target))
    err = info.value
    assert err.backup_id == chain.f
    assert err.block in LOST
    assert f"backup {chain.f}" in str(err)
    assert f"block {err.block}" in str(err)
    assert not target.exists(), "a failed restore to a new file must not leave a partial file"
    assert chain.eng.get_backup(PROJECT, chain.f)["status"] == "available"


@pytest.mark.parametrize("kind", OBJECT_DAMAGE)
def test_restore_allow_damaged_loses_exactly_the_damaged_blocks(chain, kind, tmp_path):
    damage(chain, kind)
    for bid, data in ((chain.i, chain.data_i), (chain.f, chain.data_f)):
        target = tmp_path / f"{bid}.img"
        body = chain.eng.restore_backup(PROJECT, bid, str(target), allow_damaged=True)
        assert body["restore"]["lost_blocks"] == LOST
        assert_same_bytes(read_bytes(target), zeros_at(data, LOST))
    # Onto an existing target full of other bytes: the lost blocks become zeros there too.
    target = tmp_path / "existing.img"
    target.write_bytes(b"\xee" * len(chain.data_f))
    body = chain.eng.restore_backup(PROJECT, chain.f, str(target), allow_damaged=True)
    assert body["restore"]["lost_blocks"] == LOST
    assert_same_bytes(read_bytes(target), zeros_at(chain.data_f, LOST))


# --------------------------------------------------------------------------- verify

MODES = {
    "quick": {},
    "deep": {"deep": True},
    "percent-100": {"percent": 100},
    "percent-10": {"percent": 10},
}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("kind", OBJECT_DAMAGE)
def test_verify_reports_exactly_the_damaged_blocks(chain, kind, mode):
    damage(chain, kind)
    report = chain.eng.verify(PROJECT, **MODES[mode])
    verdicts = {b["id"]: b for b in report["backups"]}
    assert set(verdicts) == {chain.f, chain.i}
    sees_all = kind in QUICK_SEES or mode in ("deep", "percent-100")
    for bid in (chain.f, chain.i):
        v = verdicts[bid]
        assert v["blocks_checked"] == 29
        if sees_all:
            assert v["damaged_blocks"] == LOST, v["errors"]
            assert not v["ok"]
            assert len(v["errors"]) == len(LOST)
        else:
            # A quick check reads only headers: it may miss a flipped payload byte, but
            # must never accuse an intact block.
            assert set(v["damaged_blocks"]) <= set(LOST)
    if sees_all:
        assert report["ok"] is False
        # One backup by id: the same answer.
        one = chain.eng.verify(PROJECT, chain.i, **MODES[mode])
        assert [b["id"] for b in one["backups"]] == [chain.i]
        assert one["backups"][0]["damaged_blocks"] == LOST


def test_verify_of_an_intact_repository(chain):
    for kw in MODES.values():
        report = chain.eng.verify(PROJECT, **kw)
        assert report["ok"] is True
        assert all(b["damaged_blocks"] == [] and b["errors"] == [] for b in report["backups"])


# --------------------------------------------------------------------------- healing


@pytest.mark.parametrize("hint", ["full-read", "extents-elsewhere"])
@pytest.mark.parametrize("kind", OBJECT_DAMAGE)
def test_next_backup_heals_the_old_backups(chain, kind, hint, tmp_path):
    damage(chain, kind)
    found = chain.eng.verify(PROJECT, deep=True)
    assert {b["id"]: b["damaged_blocks"] for b in found["backups"]} == {
        chain.f: LOST,
        chain.i: LOST,
    }
    _heal_and_check(chain, hint, tmp_path)


@pytest.mark.parametrize("hint", ["full-read", "extents-elsewhere"])
def test_damage_found_by_a_restore_heals_too(chain, hint, tmp_path):
    damage(chain, "flip-payload")
    with pytest.raises(CorruptionError):
        chain.eng.restore_backup(PROJECT, chain.i, str(tmp_path / "x.img"))
    # The restore stopped at the first damaged block it met; a lossy restore meets them all.
    body = chain.eng.restore_backup(PROJECT, chain.i, str(tmp_path / "y.img"), allow_damaged=True)
    assert body["restore"]["lost_blocks"] == LOST
    _heal_and_check(chain, hint, tmp_path)


def _heal_and_check(chain, hint: str, tmp_path) -> None:
    eng = chain.eng
    if hint == "full-read":
        heal = backup(eng, chain.vid, incremental=True)
        changed_new = 0
    else:
        # The volume changes in block 28 only, and the hint says so: it does not cover the
        # damaged blocks, which must be read and stored again anyway.
        mutate(chain.path, {28: "random"}, seed=11)
        heal = backup(
            eng, chain.vid, incremental=True, changed_extents=[(28 * BS, BS)], changes_base=chain.i
        )
        assert heal["stats"]["changed_extents_used"] is True
        changed_new = 1
    assert heal["stats"]["objects_written"] == 2 + changed_new
    assert_same_bytes(restore_new(eng, chain.f, tmp_path / "healed-f.img"), chain.data_f)
    assert_same_bytes(restore_new(eng, chain.i, tmp_path / "healed-i.img"), chain.data_i)
    assert_same_bytes(
        restore_new(eng, heal["id"], tmp_path / "healed-new.img"), read_bytes(chain.path)
    )
    report = eng.verify(PROJECT, deep=True)
    assert report["ok"], report


# --------------------------------------------------------------------------- manifests

MANIFEST_DAMAGE = ["flip-body", "flip-header", "truncated", "unknown-version"]


def damage_manifest(path, kind: str) -> None:
    size = os.path.getsize(path)
    if kind == "flip-body":
        flip_byte(path, 80 + (size - 96) // 2)
    elif kind == "flip-header":
        flip_byte(path, 12)  # volume size
    elif kind == "truncated":
        truncate(path, size // 2)
    elif kind == "unknown-version":
        set_bytes(path, 4, (3).to_bytes(2, "little"))  # versions 1 and 2 are read
    else:
        raise ValueError(kind)


@pytest.mark.parametrize("kind", MANIFEST_DAMAGE)
def test_damaged_manifest(chain, kind, tmp_path):
    eng = chain.eng
    damage_manifest(manifest_path(chain.repo, chain.f), kind)
    expected = FormatVersionError if kind == "unknown-version" else CorruptionError
    errors = []
    for allow in (False, True):
        target = tmp_path / f"f-{allow}.img"
        with pytest.raises(expected) as info:
            eng.restore_backup(PROJECT, chain.f, str(target), allow_damaged=allow)
        errors.append(str(info.value))
        assert not target.exists()
    # The incremental has its own complete manifest: it does not need F's.
    assert_same_bytes(restore_new(eng, chain.i, tmp_path / "i.img"), chain.data_i)

    report = eng.verify(PROJECT)
    verdicts = {b["id"]: b for b in report["backups"]}
    assert report["ok"] is False
    assert verdicts[chain.f]["ok"] is False
    assert any("manifest" in e for e in verdicts[chain.f]["errors"]), verdicts[chain.f]
    assert verdicts[chain.i]["ok"] is True

    # gc cannot know what an unreadable manifest references: it removes nothing there.
    junk = container_dir(chain.repo) / "objects" / "ab" / ("ab" + "0" * 30)
    junk.parent.mkdir(exist_ok=True)
    junk.write_bytes(b"unreferenced")
    age_repository(chain.repo)
    before = repo_files(chain.repo)
    report = eng.gc(grace_seconds=MIN_GRACE_SECONDS)
    assert report["objects_removed"] == 0
    assert [s["container"] for s in report["containers_skipped"]] == ["backups"]
    assert "unreadable" in report["containers_skipped"][0]["reason"]
    assert repo_files(chain.repo) == before

    # Last, so that everything above is checked for every kind of damage: the restore's
    # error says which backup's manifest is at fault.
    for text in errors:
        assert chain.f in text, f"the error does not name the backup: {text!r}"


# --------------------------------------------------------------------------- records


def test_damaged_record_that_still_parses(chain, open_engine, caplog):
    path = record_path(chain.repo, chain.f)
    blob = path.read_bytes()
    assert blob.count(b'"alpha"') == 1
    path.write_bytes(blob.replace(b'"alpha"', b'"alphb"'))
    json.loads(path.read_bytes())  # still valid JSON

    report = chain.eng.verify(PROJECT, chain.f)
    verdict = report["backups"][0]
    assert report["ok"] is False and verdict["ok"] is False
    assert any("checksum" in e for e in verdict["errors"]), verdict["errors"]
    assert chain.eng.verify(PROJECT, chain.i)["ok"] is True
    assert cli(chain.repo, "verify", chain.f).returncode != 0

    # Rebuilt from the repository, the catalog does not take the forged record for data.
    chain.eng.close()
    drop_catalog(chain.repo)
    with caplog.at_level(logging.WARNING, logger="engine"):
        eng = open_engine()
    listed = {b["id"]: (b["name"], b["status"]) for b in eng.list_backups(PROJECT)["backups"]}
    assert "alphb" not in {name for name, _status in listed.values()}
    # Issue 10 #15: the backup of the forged record is listed, in error, from its block map.
    assert listed == {chain.i: ("beta", "available"), chain.f: (None, "error")}
    assert eng.get_backup(PROJECT, chain.f)["fail_reason"].startswith("its record is damaged;")
    assert any(str(path) in r.getMessage() for r in caplog.records), caplog.text


# --------------------------------------------------------------------------- format versions


def _rewrite_config(repo, **changes) -> None:
    path = os.path.join(repo, "config.json")
    with open(path) as f:
        config = json.load(f)
    config.update(changes)
    with open(path, "w") as f:
        json.dump(config, f)


def test_unknown_repository_version_is_refused(chain):
    chain.eng.close()
    _rewrite_config(chain.repo, version=3)  # versions 1 and 2 are this engine's
    before = repo_files(chain.repo)
    with pytest.raises(FormatVersionError) as info:
        BackupEngine.open(chain.repo)
    assert "version 3" in str(info.value)
    proc = cli(chain.repo, "backup", "list")
    assert proc.returncode != 0
    assert "version 3" in proc.stderr
    assert repo_files(chain.repo) == before


def test_unreadable_config_is_refused(chain):
    chain.eng.close()
    with open(os.path.join(chain.repo, "config.json"), "wb") as f:
        f.write(b'{"format": "cinderblock-repository", "vers')
    with pytest.raises(CorruptionError):
        BackupEngine.open(chain.repo)
    assert cli(chain.repo, "verify").returncode != 0


# --------------------------------------------------------------------------- the CLI


def test_cli_verify_exit_status(chain):
    repo = chain.repo
    for args in ([], ["--deep"], ["--percent", "50"], [chain.f], [chain.i, "--deep"]):
        proc = cli(repo, "verify", *args)
        assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    flip_byte(chain.damaged[1], HEADER_SIZE + 7)  # block 9, payload only
    assert cli(repo, "verify", "--deep").returncode != 0
    assert cli(repo, "verify", chain.f, "--percent", "100").returncode != 0
    proc = cli(repo, "--json", "verify", chain.i, "--deep")
    assert proc.returncode != 0
    assert json.loads(proc.stdout)["backups"][0]["damaged_blocks"] == [9]


def test_cli_verify_quick_sees_a_truncated_object(chain):
    truncate(chain.damaged[0], 100)
    proc = cli(chain.repo, "verify")
    assert proc.returncode != 0
    assert "block 3" in proc.stderr, proc.stderr


def test_cli_gc_dry_run_removes_nothing(chain):
    repo = chain.repo
    objects = container_dir(repo) / "objects"
    junk = objects / "cd" / ("cd" + "1" * 30)
    junk.parent.mkdir(exist_ok=True)
    junk.write_bytes(b"x" * 1000)
    leftover = objects / "cd" / ".tmp.leftover.0"
    leftover.write_bytes(b"y" * 10)
    age(junk)
    age(leftover)
    before = repo_files(repo)
    proc = cli(repo, "--json", "gc", "--dry-run", "--grace", "60")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["dry_run"] is True
    assert report["objects_removed"] == 1
    assert report["temporary_files_removed"] == 1
    assert report["bytes_reclaimed"] == 1010
    assert repo_files(repo) == before
    # The garbage is older than the default grace period: a plain gc removes it.
    proc = cli(repo, "--json", "gc")
    assert proc.returncode == 0, proc.stderr
    assert not junk.exists() and not leftover.exists()
    assert chain.eng.verify(PROJECT, deep=True)["ok"]
