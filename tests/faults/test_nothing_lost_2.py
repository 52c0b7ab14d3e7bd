"""Issue 10, "Nothing lost, round two": one or more tests per item, each failing before its fix.

Everything is real: image files, FIFOs, hard links, tmpfs and loop-mounted ext4 filled to a
few KiB, read-only bind mounts, child processes with timeouts (so that a regression that
hangs hangs only the child). Item 1's native half is ``tests/native/test_shrink.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from backup_helpers import (
    BS,
    OTHER_PROJECT,
    PROJECT,
    api_error,
    assert_same_bytes,
    backup,
    create,
    make_image,
    new_id,
    occupied_workers,
    read_bytes,
    restore_new,
    settle_sources,
)
from fault_helpers import ROOT, block_objects, cli, container_dir, drop_catalog, record_path

from engine import BackupEngine
from engine.errors import (
    BackupNotFound,
    BadRequest,
    CorruptionError,
    InvalidInput,
    InvalidVolume,
)
from engine.repository.records import MAX_RECORD_BYTES, encode_record
from engine.requests.faults import http_status

# Names that came with the fixes are imported where they are used, so that every other test
# of this file still runs (and fails) against the code before them.

WAIT = 60


def run_child(code: str, timeout: float = 90) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter with this worktree's engine; killed after ``timeout``."""
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


@contextlib.contextmanager
def read_only(path: Path):
    """``path`` made read-only for everyone, root included: a read-only bind mount on itself."""
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root")
    p = subprocess.run(["mount", "--bind", str(path), str(path)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot bind-mount {path}: {p.stderr.strip()}")
    try:
        p = subprocess.run(
            ["mount", "-o", "remount,bind,ro", str(path)], capture_output=True, text=True
        )
        if p.returncode != 0:
            pytest.skip(f"cannot remount {path} read-only: {p.stderr.strip()}")
        yield path
    finally:
        subprocess.run(["umount", str(path)], capture_output=True, check=False)


def fill(directory: Path, leave: int = 0) -> Path:
    """Fill ``directory``'s filesystem, then give back ``leave`` bytes; return the filler."""
    filler = directory / "filler"
    chunk = b"\xa5" * (1 << 20)
    with open(filler, "wb", buffering=0) as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(chunk)
        with contextlib.suppress(OSError):
            while True:
                f.write(chunk[:4096])
        os.fsync(f.fileno())
        if leave:
            f.truncate(max(0, os.fstat(f.fileno()).st_size - leave))
            os.fsync(f.fileno())
    return filler


# ============================================================================ 3. the key


def _config(repo: Path) -> dict:
    return json.loads((repo / "config.json").read_text())


def _write_config(repo: Path, config: dict) -> None:
    (repo / "config.json").write_text(json.dumps(config, indent=1) + "\n")


def test_3_a_changed_seed_is_refused_by_the_config_checksum(eng, volume, repo_root):
    vid, _path, _data = volume(4 * BS)
    backup(eng, vid)
    eng.close()
    config = _config(repo_root)
    assert "checksum" in config
    _write_config(repo_root, {**config, "seed": (config["seed"] + 1) % 2**64})
    with pytest.raises(CorruptionError) as info:
        BackupEngine.open(repo_root, create=False)
    assert "repository config fails its checksum" in str(info.value)
    assert "Put back the repository's original config.json" in str(info.value)
    assert not (container_dir(repo_root) / "quarantine").exists()


def test_3_a_wrong_key_makes_deep_verify_blame_the_key_not_the_data(
    eng, volume, repo_root, open_engine, tmp_path
):
    """A config without checksum (older engines) and a changed seed: nothing is quarantined."""
    from engine.verify import WrongKeyError

    vid, _path, data = volume(4 * BS)
    bid = backup(eng, vid)["id"]
    eng.close()
    good = _config(repo_root)
    legacy = {k: v for k, v in good.items() if k != "checksum"}
    _write_config(repo_root, {**legacy, "seed": (good["seed"] + 12345) % 2**64})
    wrong = open_engine()
    with pytest.raises(WrongKeyError) as info:
        wrong.verify(PROJECT, deep=True)
    assert "the repository's key (the seed in config.json) is wrong, not the data" in str(
        info.value
    )
    assert "nothing was quarantined" in str(info.value)
    quarantine = container_dir(repo_root) / "quarantine"
    assert not quarantine.exists() or list(quarantine.iterdir()) == []
    wrong.close()
    _write_config(repo_root, good)
    right = open_engine()
    assert right.verify(PROJECT, deep=True)["ok"] is True
    assert_same_bytes(restore_new(right, bid, tmp_path / "r.img"), data)


def _quarantine_all(eng, bid: str) -> int:
    row = eng.catalog.backup(bid)
    container = eng.repo.container(PROJECT, row["container"])
    m = container.get_blockmap(bid)
    digests = {bytes(m.digests[i]) for i in m.data_blocks().tolist()}
    for d in digests:
        container.quarantine(d)
    return len(digests)


def test_3_a_later_verify_puts_intact_quarantined_objects_back(eng, volume, tmp_path, repo_root):
    vid, _path, data = volume(4 * BS)
    bid = backup(eng, vid)["id"]
    n = _quarantine_all(eng, bid)  # as a verify under a wrong key did before the fix
    assert all(not p.exists() for p in block_objects(eng, bid).values())
    report = eng.verify(PROJECT)
    assert report["ok"] is True, report
    assert report["restored_from_quarantine"] == n
    assert all(p.exists() for p in block_objects(eng, bid).values())
    assert list((container_dir(repo_root) / "quarantine").iterdir()) == []
    assert_same_bytes(restore_new(eng, bid, tmp_path / "r.img"), data)


def test_3_a_later_backup_puts_intact_quarantined_objects_back(eng, volume, tmp_path):
    vid, path, data = volume(4 * BS)
    bid = backup(eng, vid)["id"]
    _quarantine_all(eng, bid)
    other, _p, _d = volume(2 * BS, seed=99)  # another volume in the same container
    stats = backup(eng, other)["stats"]
    assert stats["objects_written"] == 2
    assert all(p.exists() for p in block_objects(eng, bid).values())
    assert_same_bytes(restore_new(eng, bid, tmp_path / "r.img"), data)


def test_3_the_cli_way_back_is_verify(eng, volume, repo_root, tmp_path):
    """docs/reliability.md: put back config.json, then ``cinderblock verify --deep``."""
    vid, _path, data = volume(4 * BS)
    bid = backup(eng, vid)["id"]
    n = _quarantine_all(eng, bid)
    eng.close()
    proc = cli(repo_root, "--json", "verify", "--deep")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["restored_from_quarantine"] == n
    with BackupEngine.open(repo_root, block_size=BS) as again:
        assert_same_bytes(restore_new(again, bid, tmp_path / "r.img"), data)


# ============================================================================ 4. sizes


def test_4_metadata_that_would_make_the_record_unreadable_is_a_400(eng, volume):
    vid, _path, _data = volume(2 * BS)
    huge = {f"k{i:05d}" + "x" * 249: "v" * 255 for i in range(10_000)}
    body = {"backup": {"volume_id": vid, "metadata": huge}}
    with api_error(BadRequest, 400) as info:
        eng.create_backup(PROJECT, body, microversion="3.43")
    assert info.value.message.startswith("Invalid metadata size: the metadata is ")
    assert info.value.message.endswith(
        "bytes as JSON, more than the 65536 allowed; store fewer or shorter keys and values."
    )
    assert eng.list_backups(PROJECT)["backups"] == []
    assert eng.get_volume(PROJECT, vid)["status"] == "available"
    # Update: refused before anything changes, catalog and record alike.
    bid = backup(eng, vid, metadata={"a": "b"})["id"]
    with api_error(BadRequest, 400):
        eng.update_backup(PROJECT, bid, {"backup": {"metadata": huge}}, microversion="3.43")
    assert eng.get_backup(PROJECT, bid, microversion="3.43")["metadata"] == {"a": "b"}
    assert eng.verify(PROJECT, bid)["ok"] is True
    # The largest metadata allowed still makes a record the reader takes.
    big = {f"k{i:03d}": "v" * 200 for i in range(300)}
    eng.update_backup(PROJECT, bid, {"backup": {"metadata": big}}, microversion="3.43")
    assert eng.verify(PROJECT, bid)["ok"] is True


def test_4_the_record_writer_and_reader_share_one_limit():
    from engine.repository.container import MAX_RECORD_READ
    from engine.repository.records import RecordTooLarge

    assert MAX_RECORD_READ == MAX_RECORD_BYTES + 1
    with pytest.raises(RecordTooLarge) as info:
        encode_record({"id": "x", "metadata": {"k": "v" * MAX_RECORD_BYTES}})
    assert "more than the 1048576 a record may hold" in str(info.value)


# ============================================================================ 5. identity


def test_5_a_hard_link_to_a_repository_object_is_refused_as_restore_target(eng, volume, tmp_path):
    vid, _path, _data = volume(BS)  # one random block: its object is larger than the volume
    bid = backup(eng, vid)["id"]
    (obj,) = set(block_objects(eng, bid).values())
    before = obj.read_bytes()
    link = tmp_path / "innocent.img"
    os.link(obj, link)
    with api_error(InvalidInput, 400, "Invalid input received: restore target must not be a "
                   "file of the repository"):  # fmt: skip
        eng.restore_backup(PROJECT, bid, str(link))
    assert obj.read_bytes() == before
    assert eng.verify(PROJECT, bid, deep=True)["ok"] is True


def test_5_a_target_swapped_for_a_symlink_is_not_followed(tmp_path):
    from engine.service.targets import RestoreTarget, open_target

    target = tmp_path / "t.img"
    target.write_bytes(b"\0" * BS)
    st = target.stat()
    checked = RestoreTarget(None, str(target), (st.st_dev, st.st_ino))
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    target.unlink()
    target.symlink_to(victim)
    with pytest.raises(InvalidInput, match="became a symbolic link; nothing was written"):
        open_target(checked, None)
    assert victim.read_bytes() == b"precious"


def test_5_a_target_swapped_for_another_file_is_refused(tmp_path):
    from engine.service.targets import RestoreTarget, open_target

    target = tmp_path / "t.img"
    target.write_bytes(b"\0" * BS)
    st = target.stat()
    checked = RestoreTarget(None, str(target), (st.st_dev, st.st_ino))
    other = tmp_path / "other"
    other.write_bytes(b"precious")
    os.replace(other, target)
    with pytest.raises(InvalidInput, match="is no longer the file that was checked"):
        open_target(checked, None)
    assert target.read_bytes() == b"precious"


# ============================================================================ 6. the end


def test_6_a_full_catalog_at_the_end_still_ends_the_backup_and_frees_the_volume(
    open_engine, tmpfs, tmp_path
):
    mnt = tmpfs(2)
    eng = open_engine(tmp_path / "repo", catalog_path=mnt / "catalog.sqlite")
    image = tmp_path / "v.img"
    data = make_image(image, 8 * BS)
    vid = new_id()
    eng.register_volume(PROJECT, vid, str(image))
    with occupied_workers(eng):
        bid = create(eng, vid)
        filler = fill(mnt)
    detail = eng.wait(bid, timeout=WAIT)  # used to hang: the backup stayed creating
    assert detail["status"] == "error"
    assert detail["fail_reason"].startswith("the catalog could not record the backup's end: ")
    assert "full" in detail["fail_reason"]
    filler.unlink()
    # Space is back: the next request writes the outcome and the volume is free again.
    again = eng.wait(create(eng, vid), timeout=WAIT)
    assert again["status"] == "available", again
    settle_sources(eng, PROJECT, again)
    assert eng.catalog.backup(bid)["status"] == "error"
    assert eng.get_volume(PROJECT, vid)["status"] == "available"
    assert_same_bytes(restore_new(eng, again["id"], tmp_path / "r.img"), data)


# ============================================================================ 7. SIGBUS

_FULL_FS_SCRIPT = r"""
import os, sys
from engine.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_7_a_nearly_full_ext4_never_kills_the_process(make_fs, tmp_path):
    _dev, mnt = make_fs("ext4", 32, "-q", "-m", "0")
    repo = mnt / "repo"
    image = tmp_path / "v.img"
    data = make_image(image, 16 * BS)
    proc = cli(repo, "init")
    assert proc.returncode == 0, proc.stderr
    vid = new_id()
    assert cli(repo, "volume", "add", str(image), "--id", vid).returncode == 0
    first = cli(repo, "--json", "backup", "create", vid, "--wait")
    assert first.returncode == 0, first.stderr
    bid = json.loads(first.stdout)["id"]
    results = []
    for leave in (20 * 1024, 40 * 1024, 60 * 1024):
        filler = fill(mnt, leave)
        free = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
        assert free <= 128 * 1024, free
        for args in (
            ("backup", "create", vid, "--wait"),
            ("backup", "list"),
            ("backup", "restore", bid, str(tmp_path / f"r-{leave}.img")),
        ):
            p = cli(repo, *args, timeout=120)
            results.append((leave, args[1], p.returncode, p.stderr))
            assert p.returncode >= 0, f"{args} died of signal {-p.returncode}: {p.stderr}"
            assert p.returncode != 128 + signal.SIGBUS
            assert "Fatal Python error" not in p.stderr and "Traceback" not in p.stderr, p.stderr
            assert len([ln for ln in p.stderr.splitlines() if "error" in ln]) <= 1, p.stderr
        filler.unlink()
    listed = [r for r in results if r[1] == "list"]
    assert all(r[2] == 0 for r in listed), listed
    restored = [r for r in results if r[1] == "restore" and r[2] == 0]
    assert restored, results
    assert_same_bytes(read_bytes(tmp_path / f"r-{restored[0][0]}.img"), data)


# ============================================================================ 8. FIFOs

_REGISTER_FIFO = r"""
import os, sys, uuid
from engine import BackupEngine
from engine.errors import InvalidInput
repo, path = sys.argv[1], sys.argv[2]
with BackupEngine.open(repo) as eng:
    try:
        eng.register_volume("project-a", str(uuid.uuid4()), path)
    except InvalidInput as e:
        print(e.message)
    print(len(eng.list_volumes("project-a")))
"""


@pytest.mark.parametrize("kind", ["fifo", "char", "proc-mem", "directory"])
def test_8_what_is_not_a_volume_is_refused_at_registration(tmp_path, kind):
    path = {
        "fifo": tmp_path / "fifo",
        "char": Path("/dev/null"),
        "proc-mem": Path("/proc/self/mem"),
        "directory": tmp_path / "dir",
    }[kind]
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", _REGISTER_FIFO, str(tmp_path / "repo"), str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,  # before the fix a FIFO hung here forever
    )
    assert proc.returncode == 0, proc.stderr
    message, count = proc.stdout.strip().splitlines()
    expected = {
        "fifo": "is a FIFO: a volume must be a regular image file or a block device",
        "char": "is a character device: a volume must be a regular image file or a block device",
        "proc-mem": "holds 0 bytes (an empty file or a special file such as /proc/self/mem)",
        "directory": "is a directory: a volume must be a regular image file or a block device",
    }[kind]
    assert message == (
        f"Invalid input received: volume path {str(path)!r} {expected}"
        + ("" if kind != "proc-mem" else ": a volume must hold data")
    )
    assert count == "0"


def test_8_a_volume_that_became_a_fifo_fails_its_backup_without_hanging(
    eng, volume, repo_root, tmp_path
):
    vid, path, _data = volume(2 * BS)
    os.unlink(path)
    os.mkfifo(path)
    eng.close()
    code = f"""
import sys
from engine import BackupEngine
with BackupEngine.open({str(repo_root)!r}) as eng:
    print([v["size"] for v in eng.list_volumes("project-a")])
    b = eng.create_backup("project-a", {{"backup": {{"volume_id": {vid!r}}}}})
    d = eng.wait(b["backup"]["id"], timeout=60)
    print(d["status"], d["fail_reason"])
    print(eng.get_volume("project-a", {vid!r})["status"])
"""
    proc = run_child(code, timeout=90)
    assert proc.returncode == 0, proc.stderr
    sizes, outcome, status = proc.stdout.strip().splitlines()
    assert sizes == "[None]"
    assert outcome.startswith("error "), outcome
    assert "is not a regular file or a block device: name a volume's image" in outcome
    assert status == "available"


# ============================================================================ 9. catalog


def test_9_a_damaged_catalog_is_set_aside_and_rebuilt(eng, volume, repo_root, tmp_path):
    vid, _path, data = volume(4 * BS)
    bid = backup(eng, vid)["id"]
    eng.close()
    catalog = repo_root / "catalog.sqlite"
    blob = bytearray(catalog.read_bytes())
    blob[:100] = b"\x17" * 100  # the header: not a database any more
    catalog.write_bytes(bytes(blob))
    proc = cli(repo_root, "--json", "backup", "list")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert [b["id"] for b in json.loads(proc.stdout)["backups"]] == [bid]
    assert "is damaged" in proc.stderr and "kept aside as" in proc.stderr
    aside = [
        p
        for p in repo_root.iterdir()
        if p.name.startswith("catalog.sqlite.damaged-") and not p.name.endswith("-journal")
    ]
    assert len(aside) == 1 and aside[0].read_bytes()[:100] == b"\x17" * 100
    with BackupEngine.open(repo_root, block_size=BS) as again:
        assert_same_bytes(restore_new(again, bid, tmp_path / "r.img"), data)


def test_9_restore_from_a_read_only_repository_writes_nothing_there(
    eng, volume, repo_root, tmp_path
):
    vid, _path, data = volume(4 * BS)
    bid = backup(eng, vid)["id"]
    eng.close()
    before = sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in repo_root.rglob("*"))
    out = tmp_path / "out.img"
    with read_only(repo_root):
        listed = cli(repo_root, "--json", "backup", "list")
        restored = cli(repo_root, "backup", "restore", bid, str(out))
        verified = cli(repo_root, "verify", bid)
    assert listed.returncode == 0, listed.stderr
    assert [b["id"] for b in json.loads(listed.stdout)["backups"]] == [bid]
    assert restored.returncode == 0, restored.stderr
    assert verified.returncode == 0, verified.stderr
    assert_same_bytes(read_bytes(out), data)
    after = sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in repo_root.rglob("*"))
    assert after == before


def test_9_a_catalog_failure_is_one_line(eng, volume, repo_root):
    vid, _path, _data = volume(2 * BS)
    backup(eng, vid)
    eng.close()
    drop_catalog(repo_root)
    (repo_root / "catalog.sqlite").mkdir()  # nothing SQLite can open
    proc = cli(repo_root, "backup", "list")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"cinderblock: error: catalog {repo_root / 'catalog.sqlite'} ")
    assert "cannot be opened" in lines[0]


# ============================================================================ 12. ownership


def test_12_a_path_belongs_to_one_volume_whoever_asks(eng, volume, tmp_path):
    vid, path, _data = volume(2 * BS)
    hard = tmp_path / "hard.img"
    os.link(path, hard)
    soft = tmp_path / "soft.img"
    soft.symlink_to(path)
    dotted = tmp_path / "." / path.name
    for project in (OTHER_PROJECT, PROJECT):
        for p in (path, hard, soft, dotted):
            with api_error(InvalidInput, 400) as info:
                eng.register_volume(project, new_id(), str(p))
            assert info.value.message == (
                f"Invalid input received: volume path {os.path.abspath(p)!r} is already "
                "registered as a volume: a path belongs to one volume (register it once, "
                "under one id)"
            )
            assert vid not in info.value.message and PROJECT not in info.value.message
    assert eng.list_volumes(OTHER_PROJECT) == []
    # Re-registering the same volume (same id, same project) is still fine.
    eng.register_volume(PROJECT, vid, str(path), name="again")
    assert eng.get_volume(PROJECT, vid)["name"] == "again"


def test_12_restores_by_path_onto_a_registered_volume_follow_its_status(eng, volume, tmp_path):
    vid, path, data = volume(2 * BS)
    bid = backup(eng, vid)["id"]
    eng.register_volume(PROJECT, vid, str(path), status="error")
    with api_error(
        InvalidVolume, 400, "Invalid volume: Volume to be restored to must be available"
    ):
        eng.restore_backup(PROJECT, bid, str(path))
    eng.register_volume(PROJECT, vid, str(path))
    answer = eng.restore_backup(PROJECT, bid, str(path))
    assert answer["restore"]["volume_id"] == vid
    assert_same_bytes(read_bytes(path), data)


def test_12_no_restore_by_path_onto_a_volume_being_backed_up(eng, volume, tmp_path):
    vid, path, data = volume(4 * BS)
    first = backup(eng, vid)["id"]
    with occupied_workers(eng):
        running = create(eng, vid)  # queued: the volume is backing-up meanwhile
        with api_error(
            InvalidVolume, 400, "Invalid volume: Volume to be restored to must be available"
        ):
            eng.restore_backup(PROJECT, first, str(tmp_path / "." / path.name))
    detail = eng.wait(running, timeout=WAIT)
    assert detail["status"] == "available"
    settle_sources(eng, PROJECT, detail)
    assert_same_bytes(restore_new(eng, running, tmp_path / "r.img"), data)


def test_12_another_projects_volume_is_no_restore_target_by_path(eng, volume, tmp_path):
    vid, path, data = volume(2 * BS)
    other, _p, _d = volume(2 * BS, project=OTHER_PROJECT, seed=5)
    bbid = backup(eng, other, project=OTHER_PROJECT)["id"]
    for p in (path, tmp_path / "." / path.name):
        with api_error(InvalidInput, 400) as info:
            eng.restore_backup(OTHER_PROJECT, bbid, str(p))
        assert "is a registered volume this project cannot restore onto" in info.value.message
    assert read_bytes(path) == data


def test_12_allowed_paths_per_project(open_engine, tmp_path):
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir()
    b_dir.mkdir()
    eng = open_engine(allowed_paths={PROJECT: [a_dir], OTHER_PROJECT: [b_dir]})
    a_img, b_img = a_dir / "v.img", b_dir / "v.img"
    make_image(a_img, 2 * BS)
    make_image(b_img, 2 * BS, seed=3)
    eng.register_volume(PROJECT, new_id(), str(a_img))
    eng.register_volume(OTHER_PROJECT, new_id(), str(b_img))
    with api_error(InvalidInput, 400, f"Invalid input received: volume path {str(a_img)!r} is "
                   "outside the allowed directories"):  # fmt: skip
        eng.register_volume(OTHER_PROJECT, new_id(), str(a_img))
    with api_error(InvalidInput, 400):
        eng.register_volume("project-c", new_id(), str(a_img))
    bid = backup(eng, eng.list_volumes(OTHER_PROJECT)[0]["id"], project=OTHER_PROJECT)["id"]
    with api_error(InvalidInput, 400, f"Invalid input received: restore target "
                   f"{str(a_dir / 'new.img')!r} is outside the allowed directories"):  # fmt: skip
        eng.restore_backup(OTHER_PROJECT, bid, str(a_dir / "new.img"))
    eng.restore_backup(OTHER_PROJECT, bid, str(b_dir / "new.img"))
    assert read_bytes(b_dir / "new.img") == read_bytes(b_img)


# ============================================================================ 13. doors


def test_13_wait_is_scoped_by_project(eng, volume):
    vid, _path, _data = volume(2 * BS)
    bid = backup(eng, vid)["id"]
    with api_error(BackupNotFound, 404, f"Backup {bid} could not be found."):
        eng.wait(bid, timeout=5, project_id=OTHER_PROJECT)
    assert eng.wait(bid, timeout=5, project_id=PROJECT)["status"] == "available"


def test_13_huge_extents_and_deep_bodies_are_400s(eng, volume):
    vid, _path, _data = volume(2 * BS)
    with api_error(InvalidInput, 400) as info:
        create(eng, vid, changed_extents=[(2**70, 1)], changes_base=new_id())
    assert "changed_extents must end below 2**63 bytes" in info.value.message
    deep: dict = {}
    cur = deep
    for _ in range(10_000):
        cur["a"] = {}
        cur = cur["a"]
    for body in (
        {"backup": {"volume_id": vid, "metadata": deep}},
        {"backup": deep},
        '{"backup": ' + "[" * 10_000 + "]" * 10_000 + "}",
    ):
        with pytest.raises(BadRequest) as info:
            eng.create_backup(PROJECT, body, microversion="3.43")
        assert http_status(info.value) == 400
    assert eng.list_backups(PROJECT)["backups"] == []


# ============================================================================ 15. records


def test_15_a_backup_with_a_damaged_record_is_reindexed_in_error_and_restorable(
    eng, volume, repo_root, open_engine, tmp_path
):
    vid, path, data = volume(4 * BS)
    bid = backup(eng, vid)["id"]
    eng.close()
    rec = record_path(repo_root, bid)
    rec.write_bytes(rec.read_bytes()[:40])  # truncated: unreadable
    drop_catalog(repo_root)
    again = open_engine()
    detail = again.get_backup(PROJECT, bid)
    assert detail["status"] == "error"
    assert detail["fail_reason"].startswith(
        "its record is damaged; listed from its block map, which is intact: it can still be "
        "restored by id (backup record is not valid JSON (damaged or truncated)"
    )
    assert_same_bytes(restore_new(again, bid, tmp_path / "r.img"), data)
    assert again.get_backup(PROJECT, bid)["status"] == "error"  # still what it is
    # Registrations went with the catalog; the volume's next backup is a full one.
    again.register_volume(PROJECT, vid, str(path))
    assert backup(again, vid)["is_incremental"] is False


# ============================================================================ 2, 14: main's fixes

# Items 2 and 14 were fixed on main before this round; these pin them down with real files
# and a real SIGKILL.


def test_2_gc_keeps_what_an_available_backup_needs_when_its_record_is_gone(
    eng, volume, repo_root, tmp_path
):
    from fault_helpers import gc_aged, object_files

    vid, _path, data = volume(4 * BS)
    bid = backup(eng, vid)["id"]
    objects = object_files(repo_root)
    record_path(repo_root, bid).unlink()
    report = gc_aged(eng)
    assert [s["container"] for s in report["containers_skipped"]] == ["backups"]
    assert bid in report["containers_skipped"][0]["reason"]
    assert object_files(repo_root) == objects
    assert_same_bytes(restore_new(eng, bid, tmp_path / "r.img"), data)


_KILLED_RESTORE = r"""
import os, signal, sys
from engine.datapath import restore_volume
from engine.repository import Repository
repo, bid, target = sys.argv[1:]
container = Repository.open(repo, create=False).container("project-a", "backups")
blockmap = container.get_blockmap(bid)
restore_volume(container, blockmap, target,
               progress=lambda f: os.kill(os.getpid(), signal.SIGKILL))
"""


def test_14_a_killed_restore_to_a_new_file_leaves_nothing_at_its_name(eng, volume, tmp_path):
    vid, _path, _data = volume(64 * BS)
    bid = backup(eng, vid)["id"]
    target = tmp_path / "new.img"
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_RESTORE, str(eng.repo.local_root), bid, str(target)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not target.exists()
    leftovers = [p.name for p in tmp_path.iterdir() if ".cinderblock-partial-" in p.name]
    assert len(leftovers) == 1 and leftovers[0].startswith(".new.img.cinderblock-partial-")
