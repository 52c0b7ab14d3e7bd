"""Volumes from Cinder's LVM naming (``/dev/VG/volume-<id>``), served without registering them.

Two ways, both with real block devices: a loop device placed under Cinder's LVM name in a
directory given as ``--lvm-dev-root`` (runs wherever loop devices do), and a real LVM
volume group on a loop device (needs the kernel's device-mapper; skipped, saying so, where
the machine has none). Every loop device and volume group is removed afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid

import pytest
from served import cli, make_volume, start_server

MIB = 1 << 20


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for loop devices")
    if shutil.which("losetup") is None:
        pytest.skip("losetup is not installed")


@pytest.fixture
def loop_device(tmp_path):
    need_root()
    devices = []

    def attach(size: int = 8 * MIB) -> tuple[str, bytes]:
        backing = tmp_path / f"loop-{len(devices)}.img"
        content = make_volume(backing, size)
        dev = subprocess.run(
            ["losetup", "-f", "--show", str(backing)], capture_output=True, text=True
        )
        if dev.returncode != 0:
            pytest.skip(f"cannot attach a loop device: {dev.stderr.strip()}")
        devices.append(dev.stdout.strip())
        return dev.stdout.strip(), content

    yield attach
    for dev in devices:
        subprocess.run(["losetup", "-d", dev], check=False)
    attached = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    assert str(tmp_path) not in attached


def serve_and_check(tmp_path, volume_id: str, content: bytes, *extra: str) -> None:
    """Back up the LVM-named volume over HTTP, restore it onto a file volume, compare."""
    repo = tmp_path / "repo"
    cli(repo, "init")
    target = tmp_path / "target.img"
    make_volume(target, len(content))
    tid = str(uuid.uuid4())
    cli(repo, "volume", "add", str(target), "--id", tid)
    srv = start_server(repo, "--volumes-project", "p1", *extra)
    try:
        status, _h, body = srv.request("GET", f"/v3/volumes/{volume_id}")
        assert status == 200, body
        assert body["volume"]["size"] == 1
        assert srv.request("GET", f"/v3/volumes/{volume_id}", token="u2:p2")[0] == 404
        status, _h, body = srv.request(
            "POST", "/v3/backups", {"backup": {"volume_id": volume_id}}, token="u2:p2"
        )
        assert status == 404  # the volume group belongs to p1 only
        status, _h, body = srv.request("POST", "/v3/backups", {"backup": {"volume_id": volume_id}})
        assert status == 202, body
        bid = body["backup"]["id"]
        assert srv.wait_status(bid)["status"] == "available"
        status, _h, body = srv.request(
            "POST", f"/v3/backups/{bid}/restore", {"restore": {"volume_id": tid}}
        )
        assert status == 202, body
        srv.wait_status(bid)
        assert target.read_bytes() == content
        missing = str(uuid.uuid4())
        status, _h, body = srv.request("GET", f"/v3/volumes/{missing}")
        assert body == {
            "itemNotFound": {"code": 404, "message": f"Volume {missing} could not be found."}
        }
    finally:
        assert srv.stop() == 0, srv.stderr()


def test_cinder_lvm_naming_on_a_loop_device(tmp_path, loop_device):
    dev, content = loop_device()
    vid = str(uuid.uuid4())
    vg_dir = tmp_path / "dev" / "cinder-volumes"
    vg_dir.mkdir(parents=True)
    (vg_dir / f"volume-{vid}").symlink_to(dev)
    serve_and_check(
        tmp_path,
        vid,
        content,
        "--volumes",
        "lvm:cinder-volumes",
        "--lvm-dev-root",
        str(tmp_path / "dev"),
    )


def test_real_lvm_volume_group(tmp_path, loop_device):
    for tool in ("pvcreate", "vgcreate", "lvcreate", "vgremove"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (lvm2)")
    if not os.path.exists("/dev/mapper/control"):
        pytest.skip("this kernel has no device-mapper (/dev/mapper/control): no LVM here")
    dev, _ = loop_device(32 * MIB)
    vg = f"cbtest{uuid.uuid4().hex[:8]}"
    vid = str(uuid.uuid4())
    quiet = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    try:
        for argv in (
            ["pvcreate", "-q", dev],
            ["vgcreate", "-q", vg, dev],
            ["lvcreate", "-q", "-y", "-L", "8M", "-n", f"volume-{vid}", vg],
        ):
            r = subprocess.run(argv, **quiet)
            if r.returncode != 0:
                pytest.skip(f"{argv[0]} failed here: {r.stderr.strip()[-300:]}")
        lv = f"/dev/{vg}/volume-{vid}"
        content = os.urandom(4 * MIB) + bytes(4 * MIB)
        with open(lv, "r+b") as f:
            f.write(content)
            os.fsync(f.fileno())
        serve_and_check(tmp_path, vid, content, "--volumes", f"lvm:{vg}")
    finally:
        subprocess.run(["vgremove", "-f", "-q", vg], **quiet)
        subprocess.run(["pvremove", "-q", dev], **quiet)
