"""The cinderblock driver inside real Cinder 29 on repository URLs: ``swift://`` and ``s3://``
against the real Swift of ``tests/remote`` (started by ``../test_cinder_driver.py``, which
hands its endpoint and credentials over in the environment, as cinder-backup would get them).

Collected only inside ``.venvs/cinder``, once per threading mode.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import uuid

import cinderkit
import pytest
from cases_driver import IMPORT_SCRIPT, MiB, _restore_both_ways, change_files, ext4_image, sha
from cases_threads import TICK, _compressible_image, hub_askers, sampled
from cinder import exception
from cinder.db import api as db
from conftest import mode

from engine import threads
from engine.store import open_store
from engine.store.onhub import OnHubStore

SECRET_USER = os.environ["CINDERBLOCK_TEST_SECRET_USER"]
SECRET_KEY = os.environ["CINDERBLOCK_TEST_SECRET_KEY"]


def unique(kind: str) -> str:
    return f"cb-cinder-{kind}-{uuid.uuid4().hex[:10]}"


def made_container(scheme: str) -> str:
    """A new container or bucket, as ``cinderblock init --repo URL`` (or the store's own
    tools) makes it; the driver itself never creates one."""
    url = f"{scheme}://{unique(scheme)}/site-a"
    open_store(url).ensure_ready(create=True)
    return url


def data_keys(url: str) -> set[str]:
    """The repository's stored data: everything but its config, records, block maps and
    leases (whatever the data layout is)."""
    skip = ("/records/", "/manifests/", "/leases/")
    keys = open_store(url).keys("projects/")
    return {k for k in keys if not any(s in k for s in skip)}


def driver_on(cinder, url: str, monkeypatch):
    drv = cinder.driver_class(cinder.ctx)
    drv.repository_location = url
    drv.check_for_setup_error()
    monkeypatch.setattr(cinder, "driver", drv)
    return drv


@pytest.mark.parametrize("scheme", ["swift", "s3"])
def test_chain_on_an_object_store_restores_bit_exact_and_deletes_clean(
    cinder, tmp_path, monkeypatch, scheme
):
    url = made_container(scheme)
    drv = driver_on(cinder, url, monkeypatch)
    assert drv.repository().url == url
    image = str(tmp_path / "vol.img")
    ext4_image(image, 24 * MiB, seed=31)
    vol = cinder.volume(image)
    full = cinder.backup(vol)
    assert full.status == "available"
    meta = json.loads(full.service_metadata)
    assert (meta["format"], meta["container"], meta["blockmap"]) == (
        "cinderblock",
        "backups",
        full.id,
    )
    stored = data_keys(url)
    # Pack files: a few stored blobs (packs, an index file, a pack list) hold the blocks.
    assert 0 < len(stored) < full.object_count
    chain, states = [full], [sha(image)]
    existing = str(tmp_path / "existing.img")
    with open(image, "rb") as src, open(existing, "wb") as dst:
        dst.write(src.read())  # the full's state: the restores over it are differential
    for round_ in (1, 2):
        change_files(image, round_, str(tmp_path))
        inc = cinder.backup(vol, incremental=True)
        assert inc.parent_id == chain[-1].id
        new = data_keys(url) - stored
        assert new and 0 < inc.object_count < full.object_count  # only what changed
        stored |= new
        chain.append(inc)
        states.append(sha(image))
    _restore_both_ways(cinder, chain[-1], image, str(tmp_path), existing)
    # Every backup of the chain restores bit-exact from its own block map.
    for b, want in zip(chain[:-1], states[:-1], strict=True):
        out = str(tmp_path / f"r-{b.id}.img")
        cinder.restore(b, out, volume_is_new=True)
        assert sha(out) == want
        os.unlink(out)
    for b in reversed(chain):  # Cinder's order: the newest first
        cinder.delete(b)
    assert data_keys(url) == set()  # every object reclaimed
    assert not [k for k in open_store(url).keys("projects/") if "/leases/" in k]


def test_export_import_between_two_cinders_on_one_swift_repository(cinder, tmp_path, monkeypatch):
    url = made_container("swift")
    driver_on(cinder, url, monkeypatch)
    image = str(tmp_path / "vol.img")
    ext4_image(image, 16 * MiB, files=8, seed=32)
    vol = cinder.volume(image)
    cinder.backup(vol)
    change_files(image, 1, str(tmp_path))
    inc = cinder.backup(vol, incremental=True)
    record_file = tmp_path / "record.json"
    record_file.write_text(json.dumps(cinder.export_record(inc)))
    state2 = tmp_path / "second-cinder"
    state2.mkdir()
    argv = [sys.executable, "-c", IMPORT_SCRIPT, os.path.dirname(cinderkit.__file__)]
    argv += [str(state2), url, str(record_file), str(tmp_path / "imported.img"), sha(image)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"imported {inc.id}" in out.stdout


def test_setup_errors_on_object_stores_are_clear_and_hold_no_secret(cinder, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    drv = cinder.driver_class(cinder.ctx)
    missing = f"swift://{unique('missing')}"
    drv.repository_location = missing
    with pytest.raises(exception.BackupDriverException) as e:
        drv.check_for_setup_error()
    text = str(e.value)
    assert f"backup_cinderblock_repository {missing} cannot be used" in text
    assert "does not exist" in text and f"cinderblock init --repo {missing}" in text
    # Wrong credentials: fail at once, naming the user, never the key.
    url = made_container("swift")
    monkeypatch.setenv("ST_USER", SECRET_USER)
    monkeypatch.setenv("ST_KEY", SECRET_KEY + "-but-wrong")
    drv = cinder.driver_class(cinder.ctx)
    drv.repository_location = url
    with pytest.raises(exception.BackupDriverException) as e:
        drv.check_for_setup_error()
    text = str(e.value)
    assert f"Swift authentication failed for user '{SECRET_USER}'" in text, text
    assert "check OS_*/ST_* credentials" in text
    # A URL holding credentials is refused without being echoed.
    drv.repository_location = f"swift://{SECRET_USER}:{SECRET_KEY}@backups"
    with pytest.raises(exception.InvalidConfigurationValue) as e:
        drv.check_for_setup_error()
    assert "must not hold credentials" in str(e.value)
    for shown in (str(e.value), caplog.text):
        assert SECRET_KEY not in shown


def test_no_secret_lands_in_logs_cinders_database_or_the_store(
    cinder, tmp_path, monkeypatch, caplog
):
    """The whole life of a backup under a credential whose key is unmistakable."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("ST_USER", SECRET_USER)
    monkeypatch.setenv("ST_KEY", SECRET_KEY)
    url = made_container("swift")
    driver_on(cinder, url, monkeypatch)
    image = str(tmp_path / "vol.img")
    ext4_image(image, 12 * MiB, files=6, seed=33)
    vol = cinder.volume(image)
    full = cinder.backup(vol)
    change_files(image, 1, str(tmp_path))
    inc = cinder.backup(vol, incremental=True)
    out = str(tmp_path / "r.img")
    cinder.restore(inc, out, volume_is_new=True)
    assert sha(out) == sha(image)
    exported = json.dumps(cinder.export_record(inc))
    rows = [dict(b) for b in db.backup_get_all_by_volume(cinder.ctx, vol.id, None)]
    store = open_store(url)
    blobs = [store.get(k) for k in store.keys("")]
    cinder.delete(inc)
    cinder.delete(full)
    secret = SECRET_KEY.encode()
    assert blobs and not [b for b in blobs if secret in b]
    for shown in (caplog.text, exported, repr(rows)):
        assert SECRET_KEY not in shown
    assert url in caplog.text  # the log names the repository, which holds no secret


def test_a_job_on_swift_uses_os_threads_and_keeps_its_requests_on_one_hub(
    cinder, tmp_path, monkeypatch
):
    """Under eventlet the store's requests run on its hub thread (``store/onhub.py``) and
    the data path keeps its OS threads: during a compress-heavy backup two OS threads other
    than the caller's and the hub's burn CPU (before, the whole job ran in one green OS
    thread), no other OS thread ever asks for a hub, and the backup restores bit-exact.
    With native threads the store is used as it is."""
    url = made_container("swift")
    drv = driver_on(cinder, url, monkeypatch)
    store = drv.repository().store
    assert isinstance(store, OnHubStore) is (mode() == "eventlet")
    caller = threads.get_native_id()
    hub_callers = hub_askers(monkeypatch) if mode() == "eventlet" else set()
    image = str(tmp_path / "vol.img")
    _compressible_image(image, 96 * MiB)
    vol = cinder.volume(image)
    full, peak, _ticks, sampler = sampled(lambda: cinder.backup(vol))
    assert full.status == "available"
    hub = getattr(store, "hub", None)
    hub_id = hub.native_id if hub is not None else None
    others = [cpu for tid, cpu in peak.items() if tid not in (caller, hub_id, sampler)]
    busy = sorted(others, reverse=True)
    assert len(busy) >= 2 and busy[1] >= 0.05 * TICK, (busy[:4], TICK)
    out = str(tmp_path / "out.img")
    cinder.restore(full, out, volume_is_new=True)
    assert sha(out) == sha(image)
    if mode() == "eventlet":
        assert hub_id is not None and hub_id != caller
        assert hub_callers <= {caller, hub_id}, (hub_callers, caller, hub_id)
    cinder.delete(full)
    assert data_keys(url) == set()
