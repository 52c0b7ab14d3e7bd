"""The cinderblock command on ``swift://`` and ``s3://`` repositories, run as a user would
(a subprocess, credentials in its environment) against the real Swift: a real ext4 image
backed up in full and incrementally and restored bit-exact; the catalog a local cache
rebuilt from the records; missing containers, wrong and read-only credentials refused with
a clear message, exit 1 and nothing written; no secret in any output or stored blob."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from remote_helpers import swift_store, unique_name
from saio import Saio

pytestmark = pytest.mark.swift_saio


MiB = 1 << 20
SECRET = Saio.SECRETIVE.key


def run_cb(repo: str, env: dict[str, str], *args: str, check: bool = True):
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "--repo", repo, "--project", "p1", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    # Whatever happened, no secret is ever printed.
    assert SECRET not in proc.stdout and SECRET not in proc.stderr
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}: {proc.stderr}")
    return proc


def cbj(repo: str, env: dict[str, str], *args: str):
    return json.loads(run_cb(repo, env, "--json", *args).stdout)


def base_env(tmp_path: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OS_", "ST_", "AWS_", "CINDERBLOCK_"))
    }
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    env["CINDERBLOCK_STORE_RETRY_SECONDS"] = "10"
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    return env


def cli_env(saio: Saio, kind: str, tmp_path: Path, cred=Saio.SECRETIVE) -> dict[str, str]:
    env = base_env(tmp_path)
    env.update(saio.swift_env(cred) if kind == "swift" else saio.s3_env(cred))
    return env


class Ext4Image:
    """An image file holding a real ext4 filesystem, changed through a loop mount."""

    def __init__(self, path: Path, loopdev, size_mib: int = 48) -> None:
        self.path = path
        self.loopdev = loopdev
        with open(path, "wb") as f:
            f.truncate(size_mib * MiB)
        mkfs = shutil.which("mkfs.ext4") or "/sbin/mkfs.ext4"
        subprocess.run([mkfs, "-q", "-F", "-E", "nodiscard", str(path)], check=True)
        self.mnt = path.with_suffix(".mnt")
        self.mnt.mkdir()

    def write(self, files: dict[str, bytes]) -> bytes:
        """Write ``files`` through a mount, unmount, and return the image's bytes."""
        dev = self.loopdev(self.path)
        subprocess.run(["mount", dev, str(self.mnt)], check=True)
        try:
            for name, data in files.items():
                (self.mnt / name).write_bytes(data)
        finally:
            subprocess.run(["umount", str(self.mnt)], check=True)
            subprocess.run(["losetup", "-d", dev], check=False)
        return self.path.read_bytes()


def stored_blobs(saio: Saio, container: str) -> dict[str, bytes]:
    store = swift_store(saio, container)
    return {k: store.get(k) for k in store.keys("")}


@pytest.mark.parametrize("kind", ["swift", "s3"])
def test_cli_full_incremental_restore_of_an_ext4_image(saio, kind, tmp_path, loopdev):
    if os.geteuid() != 0:
        pytest.skip("needs root for the loop mount of the ext4 image")
    name = unique_name("cli").lower()
    url = f"{kind}://{name}/site-a"
    env = cli_env(saio, kind, tmp_path)

    # No container yet: a clear error, exit 1, and nothing is created.
    missing = run_cb(url, env, "volume", "list", check=False)
    assert missing.returncode == 1
    assert "does not exist" in missing.stderr
    assert f"cinderblock init --repo {url}" in missing.stderr
    admin = swift_store(saio, name)
    assert admin._call("HEAD", lambda c: c.head_container(name), missing=lambda: None) is None

    created = cbj(url, env, "init")
    assert created == {"repository": url, "created": True}
    assert cbj(url, env, "init") == {"repository": url, "created": False}

    img = Ext4Image(tmp_path / "vol.img", loopdev)
    rng = __import__("random").Random(7)
    first = img.write({f"f{i}": rng.randbytes(300_000) for i in range(12)})
    vol = cbj(url, env, "volume", "add", str(img.path), "--name", "v1")
    full = cbj(url, env, "backup", "create", vol["id"], "--wait", "--block-size", "64K")
    assert full["status"] == "available", full.get("fail_reason")
    written_full = full["stats"]["objects_written"]
    assert written_full >= 50

    second = img.write({"f3": rng.randbytes(100_000), "new": rng.randbytes(200_000)})
    assert second != first
    incr = cbj(url, env, "backup", "create", vol["id"], "--incremental", "--wait")
    assert incr["status"] == "available" and incr["is_incremental"]
    assert 0 < incr["stats"]["objects_written"] < written_full // 2

    # The catalog is a local cache: removed, it is rebuilt from the records.
    caches = list((tmp_path / "cache" / "cinderblock").glob("*/catalog.sqlite"))
    assert len(caches) == 1
    shutil.rmtree(caches[0].parent)
    listed = cbj(url, env, "backup", "list")
    assert {b["id"] for b in listed["backups"]} == {full["id"], incr["id"]}

    for bid, expected in ((full["id"], first), (incr["id"], second)):
        target = tmp_path / f"{bid}.img"
        body = cbj(url, env, "backup", "restore", bid, str(target))
        assert body["restore"]["backup_id"] == bid
        assert target.read_bytes() == expected

    # Everything lives under the prefix; no stored blob holds the secret.
    blobs = stored_blobs(saio, name)
    assert blobs and all(k.startswith("site-a/") for k in blobs)
    assert not [k for k, v in blobs.items() if SECRET.encode() in v]
    shown = run_cb(url, env, "--json", "backup", "show", full["id"]).stdout
    assert url.split("//")[1].split("/")[0] not in SECRET and SECRET not in shown


def test_cli_wrong_credentials_fail_clearly_and_write_nothing(saio, tmp_path):
    name = unique_name("wrong")
    url = f"swift://{name}"
    env = cli_env(saio, "swift", tmp_path)
    cbj(url, env, "init")
    before = stored_blobs(saio, name)
    bad = {**env, "ST_KEY": "Wr0ng-K3y-abcdef"}
    for args in (("volume", "list"), ("init",), ("gc",)):
        proc = run_cb(url, bad, *args, check=False)
        assert proc.returncode == 1, args
        assert "Swift authentication failed for user 'test:secretive'" in proc.stderr
        assert "check OS_*/ST_* credentials" in proc.stderr
        assert "Wr0ng-K3y-abcdef" not in proc.stderr + proc.stdout
    s3_bad = {**base_env(tmp_path), **saio.s3_env(Saio.SECRETIVE)}
    s3_bad["AWS_SECRET_ACCESS_KEY"] = "Wr0ng-K3y-abcdef"
    proc = run_cb(f"s3://{name}", s3_bad, "volume", "list", check=False)
    assert proc.returncode == 1
    assert "S3 authentication failed" in proc.stderr and "Wr0ng" not in proc.stderr
    assert stored_blobs(saio, name) == before


def test_cli_read_only_credential_cannot_back_up(saio, tmp_path):
    """tempauth has read-only users: one without ``.admin``, named in a read ACL."""
    name = unique_name("ro")
    url = f"swift://{name}"
    env = cli_env(saio, "swift", tmp_path)
    cbj(url, env, "init")
    admin = swift_store(saio, name)
    admin._conn().post_container(name, {"X-Container-Read": f"{Saio.READER.user},.rlistings"})
    before = stored_blobs(saio, name)
    image = tmp_path / "vol.img"
    image.write_bytes(os.urandom(2 * MiB))
    ro = cli_env(saio, "swift", tmp_path / "ro", cred=Saio.READER)
    assert cbj(url, ro, "backup", "list")["backups"] == []
    vol = cbj(url, ro, "volume", "add", str(image))
    proc = run_cb(url, ro, "--json", "backup", "create", vol["id"], "--wait", check=False)
    assert proc.returncode == 1
    out = proc.stdout + proc.stderr
    assert "Swift denied PUT" in out and "HTTP 403" in out and "read-only" in out
    assert "testing3" not in out
    assert stored_blobs(saio, name) == before


def _strict_json(text: str):
    def refuse(name):
        raise AssertionError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("kind", ["swift", "s3"])
def test_bench_learns_the_store_requests_objects_and_mb_s(saio, tmp_path, kind):
    """``cinderblock bench IMAGE --repo URL``: a full and an unchanged incremental backup
    into a scratch prefix of the container, with the requests counted at the store layer,
    the objects and objects per TiB; strictly valid JSON; the scratch prefix is removed and
    no secret is printed."""
    container = unique_name("bench")
    store = swift_store(saio, container)
    store.ensure_ready(create=True)
    env = cli_env(saio, kind, tmp_path)
    image = tmp_path / "vol.img"
    image.write_bytes(os.urandom(4 * MiB))  # random: every 64 KiB block an object
    url = f"{kind}://{container}/site"
    argv = ["bench", str(image), "--block-size", "64K", "--scratch", str(tmp_path)]
    proc = run_cb(url, env, "--json", *argv)
    body = _strict_json(proc.stdout)
    assert body["store"] == url
    phases = {p["name"]: p for p in body["phases"]}
    full, incr = phases[f"backup to {kind}"], phases[f"incr. to {kind}"]
    assert full["nbytes"] == incr["nbytes"] == 4 * MiB
    # 64 block objects in one pack: the pack, its index file, the block map, the pack list
    # and the record are what the full adds (config.json is there from the repository's
    # creation); the unchanged incremental adds its block map, pack list and record.
    assert full["block_objects"] == 64 and incr["block_objects"] == 0
    assert full["objects"] == 5 and incr["objects"] == 3, (full, incr)
    assert full["objects_per_tib"] == 5 * (1 << 40) / (4 * MiB)
    assert full["mb_per_s"] > 0 and incr["mb_per_s"] > 0
    # A PUT per stored object at the least, never one per block; the unchanged incremental
    # costs a handful of requests.
    assert 5 <= full["requests"] < 64, full
    assert 0 < incr["requests"] < 32, incr
    assert phases["backup (e2e)"]["objects"] is None  # the local scratch phase: no store
    assert list(store.keys("")) == []  # the scratch prefix is gone
    text = run_cb(url, env, *argv).stdout  # the table names the same phases
    assert f"backup to {kind}" in text and "per TiB" in text


def test_bench_on_a_missing_container_fails_clearly_and_creates_nothing(saio, tmp_path):
    env = cli_env(saio, "swift", tmp_path)
    image = tmp_path / "vol.img"
    image.write_bytes(os.urandom(MiB))
    container = unique_name("nobench")
    proc = run_cb(f"swift://{container}", env, "bench", str(image), check=False)
    assert proc.returncode == 1, proc.stderr
    assert f"Swift container '{container}' does not exist" in proc.stderr
    with pytest.raises(Exception):  # noqa: B017 - the container was not created
        swift_store(saio, container).ensure_ready(create=False)
