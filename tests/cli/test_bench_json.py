"""``cinderblock bench``: strictly valid JSON, a bottleneck among the phases this source's
backups go through, and an end-to-end phase over the first ``--limit`` bytes of a larger
source (through a read-only loop device, detached afterwards)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

MiB = 1 << 20


def _strict(text: str):
    def refuse(name):
        raise AssertionError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def _bench(*args):
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "--json", "bench", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return _strict(proc.stdout)


def _loops_of(path) -> str:
    return subprocess.run(
        ["losetup", "-j", str(path)], capture_output=True, text=True, check=True
    ).stdout


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "vol.img"
    data = bytearray(os.urandom(3 * MiB + 777))
    data[MiB : 2 * MiB] = bytes(MiB)
    path.write_bytes(data)
    return path


@pytest.mark.root
def test_bench_json_is_valid_and_measures_the_first_limit_bytes_end_to_end(tmp_path, image):
    if os.geteuid() != 0 or shutil.which("losetup") is None:
        pytest.skip("needs root and losetup (a loop device over the first --limit bytes)")
    before = image.read_bytes()
    body = _bench(str(image), "--limit", "1M", "--block-size", "64K", "--scratch", str(tmp_path))
    assert body["source"] == str(image)
    phases = {p["name"]: p for p in body["phases"]}
    assert list(phases) == [
        "read (buffered)",
        "read (O_DIRECT)",
        "read + hash",
        "compress (zstd -3)",
        "backup (e2e)",
    ]
    e2e = phases["backup (e2e)"]
    assert e2e["nbytes"] == MiB and e2e["mb_per_s"] > 0
    assert e2e["note"].startswith(f"first {MiB} bytes (read-only loop device); stored ")
    # An image file is read through the page cache: O_DIRECT is measured, never the
    # bottleneck.
    assert phases["read (O_DIRECT)"]["used_by_backup"] is False
    assert phases["read (O_DIRECT)"]["note"].endswith("not used for an image file")
    assert body["bottleneck"] in ("read (buffered)", "read + hash", "compress (zstd -3)")
    assert _loops_of(image) == ""
    assert image.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("cinderblock-bench-")]


@pytest.mark.root
def test_bench_of_a_block_device_never_names_the_buffered_read(tmp_path, image):
    if os.geteuid() != 0 or shutil.which("losetup") is None:
        pytest.skip("needs root and losetup")
    dev = subprocess.run(
        ["losetup", "--find", "--show", "--read-only", str(image)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    try:
        body = _bench(dev, "--block-size", "64K", "--scratch", str(tmp_path))
    finally:
        subprocess.run(["losetup", "-d", dev], check=True)
    phases = {p["name"]: p for p in body["phases"]}
    assert phases["read (buffered)"]["used_by_backup"] is False
    assert phases["read (O_DIRECT)"]["used_by_backup"] is True
    assert body["bottleneck"] in ("read (O_DIRECT)", "read + hash", "compress (zstd -3)")
    size = image.stat().st_size
    assert phases["backup (e2e)"]["nbytes"] == size - size % 512  # the device's size
    assert phases["backup (e2e)"]["note"].startswith("stored ")


def test_a_phase_that_was_not_measured_is_null_in_json_and_never_the_bottleneck():
    from engine.bench import Phase, as_json, bottleneck

    phases = [
        Phase("read (buffered)", MiB, 0.5, 0.1),
        Phase("read (O_DIRECT)", MiB, 0.0, 0.0, "unsupported here: Invalid argument"),
        Phase("read + hash", MiB, 0.25, 0.2),
        Phase("backup (e2e)", 0, 0.0, 0.0, "skipped: ..."),
    ]
    body = _strict(json.dumps(as_json("x", phases), allow_nan=False))
    by_name = {p["name"]: p for p in body["phases"]}
    assert by_name["read (O_DIRECT)"]["mb_per_s"] is None
    assert by_name["backup (e2e)"]["mb_per_s"] is None
    assert by_name["backup (e2e)"]["cpu_per_gb"] is None
    assert by_name["read (buffered)"]["mb_per_s"] == pytest.approx(MiB / 0.5 / 1e6)
    assert body["bottleneck"] == "read (buffered)" == bottleneck(phases)
    phases[0].used = False  # a block device: the buffered read is not a phase of its backups
    assert bottleneck(phases) == "read + hash"
