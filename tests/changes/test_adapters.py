"""Change-source adapters on real tool output: thin_delta run here on metadata built by
thin_restore (no device-mapper on this machine), rbd diff JSON in Ceph's documented format,
the changed-extents file; and the --changes-from syntax."""

from __future__ import annotations

import json
import uuid

import pytest
from changes_helpers import require_tool, run

from engine.changes import refusal
from engine.changesources import (
    ChangeContext,
    ChangedExtentsFile,
    ChangeSourceError,
    QemuBitmap,
    RbdDiff,
    ReflinkSnapshot,
    ThinDelta,
    parse_rbd_diff,
    parse_source,
    parse_thin_delta,
)
from engine.errors import InvalidInput

BASE = "6b1e9c4e-2d4f-4e55-9a53-5b3a2c1d0e0f"
MIB = 1 << 20

# Pool metadata: thin device 1 is the old snapshot, 2 the new one (chunks of 64 KiB).
THIN_META = """<superblock uuid="" time="1" transaction="2" data_block_size="128"
 nr_data_blocks="1024">
  <device dev_id="1" mapped_blocks="100" transaction="0" creation_time="0" snap_time="1">
    <range_mapping origin_begin="0" data_begin="0" length="60" time="0"/>
    <range_mapping origin_begin="60" data_begin="100" length="40" time="0"/>
  </device>
  <device dev_id="2" mapped_blocks="95" transaction="1" creation_time="1" snap_time="1">
    <range_mapping origin_begin="0" data_begin="0" length="10" time="0"/>
    <single_mapping origin_block="10" data_block="200" time="1"/>
    <range_mapping origin_begin="11" data_begin="11" length="39" time="0"/>
    <range_mapping origin_begin="60" data_begin="100" length="40" time="0"/>
    <range_mapping origin_begin="100" data_begin="300" length="5" time="1"/>
  </device>
</superblock>
"""
CHUNK = 128 * 512


def ctx(size: int, parent: str | None = BASE, **kw) -> ChangeContext:
    return ChangeContext(str(uuid.uuid4()), parent, size, 64 << 10, **kw)


@pytest.fixture(scope="module")
def thin_outputs(tmp_path_factory):
    """(plain, verbose) thin_delta output from real metadata (thin_restore + thin_check)."""
    for tool in ("thin_restore", "thin_check", "thin_delta"):
        require_tool(tool)
    d = tmp_path_factory.mktemp("thin")
    (d / "meta.xml").write_text(THIN_META)
    meta = d / "meta.bin"
    with open(meta, "wb") as f:
        f.truncate(16 * MIB)
    run("thin_restore", "-i", str(d / "meta.xml"), "-o", str(meta))
    run("thin_check", str(meta))
    plain = run("thin_delta", "--thin1", "1", "--thin2", "2", str(meta))
    verbose = run("thin_delta", "--verbose", "--thin1", "1", "--thin2", "2", str(meta))
    return plain, verbose


def test_thin_delta_plain_and_verbose_give_the_same_extents(thin_outputs):
    size = 105 * CHUNK
    want_changed = [(10 * CHUNK, CHUNK), (100 * CHUNK, 5 * CHUNK)]
    want_zeroed = [(50 * CHUNK, 10 * CHUNK)]
    for text in thin_outputs:
        changed, zeroed, chunk = parse_thin_delta(text, size)
        assert chunk == CHUNK
        assert changed == want_changed
        assert zeroed == want_zeroed


def test_thin_delta_adapter_binds_its_base_and_clips_the_last_chunk(thin_outputs, tmp_path):
    f = tmp_path / "delta.xml"
    f.write_text(thin_outputs[0])
    size = 104 * CHUNK + 4096  # the last pool block overhangs the volume
    cs = ThinDelta(str(f), BASE).change_set(ctx(size))
    assert cs.base_backup_id == BASE
    assert cs.changed == ((10 * CHUNK, CHUNK), (100 * CHUNK, 4 * CHUNK + 4096))
    assert cs.zeroed == ((50 * CHUNK, 10 * CHUNK),)
    with pytest.raises(ChangeSourceError, match="does not say which backup"):
        ThinDelta(str(f), None).change_set(ctx(size))
    with pytest.raises(ChangeSourceError, match=r"lies beyond the volume \(3276800 bytes\)"):
        ThinDelta(str(f), BASE).change_set(ctx(50 * CHUNK))


def test_thin_delta_rejects_what_it_does_not_know():
    with pytest.raises(ChangeSourceError, match="not XML"):
        parse_thin_delta("<superblock", 1 << 30)
    bad = (
        '<superblock data_block_size="128"><diff><moved begin="1" length="1"/></diff></superblock>'
    )
    with pytest.raises(ChangeSourceError, match=r"unknown element <moved>"):
        parse_thin_delta(bad, 1 << 30)


def test_rbd_diff_json_in_the_documented_format(tmp_path):
    doc = [
        {"offset": 0, "length": 4194304, "exists": "true"},
        {"offset": 8388608, "length": 4194304, "exists": "false"},
        {"offset": 16777216, "length": 1024, "exists": "true"},
    ]
    f = tmp_path / "diff.json"
    f.write_text(json.dumps(doc))
    cs = RbdDiff(str(f), BASE).change_set(ctx(32 * MIB))
    assert cs.changed == ((0, 4194304), (16777216, 1024))
    assert cs.zeroed == ((8388608, 4194304),)
    assert cs.base_backup_id == BASE
    with pytest.raises(ChangeSourceError, match=r"exists must be 'true' or 'false'"):
        parse_rbd_diff('[{"offset": 0, "length": 1, "exists": "yes"}]', MIB)
    with pytest.raises(ChangeSourceError, match=r"ends beyond the volume \(1048576 bytes\)"):
        parse_rbd_diff('[{"offset": 0, "length": 2097152, "exists": "true"}]', MIB)
    with pytest.raises(ChangeSourceError, match="does not say which backup"):
        RbdDiff(str(f), None).change_set(ctx(32 * MIB))


def test_changed_extents_file_is_a_change_source(tmp_path):
    f = tmp_path / "ce.json"
    doc = {
        "format": "cinderblock-changed-extents",
        "version": 2,
        "base_backup_id": BASE,
        "volume_size": MIB,
        "granularity": 4096,
        "changed": [[0, 4096]],
    }
    f.write_text(json.dumps(doc))
    cs = ChangedExtentsFile(str(f)).change_set(ctx(MIB))
    assert cs.changed == ((0, 4096),) and cs.base_backup_id == BASE
    other = str(uuid.uuid4())
    reason = refusal(
        cs,
        parent_id=other,
        parent_volume_size=MIB,
        parent_block_size=4096,
        block_size=4096,
        volume_size=MIB,
    )
    assert reason == f"change set is relative to backup {BASE} but the parent is {other}"
    f.write_text("{")
    with pytest.raises(ChangeSourceError, match="changed-extents file unusable: not valid JSON"):
        ChangedExtentsFile(str(f)).change_set(ctx(MIB))


def test_changes_from_syntax(tmp_path):
    assert isinstance(parse_source(str(tmp_path / "x.json")), ChangedExtentsFile)
    assert isinstance(parse_source(f"json:{tmp_path}/x.json"), ChangedExtentsFile)
    r = parse_source(f"rbd-diff:{tmp_path}/d.json?base={BASE.upper()}")
    assert isinstance(r, RbdDiff) and r.base == BASE
    assert isinstance(parse_source(f"thin-delta:{tmp_path}/d.xml?base={BASE}"), ThinDelta)
    assert isinstance(parse_source(f"reflink:{tmp_path}/snap1?base={BASE}"), ReflinkSnapshot)
    q = parse_source("qemu-bitmap")
    assert isinstance(q, QemuBitmap) and q.name is None
    assert q.nbd_contexts(BASE) == (f"qemu:dirty-bitmap:cinderblock-{BASE}",)
    q = parse_source(f"qemu-bitmap:cinderblock-{BASE}")
    assert q._chosen(None) == (f"cinderblock-{BASE}", BASE)
    assert parse_source("qemu-bitmap:bm0")._chosen(BASE) == ("bm0", None)
    with pytest.raises(InvalidInput, match=r"unknown change source 'lvm'; use FILE, json:FILE"):
        parse_source("lvm:/dev/vg/x")
    with pytest.raises(InvalidInput, match=r"rbd-diff: base='nope' must be a backup id"):
        parse_source("rbd-diff:/x?base=nope")
    with pytest.raises(InvalidInput, match=r"change source thin-delta needs \?base=BACKUP_ID"):
        parse_source("thin-delta:/x.xml")
    with pytest.raises(InvalidInput, match=r"change source reflink: unknown option 'size'"):
        parse_source(f"reflink:/x?size=1&base={BASE}")

    def vet(path, what):
        raise InvalidInput(f"{what} {path!r} is outside the allowed directories")

    with pytest.raises(InvalidInput, match=r"thin-delta path '/etc/x' is outside the allowed"):
        parse_source(f"thin-delta:/etc/x?base={BASE}", check_path=vet)


def test_a_bitmap_that_cannot_say_its_base_is_not_used():
    with pytest.raises(ChangeSourceError, match=r"dirty bitmap 'bm0' does not say which backup"):
        QemuBitmap("bm0").change_set(ctx(MIB))
    with pytest.raises(ChangeSourceError, match=r"read over NBD: the volume must be an nbd://"):
        QemuBitmap().change_set(ctx(MIB))


def test_cli_changes_from(tmp_path):
    """--changes-from through the command: a bad SOURCE is refused before any backup exists;
    a changed-extents file bound to the parent limits what is read."""
    import os
    import subprocess
    import sys

    repo = tmp_path / "repo"
    vol = tmp_path / "v.img"
    vol.write_bytes(os.urandom(4 * MIB))

    def cb(*args):
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "engine",
                "--repo",
                str(repo),
                "--project",
                "p",
                "--json",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )

    assert cb("init").returncode == 0
    assert cb("volume", "add", str(vol), "--name", "v").returncode == 0
    bad = cb("backup", "create", "v", "--wait", "--changes-from", "rbd-diff:/x.json")
    assert bad.returncode == 1
    assert "change source rbd-diff needs ?base=BACKUP_ID" in bad.stderr
    assert json.loads(cb("backup", "list").stdout)["count"] == 0
    full = json.loads(cb("backup", "create", "v", "--wait", "--block-size", "1M").stdout)
    ce = tmp_path / "ce.json"
    ce.write_text(
        json.dumps(
            {
                "format": "cinderblock-changed-extents",
                "version": 2,
                "base_backup_id": full["id"],
                "volume_size": 4 * MIB,
                "granularity": 4096,
                "changed": [[MIB, 10]],
            }
        )
    )
    proc = cb(
        "backup",
        "create",
        "v",
        "--incremental",
        "--wait",
        "--changes-from",
        f"json:{ce}",
        "--changes-audit",
        "2",
    )
    assert proc.returncode == 0, proc.stderr
    done = json.loads(proc.stdout)
    assert done["stats"]["blocks_read"] == 1
    assert done["stats"]["changes_audit"] == {"sampled": 2, "mismatched": 0, "bytes_read": 2 * MIB}
    assert done["stats"]["changes_source"] == f"json:{ce}"
