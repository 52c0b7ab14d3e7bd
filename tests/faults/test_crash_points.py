"""An engine process killed with a real SIGKILL in the middle of a backup (engine.faults).

The child process opens the repository, starts an incremental backup and waits for it; the
environment variable ``CINDERBLOCK_CRASH_AT`` makes it SIGKILL itself at one point of the
commit order (objects, manifest, record, catalog). The child runs with ``workers=1``, so one
thread stores objects and "the n-th object" is exact. Afterwards, in this process:

* every earlier backup restores bit-exact, and verifies deep;
* ``BackupEngine.open`` applies Cinder's restart rule to the interrupted backup, and the
  volume is no longer ``backing-up``;
* the leftovers (``.tmp.*`` files, a manifest without a record) are never read as valid;
* the backup runs again and stores only the objects that did not reach the repository;
* ``gc(grace_seconds=0)`` removes the leftovers (and a younger-than-grace gc does not).

A crash right after the record was published leaves a *committed* backup: the record is the
repository's source of truth (docs/repository-format.md, "its existence is what makes a
backup exist"; ``reindex`` turns such a record into an ``available`` backup when the catalog
is lost), so after the restart it must be ``available``, not ``error``.
"""

from __future__ import annotations

import json
import signal

import pytest
from backup_helpers import (
    BS,
    MIB,
    PROJECT,
    assert_same_bytes,
    backup,
    mutate,
    restore_new,
)
from fault_helpers import (
    drop_catalog,
    gc_aged,
    manifest_path,
    object_files,
    record_path,
    run_python,
    tmp_files,
)

REASON = "incomplete backup reset on manager restart"
CHANGED = {b: "random" for b in (4, 6, 9, 12, 15, 20, 25, 30)}
K = len(CHANGED)  # changed data blocks of the crashed backup, every one a new object

_CHILD = """
import json, sys
from engine import BackupEngine

a = json.loads(sys.argv[1])
eng = BackupEngine.open(a["repo"], workers=1, block_size=a["bs"])
body = {"backup": {"volume_id": a["volume"], "incremental": True, "name": "crashed"}}
bid = eng.create_backup(a["project"], body)["backup"]["id"]
print(json.dumps({"id": bid}), flush=True)
detail = eng.wait(bid, timeout=60)
print(json.dumps({"status": detail["status"], "fail_reason": detail["fail_reason"]}), flush=True)
"""

# crash point -> (objects published before the kill: exact count or "< n", leftover
#                 .tmp.* files outside objects/ by directory, manifest published, record
#                 published). How many staged objects are left as .tmp.* files depends on how
#                 the engine batches publication, so those are counted from disk, not assumed.
CASES = {
    "object-tmp:2": ("<2", {}, False, False),
    "object-published:3": (3, {}, False, False),
    "manifest-tmp": (K, {"manifests": 1}, False, False),
    "manifest-published": (K, {}, True, False),
    "record-tmp": (K, {"records": 1}, True, False),
    "record-published": (K, {}, True, True),
}

# These tests reach into the files of version 1's layout (one file per block object);
# the same faults on pack files are tests/faults/test_pack_faults.py.
pytestmark = pytest.mark.repo_format(1)


def _tmp_by_dir(repo) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in tmp_files(repo):
        # objects/<hh>/.tmp.* -> "objects"; manifests/.tmp.* -> "manifests"
        kind = p.parent.parent.name if p.parent.parent.name == "objects" else p.parent.name
        out[kind] = out.get(kind, 0) + 1
    return out


@pytest.fixture
def history(eng, volume, repo_root):
    """A full and an incremental backup, then a change of K blocks for the next one."""
    vid, path, data0 = volume(2 * MIB, data=[i for i in range(32) if i not in (18, 19)])
    full = backup(eng, vid, name="full")
    data1 = mutate(path, {1: "random", 2: "partial"}, seed=5)
    inc = backup(eng, vid, incremental=True, name="inc")
    data2 = mutate(path, CHANGED, seed=6)
    eng.close()
    return {
        "vid": vid,
        "path": path,
        "earlier": [(full["id"], data0), (inc["id"], data1)],
        "inc": inc["id"],
        "data2": data2,
    }


def crash(repo_root, vid: str, point: str) -> str:
    """Run the child with the crash point; return the id of the backup it was making."""
    args = {"repo": str(repo_root), "bs": BS, "volume": vid, "project": PROJECT}
    proc = run_python(_CHILD, json.dumps(args), env={"CINDERBLOCK_CRASH_AT": point})
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == -signal.SIGKILL, (
        f"the child was not killed at {point}: exit {proc.returncode}, stdout {lines}, "
        f"stderr {proc.stderr[-2000:]}"
    )
    assert len(lines) == 1, lines
    return json.loads(lines[0])["id"]


@pytest.mark.parametrize("point", list(CASES))
def test_killed_mid_backup(point, history, open_engine, repo_root, tmp_path):
    published, tmp_expected, has_manifest, has_record = CASES[point]
    before = object_files(repo_root)
    bid = crash(repo_root, history["vid"], point)

    # What the kill left on disk.
    after_crash = object_files(repo_root)
    assert set(before) <= set(after_crash)
    leftovers = _tmp_by_dir(repo_root)
    staged = leftovers.pop("objects", 0)
    if published == "<2":
        # Killed while staging the second object: at most the first one is published, and
        # the second is still a temporary file.
        published = len(after_crash) - len(before)
        assert published < 2
        assert staged >= 1
    else:
        assert len(after_crash) - len(before) == published
        assert published + staged <= K
    assert leftovers == tmp_expected
    n_tmp = len(tmp_files(repo_root))
    assert manifest_path(repo_root, bid).exists() == has_manifest
    assert record_path(repo_root, bid).exists() == has_record

    # The restart rule.
    eng = open_engine()
    detail = eng.get_backup(PROJECT, bid)
    if has_record:
        # Committed: the record exists, so the backup exists and is usable.
        assert (detail["status"], detail["fail_reason"]) == ("available", None), (
            "a backup whose record was published before the crash must be available after "
            f"the restart, got {detail['status']!r} / {detail['fail_reason']!r}"
        )
    else:
        assert detail["status"] == "error"
        assert detail["fail_reason"] == REASON
    assert eng.get_volume(PROJECT, history["vid"])["status"] == "available"
    listed = {b["id"]: b["status"] for b in eng.list_backups(PROJECT)["backups"]}
    assert listed[bid] == ("available" if has_record else "error")

    # Earlier backups: bit-exact, intact; leftovers are never taken for data.
    for n, (eid, data) in enumerate(history["earlier"]):
        assert_same_bytes(restore_new(eng, eid, tmp_path / f"earlier-{n}.img"), data)
    report = eng.verify(PROJECT, deep=True)
    assert report["ok"], report

    # The backup again: only what did not reach the repository is written.
    again = backup(eng, history["vid"], incremental=True, name="again")
    stats = again["stats"]
    written = {k: v for k, v in object_files(repo_root).items() if k not in after_crash}
    if has_record:
        assert eng.catalog.backup(again["id"])["parent_id"] == bid
        assert stats["blocks_changed"] == 0
        assert stats["objects_written"] == 0
    else:
        assert eng.catalog.backup(again["id"])["parent_id"] == history["inc"]
        assert stats["blocks_changed"] == K
        assert stats["objects_written"] == K - published
    assert len(written) == stats["objects_written"]
    assert sum(written.values()) == stats["bytes_stored"]
    assert_same_bytes(restore_new(eng, again["id"], tmp_path / "again.img"), history["data2"])

    # Garbage collection: nothing inside the grace period, then exactly the leftovers.
    young = eng.gc()
    assert (young["temporary_files_removed"], young["orphan_manifests_removed"]) == (0, 0)
    assert young["objects_removed"] == 0
    assert len(tmp_files(repo_root)) == n_tmp
    swept = gc_aged(eng)
    assert swept["temporary_files_removed"] == n_tmp
    assert swept["orphan_manifests_removed"] == int(has_manifest and not has_record)
    assert swept["objects_removed"] == 0  # every object is referenced by "again"
    assert swept["containers_skipped"] == []
    assert tmp_files(repo_root) == []
    assert manifest_path(repo_root, bid).exists() == has_record

    # Everything still restores after the sweep.
    for n, (eid, data) in enumerate(history["earlier"]):
        assert_same_bytes(restore_new(eng, eid, tmp_path / f"swept-{n}.img"), data)
    assert_same_bytes(restore_new(eng, again["id"], tmp_path / "swept.img"), history["data2"])
    if has_record:
        assert_same_bytes(restore_new(eng, bid, tmp_path / "crashed.img"), history["data2"])
    assert eng.verify(PROJECT, deep=True)["ok"]


@pytest.mark.parametrize("point", ["object-published:3", "manifest-published"])
def test_uncommitted_backup_does_not_come_back_from_a_lost_catalog(
    point, history, open_engine, repo_root
):
    """Only a record makes a backup exist: rebuilding the catalog from the repository after
    a crash before the record must not index the interrupted backup."""
    bid = crash(repo_root, history["vid"], point)
    drop_catalog(repo_root)
    eng = open_engine()
    ids = {b["id"] for b in eng.list_backups(PROJECT)["backups"]}
    assert ids == {eid for eid, _ in history["earlier"]}
    assert bid not in ids
