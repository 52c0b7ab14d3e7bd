"""The cinderblock command, run as a user would: a subprocess, its output and exit status."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

MiB = 1 << 20


def cb(repo, *args, check=True, env=None):
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "--repo", str(repo), "--project", "p1", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}: {proc.stderr}")
    return proc


def cbj(repo, *args):
    return json.loads(cb(repo, "--json", *args).stdout)


@pytest.fixture
def repo(tmp_path):
    """A new repository, made as a user makes one: ``cinderblock init``."""
    path = tmp_path / "repo"
    cb(path, "init")
    return path


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "vol.img"
    data = bytearray(os.urandom(3 * MiB + 777))
    data[MiB : 2 * MiB] = bytes(MiB)
    path.write_bytes(data)
    return path


def test_full_incremental_restore_round_trip(tmp_path, repo, image):
    vol = cbj(repo, "volume", "add", str(image), "--name", "v1")
    assert vol["name"] == "v1" and vol["size"] == image.stat().st_size
    full = cbj(
        repo,
        "backup",
        "create",
        vol["id"],
        "--name",
        "full",
        "--wait",
        "--block-size",
        "64K",
        "--property",
        "k=v",
    )
    assert full["status"] == "available" and full["metadata"] == {"k": "v"}
    assert full["stats"]["block_size"] == 64 * 1024
    first = image.read_bytes()
    with open(image, "r+b") as f:
        f.seek(5000)
        f.write(b"x" * 100)
    incr = cbj(repo, "backup", "create", vol["id"], "--incremental", "--wait")
    assert incr["is_incremental"] and incr["stats"]["objects_written"] == 1
    listed = cbj(repo, "backup", "list")
    assert [b["id"] for b in listed["backups"]] == [incr["id"], full["id"]]
    assert listed["count"] == 2
    for bid, expected in ((full["id"], first), (incr["id"], image.read_bytes())):
        target = tmp_path / f"{bid}.img"
        body = cbj(repo, "backup", "restore", bid, str(target))
        assert body["restore"]["backup_id"] == bid
        assert target.read_bytes() == expected
    shown = cbj(repo, "backup", "show", full["id"])
    assert shown["stats"]["last_restore"]["status"] == "available"


def test_errors_are_one_line_and_nonzero(tmp_path, repo, image):
    missing = "98db149d-b9e6-42d7-814d-492563c56fef"
    proc = cb(repo, "backup", "create", missing, check=False)
    assert proc.returncode == 1
    assert proc.stderr == (f"cinderblock: error: Volume {missing} could not be found. (HTTP 404)\n")
    vol = cbj(repo, "volume", "add", str(image))
    proc = cb(repo, "backup", "create", vol["id"], "--incremental", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().endswith(
        "Invalid backup: No backups available to do an incremental backup. (HTTP 400)"
    )
    proc = cb(repo, "backup", "create", vol["id"], "--container", "../escape", check=False)
    assert proc.returncode == 1 and "container name '../escape' is not allowed" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def _bare(*args, env):
    """``python -m engine ARGS`` with exactly the environment ``env`` adds (no --repo)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CINDERBLOCK_")}
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        capture_output=True,
        text=True,
        env={**clean, **env},
        timeout=60,
    )


def test_repo_from_environment_and_missing_repo(tmp_path, image):
    env = {"CINDERBLOCK_REPO": str(tmp_path / "envrepo")}
    proc = _bare("volume", "add", str(image), env=env)
    assert proc.returncode == 1
    assert proc.stderr == (
        f"cinderblock: error: no repository at {tmp_path / 'envrepo'} "
        "(create one with: cinderblock init)\n"
    )
    # Under --json, the same error is a JSON object.
    proc = _bare("--json", "volume", "add", str(image), env=env)
    assert proc.returncode == 1 and proc.stdout == ""
    assert json.loads(proc.stderr) == {
        "error": {
            "message": f"no repository at {tmp_path / 'envrepo'} "
            "(create one with: cinderblock init)",
            "repository": str(tmp_path / "envrepo"),
        }
    }
    assert not (tmp_path / "envrepo").exists()
    assert _bare("init", env=env).returncode == 0
    proc = _bare("--json", "volume", "add", str(image), env=env)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "envrepo" / "config.json").exists()
    proc = _bare("volume", "list", env={})
    assert proc.returncode != 0 and "no repository" in proc.stderr


COMMANDS = [
    ("volume", "list"),
    ("volume", "add", "IMAGE"),
    ("snapshot", "list"),
    ("backup", "list"),
    ("backup", "create", "98db149d-b9e6-42d7-814d-492563c56fef"),
    ("backup", "create", "98db149d-b9e6-42d7-814d-492563c56fef", "--wait"),
    ("backup", "show", "98db149d-b9e6-42d7-814d-492563c56fef"),
    ("backup", "restore", "98db149d-b9e6-42d7-814d-492563c56fef", "TARGET"),
    ("verify",),
    ("gc", "--dry-run"),
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_mistyped_repo_is_never_created(tmp_path, image, command):
    """Every command but ``init`` needs an existing repository: a mistyped ``--repo`` (here
    with a missing parent too) is an error that says what to do, and nothing is created."""
    args = [
        str(image) if a == "IMAGE" else str(tmp_path / "t.img") if a == "TARGET" else a
        for a in command
    ]
    typo = tmp_path / "bakups" / "repo"
    for where in (typo, tmp_path / "empty"):
        proc = cb(where, *args, check=False)
        assert proc.returncode == 1
        assert proc.stdout == ""
        assert proc.stderr == (
            f"cinderblock: error: no repository at {where} "
            f"(create one with: cinderblock --repo {where} init)\n"
        )
        assert not typo.parent.exists()
        (tmp_path / "empty").mkdir(exist_ok=True)
    assert list((tmp_path / "empty").iterdir()) == []
    assert not (tmp_path / "t.img").exists()


def test_init_creates_the_repository_and_only_with_parents_its_parent(tmp_path, image):
    nested = tmp_path / "srv" / "backups"
    proc = cb(nested, "init", check=False)
    assert proc.returncode == 1
    assert proc.stderr == (
        f"cinderblock: error: cannot create a repository at {nested}: its parent directory "
        f"{tmp_path / 'srv'} does not exist (pass --parents to create it)\n"
    )
    assert not (tmp_path / "srv").exists()
    assert cbj(nested, "init", "--parents") == {"repository": str(nested), "created": True}
    assert sorted(p.name for p in nested.iterdir()) == ["catalog.sqlite", "config.json"]
    config = (nested / "config.json").read_bytes()
    vol = cbj(nested, "volume", "add", str(image))
    # init on an existing repository leaves it as it is (scripts may run it every time).
    proc = cb(nested, "init")
    assert proc.stdout.split() == ["repository", str(nested), "status", "already", "existed"]
    assert (nested / "config.json").read_bytes() == config
    assert [v["id"] for v in cbj(nested, "volume", "list")] == [vol["id"]]
    # A directory holding other things is never turned into a repository.
    other = tmp_path / "home"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    proc = cb(other, "init", check=False)
    assert proc.returncode == 1
    assert "directory is not empty and holds no repository" in proc.stderr
    assert [p.name for p in other.iterdir()] == ["notes.txt"]
    # A plain directory that exists and is empty becomes one.
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cbj(empty, "init")["created"] is True


def test_backup_create_without_wait_says_it_has_not_finished(repo, image):
    vol = cbj(repo, "volume", "add", str(image))
    proc = cb(repo, "backup", "create", vol["id"], "--name", "bg")
    lines = proc.stdout.split("\n")
    bid = lines[0].split()[1]
    assert [line.split() for line in lines] == [
        ["id", bid],
        ["name", "bg"],
        ["status", "creating"],
        [],
    ]
    assert proc.stderr == (
        f"cinderblock: started backup {bid}; it has not finished: follow it with: "
        f"cinderblock --repo {repo} --project p1 backup wait {bid}\n"
    )
    done = cbj(repo, "backup", "wait", bid)
    assert done["status"] == "available"
    # --json: the 202 body, with the status it has now.
    proc = cb(repo, "--json", "backup", "create", vol["id"], "--incremental")
    body = json.loads(proc.stdout)["backup"]
    assert body["status"] == "creating" and body["links"]
    assert f"started backup {body['id']}; it has not finished" in proc.stderr
    assert cbj(repo, "backup", "wait", body["id"])["is_incremental"] is True


def test_changed_extents_file(tmp_path, repo, image):
    vol = cbj(repo, "volume", "add", str(image))
    full = cbj(repo, "backup", "create", vol["id"], "--wait", "--block-size", "64K")
    with open(image, "r+b") as f:
        f.seek(70000)
        f.write(os.urandom(10))
    hint = tmp_path / "changes.json"
    hint.write_text(
        json.dumps(
            {
                "format": "cinderblock-changed-extents",
                "version": 2,
                "base_backup_id": full["id"],
                "volume_size": image.stat().st_size,
                "granularity": 4096,
                "changed": [[70000, 10]],
                "zeroed": [],
            }
        )
    )
    incr = cbj(
        repo,
        "backup",
        "create",
        vol["id"],
        "--incremental",
        "--wait",
        "--changed-extents",
        str(hint),
    )
    assert incr["stats"]["changed_extents_used"] is True
    assert incr["stats"]["bytes_read"] == 64 * 1024
    target = tmp_path / "r.img"
    cbj(repo, "backup", "restore", incr["id"], str(target))
    assert target.read_bytes() == image.read_bytes()
    # A malformed hint is reported and the whole volume is read instead.
    hint.write_text("{not json")
    proc = cb(
        repo,
        "--json",
        "backup",
        "create",
        vol["id"],
        "--incremental",
        "--wait",
        "--changed-extents",
        str(hint),
    )
    assert "changed extents ignored" in proc.stderr
    assert json.loads(proc.stdout)["stats"]["changed_extents_used"] is False


def _hint_file(path, image, **fields):
    doc = {
        "format": "cinderblock-changed-extents",
        "version": 2,
        "volume_size": image.stat().st_size,
        "granularity": 4096,
        "changed": [[70000, 10]],
        "zeroed": [],
        **fields,
    }
    path.write_text(json.dumps({k: v for k, v in doc.items() if v is not None}))
    return str(path)


def _create_with_hint(repo, vol_id, hint):
    proc = cb(
        repo, "--json", "backup", "create", vol_id, "--incremental", "--wait",
        "--changed-extents", hint,
    )  # fmt: skip
    return proc, json.loads(proc.stdout)


def test_changed_extents_file_for_another_base_is_refused(tmp_path, repo, image):
    """A change set measured since a backup that was deleted: the planner picks the one
    before it, so the hint is refused with a warning and the restore is still exact."""
    vol = cbj(repo, "volume", "add", str(image))
    full = cbj(repo, "backup", "create", vol["id"], "--wait", "--block-size", "64K")
    with open(image, "r+b") as f:
        f.seek(5000)
        f.write(os.urandom(10))
    lost = cbj(repo, "backup", "create", vol["id"], "--incremental", "--wait")
    cb(repo, "backup", "delete", lost["id"])
    with open(image, "r+b") as f:
        f.seek(70000)
        f.write(os.urandom(10))
    hint = _hint_file(tmp_path / "since-lost.json", image, base_backup_id=lost["id"])
    proc, incr = _create_with_hint(repo, vol["id"], hint)
    reason = f"change set is relative to backup {lost['id']} but the parent is {full['id']}"
    assert incr["stats"]["changes_refused"] == reason
    assert incr["stats"]["changed_extents_used"] is False
    assert f"cinderblock: warning: changed extents refused ({reason}); " in proc.stderr
    target = tmp_path / "r.img"
    cbj(repo, "backup", "restore", incr["id"], str(target))
    assert target.read_bytes() == image.read_bytes()


def test_changed_extents_version_1_file_is_refused(tmp_path, repo, image):
    vol = cbj(repo, "volume", "add", str(image))
    cbj(repo, "backup", "create", vol["id"], "--wait", "--block-size", "64K")
    hint = _hint_file(tmp_path / "v1.json", image, version=1)
    proc, incr = _create_with_hint(repo, vol["id"], hint)
    reason = "change set has no base backup (changed-extents version 1)"
    assert incr["stats"]["changes_refused"] == reason
    assert incr["stats"]["bytes_read"] == image.stat().st_size
    assert "changed extents refused (" + reason + ")" in proc.stderr


def test_bench_measures_every_phase_and_never_writes(tmp_path, image):
    before = image.read_bytes()
    mtime = image.stat().st_mtime_ns
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine",
            "bench",
            str(image),
            "--block-size",
            "64K",
            "--scratch",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "read-only: nothing is written to it" in out
    for phase in (
        "read (buffered)",
        "read (O_DIRECT)",
        "read + hash",
        "compress (zstd -3)",
        "backup (e2e)",
    ):
        assert phase in out
    assert "bottleneck: " in out and "stored " in out
    assert image.read_bytes() == before and image.stat().st_mtime_ns == mtime
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("cinderblock-bench-")]


def test_bench_drops_the_source_from_the_page_cache_without_writing(tmp_path):
    """Each bench phase starts cold: the source's clean cached pages are forgotten."""
    from engine.bench import drop_cached

    path = tmp_path / "src.img"
    data = os.urandom(8 << 20)
    with open(path, "wb") as f:
        f.write(data)
        os.fsync(f.fileno())
    path.read_bytes()  # now cached, and clean

    def resident() -> int:
        out = subprocess.run(
            ["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return int(out.strip())

    assert resident() == 8 << 20
    mtime = path.stat().st_mtime_ns
    drop_cached(str(path), 8 << 20)
    assert resident() == 0
    assert path.read_bytes() == data and path.stat().st_mtime_ns == mtime
