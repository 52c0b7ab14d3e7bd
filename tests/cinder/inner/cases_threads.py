"""The data path's workers are real OS threads in both of cinder-backup's threading modes.

Under eventlet (Cinder's default) ``threading`` is patched process-wide; the engine takes
its pools, locks and events from ``engine.threads`` (eventlet's originals), so a backup's
compression runs on several OS threads at once while the service's other greenthreads keep
running. Collected inside ``.venvs/cinder`` by ``../test_cinder_driver.py``, once per mode.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time

import numpy as np
import pytest
from conftest import mode

from engine import oscalls, threads
from engine.errors import BlobNotFound
from engine.store import MemoryBlobStore
from engine.store.onhub import PAGE, OnHubStore

MiB = 1 << 20
TICK = os.sysconf("SC_CLK_TCK")


def _task_cpu() -> dict[int, int]:
    """Clock ticks of user + system CPU per OS thread (task) of this process."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        out[int(tid)] = int(fields[11]) + int(fields[12])  # utime, stime
    return out


def _compressible_image(path: str, size: int) -> None:
    """Data zstd has real work on (4 bits of entropy a byte): no block is zero or repeated."""
    rng = np.random.default_rng(14)
    with open(path, "wb") as f:
        for _ in range(size // (8 * MiB)):
            f.write(rng.integers(0, 16, 8 * MiB, dtype=np.uint8).tobytes())


def _sha(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def sampled(fn):
    """``fn()`` while a greenthread beside it (a thread natively) samples every OS thread's
    CPU: (its value, peak CPU ticks per thread id, samples taken, the sampler's thread id).
    Sampled during, since a thread that ended is gone from ``/proc/self/task``."""
    running = [True]
    ticks = [0]
    peak: dict[int, int] = {}
    base = _task_cpu()
    sampler_id = [0]

    def sample() -> None:
        sampler_id[0] = threads.get_native_id()
        while running[0]:
            for tid, cpu in _task_cpu().items():
                peak[tid] = max(peak.get(tid, 0), cpu - base.get(tid, 0))
            ticks[0] += 1
            time.sleep(0.01)  # cooperative under eventlet

    sampler = threading.Thread(target=sample)  # a greenthread under eventlet
    sampler.start()
    try:
        value = fn()
    finally:
        running[0] = False
        sampler.join()
    return value, peak, ticks[0], sampler_id[0]


def hub_askers(monkeypatch) -> set[int]:
    """The OS threads (kernel ids) that ask eventlet for their hub from now on: filled in
    as they do (eventlet mode only)."""
    from eventlet import hubs

    askers: set[int] = set()
    real = hubs.get_hub

    def get_hub():
        askers.add(threads.get_native_id())
        return real()

    monkeypatch.setattr(hubs, "get_hub", get_hub)
    return askers


def test_primitives_are_the_os_ones_in_this_mode():
    """Under eventlet ``threading.Lock`` is green here, ``engine.threads.Lock`` is not; with
    native threads both are the standard library's."""
    assert threads.eventlet_patched() == (mode() == "eventlet")
    if mode() == "eventlet":
        from eventlet import patcher

        real = patcher.original("_thread").allocate_lock()
        assert type(threading.Lock()) is not type(real)  # green: unsafe across OS threads
        assert type(threads.Lock()) is type(real)
        assert type(threads.Event()) is patcher.original("threading").Event
        assert type(threads.local()) is patcher.original("_thread")._local
    else:
        assert type(threads.Lock()) is type(threading.Lock())
        assert type(threads.Event()) is threading.Event
    with threads.ThreadPool(3, thread_name_prefix="cb-test") as pool:
        gate = threads.Event()
        # Three tasks that wait for one another can only finish on three OS threads.
        ids = [pool.submit(lambda: (gate.wait(30), threads.get_native_id())[1]) for _ in range(3)]
        time.sleep(0.2)
        gate.set()
        native = {f.result() for f in ids}
    assert len(native) == 3
    assert threads.get_native_id() not in native


def test_in_a_green_scope_a_job_stays_in_one_os_thread():
    """A job on Swift or S3 (whose HTTP libraries eventlet patched) runs inside
    ``green_scope``: under eventlet its pool's workers are greenthreads of the calling OS
    thread and its locks are green; outside the scope, and with native threads, nothing
    changes. (Without it a backup to Swift hung: "Cannot switch to a different thread".)"""
    with threads.green_scope():
        if mode() == "eventlet":
            assert type(threads.Lock()) is type(threading.Lock())  # eventlet's
        with threads.ThreadPool(3, thread_name_prefix="cb-test") as pool:
            gate = threads.Event()
            # Three tasks that wait for one another: greenthreads take turns on the hub.
            ids = [
                pool.submit(lambda: (gate.wait(30), threads.get_native_id())[1]) for _ in range(3)
            ]
            time.sleep(0.2)
            gate.set()
            native = {f.result(timeout=30) for f in ids}
        with threads.green_scope():  # nested: still green, and the outer scope still holds
            inner = threads.Lock()
        if mode() == "eventlet":
            assert native == {threads.get_native_id()}
            assert type(inner) is type(threading.Lock())
        else:
            assert len(native) == 3 and threads.get_native_id() not in native
    if mode() == "eventlet":
        from eventlet import patcher

        assert type(threads.Lock()) is type(patcher.original("_thread").allocate_lock())


def test_a_backup_compresses_on_several_os_threads_and_the_hub_keeps_running(cinder, tmp_path):
    """A compress-heavy full backup: at least two OS threads other than the calling one
    burn CPU (the workers, ``backup_cinderblock_workers = 2``), and a greenthread of the
    caller's (under eventlet: on the hub's thread) keeps getting turns while it runs."""
    assert cinder.driver.workers == 2
    image = str(tmp_path / "vol.img")
    _compressible_image(image, 96 * MiB)
    vol = cinder.volume(image)
    backup = cinder.start_backup(vol)
    caller = threading.get_native_id()  # patched or not: this OS thread's id
    done, peak, ticks, sampler_id = sampled(lambda: cinder.run_backup(backup))
    assert done.status == "available"
    busy = sorted(
        (cpu for tid, cpu in peak.items() if tid not in (caller, sampler_id)), reverse=True
    )
    # Each of two workers compressed a share of 96 MiB: well over 50 ms of CPU each. With
    # green workers (one OS thread) only the data path's thread would have any.
    assert len(busy) >= 2 and busy[1] >= 0.05 * TICK, (busy[:4], TICK)
    # The sampler (a greenthread beside the driver's) ran throughout, not only at the end.
    assert ticks >= 5, ticks
    out = str(tmp_path / "out.img")
    cinder.restore(done, out, volume_is_new=True)
    assert _sha(out) == _sha(image)


def test_a_directory_job_gives_no_worker_thread_a_hub(cinder, tmp_path, monkeypatch):
    """Under eventlet, a backup, an incremental and a restore on a directory repository
    never reach eventlet's hub from an OS thread other than the caller's. Eventlet's own
    ``os.open`` (and a patched ``time.sleep``) would give each worker a hub and a greenlet
    state, which greenlet tears down when the thread ends with a scan of the whole heap:
    measured 40-110 ms per backup in this process. With native threads nothing is patched:
    ``os.open`` is the OS's."""
    if mode() != "eventlet":
        assert os.open is oscalls.open and os.read is oscalls.read
        return
    callers = hub_askers(monkeypatch)
    image = str(tmp_path / "vol.img")
    _compressible_image(image, 24 * MiB)
    vol = cinder.volume(image)
    full = cinder.run_backup(cinder.start_backup(vol))
    with open(image, "r+b") as f:
        f.seek(5 * MiB)
        f.write(os.urandom(4096))
    incr = cinder.run_backup(cinder.start_backup(vol, incremental=True))
    assert (full.status, incr.status) == ("available", "available")
    out = str(tmp_path / "out.img")
    cinder.restore(incr, out, volume_is_new=True)
    assert _sha(out) == _sha(image)
    assert callers <= {threading.get_native_id()}, callers


class _WhereStore(MemoryBlobStore):
    """A store that records the OS thread each of its calls ran on."""

    def __init__(self) -> None:
        super().__init__()
        self.ran_on: dict[str, set[int]] = {}

    def _on(self, what: str) -> None:
        self.ran_on.setdefault(what, set()).add(threads.get_native_id())

    def get(self, key, offset=0, length=None):
        self._on("get")
        return super().get(key, offset, length)

    def put(self, key, data, *, exclusive=False, durable=True):
        self._on("put")
        super().put(key, data, exclusive=exclusive, durable=durable)

    def keys(self, prefix):
        for k in super().keys(prefix):
            self._on("keys")
            yield k

    def batch(self):
        self._on("batch")
        return super().batch()

    def ping(self, value):  # not of the protocol: passes through the wrapper's __getattr__
        self._on("ping")
        return value


def test_an_on_hub_store_runs_the_requests_of_os_threads_on_its_hub_thread():
    """``OnHubStore``: under eventlet a call from a plain OS thread runs on the store's hub
    thread (values, listings a page at a time and errors come back), a batch stages on the
    caller's thread and commits on the hub, and a call from the main thread runs where it
    is. With native threads every call runs where it is made."""
    inner = _WhereStore()
    store = OnHubStore(inner)
    main = threads.get_native_id()
    store.put("a/0", b"main")
    assert inner.ran_on == {"put": {main}}
    got: dict[str, object] = {}

    def work() -> None:
        got["me"] = threads.get_native_id()
        got["hub_call"] = threads.wants_hub_call()
        for i in range(1, PAGE * 2 + 5):
            store.put(f"a/{i}", b"x%d" % i)
        got["get"] = store.get("a/7", 1)
        got["keys"] = list(store.keys("a/"))
        got["ping"] = store.ping(42)
        batch = store.batch()
        batch.stage("b/0", b"staged")
        got["commit"] = batch.commit()
        try:
            store.get("missing")
        except BlobNotFound as e:
            got["missing"] = str(e)

    t = threads.os_thread(work, "cb-test-worker")
    t.start()
    t.join()
    assert got["get"] == b"7"
    assert len(got["keys"]) == PAGE * 2 + 5 and set(got["keys"]) == {
        f"a/{i}" for i in range(PAGE * 2 + 5)
    }
    assert got["ping"] == 42 and got["commit"] == [("b/0", 6)]
    assert "missing" in got["missing"]
    me = got["me"]
    assert inner.ran_on["batch"] == {me}  # memory only: made on the caller's thread
    if mode() == "eventlet":
        assert got["hub_call"] is True
        hub = store.hub.native_id
        assert hub not in (None, me, main)
        assert inner.ran_on["put"] == {main, hub}
        assert inner.ran_on["get"] == inner.ran_on["keys"] == inner.ran_on["ping"] == {hub}
    else:
        assert got["hub_call"] is False and store.hub.native_id is None
        assert inner.ran_on["put"] == {main, me}
        assert inner.ran_on["get"] == inner.ran_on["keys"] == inner.ran_on["ping"] == {me}


def test_a_hub_thread_that_fails_fails_its_callers_instead_of_hanging():
    """If the hub thread itself dies (here: its wake-up pipe closed under it), every call
    waiting for it, and every later one, gets an error that says what happened; none
    waits forever."""
    if mode() != "eventlet":
        assert threads.wants_hub_call() is False  # nothing is handed over without eventlet
        return
    hub = threads.HubThread("cb-test-hub")
    os.close(hub._rfd)
    for _ in range(2):
        with pytest.raises(RuntimeError, match="request thread cb-test-hub failed"):
            hub.call(lambda: "never")
    os.close(hub._wfd)
